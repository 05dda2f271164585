"""Could the population adapt its loss during the run? The default population (three students, the worst dropped
at half of the run, the worse of the other two at three quarters) with its first drop turned into a fork, in the
accuracy benchmark's settings (design datasets only).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/studies/fork.py --threads 1 --variant anneal \
        --datasets mnist-5k/weak,mnist-5k/noise40,animal-mnist/weak,mnist-5k,animal-mnist,mnist-5k/lt50 \
        --pairs "teacher->s4" --out docs/benchmark_accuracy/design_s4/fork/anneal_s4.json   # and --variant runnerup

Measured 2026-12-07 (docs/experiments.md, section 9): neither variant passed its decision rule; the default stands.

At the first drop (half of the steps) the worst student stops as in the default; then the student that leads on
validation is copied (weights, batch-norm statistics and optimizer state) over the runner-up, and the copy trains on
with other factors of the loss's temperature and weight (population-based training's exploit and explore):

* ``runnerup``: the runner-up's own factors (the leader's weights given the other loss of the two);
* ``anneal``: the leader's temperature factor and a quarter of its weight factor (the teacher's term turned down
  for the second half: early-stopped distillation's idea, Cho and Hariharan 2019, as a choice rather than a rule).

At three quarters the worse of leader and copy stops and the other is kept, as in the default: the same 2.25 student
runs. The default's records (``docs/benchmark_accuracy/design_s4/halve_twice/``, the runs that made it the default,
``lkd-pop3-halve2``) pair with the study's runs seed by seed; ``--variant none`` copies nothing and must reproduce
them exactly.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common, accuracy

import torch  # noqa: E402
from transformers import HfArgumentParser, TrainerCallback  # noqa: E402

from accuracy import AccuracyArguments, Benchmark  # noqa: E402
from common import mean_std, repository_path, save_json, split_list  # noqa: E402
from tuning import format_ci95, paired_ci95  # noqa: E402

from lkd_hf.objective import DistillationObjective  # noqa: E402
from lkd_hf.population import ScaledLoss  # noqa: E402

METHOD = "lkd"  # the default population
DEFAULT_METHOD = "lkd-pop3-halve2"  # its name in the records that made it the default
VARIANTS = ("none", "runnerup", "anneal")
DEFAULT_RECORDS = ("docs", "benchmark_accuracy", "design_s4", "halve_twice")  # <student>/<dataset>/results.json


def fork_factors(variant: str, factors: tuple[tuple[float, float], ...], leader: int, runner_up: int
                 ) -> tuple[float, float]:
    """The copy's (temperature factor, weight factor) under ``variant``.

    Args:
        variant: ``runnerup`` or ``anneal``.
        factors: the students' factor pairs.
        leader / runner_up: the indices of the two students still training after the first drop.
    """
    if variant == "runnerup":
        return factors[runner_up]
    temperature, weight = factors[leader]
    return temperature, weight / 4


class ForkAtFirstDrop(TrainerCallback):
    """After the trainer's first drop, copy the leading student over the runner-up and give the copy the variant's
    factors. Must run after the trainer's own drop callback (:meth:`attach` re-adds it last)."""

    def __init__(self, variant: str) -> None:
        self.variant, self.trainer, self.done = variant, None, None

    def attach(self, trainer) -> None:
        self.trainer = trainer
        trainer.remove_callback(self)
        trainer.add_callback(self)  # after DropWorstStudent: both act at the same step

    def on_step_end(self, args, state, control, **kwargs):
        if self.done is not None or self.variant == "none":
            return
        drops = [log for log in state.log_history if "population/dropped" in log]
        if not drops:
            return
        distiller = self.trainer.distiller
        scores = {k: drops[0][f"population/drop_score_{k}"] for k in distiller.active_members}
        leader, runner_up = sorted(scores, key=lambda k: (-scores[k], k))
        members = distiller.population.members
        members[runner_up].load_state_dict(members[leader].state_dict())
        optimizer = self.trainer.optimizer
        for target, source in zip(members[runner_up].parameters(), members[leader].parameters(), strict=True):
            if source in optimizer.state:
                optimizer.state[target] = copy.deepcopy(optimizer.state[source])
        temperature, weight = fork_factors(self.variant, distiller.factors, leader, runner_up)
        network = distiller.objective.distill_loss  # the shared loss network (student 0's objective holds it)
        old = distiller.objectives[runner_up]
        distiller.objectives[runner_up] = DistillationObjective(
            ScaledLoss(network, temperature, weight), None, old.ce_weight, old.distill_weight, old.feature_weight)
        factors = list(distiller.factors)
        factors[runner_up] = (temperature, weight)
        distiller.factors = tuple(factors)
        self.done = dict(step=state.global_step, leader=leader, copy=runner_up, factors=[temperature, weight],
                         scores={str(k): v for k, v in scores.items()})


