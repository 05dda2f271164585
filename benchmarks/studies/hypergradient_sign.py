"""Which way does the hypergradient push the temperature and the weight, as the horizon K grows? (animal-mnist)

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/studies/hypergradient_sign.py --threads 1

A student of ``--pair`` is trained for the accuracy benchmark's 6 epochs with the DIST that ``dist-tuned`` picked
for it (``--temperature``/``--weight``; the loss is ``LogitLossNet(base="dist")`` with meta learning rate 0, so it
stays exactly that DIST), and its weights and learning rate are recorded at ``--steps``. At each of them, for each
horizon ``K`` of ``--horizons``, ``LKDTrainer.compute_hypergradient`` (the meta step's own estimator, virtual SGD
steps at the student's learning rate of that step, from these weights) is taken ``--draws`` times, each on fresh
training batches and the 200 held-out meta images as the validation batch. Reported: the median
``dL_val/dlog T`` and ``dL_val/dlog w``, and of the biases ``b_beta`` / ``b_gamma`` of the per-sample / per-class
heads (at initialisation uniform scales ``1 + tanh(b)`` of DIST's inter-class / intra-class term), and how many draws
ask for a *higher* value (a negative derivative: the meta optimizer then raises it). The loss network is never
updated.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/: common

import torch  # noqa: E402
from transformers import HfArgumentParser, TrainerCallback  # noqa: E402

from common import Setting, split_list  # noqa: E402


@dataclass
class SignArguments:
    pair: str = field(default="teacher->s16", metadata={"help": "A pair of benchmarks/accuracy.py."})
    temperature: float = field(default=4.0, metadata={"help": "Starting DIST temperature (dist-tuned's pick)."})
    weight: float = field(default=1.0, metadata={"help": "Starting DIST weight (dist-tuned's pick)."})
    steps: str = field(default="20,60,100,140", metadata={"help": "Student steps at which to measure."})
    horizons: str = field(default="1,5,20", metadata={"help": "Horizons K."})
    draws: int = field(default=8, metadata={"help": "Hypergradients per (step, K), each on fresh batches."})
    hypergradient: str = field(default="", metadata={"help": "Estimator (default: the pair's, as in accuracy.py)."})
    meta_val_loss: str = field(default="ce", metadata={"help": "Outer objective: 'ce' or 'calibrated_ce'."})
    seed: int = field(default=0, metadata={"help": "Seed of the student run."})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads."})
    output_dir: str = field(default="outputs/hypergradient_sign", metadata={"help": "Where results.json goes."})


class RecordWeights(TrainerCallback):
    """Keep a copy of the student's weights and learning rate at the given steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps, self.records = steps, {}

    def on_step_end(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        if state.global_step in self.steps:
            self.records[state.global_step] = (copy.deepcopy(model.state_dict()), lr_scheduler.get_last_lr()[0])


def main() -> None:
    (args,) = HfArgumentParser(SignArguments).parse_args_into_dataclasses()
    torch.set_num_threads(args.threads)
    steps, horizons = [int(s) for s in split_list(args.steps)], [int(k) for k in split_list(args.horizons)]
    setting = Setting()
    fields = dict(loss="lkd", lkd_init="dist", dist_temperature=args.temperature, distill_weight=args.weight,
                  meta_learning_rate=0.0, meta_val_source="heldout", lkd_val_fraction=0.1, meta_batch_size=200,
                  snapshot_strategy="current", meta_interval=10**9, lookahead_steps=max(horizons),
                  meta_val_loss=args.meta_val_loss)
    if args.hypergradient:
        fields["hypergradient"] = args.hypergradient
    recorder = RecordWeights(set(steps))
    run_dir = os.path.join(args.output_dir, "run")
    trainer, wall = setting.train_student(args.pair, args.seed, run_dir, fields, [recorder])
    test = setting.top1(trainer, "test")
    print(f"{args.pair}, DIST T={args.temperature:g} w={args.weight:g}: test top-1 {test:.4f} ({wall:.0f} s)")
    student, recent_batches = trainer.student, trainer.loss_learner.recent_batches
    loader = trainer.get_train_dataloader()
    batches = (trainer.prepare_batch(b) for b in itertools.chain.from_iterable(itertools.repeat(loader)))
    loss = trainer.distill_loss
    # at initialisation the heads' biases are uniform scales of DIST's two terms: s_i = 1 + tanh(b) multiplies the
    # inter-class term (beta), u_c = 1 + tanh(b) the intra-class term (gamma)
    knobs = dict(T=("log T", loss.log_temperature), w=("log w", loss.log_weight),  # name: (derivative label, parameter)
                 beta=("b_beta", loss.sample_head.bias), gamma=("b_gamma", loss.class_head.bias))
    index = {name: next(i for i, p in enumerate(trainer.loss_params) if p is knob) for name, (_, knob) in knobs.items()}
    rows = []
    print("| step | student lr | K | " + " | ".join(f"median dL/d{label} | draws for higher {name}"
                                                   for name, (label, _) in knobs.items())
          + " | s per draw |\n|---|---|---|" + "---|---|" * len(knobs) + "---|")
    for step in steps:
        state, lr = recorder.records[step]
        student.load_state_dict(state)
        student.train()
        trainer.args.lookahead_lr = lr
        for k in horizons:
            trainer.args.lookahead_steps = k
            start = time.perf_counter()
            draws = {name: [] for name in knobs}
            for _ in range(args.draws):
                recent_batches.clear()
                recent_batches.extend(next(batches) for _ in range(k))
                grads = trainer.compute_hypergradient(trainer.model).grads
                for name in knobs:
                    draws[name].append(float(grads[index[name]]))
            row = dict(step=step, lr=lr, K=k, **{f"d{name}": d for name, d in draws.items()},
                       seconds=(time.perf_counter() - start) / args.draws)
            rows.append(row)
            cells = " | ".join(f"{statistics.median(d):+.3g} | {sum(g < 0 for g in d)}/{len(d)}"
                               for d in draws.values())
            print(f"| {step} | {lr:.4f} | {k} | {cells} | {row['seconds']:.1f} |", flush=True)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "test_top1": test, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
