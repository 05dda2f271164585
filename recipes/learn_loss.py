"""Learn a distillation loss once, from frozen student snapshots, and save it for reuse (no student training).

    python recipes/learn_loss.py \
        --student_checkpoints outputs/kd_run/checkpoint-100 outputs/kd_run/checkpoint-200 \
        --teacher_weights outputs/quickstart/teacher --meta_steps 200 --output_dir outputs/learned_loss

1. Seeds LKD's snapshot pool with the student checkpoints of an earlier run (``Trainer`` checkpoint dirs, e.g. of a
   ``loss="kd"`` run with ``save_strategy="steps"``); a directory that holds ``checkpoint-*`` dirs is expanded.
2. Runs ``--meta_steps`` meta steps (:meth:`lkd_hf.LKDTrainer.learn_loss`): each starts from a snapshot drawn
   uniformly from the pool, takes ``lookahead_steps`` virtual student steps on training batches, and moves the loss
   network along the hypergradient of the (temperature-scaled, ``meta_val_loss``) validation cross-entropy (on the
   dataset's ``validation`` split).
3. Saves the learned loss (a :class:`lkd_hf.LearnedLoss`: config, weights, model card) to ``<output_dir>/lkd_loss``.
   Reuse it frozen in another run (costs about as much as KD)::

       LKDConfig(..., loss_from="outputs/learned_loss/lkd_loss", freeze_loss=True)

Every ``LKDConfig`` field is accepted (e.g. ``--hypergradient finite_difference --lookahead_steps 5``).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import timm
from safetensors.torch import load_file
from transformers import HfArgumentParser

from lkd_hf import LOSS_DIRNAME, LKDConfig, LKDTrainer, build_datasets, checkpoint_step, dataset_num_classes


@dataclass
class LearnLossArguments:
    student_checkpoints: list[str] = field(
        metadata={"help": "Trainer checkpoint dirs of the student (or dirs holding checkpoint-* dirs)."}
    )
    student_model: str = field(default="lkd_convnet_s4", metadata={"help": "timm name of the student."})
    teacher_model: str = field(default="lkd_convnet_teacher", metadata={"help": "timm name of the teacher."})
    teacher_weights: str | None = field(
        default=None,
        metadata={"help": "Dir with the teacher's model.safetensors; default: timm pretrained weights (Hub)."},
    )
    dataset: str = field(default="animal-mnist", metadata={"help": "A bundled dataset, a Hub id or an image folder."})
    train_subset: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    meta_steps: int = field(default=200, metadata={"help": "Meta steps (loss network updates)."})


def expand_checkpoints(paths: list[str]) -> list[str]:
    """Checkpoint dirs, with a run dir replaced by its ``checkpoint-*`` dirs (sorted by step)."""
    found = []
    for path in paths:
        nested = glob.glob(os.path.join(path, "checkpoint-*"))
        found.extend(sorted(nested, key=checkpoint_step) if nested else [path])
    if not found:
        raise ValueError("No student checkpoints given.")
    return found


def main(argv: list[str] | None = None) -> str:
    """Run the recipe; returns the directory the learned loss was saved to."""
    parser = HfArgumentParser((LearnLossArguments, LKDConfig))
    parser.set_defaults(freeze_loss=False)  # the recipe learns the loss, whatever it starts from
    run, args = parser.parse_args_into_dataclasses(args=argv)
    args.snapshot_checkpoints = expand_checkpoints(run.student_checkpoints)

    probe = timm.create_model(run.student_model)
    data = build_datasets(run.dataset, probe, seed=args.seed, augment="light", train_subset=run.train_subset)
    num_classes = dataset_num_classes(data["train"])
    student = timm.create_model(run.student_model, num_classes=num_classes)
    student.load_state_dict(load_file(os.path.join(args.snapshot_checkpoints[-1], "model.safetensors")))
    teacher = timm.create_model(run.teacher_model, num_classes=num_classes, pretrained=run.teacher_weights is None)
    if run.teacher_weights is not None:
        teacher.load_state_dict(load_file(os.path.join(run.teacher_weights, "model.safetensors")))

    trainer = LKDTrainer(
        model=student, teacher=teacher, args=args, train_dataset=data["train"], meta_dataset=data["validation"]
    )
    print(f"Learning the loss from {len(trainer.loss_learner.snapshot_pool)} student snapshots, {run.meta_steps} meta steps ...")
    logs = trainer.learn_loss(run.meta_steps)
    out = os.path.join(args.output_dir, LOSS_DIRNAME)
    trainer.learned_loss(dataset=run.dataset).save_pretrained(out)
    print(f"Last statistics: {logs}")
    print(f"Saved the learned loss to {out}; reuse it with LKDConfig(loss_from={out!r}, freeze_loss=True).")
    return out


if __name__ == "__main__":
    main()
