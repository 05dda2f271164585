"""Outer-loop study: which meta-step settings keep a good starting loss, or find one? (animal-mnist, parallel)

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/studies/outer_loop.py --workers 2   # all variants, 3 seeds
    python benchmarks/studies/outer_loop.py --variants dist-tuned,k20-ho --pairs "teacher->s16" --num_seeds 1

The accuracy benchmark's setting (``benchmarks/accuracy.py``: same data, teacher, student recipe, 6 epochs, 2000
training images, last-epoch test top-1); only the loss and its outer loop vary. ``kK-{tb,ho}[-lrX]`` start LKD
from the DIST that ``accuracy.py``'s ``dist-tuned`` picked for the pair on the validation split (read from
``--tuned_from``: an accuracy ``results.json``, or an outer-loop one with ``dist-tuned`` rows) and vary the horizon
``K`` of the virtual steps (a meta step every ``max(5, K)`` student steps), the validation batch (``tb``: the
training batch, all 2000 images train the student; ``ho``: all 200 held-out images, the student trains on 1800) and
the meta learning rate (Adam, 1e-2 unless named); ``cal-*`` use the calibrated-CE outer objective, ``imp*`` the
implicit estimator, ``-w40`` no meta step before student step 40. ``probe-*`` and ``sched-*`` are hand-made changes of
the tuned DIST outside ``dist-tuned``'s grid (CE weight, DIST's beta / gamma, a FitNet hint; a temperature going
geometrically from factor a to factor b of the tuned one over the run): is there a better loss near it to find?
Every variant names ``meta_val_loss`` where it matters (``lkd`` sets plain CE, the outer objective of the first
runs, unless a variant names calibrated CE). ``dist-tuned`` (that DIST, no outer loop) and ``dist-T8`` are
references. ``from-*`` start from an explicit loss instead: DIST's paper default (T=1, w=1), KD (T=4) or DIST T=16;
``dist-T1`` and ``dist-T16`` are those losses without an outer loop. Both validation top-1 (1000 images, the split
used to pick settings) and test top-1 are recorded; pick by validation, never by test. docs/experiments.md reports
the runs (some on the CPU cores of a GPU machine); the first started from the T=4
picks of the accuracy benchmark's earlier grid: ``--tuned_from
docs/benchmark_device/call1/outer_loop_results.json`` repeats that.

Runs go to ``--workers`` processes (one thread each); ``--deadline`` seconds after the start no new run begins
(the report covers what finished). Records: ``<output_dir>/results.json`` (``--resume`` skips the runs in it).
``--device cuda`` trains on the GPU (``use_cpu=False``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common

import torch  # noqa: E402
from transformers import HfArgumentParser, TrainerCallback  # noqa: E402

from common import PAIRS, Setting, WorkerPool, format_mean_std, repository_path, run_dir, split_list  # noqa: E402

DEFAULT_OUTPUT_DIR = "outputs/benchmark_outer_loop"
DEFAULT_TUNED_FROM = repository_path("docs", "benchmark_accuracy", "animal-mnist", "results.json")


def lkd(k: int, source: str, lr: float, **extra: Any) -> dict[str, Any]:
    fields = dict(loss="lkd", lkd_init="dist", lookahead_steps=k, meta_interval=max(5, k),
                  meta_val_source="heldout" if source == "ho" else "train_batch", meta_learning_rate=lr,
                  meta_batch_size=200 if source == "ho" else None, lkd_val_fraction=0.1 if source == "ho" else None,
                  meta_val_loss="ce")
    return {**fields, **extra}


VARIANTS: dict[str, dict[str, Any]] = {  # LKDConfig fields on top of the pair's tuned DIST temperature and weight
    "dist-tuned": dict(loss="dist"),
    "dist-T8": dict(loss="dist", dist_temperature=8.0),
    "k1-tb": lkd(1, "tb", 1e-2),  # the accuracy benchmark's former lkd-dist-tuned row
    "k1-ho": lkd(1, "ho", 1e-2),
    "k5-tb": lkd(5, "tb", 1e-2),
    "k5-ho": lkd(5, "ho", 1e-2),
    "k5-ho-lr3e-2": lkd(5, "ho", 3e-2),
    "k10-ho": lkd(10, "ho", 1e-2),
    "k20-tb": lkd(20, "tb", 1e-2),
    "k20-ho": lkd(20, "ho", 1e-2),
    "k20-ho-lr3e-2": lkd(20, "ho", 3e-2),
    "k20-ho-lr1e-1": lkd(20, "ho", 1e-1),
    # explicit starts (not the tuned DIST): can the outer loop find a good loss from an untuned one?
    "dist-T1": dict(loss="dist", dist_temperature=1.0, distill_weight=1.0),  # DIST's paper default
    "dist-T16": dict(loss="dist", dist_temperature=16.0, distill_weight=1.0),
    "from-T1-k1": lkd(1, "tb", 1e-2, dist_temperature=1.0, distill_weight=1.0),
    "from-T1-k1-lr1e-1": lkd(1, "tb", 1e-1, dist_temperature=1.0, distill_weight=1.0),
    "from-T1-k5": lkd(5, "tb", 1e-2, dist_temperature=1.0, distill_weight=1.0),
    "from-T1-k5-lr3e-2": lkd(5, "tb", 3e-2, dist_temperature=1.0, distill_weight=1.0),
    "from-T1-k5-lr1e-1": lkd(5, "tb", 1e-1, dist_temperature=1.0, distill_weight=1.0),
    "from-T1-k20-lr1e-1": lkd(20, "tb", 1e-1, dist_temperature=1.0, distill_weight=1.0),
    "from-kd-k5-lr3e-2": lkd(5, "tb", 3e-2, lkd_init="kd", temperature=4.0, distill_weight=1.0),
    "from-T16-k5": lkd(5, "tb", 1e-2, dist_temperature=16.0, distill_weight=1.0),
    # longer horizons with a meta step every 5 student steps (as many meta steps as K=5)
    "from-T1-k10-i5-lr1e-1": lkd(10, "tb", 1e-1, meta_interval=5, dist_temperature=1.0, distill_weight=1.0),
    "from-T1-k20-i5-lr1e-1": lkd(20, "tb", 1e-1, meta_interval=5, dist_temperature=1.0, distill_weight=1.0),
    # implicit (Neumann-series) hypergradients: K=1 is the pure alignment term -lr <grad L_train, grad L_val> at w
    "imp1-tb": lkd(1, "tb", 1e-2, hypergradient="implicit"),
    "imp1-ho": lkd(1, "ho", 1e-2, hypergradient="implicit"),
    "from-T1-imp1-lr1e-1": lkd(1, "tb", 1e-1, hypergradient="implicit", dist_temperature=1.0, distill_weight=1.0),
    "from-T1-imp1-ho-lr1e-1": lkd(1, "ho", 1e-1, hypergradient="implicit", dist_temperature=1.0, distill_weight=1.0),
    # outer objective: the validation cross-entropy after temperature scaling (blind to the logits' scale)
    "cal-k1-tb": lkd(1, "tb", 1e-2, meta_val_loss="calibrated_ce"),
    "cal-k5-tb": lkd(5, "tb", 1e-2, meta_val_loss="calibrated_ce"),
    "from-T1-cal-k1-lr1e-1": lkd(1, "tb", 1e-1, meta_val_loss="calibrated_ce", dist_temperature=1.0,
                                 distill_weight=1.0),
    "from-T1-cal-k5-lr1e-1": lkd(5, "tb", 1e-1, meta_val_loss="calibrated_ce", dist_temperature=1.0,
                                 distill_weight=1.0),
    "from-T1-cal-imp1-lr1e-1": lkd(1, "tb", 1e-1, hypergradient="implicit", meta_val_loss="calibrated_ce",
                                   dist_temperature=1.0, distill_weight=1.0),
    # no meta step in the first 40 of ~190 student steps (the early hypergradients ask for a lower temperature)
    "cal-k1-tb-w40": lkd(1, "tb", 1e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "cal-k5-tb-w40": lkd(5, "tb", 1e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "from-T1-cal-k1-lr1e-1-w40": lkd(1, "tb", 1e-1, meta_val_loss="calibrated_ce", meta_warmup_steps=40,
                                     dist_temperature=1.0, distill_weight=1.0),
    "from-T1-cal-k5-lr1e-1-w40": lkd(5, "tb", 1e-1, meta_val_loss="calibrated_ce", meta_warmup_steps=40,
                                     dist_temperature=1.0, distill_weight=1.0),
    # longer horizons with the clipped look-ahead and the calibrated-CE objective
    "cal-k10-tb-w40": lkd(10, "tb", 1e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "cal-k20-tb-w40": lkd(20, "tb", 1e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "cal-k20-ho-w40": lkd(20, "ho", 1e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "cal-k10-tb-w40-lr5e-2": lkd(10, "tb", 5e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "cal-k20-tb-w40-lr5e-2": lkd(20, "tb", 5e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    "cal-k5-tb-w40-lr3e-2": lkd(5, "tb", 3e-2, meta_val_loss="calibrated_ce", meta_warmup_steps=40),
    # headroom probes: hand-made changes of the tuned DIST outside the T x w grid; is there a better loss near it
    # for the outer loop to find? (pick by validation)
    "probe-ce0.5": dict(loss="dist", ce_weight=0.5),
    "probe-ce0": dict(loss="dist", ce_weight=0.0),
    "probe-beta2": dict(loss="dist", dist_beta=2.0),
    "probe-gamma2": dict(loss="dist", dist_gamma=2.0),
    "probe-beta0": dict(loss="dist", dist_beta=0.0),
    "probe-gamma0": dict(loss="dist", dist_gamma=0.0),
    "probe-fitnet": dict(loss="dist+fitnet"),
    # hand-made temperature schedules: T goes geometrically from factor a to factor b of the tuned T over the run
    "sched-down4": dict(loss="dist", temperature_schedule=(2.0, 0.5)),
    "sched-down2": dict(loss="dist", temperature_schedule=(2**0.5, 2**-0.5)),
    "sched-up4": dict(loss="dist", temperature_schedule=(0.5, 2.0)),
}


@dataclass
class OuterLoopArguments:
    pairs: str = field(default=",".join(PAIRS), metadata={"help": "Comma-separated pairs."})
    variants: str = field(default=",".join(VARIANTS), metadata={"help": f"Comma-separated of {list(VARIANTS)}."})
    num_seeds: int = field(default=3, metadata={"help": "Seeds 0..N-1."})
    workers: int = field(default=2, metadata={"help": "Parallel worker processes (one thread each)."})
    device: str = field(default="cpu", metadata={"help": "'cpu' or 'cuda'."})
    deadline: float = field(default=0.0, metadata={"help": "Seconds after which no run starts (0: none)."})
    tuned_from: str = field(default=DEFAULT_TUNED_FROM, metadata={"help": "accuracy.py results with dist-tuned."})
    output_dir: str = field(default=DEFAULT_OUTPUT_DIR, metadata={"help": "Where results.json goes."})
    resume: bool = field(default=False, metadata={"help": "Skip the runs already in results.json."})


def tuned_dist(path: str) -> dict[str, dict[str, float]]:
    """The DIST temperature and weight of the seed-0 ``dist-tuned`` record of each pair (accuracy.py's pick on
    validation, or the start an earlier outer-loop run used)."""
    with open(path) as f:
        runs = json.load(f)["runs"]
    return {r["pair"]: dict(dist_temperature=r["dist_temperature"], distill_weight=r["distill_weight"])
            for r in runs if r.get("method", r.get("variant")) == "dist-tuned" and r["seed"] == 0}


class TemperatureSchedule(TrainerCallback):
    """Set the hand-made DIST loss's temperature before each student step: ``T0 * a * (b / a) ** (step / steps)``."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end, self.loss, self.base = start, end, None, None

    def bind(self, trainer) -> None:
        self.loss, self.base = trainer.distill_loss, trainer.distill_loss.temperature

    def on_step_begin(self, args, state, control, **kwargs):
        frac = state.global_step / max(1, state.max_steps)
        self.loss.temperature = self.base * self.start * (self.end / self.start) ** frac


