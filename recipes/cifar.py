"""CIFAR-100 distillation: the CRD benchmark pairs with the standard 240-epoch recipe (docs/recipes.md).

    python recipes/cifar.py --preset resnet32x4-resnet8x4 --output_dir outputs/cifar_r32x4_r8x4
    python recipes/cifar.py --preset wrn40_2-wrn16_2 --teacher_checkpoint outputs/wrn40_2/model.safetensors
    accelerate launch recipes/cifar.py --preset resnet56-resnet20 --loss kd

Presets (lkd_hf's CIFAR nets, registered in timm): ``resnet32x4-resnet8x4``, ``wrn40_2-wrn16_2``,
``wrn40_2-wrn40_1``, ``resnet56-resnet20``, ``resnet110-resnet32``. There are no pretrained timm CIFAR teachers: pass
``--teacher_checkpoint`` (a state-dict file, or a directory with ``model.safetensors`` such as the output of a
``--loss ce`` run of this recipe), or the teacher is first trained here with cross-entropy and the same recipe, into
``<output_dir>/teacher`` (reused when the recipe runs again with the same output_dir).
Defaults (CRD): 240 epochs, SGD momentum 0.9, LR 0.05 at batch 64 (scaled linearly to other global batches),
weight decay 5e-4, LR x0.1 at epochs 150/180/210, batch 64, random crop 32 (padding 4) + horizontal flip.
Data: ``uoft-cs/cifar100`` (Hub; fine labels) or an image folder. Every ``LKDConfig`` / Trainer field is accepted
(``--help_all`` lists them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import timm
from torchvision import transforms as T
from transformers.utils import SAFE_WEIGHTS_NAME

from common import (
    SHARED_TRAINER_DEFAULTS,
    RecipeArguments,
    announce,
    create_teacher,
    load_splits,
    parse_recipe_args,
    resolve_pair,
    train_and_evaluate,
    training_config,
    uses_teacher,
)
from lkd_hf import ConvertMode, dataset_num_classes, image_transform, resolve_data_config

PRESETS: dict[str, tuple[str, str]] = {
    "resnet32x4-resnet8x4": ("cifar_resnet32x4", "cifar_resnet8x4"),
    "wrn40_2-wrn16_2": ("cifar_wrn_40_2", "cifar_wrn_16_2"),
    "wrn40_2-wrn40_1": ("cifar_wrn_40_2", "cifar_wrn_40_1"),
    "resnet56-resnet20": ("cifar_resnet56", "cifar_resnet20"),
    "resnet110-resnet32": ("cifar_resnet110", "cifar_resnet32"),
}

TRAINER_DEFAULTS = dict(
    SHARED_TRAINER_DEFAULTS,
    num_train_epochs=240,
    weight_decay=5e-4,
    per_device_eval_batch_size=256,
    logging_steps=50,
    dataloader_num_workers=min(4, os.cpu_count() or 1),  # more workers than cores: a warning per loader
)
"""``LKDConfig`` defaults of the recipe (the learning rate, batch split and schedule: see common.training_config)."""


@dataclass
class CifarArguments(RecipeArguments):
    preset: str = field(default="resnet32x4-resnet8x4", metadata={"help": "Teacher -> student pair.",
                                                                  "choices": list(PRESETS)})
    dataset: str = field(default="uoft-cs/cifar100", metadata={"help": "Hub dataset id or image folder."})
    global_batch_size: int = field(default=64, metadata={"help": "Training batch over all processes."})
    base_learning_rate: float = field(default=0.05, metadata={"help": "Learning rate at base_batch_size."})
    base_batch_size: int = field(default=64, metadata={"help": "Batch size of base_learning_rate."})
    lr_decay_epochs: list[float] = field(
        default_factory=lambda: [150.0, 180.0, 210.0],
        metadata={"help": "Step schedule: LR x lr_decay_rate at these epochs (ignored with --lr_scheduler_type)."},
    )


def transforms(student_name: str) -> tuple[T.Compose, T.Compose]:
    """The standard CIFAR training transform (random crop with 4-pixel padding, horizontal flip) and the plain
    evaluation transform, normalised with the student's data config (CIFAR-100 mean/std, 32x32)."""
    config = resolve_data_config(timm.models.get_pretrained_cfg(student_name).to_dict())
    size = config["input_size"][1:]
    train = T.Compose([
        ConvertMode("RGB"), T.Resize(size), T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
        T.Normalize(config["mean"], config["std"]),
    ])
    return train, image_transform(config, is_training=False)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the student's test metrics (``eval_accuracy`` is top-1)."""
    run, values = parse_recipe_args(CifarArguments, TRAINER_DEFAULTS, argv)
    teacher_name, student_name = resolve_pair(run, PRESETS)
    teacher, distill = None, uses_teacher(values["loss"])
    args = training_config(run, values, student_name)
    data = load_splits(run, args, *transforms(student_name))
    num_classes = dataset_num_classes(data["train"])

    teacher_dir = os.path.join(args.output_dir, "teacher")
    if distill and run.teacher_checkpoint is None and os.path.isfile(os.path.join(teacher_dir, SAFE_WEIGHTS_NAME)):
        run.teacher_checkpoint = teacher_dir
    if distill and run.teacher_checkpoint is not None:
        teacher = create_teacher(teacher_name, num_classes=num_classes, checkpoint=run.teacher_checkpoint)
    elif distill:
        teacher = timm.create_model(teacher_name, num_classes=num_classes)
        teacher_args = training_config(
            run, values, teacher_name, output_dir=teacher_dir, loss="ce", resume_from_checkpoint=None
        )
        announce(teacher_args, None, teacher_name, data, run.dataset)
        train_and_evaluate(run, teacher_args, teacher, None, data)

    student = timm.create_model(student_name, num_classes=num_classes)
    announce(args, teacher_name if distill else None, student_name, data, run.dataset)
    return train_and_evaluate(run, args, student, teacher, data)


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
