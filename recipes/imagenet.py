"""ImageNet distillation: the standard teacher -> student pairs with the standard 100-epoch recipe (docs/recipes.md).

    accelerate launch --multi_gpu --num_processes 8 recipes/imagenet.py --preset resnet34-resnet18 --bf16 true \
        --dataset ILSVRC/imagenet-1k --output_dir outputs/imagenet_r34_r18
    python recipes/imagenet.py --preset resnet50-mobilenetv1 --dataset /data/imagenet   # train/ and val/ folders

Presets (timm names; the teachers are torchvision's weights, as in the CRD / DKD ImageNet tables):
``resnet34-resnet18`` (``resnet34.tv_in1k`` -> ``resnet18``) and ``resnet50-mobilenetv1`` (``resnet50.tv_in1k`` ->
``mobilenetv1_100``). The teacher loads timm's pretrained weights by default (Hub), or local ones with
``--teacher_checkpoint``. Preprocessing is timm's, from the teacher's data config (224 px, crop 0.875, bilinear,
ImageNet mean/std): ``create_transform(is_training=True)`` (random resized crop, flip; ``--color_jitter``) for
training, its resize + centre crop for evaluation.
Defaults: 100 epochs, SGD momentum 0.9, LR 0.1 per 256 images (linear scaling), weight decay 1e-4, LR x0.1 at
epochs 30/60/90 (``--lr_scheduler_type cosine`` for cosine), global batch 256. Every ``LKDConfig`` / Trainer field is
accepted (``--loss kd``, ``--bf16 true``, ...; ``--help_all`` lists them). Top-1/top-5 on the test split (the
dataset's validation split) are written to ``<output_dir>/eval_results.json``.
"""

from __future__ import annotations

import os

from collections.abc import Sequence
from dataclasses import dataclass, field

import timm
from timm.data import create_transform
from torchvision import transforms as T

from common import (
    SHARED_TRAINER_DEFAULTS,
    RecipeArguments,
    TeacherWeightsError,
    announce,
    create_teacher,
    load_splits,
    parse_recipe_args,
    resolve_pair,
    train_and_evaluate,
    training_config,
    uses_teacher,
)
from lkd_hf import ConvertMode, dataset_num_classes, model_num_classes, resolve_data_config

FOLDER_LAYOUT = "<dir>/train/<class>/<image> and <dir>/val/<class>/<image> (or validation/)"
"""The image-folder layout the recipe reads (``--dataset <dir>``)."""

PRESETS: dict[str, tuple[str, str]] = {
    "resnet34-resnet18": ("resnet34.tv_in1k", "resnet18"),
    "resnet50-mobilenetv1": ("resnet50.tv_in1k", "mobilenetv1_100"),
}

TRAINER_DEFAULTS = dict(
    SHARED_TRAINER_DEFAULTS,
    num_train_epochs=100,
    weight_decay=1e-4,
    per_device_eval_batch_size=128,
    logging_steps=100,
    dataloader_num_workers=min(8, os.cpu_count() or 1),  # more workers than cores: a warning per loader
)
"""``LKDConfig`` defaults of the recipe (the learning rate, batch split and schedule: see common.training_config)."""