def worker_setting() -> Setting:
    """A worker process's setting (one thread)."""
    torch.set_num_threads(1)
    return Setting()


def run_one(setting: Setting, task: tuple[str, str, int, dict[str, Any], str, str]) -> dict[str, Any]:
    """Train one variant on one pair and seed; return its record."""
    pair, variant, seed, fields, device, output_dir = task
    fields = dict(fields, use_cpu=device == "cpu")
    if fields["loss"] == "lkd":
        fields.setdefault("hypergradient", PAIRS[pair].hypergradient)
    factors = fields.get("temperature_schedule")  # not an LKDConfig field: a callback sets the temperature
    schedule = TemperatureSchedule(*factors) if factors else None
    config_fields = {k: v for k, v in fields.items() if k != "temperature_schedule"}
    trainer, wall = setting.train_student(pair, seed, run_dir(output_dir, pair, variant, seed), config_fields,
                                          callbacks=[schedule] if schedule else None,
                                          setup=schedule.bind if schedule else None)
    scores = setting.scores(trainer, wall, validate=True)
    return dict(pair=pair, variant=variant, seed=seed, device=device, **scores,
                **{k: v for k, v in fields.items() if k != "use_cpu"}, **trainer.loss_knobs())


def report(runs: list[dict[str, Any]], pairs: list[str], variants: list[str]) -> str:
    lines = []
    for pair in pairs:
        ref = [r["test_top1"] for r in runs if r["pair"] == pair and r["variant"] == "dist-tuned"]
        lines += [f"\n#### {pair}\n", "| variant | seeds | val top-1 | test top-1 mean ± std | test − dist-tuned | "
                  "final T | final weight | wall (s) |", "|---|---|---|---|---|---|---|---|"]
        for variant in variants:
            rs = sorted((r for r in runs if r["pair"] == pair and r["variant"] == variant), key=lambda r: r["seed"])
            if not rs:
                continue
            test = [100 * r["test_top1"] for r in rs]
            delta = f"{statistics.fmean(test) - 100 * statistics.fmean(ref):+.2f}" if ref else "-"
            knob = lambda key: f"{statistics.fmean(r[key] for r in rs):.2f}" if key in rs[0] else "-"  # noqa: E731
            lines.append(f"| {variant} | {len(rs)} | {100 * statistics.fmean(r['val_top1'] for r in rs):.2f} | "
                         f"{format_mean_std(test)} | {delta} | {knob('lkd/temperature')} | "
                         f"{knob('lkd/weight')} | {statistics.fmean(r['wall_s'] for r in rs):.1f} |")
    return "\n".join(lines)