def default_records(dataset: str, pair: str) -> dict[int, dict]:
    """The default's records of ``dataset`` and ``pair`` by seed (empty when none are committed)."""
    path = repository_path(*DEFAULT_RECORDS, pair.split("->")[1], dataset, "results.json")
    if not os.path.exists(path):
        return {}
    return {r["seed"]: r for r in json.load(open(path))["runs"] if (r["pair"], r["method"]) == (pair, DEFAULT_METHOD)}


def summarize(runs: list[dict], metric: str) -> dict:
    """The variant's mean and its paired difference to the default over the seeds both have."""
    scores = [100 * r[metric] for r in runs]
    paired = [(100 * r[metric], 100 * r["default"]) for r in runs if r.get("default") is not None]
    ci = paired_ci95(*map(list, zip(*paired, strict=True))) if len(paired) > 1 else None
    mean, std = mean_std(scores)
    return {"metric": metric, "mean": mean, "n": len(scores), "std": std, "minus_default_ci95": ci,
            "kept": [r["kept"] for r in runs], "copies": [r["fork"] for r in runs]}


@dataclass
class StudyArguments:
    variant: str = field(default="anneal", metadata={"help": f"One of {', '.join(VARIANTS)}."})
    datasets: str = field(default="mnist-5k,mnist-5k/weak", metadata={"help": "Benchmark keys, comma-separated."})
    pairs: str = field(default="teacher->s4", metadata={"help": "Teacher -> student pairs, comma-separated."})
    num_seeds: int = field(default=5, metadata={"help": "Seeds 0..n-1."})
    epochs: float | None = field(default=None, metadata={"help": "Override the benchmark's epochs (a smoke run)."})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads."})
    out: str = field(default="outputs/fork.json", metadata={"help": "Records and summary (JSON)."})
    run_dir: str = field(default="outputs/fork", metadata={"help": "The runs' output folders."})


def main() -> None:
    (study,) = HfArgumentParser(StudyArguments).parse_args_into_dataclasses()
    if study.variant not in VARIANTS:
        raise SystemExit(f"error: --variant must be one of {', '.join(VARIANTS)}, got {study.variant!r}")
    torch.set_num_threads(study.threads)
    records = json.load(open(study.out)) if os.path.exists(study.out) else {"variant": study.variant, "runs": [],
                                                                            "summary": {}}
    if records["variant"] != study.variant:
        raise SystemExit(f"error: {study.out} holds variant {records['variant']!r}, not {study.variant!r}")
    for key in split_list(study.datasets):
        extra = [] if study.epochs is None else ["--epochs", str(study.epochs)]
        (args,) = HfArgumentParser(AccuracyArguments).parse_args_into_dataclasses(
            args=["--dataset", key, "--pairs", study.pairs, "--methods", METHOD, "--output_dir", study.run_dir, *extra])
        bench = Benchmark(args, record=False)
        metric = "balanced_top1" if "/lt" in key else "test_top1"
        for pair in split_list(study.pairs):
            defaults = default_records(key, pair) if study.epochs is None else {}
            for seed in range(study.num_seeds):
                if any((r["dataset"], r["pair"], r["seed"]) == (key, pair, seed) for r in records["runs"]):
                    continue
                fields, _ = bench.method_fields(pair, METHOD, seed)
                fork = ForkAtFirstDrop(study.variant)
                trainer, wall = bench.setting.train_student(pair, seed, os.path.join(study.run_dir, key, pair,
                                                                                     str(seed)), fields,
                                                            callbacks=[fork], setup=fork.attach)
                kept = next(log for log in trainer.state.log_history if "population/selected" in log)
                score = bench.setting.balanced(trainer, "test") if metric == "balanced_top1" else \
                    bench.setting.top1(trainer, "test")
                default = defaults.get(seed, {}).get(metric)
                records["runs"].append(dict(dataset=key, pair=pair, seed=seed, kept=kept["population/selected"],
                                            fork=fork.done, wall_s=wall, **{metric: score}, default=default))
                print(json.dumps(records["runs"][-1]), flush=True)
                save_json(study.out, records)
            runs = [r for r in records["runs"] if (r["dataset"], r["pair"]) == (key, pair)]
            records["summary"][f"{key} {pair}"] = summarize(runs, metric)
            save_json(study.out, records)
    for name, row in records["summary"].items():
        print(f"{name:32s} {study.variant:9s} {row['mean']:6.2f} ± {row['std']:.2f}  vs default "
              f"{format_ci95(row['minus_default_ci95'])}  "
              f"kept {row['kept']}")


if __name__ == "__main__":
    main()