@dataclass
class ImageNetArguments(RecipeArguments):
    preset: str = field(default="resnet34-resnet18", metadata={"help": "Teacher -> student pair.",
                                                               "choices": list(PRESETS)})
    teacher_pretrained: bool = field(
        default=True, metadata={"help": "Load timm's pretrained teacher weights (Hub or the local HF cache)."}
    )
    dataset: str = field(
        default="ILSVRC/imagenet-1k",
        metadata={"help": f"Hub dataset id or image folder: {FOLDER_LAYOUT}."},
    )
    test_split: str | None = field(
        default="validation", metadata={"help": "Source split evaluated (imagenet-1k's 'test' split is unlabelled)."}
    )
    val_fraction: float = field(
        default=0.02, metadata={"help": "Fraction of train held out as LKD's meta set (0.02: ~25.6k images)."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Input size (default: the teacher's, 224)."})
    color_jitter: float = field(
        default=0.0,
        metadata={"help": "Colour jitter of timm's training transform (0: none, as in the torchvision recipe of the "
                  "KD benchmarks; timm's own default is 0.4)."},
    )
    lr_decay_epochs: list[float] = field(
        default_factory=lambda: [30.0, 60.0, 90.0],
        metadata={"help": "Step schedule: LR x lr_decay_rate at these epochs (ignored with --lr_scheduler_type)."},
    )


def check_dataset(dataset: str) -> None:
    """Check that ``--dataset`` is an image folder of :data:`FOLDER_LAYOUT` or looks like a Hub dataset id.

    Raises:
        ValueError: a missing folder, or a folder without ``train/`` and ``val/`` (or ``validation/``); the
            message names :data:`FOLDER_LAYOUT`.
    """
    if os.path.isdir(dataset):
        splits = {entry.name for entry in os.scandir(dataset) if entry.is_dir()}
        if "train" not in splits or not splits & {"val", "validation"}:
            raise ValueError(
                f"The image folder {dataset!r} holds {sorted(splits) or 'no folders'}: --dataset takes a Hub dataset "
                f"id or an image folder {FOLDER_LAYOUT}."
            )
    elif dataset.startswith((os.sep, ".", "~")) or dataset.count("/") > 1:
        raise ValueError(f"No folder {dataset!r}: --dataset takes a Hub dataset id or an image folder {FOLDER_LAYOUT}.")


def data_config(teacher_name: str, image_size: int | None) -> dict:
    """timm data config (input size, interpolation, crop, mean/std) of the teacher's pretrained weights."""
    config = timm.models.get_pretrained_cfg(teacher_name).to_dict()
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    return resolve_data_config(config)


def transforms(config: dict, color_jitter: float = 0.0) -> tuple[T.Compose, T.Compose]:
    """timm's ImageNet training (random resized crop, horizontal flip, optional colour jitter) and evaluation
    (resize, centre crop) transforms, after converting every image to RGB (ImageNet holds grayscale and CMYK JPEGs)."""
    rgb = ConvertMode("RGB")
    train = T.Compose([rgb, create_transform(**config, is_training=True, color_jitter=color_jitter or None)])
    evaluation = T.Compose([rgb, create_transform(**config, is_training=False)])
    return train, evaluation


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the recipe; returns the test metrics (``eval_accuracy`` is top-1)."""
    run, values = parse_recipe_args(ImageNetArguments, TRAINER_DEFAULTS, argv)
    check_dataset(run.dataset)
    teacher_name, student_name = resolve_pair(run, PRESETS)
    distill = uses_teacher(values["loss"])
    hub_teacher = distill and run.teacher_pretrained and run.teacher_checkpoint is None
    teacher = create_teacher(teacher_name, pretrained=True) if hub_teacher else None  # fail before loading data
    args = training_config(run, values, student_name)

    data = load_splits(run, args, *transforms(data_config(teacher_name, run.image_size), run.color_jitter))
    num_classes = dataset_num_classes(data["train"])
    if teacher is not None and model_num_classes(teacher) != num_classes:
        raise ValueError(
            f"The pretrained teacher {teacher_name!r} predicts {model_num_classes(teacher)} classes, the dataset has "
            f"{num_classes}: fine-tune a teacher on it and pass --teacher_checkpoint."
        )
    if distill and teacher is None:
        teacher = create_teacher(teacher_name, num_classes=num_classes, checkpoint=run.teacher_checkpoint)
        if run.teacher_checkpoint is None and args.should_log:
            print(f"warning: the teacher {teacher_name!r} is randomly initialised (--teacher_pretrained false).")
    student = timm.create_model(student_name, num_classes=num_classes)
    announce(args, teacher_name if distill else None, student_name, data, run.dataset)
    return train_and_evaluate(run, args, student, teacher, data)


if __name__ == "__main__":
    try:
        main()
    except (TeacherWeightsError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
