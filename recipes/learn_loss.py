"""Learn a distillation loss once, from frozen student snapshots, and save it for reuse (no student training).

    python recipes/quickstart.py --methods kd --save_steps 50     # the earlier run: outputs/quickstart/kd/checkpoint-*
    python recipes/learn_loss.py --student_checkpoints outputs/quickstart/kd --teacher_weights benchmarks/teacher \
        --meta_steps 200 --output_dir outputs/learned_loss

1. Seeds LKD's snapshot pool with the student checkpoints of an earlier run: the :data:`CHECKPOINT_LAYOUT` (e.g. of
   a ``loss="kd"`` run with ``save_strategy="steps"``, such as the quickstart's with ``--save_steps``).
2. Runs ``--meta_steps`` meta steps (:meth:`lkd_hf.LKDTrainer.learn_loss`): each starts from a snapshot drawn
   uniformly from the pool, takes ``lookahead_steps`` virtual student steps on training batches, and moves the loss
   network along the hypergradient of the (temperature-scaled, ``meta_val_loss``) validation cross-entropy (on the
   dataset's ``validation`` split).
3. Saves the learned loss (a :class:`lkd_hf.LearnedLoss`: config, weights, model card) to ``<output_dir>/lkd_loss``.
   Reuse it frozen in another run (costs about as much as KD)::

       LKDConfig(..., loss_from="outputs/learned_loss/lkd_loss", freeze_loss=True)

Every ``LKDConfig`` field is accepted (e.g. ``--hypergradient finite_difference --lookahead_steps 5``; ``--help_all``
lists them).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import timm
from safetensors.torch import load_file
from transformers import HfArgumentParser

from common import concise_help
from lkd_hf import LOSS_DIRNAME, LKDConfig, LKDTrainer, build_datasets, checkpoint_step, dataset_num_classes


@dataclass
class LearnLossArguments:
    student_checkpoints: list[str] = field(
        metadata={"help": "Trainer checkpoint dirs of the student (or dirs holding checkpoint-* dirs)."}
    )
    student_model: str = field(default="lkd_convnet_s4", metadata={"help": "timm name of the student."})
    teacher_model: str = field(default="lkd_convnet_teacher", metadata={"help": "timm name of the teacher."})
    teacher_weights: str | None = field(
        default="benchmarks/teacher",
        metadata={"help": "Folder with the teacher's model.safetensors ('none': timm's pretrained weights, Hub)."},
    )
    dataset: str = field(default="animal-mnist", metadata={"help": "A bundled dataset, a Hub id or an image folder."})
    train_subset: int | None = field(default=None, metadata={"help": "Use only this many training images."})
    meta_steps: int = field(default=200, metadata={"help": "Meta steps (loss network updates)."})


CHECKPOINT_LAYOUT = (
    "Trainer checkpoint folders of the student (<run>/checkpoint-<step>/model.safetensors), or run folders holding "
    "them (<run>)"
)
EARLIER_STEP = (
    "python recipes/quickstart.py --methods kd --save_steps 50 (then: --student_checkpoints outputs/quickstart/kd)"
)


def expand_checkpoints(paths: list[str]) -> list[str]:
    """Checkpoint folders, with a run folder replaced by its ``checkpoint-*`` folders (sorted by step).

    Raises:
        ValueError: a path holds no student checkpoint (its message names :data:`CHECKPOINT_LAYOUT` and the earlier
            run that makes one).
    """
    if not paths:
        raise ValueError(f"No student checkpoints given: --student_checkpoints takes {CHECKPOINT_LAYOUT}.")
    found = []
    for path in paths:
        nested = glob.glob(os.path.join(path, "checkpoint-*"))
        checkpoints = sorted(nested, key=checkpoint_step) if nested else [path]
        missing = [c for c in checkpoints if not os.path.isfile(os.path.join(c, "model.safetensors"))]
        if missing:
            raise ValueError(
                f"No student checkpoint in {missing[0]!r}: --student_checkpoints takes {CHECKPOINT_LAYOUT}. Make "
                f"them with an earlier run, e.g. {EARLIER_STEP}."
            )
        found.extend(checkpoints)
    return found


def main(argv: list[str] | None = None) -> str:
    """Run the recipe; returns the directory the learned loss was saved to."""
    parser = concise_help(HfArgumentParser((LearnLossArguments, LKDConfig)), LearnLossArguments)
    parser.set_defaults(freeze_loss=False)  # the recipe learns the loss, whatever it starts from
    run, args = parser.parse_args_into_dataclasses(args=argv)
    args.snapshot_checkpoints = expand_checkpoints(run.student_checkpoints)

    probe = timm.create_model(run.student_model)
    data = build_datasets(run.dataset, probe, seed=args.seed, augment="light", train_subset=run.train_subset)
    num_classes = dataset_num_classes(data["train"])
    student = timm.create_model(run.student_model, num_classes=num_classes)
    student.load_state_dict(load_file(os.path.join(args.snapshot_checkpoints[-1], "model.safetensors")))
    hub_weights = run.teacher_weights in (None, "none")
    teacher = timm.create_model(run.teacher_model, num_classes=num_classes, pretrained=hub_weights)
    if not hub_weights:
        weights = os.path.join(run.teacher_weights, "model.safetensors")
        if not os.path.isfile(weights):
            raise ValueError(f"No {weights!r}: --teacher_weights takes a folder with the teacher's model.safetensors.")
        teacher.load_state_dict(load_file(weights))

    trainer = LKDTrainer(
        model=student, teacher=teacher, args=args, train_dataset=data["train"], meta_dataset=data["validation"]
    )
    snapshots = len(trainer.loss_learner.snapshot_pool)
    print(f"Learning the loss from {snapshots} student snapshots, {run.meta_steps} meta steps ...")
    logs = trainer.learn_loss(run.meta_steps)
    out = os.path.join(args.output_dir, LOSS_DIRNAME)
    trainer.learned_loss(dataset=run.dataset).save_pretrained(out)
    print(f"Last statistics: {logs}")
    print(f"Saved the learned loss to {out}; reuse it with LKDConfig(loss_from={out!r}, freeze_loss=True).")
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
