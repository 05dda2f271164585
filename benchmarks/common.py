"""Shared parts of the benchmarks: the accuracy benchmark's setting, one student run, mean ± std, a worker pool.

* :data:`PAIRS` and :class:`Setting`: the setting of ``accuracy.py`` that the studies reuse (bundled animal-mnist with
  its fixed seed-0 split, the committed teacher, the teacher -> student pairs and the student recipe);
* :meth:`Setting.train_student` and :meth:`Setting.scores`: one seeded student run and what its record keeps;
* :data:`LOSS_KNOBS` and :func:`config_fields`: the knobs of single losses, given to ``LKDConfig.loss_kwargs``;
* :func:`mean_std` and :func:`format_mean_std`: statistics over seeds;
* :class:`WorkerPool`: independent runs on spawned processes, results as they finish.

The benchmarks import this module as ``common``: run them as scripts from the repository root
(``python benchmarks/accuracy.py``), which puts ``benchmarks/`` on ``sys.path``; the studies of
``benchmarks/studies/`` put it there themselves.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from transformers import PrinterCallback, TrainerCallback

from lkd_hf import LKDConfig, LKDTrainer, parse_loss_spec
from roles import SHARED, corruption, parse_key
from settings import IMBALANCE_RATIOS, TEACHER_DIRS, balanced_epochs, balanced_top1, build_data
from settings import teacher_dir as committed_teacher_dir

DATASET = "animal-mnist"
NUM_CLASSES = 10
TEACHER_MODEL = "lkd_convnet_teacher"
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def repository_path(*parts: str) -> str:
    """A path inside the repository, relative to the working directory (so the records of a run from the repository
    root hold paths relative to it, not the machine's)."""
    return os.path.relpath(os.path.join(REPOSITORY, *parts))


# the committed teacher (96.97% test top-1), trained once with cross-entropy (10 epochs of the recipe below); the
# other datasets' teachers (TEACHER_DIRS, settings.py) come from benchmarks/second_dataset.py
BUNDLED_TEACHER_DIR = TEACHER_DIRS[DATASET]
# The student recipe of every run besides the epochs, batch size, learning rate and seed (the quickstart's recipe):
# SGD (Nesterov, momentum 0.9), cosine schedule, weight decay 5e-4, CPU, no saving, no progress bars.
RECIPE = dict(optim="sgd", optim_args="momentum=0.9,nesterov=True", weight_decay=5e-4, lr_scheduler_type="cosine",
              per_device_eval_batch_size=256, logging_steps=50, save_strategy="no", report_to="none", use_cpu=True,
              dataloader_num_workers=0, disable_tqdm=True, log_level="warning")


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair: the timm student (created with ``student_kwargs``) and its hypergradient."""

    student: str
    student_kwargs: dict = field(default_factory=dict)
    hypergradient: str = "unrolled"  # "finite_difference" for students without double backward


PAIRS: dict[str, Pair] = {
    "teacher->s4": Pair("lkd_convnet_s4"),
    "teacher->s16": Pair("lkd_convnet_s16"),
    "teacher->resnet8": Pair("cifar_resnet8", {"in_chans": 1}),
}


# Options of single losses that the methods, grids and records name as knobs, by the name of LKDConfig's deprecated
# per-loss field: the option each sets, per logit loss that takes it (LKDConfig.loss_kwargs).
LOSS_KNOBS: dict[str, dict[str, str]] = {
    "dist_temperature": {"dist": "temperature", "lkd": "dist_temperature"},
    "dist_beta": {"dist": "beta", "lkd": "dist_beta"},
    "dist_gamma": {"dist": "gamma", "lkd": "dist_gamma"},
    "dkd_alpha": {"dkd": "alpha"},
    "dkd_beta": {"dkd": "beta"},
    "dkd_warmup_fraction": {"dkd": "warmup_fraction"},
    "la_tau": {"la": "tau"},
    "la_class_prior": {"la": "class_prior"},
    "ls_temperature": {"ls": "temperature"},
    "ctkd_lambda_max": {"ctkd": "lambda_max"},
}


def config_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The ``LKDConfig`` fields of a method's ``fields``: its :data:`LOSS_KNOBS` given to its logit loss through
    ``loss_kwargs``.

    Args:
        fields: ``LKDConfig`` fields and loss knobs; ``loss`` is required when a knob is set.
    """
    knobs = {name: value for name, value in fields.items() if name in LOSS_KNOBS}
    config = {name: value for name, value in fields.items() if name not in LOSS_KNOBS}
    if knobs:
        logit = parse_loss_spec(fields["loss"]).logit
        unknown = sorted(name for name in knobs if logit not in LOSS_KNOBS[name])
        if unknown:
            raise ValueError(f"Loss {fields['loss']!r} takes no knob(s) {', '.join(unknown)}.")
        loss_kwargs = dict(config.get("loss_kwargs") or {})
        loss_kwargs[logit] = {**loss_kwargs.get(logit, {}), **{LOSS_KNOBS[n][logit]: v for n, v in knobs.items()}}
        config["loss_kwargs"] = loss_kwargs
    return config


def split_list(text: str) -> list[str]:
    """The non-empty, stripped items of a comma-separated list.

    Args:
        text: e.g. ``"ce, kd,lkd"``.
    """
    return [x.strip() for x in text.split(",") if x.strip()]


def run_dir(root: str, pair: str, name: str, seed: int) -> str:
    """The output directory of one run: ``<root>/runs/<pair>/<name>/seed<seed>`` (``->`` spelled ``_to_``).

    Args:
        root: the benchmark's output directory.
        pair: a key of :data:`PAIRS`.
        name: the method or variant.
        seed: the run's seed.
    """
    return os.path.join(root, "runs", pair.replace("->", "_to_"), name, f"seed{seed}")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value).

    Args:
        values: one value per seed (at least one).
    """
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: list[float]) -> str:
    """``"mean ± std"`` with two decimals (see :func:`mean_std`).

    Args:
        values: one value per seed (at least one).
    """
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def save_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON, creating its folder.

    Args:
        path: the file.
        data: JSON-serialisable records.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


class Setting:
    """The accuracy benchmark's setting: data, teacher and student recipe, the same for every run.

    Data: a dataset in a setting (a benchmark key of ``roles.py``, e.g. ``"mnist-5k"`` or ``"letters/noise40"``),
    the fixed split of ``settings.build_data(dataset, seed=split_seed)``; students train on its first
    ``train_subset`` training images (made long-tailed or noisy by the setting) with ``augment="light"``. All images
    are transformed for the teacher (teacher and student see the same batch; every student here runs on that input).

    Args:
        epochs: student epochs of every run (a long-tailed set: scaled up to the steps of the balanced set it is cut
            from).
        train_subset: training images of every student.
        batch_size: training batch size.
        learning_rate: SGD learning rate (cosine schedule).
        split_seed: seed of the train/validation/test split (and of a teacher trained here).
        teacher_dir: the cached teacher (``model.safetensors`` and ``teacher.json``); a directory without one gets a
            teacher trained there first (:meth:`load_teacher`).
        teacher_epochs: epochs of a teacher trained here.
        dataset: a benchmark key ``<dataset>[/<setting>]``; its committed teacher (``settings.teacher_dir``) is the
            default.
    """

    def __init__(self, epochs: float = 6.0, train_subset: int = 2000, batch_size: int = 64, learning_rate: float = 0.05,
                 split_seed: int = 0, teacher_dir: str | None = None, teacher_epochs: float = 10.0,
                 dataset: str = DATASET) -> None:
        self.dataset = dataset
        self.dataset_name, self.setting_name = parse_key(dataset)
        teacher_dir = teacher_dir if teacher_dir is not None else committed_teacher_dir(dataset)
        self.epochs, self.batch_size, self.learning_rate = epochs, batch_size, learning_rate
        self.split_seed, self.teacher_dir, self.teacher_epochs = split_seed, teacher_dir, teacher_epochs
        self.teacher, self.teacher_accuracy = self.load_teacher()
        # setting_info: what the setting did to the training set (per-class counts, the fraction of flipped labels)
        self.data, self.setting_info = build_data(dataset, self.teacher, split_seed, train_subset)
        if "balanced_images" in self.setting_info:  # a long tail trains the steps of the balanced set it is cut from
            self.epochs = self.setting_info["epochs"] = balanced_epochs(epochs, self.setting_info)

    def config(self, output_dir: str, epochs: float, seed: int, **fields: Any) -> LKDConfig:
        """The ``LKDConfig`` of a run: :data:`RECIPE` with this setting's batch size and learning rate.

        Args:
            output_dir: the run's output directory.
            epochs: training epochs.
            seed: the run's seed.
            **fields: the method's ``LKDConfig`` fields and loss knobs (:func:`config_fields`); they may override
                the recipe's.
        """
        recipe = dict(RECIPE, output_dir=output_dir, num_train_epochs=epochs, seed=seed,
                      per_device_train_batch_size=self.batch_size, learning_rate=self.learning_rate)
        return LKDConfig(**config_fields({**recipe, **fields}))

    def load_teacher(self) -> tuple[torch.nn.Module, float]:
        """The cached teacher of ``teacher_dir`` and its test top-1. Without one (or with one of another model or
        dataset), a teacher is trained there first: a ``ce`` run of this recipe on the whole training split, for
        ``teacher_epochs``, seeded by ``split_seed``. The cache is ``model.safetensors`` and ``teacher.json``
        (model, dataset, test top-1), the layout of the quickstart recipe's cached teacher. The teachers of the ``weak``
        and ``-shared`` settings are never trained here (``second_dataset.py --weak`` / ``--shared``)."""
        teacher = timm.create_model(TEACHER_MODEL, num_classes=NUM_CLASSES)
        weights = os.path.join(self.teacher_dir, "model.safetensors")
        info_file = os.path.join(self.teacher_dir, "teacher.json")
        info = {}
        if os.path.exists(weights) and os.path.exists(info_file):
            with open(info_file) as f:
                info = json.load(f)
        if info.get("model") == TEACHER_MODEL and info.get("dataset") == self.dataset_name:
            teacher.load_state_dict(load_file(weights))  # float16 weights are cast to the model's float32
            print(f"Reusing the cached teacher in {self.teacher_dir} (test top-1 {info['accuracy']:.4f}).")
            return teacher, info["accuracy"]
        if self.setting_name == "weak" or self.setting_name.endswith(SHARED):
            option = "--weak" if self.setting_name == "weak" else f"--shared {corruption(self.setting_name)}"
            raise FileNotFoundError(f"No {self.setting_name} teacher of {self.dataset_name} in {self.teacher_dir}: run "
                                    f"python benchmarks/second_dataset.py --dataset {self.dataset_name} {option}")
        data, _ = build_data(self.dataset_name, teacher, self.split_seed, None)
        print(f"Training the teacher {TEACHER_MODEL} on {len(data['train'])} images into {self.teacher_dir} ...")
        config = self.config(self.teacher_dir, self.teacher_epochs, self.split_seed, loss="ce", disable_tqdm=False)
        trainer, _ = self._fit(teacher, None, data, config)
        accuracy = trainer.evaluate(eval_dataset=data["test"])["eval_accuracy"]
        info = {"model": TEACHER_MODEL, "dataset": self.dataset_name, "accuracy": accuracy}
        trainer.save_model()
        with open(info_file, "w") as f:
            json.dump(info, f)
        return teacher, info["accuracy"]

    def train_student(
        self,
        pair: str,
        seed: int,
        output_dir: str,
        fields: dict[str, Any],
        callbacks: list[TrainerCallback] | None = None,
        setup: Callable[[LKDTrainer], None] | None = None,
        meta_on_validation: bool = False,
    ) -> tuple[LKDTrainer, float]:
        """Train a fresh student of ``pair``, seeded, for ``epochs``; return the trainer and the wall seconds of
        ``trainer.train()``.

        Args:
            pair: a key of :data:`PAIRS`.
            seed: the seed of the student's initialisation and of the run.
            output_dir: the run's output directory.
            fields: the method's ``LKDConfig`` fields and loss knobs (``loss`` required; the teacher is left out for
                ``"ce"``).
            callbacks: Trainer callbacks.
            setup: called with the trainer before training.
            meta_on_validation: the validation split is the learned loss's meta set (the split where the tuned
                methods pick their knobs and a population its student).
        """
        spec = PAIRS[pair]
        torch.manual_seed(seed)
        student = timm.create_model(spec.student, num_classes=NUM_CLASSES, **spec.student_kwargs)
        config = self.config(output_dir, self.epochs, seed, **fields)
        teacher = None if fields["loss"] == "ce" else self.teacher
        return self._fit(student, teacher, self.data, config, callbacks, setup, meta_on_validation)

    @staticmethod
    def _fit(model: torch.nn.Module, teacher: torch.nn.Module | None, data: Any, config: LKDConfig,
             callbacks: list[TrainerCallback] | None = None,
             setup: Callable[[LKDTrainer], None] | None = None,
             meta_on_validation: bool = False) -> tuple[LKDTrainer, float]:
        """Train ``model`` on ``data["train"]`` (``data["validation"]`` is the trainer's evaluation dataset, where a
        population chooses its student, and with ``meta_on_validation`` its meta set); the trainer and its training
        seconds."""
        trainer = LKDTrainer(model=model, teacher=teacher, args=config, train_dataset=data["train"],
                             eval_dataset=data["validation"], callbacks=callbacks,
                             meta_dataset=data["validation"] if meta_on_validation else None)
        trainer.remove_callback(PrinterCallback)
        if setup is not None:
            setup(trainer)
        start = time.perf_counter()
        trainer.train()
        return trainer, time.perf_counter() - start

    def top1(self, trainer: LKDTrainer, split: str) -> float:
        """The top-1 accuracy of the trained student on a split.

        Args:
            trainer: the run's trainer.
            split: ``"test"`` or ``"validation"``.
        """
        return trainer.evaluate(eval_dataset=self.data[split])["eval_accuracy"]

    def balanced(self, trainer: LKDTrainer, split: str) -> float:
        """The balanced top-1 (the mean over classes of each class's top-1) of the trained student on a split.

        Args:
            trainer: the run's trainer.
            split: ``"test"`` or ``"validation"``.
        """
        output = trainer.predict(self.data[split])
        return balanced_top1(output.predictions.argmax(-1), output.label_ids)

    def scores(self, trainer: LKDTrainer, wall: float, validate: bool = False) -> dict[str, Any]:
        """What a run's record keeps: ``test_top1``, ``wall_s``, ``steps``, ``train_images`` (LKD's held-out meta
        images excluded), with ``validate`` ``val_top1``, and in a long-tailed setting ``balanced_top1`` and
        ``val_balanced_top1`` (test and validation).

        Args:
            trainer: the trained run's trainer.
            wall: the wall seconds of its training.
            validate: also evaluate on the validation split.
        """
        scores = dict(test_top1=self.top1(trainer, "test"), wall_s=wall, steps=trainer.state.global_step,
                      train_images=len(trainer.train_dataset))
        if validate:
            scores["val_top1"] = self.top1(trainer, "validation")
        if corruption(self.setting_name) in IMBALANCE_RATIOS:
            scores.update(balanced_top1=self.balanced(trainer, "test"),
                          val_balanced_top1=self.balanced(trainer, "validation"))
        return scores


class WorkerPool:
    """Independent runs on spawned worker processes. Each worker builds its state once, ``setup(*setup_args)``
    (e.g. a :class:`Setting`: teacher and data), then runs tasks as ``work(state, task)``; ``work`` and ``setup``
    must be module-level functions (picklable).

    Args:
        workers: the number of processes.
        setup: builds a worker's state.
        *setup_args: its arguments.
    """

    def __init__(self, workers: int, setup: Callable[..., Any], *setup_args: Any) -> None:
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(setup, setup_args))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.terminate()

    def results(
        self, work: Callable[[Any, Any], Any], tasks: Iterable[Any], deadline: float | None = None
    ) -> Iterator[Any]:
        """The results of ``work`` on ``tasks``, as they finish. Past ``deadline`` (a ``time.monotonic()`` time) the
        runs still going are stopped, the pool is shut and no more results come.

        Args:
            work: ``work(state, task)``, run in a worker.
            tasks: picklable tasks.
            deadline: when to stop (``None``: never).
        """
        tasks = list(tasks)
        finished = self.pool.imap_unordered(_run_task, [(work, task) for task in tasks])
        for done in range(len(tasks)):
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    print(f"deadline: {len(tasks) - done} runs not finished, stopping", flush=True)
                    self.pool.terminate()
                    return
                try:
                    yield finished.next(timeout=0.5)
                    break
                except mp.TimeoutError:
                    continue


_WORKER_STATE: Any = None


def _init_worker(setup: Callable[..., Any], setup_args: tuple) -> None:
    global _WORKER_STATE
    _WORKER_STATE = setup(*setup_args)


def _run_task(item: tuple[Callable[[Any, Any], Any], Any]) -> Any:
    work, task = item
    return work(_WORKER_STATE, task)
