"""Horizon and snapshot-pool study: does a one-step look-ahead drift the learned loss, and do K steps fix it?

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/studies/horizon.py
    python benchmarks/studies/horizon.py --variants k1-current,k5-uniform --num_seeds 1 --epochs 2   # smoke check

The learned loss (``lkd``, initialised to KD with T=4) is meta-trained with enough authority to move (meta learning
rate ``--meta_learning_rate`` 1e-2, a meta step every ``--meta_interval`` 1 student step) under several outer-loop
settings (``VARIANTS``):

* ``k1-current``: one virtual step from the live weights (the short-sighted baseline, docs/method.md);
* ``k1-uniform``: one step, from a snapshot drawn uniformly from the pool;
* ``k5-current`` / ``k5-uniform``: five virtual steps (truncated differentiation through all five);
* ``kgauss-uniform``: K drawn per meta step from round(N(5, 2)), clipped to [1, 9];

plus hand-made references ``kd-T4`` (the learned loss's starting point) and ``kd-T2`` (where a drifting T goes).
Setting and data are those of ``benchmarks/accuracy.py`` (animal-mnist, 2000 training images, the same student
recipe and the same committed teacher, ``benchmarks/teacher``); LKD holds out ``lkd_val_fraction`` of them for its
meta steps. Reported per variant: the temperature and weight trajectory of the learned loss (logged every
``--logging_steps``), validation and last-epoch test top-1 (mean over seeds), wall time. Outputs: ``results.json``,
``results.md`` and ``temperature.png`` in ``--output_dir``.
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

from transformers import HfArgumentParser  # noqa: E402

from common import BUNDLED_TEACHER_DIR, PAIRS, Setting, format_mean_std, split_list  # noqa: E402

LKD = dict(loss="lkd", lkd_init="kd", lkd_val_fraction=0.1)  # from KD(T=4); meta steps on 10% of the images, held out
VARIANTS: dict[str, dict[str, Any]] = {
    "kd-T4": dict(loss="kd", temperature=4.0),
    "kd-T2": dict(loss="kd", temperature=2.0),
    "k1-current": dict(LKD, lookahead_steps=1, snapshot_strategy="current"),
    "k1-uniform": dict(LKD, lookahead_steps=1, snapshot_strategy="uniform"),
    "k5-current": dict(LKD, lookahead_steps=5, snapshot_strategy="current"),
    "k5-uniform": dict(LKD, lookahead_steps=5, snapshot_strategy="uniform"),
    "kgauss-uniform": dict(LKD, lookahead_steps=5, lookahead_steps_std=2.0, snapshot_strategy="uniform"),
}


@dataclass
class HorizonArguments:
    pair: str = field(default="teacher->s4", metadata={"help": f"One of {list(PAIRS)}."})
    variants: str = field(default=",".join(VARIANTS), metadata={"help": f"Comma-separated of {list(VARIANTS)}."})
    num_seeds: int = field(default=2, metadata={"help": "Seeds 0..N-1 per variant."})
    epochs: float = field(default=6.0, metadata={"help": "Student epochs."})
    meta_learning_rate: float = field(default=1e-2, metadata={"help": "Learning rate of the loss network."})
    meta_interval: int = field(default=1, metadata={"help": "A meta step every N student steps."})
    snapshot_interval: int = field(default=20, metadata={"help": "Record a student snapshot every N steps."})
    logging_steps: int = field(default=10, metadata={"help": "Trajectory resolution (student steps)."})
    teacher_dir: str = field(default=BUNDLED_TEACHER_DIR, metadata={"help": "Cached teacher directory."})
    output_dir: str = field(default="outputs/benchmark_horizon", metadata={"help": "Where results go."})

    def __post_init__(self) -> None:
        unknown = [v for v in self.variant_list if v not in VARIANTS]
        if unknown or self.pair not in PAIRS:
            raise ValueError(f"Unknown variants {unknown} or pair {self.pair!r}; known: {list(VARIANTS)}, "
                             f"{list(PAIRS)}.")

    @property
    def variant_list(self) -> list[str]:
        return split_list(self.variants)


def run_variant(setting: Setting, args: HorizonArguments, name: str, seed: int) -> dict[str, Any]:
    """Train one student with the variant's fields; return accuracies and the learned loss's knob trajectory."""
    fields = dict(VARIANTS[name])
    if fields["loss"] == "lkd":
        fields.update(meta_learning_rate=args.meta_learning_rate, meta_interval=args.meta_interval,
                      snapshot_interval=args.snapshot_interval, hypergradient=PAIRS[args.pair].hypergradient)
    output_dir = os.path.join(args.output_dir, "runs", name, f"seed{seed}")
    trainer, wall = setting.train_student(args.pair, seed, output_dir, {**fields, "logging_steps": args.logging_steps})
    trajectory = [dict(step=0, temperature=fields.get("temperature", 4.0), weight=1.0)] + [
        dict(step=h["step"], temperature=h["lkd/temperature"], weight=h["lkd/weight"],
             val_loss_after=h.get("meta/val_loss_after"), time_share=h.get("meta/time_share"))
        for h in trainer.state.log_history if "lkd/temperature" in h
    ]
    record = dict(
        variant=name, seed=seed, fields=fields, wall_s=wall, steps=trainer.state.global_step,
        test_top1=setting.top1(trainer, "test"), val_top1=setting.top1(trainer, "validation"),
        trajectory=trajectory,
    )
    last = trajectory[-1]
    print(f"{name:<15} seed {seed}: val {record['val_top1']:.4f} test {record['test_top1']:.4f} "
          f"T {last['temperature']:.3f} w {last['weight']:.3f} ({wall:.0f} s, {record['steps']} steps)", flush=True)
    return record


def report(records: list[dict[str, Any]], args: HorizonArguments) -> str:
    lines = [
        f"## Horizon study: {args.pair}, {args.epochs:g} epochs, meta lr {args.meta_learning_rate:g}, meta step every "
        f"{args.meta_interval} step(s), snapshot every {args.snapshot_interval} steps, seeds {args.num_seeds}",
        "",
        "| variant | val top-1 (%) | test top-1 (%) | final T (min over run) | final weight | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.variant_list:
        rs = [r for r in records if r["variant"] == name]
        if not rs:
            continue
        val, test = (format_mean_std([100 * r[key] for r in rs]) for key in ("val_top1", "test_top1"))
        final_t = statistics.fmean(r["trajectory"][-1]["temperature"] for r in rs)
        min_t = min(p["temperature"] for r in rs for p in r["trajectory"])
        final_w = statistics.fmean(r["trajectory"][-1]["weight"] for r in rs)
        wall = statistics.fmean(r["wall_s"] for r in rs)
        lines.append(f"| {name} | {val} | {test} | {final_t:.2f} ({min_t:.2f}) | "
                     f"{final_w:.2f} | {wall:.0f} |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], args: HorizonArguments, path: str) -> None:
    """Temperature (left) and weight (right) of the learned loss over the student's steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_w) = plt.subplots(1, 2, figsize=(10, 4))
    colors = {name: f"C{i}" for i, name in enumerate(args.variant_list)}
    for r in records:
        if r["fields"]["loss"] != "lkd":
            continue
        steps = [p["step"] for p in r["trajectory"]]
        label = r["variant"] if r["seed"] == 0 else None
        ax_t.plot(steps, [p["temperature"] for p in r["trajectory"]], color=colors[r["variant"]], label=label)
        ax_w.plot(steps, [p["weight"] for p in r["trajectory"]], color=colors[r["variant"]], label=label)
    ax_t.set_ylabel("learned temperature T")
    ax_w.set_ylabel("learned distillation weight")
    for ax in (ax_t, ax_w):
        ax.set_xlabel("student step")
        ax.legend(fontsize=8)
    fig.suptitle(f"{args.pair}: learned-loss knobs (start: KD, T=4, weight 1), meta lr {args.meta_learning_rate:g}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    (args,) = HfArgumentParser(HorizonArguments).parse_args_into_dataclasses()
    started = time.perf_counter()
    setting = Setting(epochs=args.epochs, teacher_dir=args.teacher_dir)
    path = os.path.join(args.output_dir, "results.json")
    records = []
    for seed in range(args.num_seeds):
        for name in args.variant_list:
            records.append(run_variant(setting, args, name, seed))
            with open(path, "w") as f:
                json.dump({"args": args.__dict__, "records": records}, f, indent=1)
    text = report(records, args)
    print("\n" + text)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    plot(records, args, os.path.join(args.output_dir, "temperature.png"))
    print(f"\nSaved {args.output_dir}/results.json, results.md, temperature.png; "
          f"total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
