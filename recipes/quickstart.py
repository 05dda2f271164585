"""Offline quickstart: distill a tiny CNN on animal-mnist with CE, KD and the learned LKD loss (CPU, minutes).

    python recipes/quickstart.py                       # or: make demo
    python recipes/quickstart.py --methods ce,kd,dist,dkd,kd+fitnet,lkd,lkd+feat --student_epochs 30

1. Loads the teacher committed in ``benchmarks/teacher`` (a 6-conv ``lkd_convnet_teacher``, 96.97% test top-1; run
   from the repository root). ``--train_teacher`` trains one on the 7000 training images instead (cross-entropy,
   ``--teacher_epochs``), cached in ``<output_dir>/teacher`` and reused next time.
2. Trains the student (``lkd_convnet_s4``, ~1.7k parameters) on a fixed 2000-image subset with each method, the
   same optimizer, schedule, augmentation and steps; the validation split chooses among a population's students.
   ``lkd+feat`` adds the learned feature loss on the last stage (``feature_taps=[-1]``); its meta (validation)
   images come out of those 2000.
3. Prints test top-1 and wall time per method and saves each student (``<output_dir>/<method>/model.safetensors``)
   and each learned loss (``<output_dir>/<method>/lkd_loss``, a :class:`lkd_hf.LearnedLoss`, for ``lkd`` and
   ``lkd+feat``), reusable with ``LKDConfig(loss_from=..., freeze_loss=True)``. ``--save_steps N`` also keeps a
   Trainer checkpoint every N steps (``<output_dir>/<method>/checkpoint-<step>``), which ``recipes/learn_loss.py``
   learns a loss from.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import timm
import torch
from safetensors.torch import load_file
from transformers import HfArgumentParser

from lkd_hf import LOSS_DIRNAME, LKDConfig, LKDTrainer, build_datasets


@dataclass
class QuickstartArguments:
    dataset: str = field(default="animal-mnist", metadata={"help": "A bundled dataset, a Hub id or an image folder."})
    teacher_model: str = field(default="lkd_convnet_teacher", metadata={"help": "timm name of the teacher."})
    student_model: str = field(default="lkd_convnet_s4", metadata={"help": "timm name of the student."})
    methods: str = field(
        default="ce,kd,lkd,lkd+feat", metadata={"help": "Comma-separated loss specs (registered names joined by '+')."}
    )
    teacher_dir: str = field(
        default="benchmarks/teacher", metadata={"help": "Folder of the teacher's model.safetensors and teacher.json."}
    )
    train_teacher: bool = field(
        default=False, metadata={"help": "Train the teacher (cached in <output_dir>/teacher) instead of loading it."}
    )
    teacher_epochs: float = field(default=10.0, metadata={"help": "Teacher training epochs (--train_teacher)."})
    student_epochs: float = field(default=20.0, metadata={"help": "Student training epochs (on the subset)."})
    train_subset: int = field(default=2000, metadata={"help": "Training images the students see."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=0.05, metadata={"help": "SGD (Nesterov) learning rate, cosine schedule."})
    lkd_meta_interval: int = field(default=5, metadata={"help": "LKD: a meta step every N student steps."})
    lkd_lookahead_steps: int = field(default=1, metadata={"help": "LKD: virtual steps K of each meta step."})
    lkd_snapshot_strategy: str = field(default="uniform", metadata={"help": "LKD: student a meta step starts from."})
    save_steps: int = field(default=0, metadata={"help": "Keep a Trainer checkpoint every N student steps (0: none)."})
    output_dir: str = field(default="outputs/quickstart", metadata={"help": "Where models and the table go."})
    seed: int = field(default=0, metadata={"help": "Seed of the split and of the training runs."})


def training_config(q: QuickstartArguments, output_dir: str, epochs: float, **fields) -> LKDConfig:
    """The shared recipe: SGD Nesterov 0.9, cosine LR, weight decay 5e-4 — the same for every method. ``fields`` set
    the method's LKDConfig fields and may override the recipe's (e.g. ``logging_steps``)."""
    recipe = dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=q.batch_size,
        per_device_eval_batch_size=256,
        learning_rate=q.learning_rate,
        optim="sgd",
        optim_args="momentum=0.9,nesterov=True",
        weight_decay=5e-4,
        lr_scheduler_type="cosine",
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=q.seed,
        dataloader_num_workers=0,
    )
    return LKDConfig(**{**recipe, **fields})


def load_teacher(q: QuickstartArguments, teacher_dir: str, num_classes: int) -> tuple[torch.nn.Module, float] | None:
    """The teacher saved in ``teacher_dir`` (``model.safetensors`` and ``teacher.json``) and its test top-1, or
    ``None`` when there is none of ``q.teacher_model`` trained on ``q.dataset``."""
    weights, info = os.path.join(teacher_dir, "model.safetensors"), os.path.join(teacher_dir, "teacher.json")
    if not (os.path.exists(weights) and os.path.exists(info)):
        return None
    with open(info) as f:
        saved = json.load(f)
    if saved.get("model") != q.teacher_model or saved.get("dataset") != q.dataset:
        return None
    teacher = timm.create_model(q.teacher_model, num_classes=num_classes)
    teacher.load_state_dict(load_file(weights))
    print(f"Loaded the teacher in {teacher_dir} (test top-1 {saved['accuracy']:.4f}).")
    return teacher, saved["accuracy"]


def get_teacher(q: QuickstartArguments, num_classes: int) -> tuple[torch.nn.Module, float]:
    """The teacher of ``--teacher_dir``; with ``--train_teacher``, the one cached in ``<output_dir>/teacher``, else
    one trained with plain cross-entropy (``loss="ce"``) and cached there.

    Raises:
        ValueError: ``--teacher_dir`` holds no teacher of ``--teacher_model`` trained on ``--dataset``.
    """
    if not q.train_teacher:
        loaded = load_teacher(q, q.teacher_dir, num_classes)
        if loaded is None:
            raise ValueError(
                f"No {q.teacher_model!r} teacher trained on {q.dataset!r} in {q.teacher_dir!r} (model.safetensors and "
                "teacher.json): run from the repository root, give --teacher_dir, or pass --train_teacher."
            )
        return loaded
    teacher_dir = os.path.join(q.output_dir, "teacher")
    loaded = load_teacher(q, teacher_dir, num_classes)
    if loaded is not None:
        return loaded
    teacher = timm.create_model(q.teacher_model, num_classes=num_classes)
    data = build_datasets(q.dataset, teacher, seed=q.seed, augment="light")
    args = training_config(q, teacher_dir, q.teacher_epochs, loss="ce")
    trainer = LKDTrainer(model=teacher, args=args, train_dataset=data["train"], eval_dataset=data["test"])
    print(f"Training the teacher {q.teacher_model} on {len(data['train'])} images ...")
    trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    trainer.save_model()
    with open(os.path.join(teacher_dir, "teacher.json"), "w") as f:
        json.dump({"model": q.teacher_model, "dataset": q.dataset, "accuracy": accuracy}, f)
    return teacher, accuracy


def main(argv: list[str] | None = None) -> None:
    (q,) = HfArgumentParser(QuickstartArguments).parse_args_into_dataclasses(args=argv)
    probe = timm.create_model(q.student_model)
    data = build_datasets(q.dataset, probe, seed=q.seed, augment="light", train_subset=q.train_subset)
    num_classes = data["train"].features["label"].num_classes
    teacher, teacher_accuracy = get_teacher(q, num_classes)

    lkd_fields = dict(
        meta_interval=q.lkd_meta_interval,
        lookahead_steps=q.lkd_lookahead_steps,
        snapshot_strategy=q.lkd_snapshot_strategy,
    )
    rows = []
    for method in [m.strip() for m in q.methods.split(",") if m.strip()]:
        torch.manual_seed(q.seed)
        student = timm.create_model(q.student_model, num_classes=num_classes)
        saving = dict(save_strategy="steps", save_steps=q.save_steps) if q.save_steps else {}
        args = training_config(
            q, os.path.join(q.output_dir, method), q.student_epochs, loss=method, **lkd_fields, **saving
        )
        trainer = LKDTrainer(
            model=student,
            teacher=None if method == "ce" else teacher,
            args=args,
            train_dataset=data["train"],
            eval_dataset=data["validation"],  # where a population chooses its student
        )
        print(f"Distilling {q.student_model} with loss={method!r} ...")
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        accuracy = trainer.evaluate(eval_dataset=data["test"])["eval_accuracy"]
        trainer.save_model()
        saved = [os.path.join(args.output_dir, "model.safetensors")]
        if os.path.isdir(os.path.join(args.output_dir, LOSS_DIRNAME)):
            saved.append(os.path.join(args.output_dir, LOSS_DIRNAME))
        print(f"Saved {' and '.join(saved)}")
        rows.append((method, accuracy, seconds))

    print(f"\nTeacher {q.teacher_model}: test top-1 {teacher_accuracy:.4f}")
    print(f"Students {q.student_model} on {q.train_subset} {q.dataset} images, {q.student_epochs:g} epochs, "
          f"seed {q.seed}:")
    print(f"| {'method':<8} | {'test top-1':>10} | {'wall time (s)':>13} |")
    print(f"|{'-' * 10}|{'-' * 12}|{'-' * 15}|")
    for method, accuracy, seconds in rows:
        print(f"| {method:<8} | {accuracy:>10.4f} | {seconds:>13.1f} |")
    with open(os.path.join(q.output_dir, "results.json"), "w") as f:
        json.dump({"teacher_accuracy": teacher_accuracy, "students": rows}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