def main() -> None:
    (args,) = HfArgumentParser(OuterLoopArguments).parse_args_into_dataclasses()
    started = time.monotonic()
    pairs, variants = split_list(args.pairs), split_list(args.variants)
    unknown = [v for v in variants if v not in VARIANTS] + [p for p in pairs if p not in PAIRS]
    if unknown:
        raise SystemExit(f"error: unknown variants/pairs {unknown}; variants: {list(VARIANTS)}")
    start = tuned_dist(args.tuned_from)
    path = os.path.join(args.output_dir, "results.json")
    runs: list[dict[str, Any]] = []
    if args.resume and os.path.exists(path):
        with open(path) as f:
            runs = json.load(f)["runs"]
    done = {(r["pair"], r["variant"], r["seed"]) for r in runs}
    tasks = [(pair, v, seed, {**start[pair], **VARIANTS[v]}, args.device, args.output_dir)  # seed-major: every
             for seed in range(args.num_seeds) for v in variants for pair in pairs  # variant gets seed 0 first
             if (pair, v, seed) not in done]
    print(f"{len(tasks)} runs on {args.workers} workers ({args.device}); starting losses {start}", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    deadline = started + args.deadline if args.deadline else None
    with WorkerPool(args.workers, worker_setting) as pool:
        for r in pool.results(run_one, tasks, deadline):
            runs.append(r)
            print(f"[{r['pair']}] {r['variant']:<18} seed {r['seed']}: val {r['val_top1']:.4f} test "
                  f"{r['test_top1']:.4f} T {r.get('lkd/temperature', float('nan')):.2f} "
                  f"w {r.get('lkd/weight', float('nan')):.2f} {r['wall_s']:.0f}s", flush=True)
            with open(path + ".tmp", "w") as f:
                json.dump({"args": vars(args), "runs": runs}, f, indent=1)
            os.replace(path + ".tmp", path)
    text = report(runs, pairs, variants)
    print(text)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(f"total {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
