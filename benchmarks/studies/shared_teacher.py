"""Does a learned part of the loss pay where the teacher shares the corruption? The summary of the accuracy
benchmark's ``-shared`` settings (``roles.py``: the long-tailed or noisy training set of ``lt10``, ``lt50``,
``noise20``, ``noise40`` and a teacher trained on exactly that set), design datasets only.

    # the runs, one setting at a time (la-tuned on the long tails only), then the summary
    python benchmarks/accuracy.py --dataset mnist-5k/noise40-shared --pairs "teacher->s4" \\
        --methods ce,kd-tuned,dist-tuned,lkd,lkd-single,lkd-meta-heads --num_seeds 5 --lkd_meta_interval 1 \\
        --lkd_meta_learning_rate 0.001 --threads 1 --workers 2 --output_dir outputs/design_shared
    python benchmarks/studies/shared_teacher.py --records outputs/design_shared \\
        --out docs/benchmark_accuracy/design_s4/shared/summary.json

Per setting: each method's mean (test top-1 %, balanced on the long tails), the best tuned hand-made method by
validation mean, and paired 95% intervals over seeds of ``lkd-meta-heads − lkd`` (the candidate), ``lkd − best
tuned`` and ``lkd − ce``. The decision rule (``docs/benchmark_accuracy/design_s4/shared/decision_rule.md``, written
before the runs) is applied to the candidate's intervals here and in the earlier design records it names.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, accuracy

from transformers import HfArgumentParser  # noqa: E402

from accuracy import Results, paired_gap, summary  # noqa: E402
from common import repository_path, save_json  # noqa: E402
from tuning import format_ci95  # noqa: E402

PAIR = "teacher->s4"
CANDIDATE, DEFAULT = "lkd-meta-heads", "lkd"
METHODS = ("ce", "kd-tuned", "dist-tuned", "la-tuned", "lkd", "lkd-single", "lkd-meta-heads")
PAYS_MEAN = 1.0  # a setting where the candidate pays: mean gain at least this, interval above 0, on both datasets
PAYS_SETTINGS = 2  # settings in which it must pay
FLOOR = -0.3  # every other design cell's mean gain at least this
EARLIER = {f"mnist-5k/{s}": ("docs", "benchmark_accuracy", "design_s4", "mnist-5k", s, "results.json")
           for s in ("weak", "noise40", "lt50")}
"""The earlier design records with the candidate beside the default (docs/experiments.md section 7)."""


def cell(results: Results, key: str) -> dict:
    """One setting's row: the methods' means, the best tuned by validation and the paired intervals (the benchmark's
    own summary of ``key``, with the candidate's and CE's intervals added)."""
    rows = summary(results, key)[key][PAIR]
    ci95 = dict(rows.get("ci95") or {})
    best = ci95.pop("reference", None)
    gaps = {"candidate_minus_lkd": paired_gap(results, PAIR, CANDIDATE, DEFAULT),
            "lkd_minus_best_tuned": ci95 or None, "lkd_minus_ce": paired_gap(results, PAIR, DEFAULT, "ce")}
    return {"teacher_test_top1": results.data["teacher"]["test_top1"], "best_tuned": best,
            "means": {m: rows[m]["mean"] for m in METHODS if m in rows},
            "stds": {m: rows[m]["std"] for m in METHODS if m in rows}, **gaps}


def decide(cells: dict[str, dict], earlier: dict[str, dict]) -> dict:
    """The decision rule on the candidate's intervals: the settings where it pays (on every dataset run in it) and
    the cells below :data:`FLOOR`."""
    by_setting: dict[str, list[dict]] = {}
    for key, row in cells.items():
        by_setting.setdefault(key.split("/")[1], []).append(row["candidate_minus_lkd"])
    pays = sorted(s for s, gaps in by_setting.items()
                  if all(g is not None and g["mean"] >= PAYS_MEAN and g["low"] > 0 for g in gaps))
    paying_keys = {k for k in cells if k.split("/")[1] in pays}
    others = {**{k: v["candidate_minus_lkd"] for k, v in cells.items() if k not in paying_keys}, **earlier}
    below = sorted(k for k, g in others.items() if g is None or g["mean"] < FLOOR)
    return {"pays_in": pays, "below_floor": below, "passes": len(pays) >= PAYS_SETTINGS and not below}


def table(cells: dict[str, dict], earlier: dict[str, dict], decision: dict) -> str:
    lines = ["| setting | teacher | ce | best tuned (mean) | lkd | lkd-single | lkd-meta-heads | meta-heads − lkd | "
             "lkd − best tuned | lkd − ce |", "|---" * 10 + "|"]
    for key, row in cells.items():
        means = row["means"]
        lines.append(f"| {key} | {100 * row['teacher_test_top1']:.1f} | {means.get('ce', '-')} | {row['best_tuned']} "
                     f"({means.get(row['best_tuned'], '-')}) | {means.get('lkd', '-')} | {means.get('lkd-single', '-')}"
                     f" | {means.get(CANDIDATE, '-')} | {format_ci95(row['candidate_minus_lkd'])} | "
                     f"{format_ci95(row['lkd_minus_best_tuned'])} | {format_ci95(row['lkd_minus_ce'])} |")
    lines += ["", "Earlier design records (docs/experiments.md section 7), meta-heads − lkd: "
              + "; ".join(f"{k} {format_ci95(g)}" for k, g in earlier.items()), "",
              f"Rule: pays in {decision['pays_in'] or 'no setting'}; cells below {FLOOR}: "
              f"{decision['below_floor'] or 'none'}; candidate {'passes' if decision['passes'] else 'does not pass'}."]
    return "\n".join(lines)


@dataclass
class SummaryArguments:
    records: str = field(default="outputs/design_shared", metadata={"help": "The accuracy benchmark's --output_dir "
                                                                            "of the -shared runs."})
    out: str | None = field(default=None, metadata={"help": "Write the summary here (JSON) besides printing it."})


def main() -> None:
    (a,) = HfArgumentParser(SummaryArguments).parse_args_into_dataclasses()
    cells = {}
    for path in sorted(glob.glob(os.path.join(a.records, "*", "*-shared", "results.json"))):
        dataset, setting = path.split(os.sep)[-3:-1]
        key = f"{dataset}/{setting}"
        cells[key] = cell(Results.load(path), key)
    earlier = {k: paired_gap(Results.load(repository_path(*p)), PAIR, CANDIDATE, DEFAULT) for k, p in EARLIER.items()}
    decision = decide(cells, earlier)
    print(table(cells, earlier, decision))
    if a.out:
        save_json(a.out, {"pair": PAIR, "cells": cells, "earlier": earlier, "decision": decision})


if __name__ == "__main__":
    main()
