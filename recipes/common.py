"""Shared parts of the ImageNet and CIFAR recipes (``recipes/imagenet.py``, ``recipes/cifar.py``).

* :class:`RecipeArguments` and :func:`parse_recipe_args`: the recipe's own fields plus every ``LKDConfig`` field,
  parsed by ``transformers.HfArgumentParser``, with recipe defaults for the Trainer fields; :func:`concise_help`:
  ``--help`` for the recipe's own options and the main ``LKDConfig`` fields, ``--help_all`` for every field;
* :func:`training_config`: the ``LKDConfig``, with the batch size split over the processes, the learning rate
  scaled to the global batch and the hypergradient estimator chosen for the student;
* :func:`create_teacher`: a timm teacher with pretrained (Hub) or local weights, failing with a clear message;
* :class:`RecipeTrainer`: ``LKDTrainer`` plus the step learning-rate schedule of the standard recipes;
* :func:`load_splits` and :func:`train_and_evaluate`: data, training, top-1 evaluation and saving.

The recipes import this module as ``common``: run them as scripts (``python recipes/imagenet.py`` or
``accelerate launch recipes/imagenet.py``), which puts ``recipes/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import datasets
import timm
import torch
from huggingface_hub.constants import HF_HUB_OFFLINE
from torch import nn
from transformers import HfArgumentParser
from transformers.utils import SAFE_WEIGHTS_NAME

from lkd_hf import LKDConfig, LKDTrainer, load_image_splits, parse_loss_spec, with_transform

R = TypeVar("R", bound="RecipeArguments")

AUTO_FIELDS = {
    "per_device_train_batch_size": "global_batch_size / (processes x gradient_accumulation_steps)",
    "learning_rate": "base_learning_rate x global batch / base_batch_size",
    "lr_scheduler_type": "the step schedule of lr_decay_epochs / lr_decay_rate",
    "hypergradient": "'finite_difference' for students without double backward, else 'unrolled'",
}
"""``LKDConfig`` fields the recipe derives unless given on the command line, and how (see :func:`training_config`)."""

SHARED_TRAINER_DEFAULTS = dict(
    optim="sgd",
    optim_args="momentum=0.9",
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    ddp_find_unused_parameters=False,
)
"""``LKDConfig`` defaults shared by the recipes (each adds its epochs, weight decay, batch and loader sizes)."""


@dataclass
class RecipeArguments:
    """Fields shared by the recipes; each recipe subclass sets its own defaults (and preset choices)."""

    preset: str = field(default="", metadata={"help": "Teacher -> student pair (see the recipe's PRESETS)."})
    teacher_model: str | None = field(default=None, metadata={"help": "timm name of the teacher (overrides preset)."})
    student_model: str | None = field(default=None, metadata={"help": "timm name of the student (overrides preset)."})
    teacher_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Local teacher weights: a state-dict file (.safetensors, .pth, .bin) or a directory with "
                  "model.safetensors; loaded by timm via pretrained_cfg_overlay=dict(file=...)."},
    )
    dataset: str = field(default="", metadata={"help": "A Hugging Face Hub dataset id or a local image folder."})
    test_split: str | None = field(
        default=None,
        metadata={"help": "Source split evaluated as the test set (default: 'test' if present, else 'validation')."},
    )
    val_fraction: float = field(
        default=0.1,
        metadata={"help": "Fraction of the train split held out as LKD's meta (validation) set; every method "
                  "trains on the rest."},
    )
    train_subset: int | None = field(default=None, metadata={"help": "Train on only this many images (smoke tests)."})
    data_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    global_batch_size: int = field(
        default=256,
        metadata={"help": "Training batch over all processes (and accumulation steps); sets "
                  "per_device_train_batch_size unless that is given."},
    )
    base_learning_rate: float = field(
        default=0.1, metadata={"help": "Learning rate at base_batch_size, scaled linearly to the global batch."}
    )
    base_batch_size: int = field(default=256, metadata={"help": "Batch size of base_learning_rate."})
    lr_decay_epochs: list[float] = field(
        default_factory=list,
        metadata={"help": "Step schedule: the LR is multiplied by lr_decay_rate at these epochs. Ignored when "
                  "--lr_scheduler_type is given (e.g. cosine)."},
    )
    lr_decay_rate: float = field(default=0.1, metadata={"help": "Step schedule: LR factor at each decay epoch."})


HELP_FIELDS = (
    "output_dir", "loss", "loss_from", "freeze_loss", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "learning_rate", "lr_scheduler_type", "hypergradient", "bf16", "seed", "resume_from_checkpoint", "push_to_hub",
)
"""``LKDConfig`` fields that ``--help`` lists after the recipe's own options (``--help_all`` lists every one)."""


def concise_help(parser: HfArgumentParser, recipe_cls: type) -> HfArgumentParser:
    """Make ``--help`` list the options of ``recipe_cls`` and the :data:`HELP_FIELDS` of ``LKDConfig``, and add
    ``--help_all`` for every ``LKDConfig`` / ``TrainingArguments`` option. A help text that names its default
    (``"default: ..."``) shows it once. Returns ``parser``."""
    own = {f.name for f in dataclasses.fields(recipe_cls)}
    hidden = {}
    for action in parser._actions:
        if action.help and "default:" in action.help.lower() and "%(default)" not in action.help:
            action.help += "%(default).0s"  # the formatter adds "(default: ...)" unless the text uses %(default)
        if action.dest not in own | set(HELP_FIELDS) | {"help"} and action.help is not argparse.SUPPRESS:
            hidden[action], action.help = action.help, argparse.SUPPRESS

    class HelpAll(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            for action, text in hidden.items():
                action.help = text
            parser.print_help()
            parser.exit()

    parser.add_argument("--help_all", nargs=0, action=HelpAll, default=argparse.SUPPRESS,
                        help="Show every option, LKDConfig's and the Trainer's (TrainingArguments) included, and exit.")
    parser.epilog = "Every LKDConfig / TrainingArguments field is accepted as an option: --help_all lists them."
    return parser


def parse_recipe_args(
    recipe_cls: type[R], trainer_defaults: Mapping[str, Any], argv: Sequence[str] | None = None
) -> tuple[R, dict[str, Any]]:
    """Parse ``argv`` into the recipe dataclass and the ``LKDConfig`` field values (a dict, see
    :func:`training_config`). ``trainer_defaults`` replace ``LKDConfig``'s defaults; the :data:`AUTO_FIELDS` are
    ``None`` unless given. With ``--lr_scheduler_type`` the step schedule is switched off."""
    parser = HfArgumentParser((recipe_cls, LKDConfig))
    parser.set_defaults(**trainer_defaults, **dict.fromkeys(AUTO_FIELDS))
    for action in parser._actions:  # --help shows how the recipe sets the derived fields, not "(default: None)"
        if action.dest in AUTO_FIELDS:
            action.help = f"{action.help or ''} (default: {AUTO_FIELDS[action.dest]})"
    concise_help(parser, recipe_cls)
    namespace, unknown = parser.parse_known_args(args=argv)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    values = vars(namespace)
    run = recipe_cls(**{f.name: values.pop(f.name) for f in dataclasses.fields(recipe_cls) if f.init})
    if values["lr_scheduler_type"] is None:
        values["lr_scheduler_type"] = "constant"  # RecipeTrainer replaces it by the step schedule
    else:
        run.lr_decay_epochs = []
    return run, values


def resolve_pair(run: RecipeArguments, presets: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    """``(teacher, student)`` timm names: the preset's, overridden by ``--teacher_model`` / ``--student_model``."""
    teacher, student = presets[run.preset]
    return run.teacher_model or teacher, run.student_model or student


def uses_teacher(loss: str) -> bool:
    """Whether the loss spec distills from a teacher (everything but plain ``"ce"``); checks the spec's names."""
    spec = parse_loss_spec(loss)
    return spec.feature is not None or spec.logit not in (None, "ce")


def needs_finite_difference(model_name: str) -> bool:
    """Whether the timm model has layers without double backward (hard-sigmoid, e.g. mobilenetv3; fused attention),
    so that ``hypergradient="unrolled"`` cannot differentiate through it. A heuristic on the modules of the model,
    built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = timm.create_model(model_name)
    return any(
        "hardsigmoid" in type(m).__name__.lower() or getattr(m, "fused_attn", False) is True for m in model.modules()
    )


def world_size() -> int:
    """Number of training processes, from ``WORLD_SIZE`` (set by ``accelerate launch`` / ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def training_config(run: RecipeArguments, values: Mapping[str, Any], student: str, **overrides: Any) -> LKDConfig:
    """The ``LKDConfig`` of ``values`` (from :func:`parse_recipe_args`) and ``overrides``, with the
    :data:`AUTO_FIELDS` left unset filled in:

    * ``per_device_train_batch_size = global_batch_size / (processes * gradient_accumulation_steps)``
      (:func:`world_size` processes);
    * ``learning_rate = base_learning_rate * actual global batch / base_batch_size``;
    * ``hypergradient = "finite_difference"`` for the students (timm names) that need it
      (:func:`needs_finite_difference`), else ``"unrolled"``.
    """
    values = {**values, **overrides}
    world, accumulation = world_size(), int(values["gradient_accumulation_steps"])
    if values["per_device_train_batch_size"] is None:
        per_device, rest = divmod(run.global_batch_size, world * accumulation)
        if rest or per_device < 1:
            raise ValueError(
                f"global_batch_size={run.global_batch_size} does not split over {world} process(es) x "
                f"{accumulation} accumulation step(s); change it or pass --per_device_train_batch_size."
            )
        values["per_device_train_batch_size"] = per_device
    if values["learning_rate"] is None:
        batch = values["per_device_train_batch_size"] * world * accumulation
        values["learning_rate"] = run.base_learning_rate * batch / run.base_batch_size
    if values["hypergradient"] is None:
        values["hypergradient"] = "finite_difference" if needs_finite_difference(student) else "unrolled"
    return LKDConfig(**values)


class TeacherWeightsError(RuntimeError):
    """The teacher's pretrained weights could not be loaded (e.g. the Hub is unreachable and nothing is cached)."""


def checkpoint_file(path: str) -> str:
    """The weights file of ``--teacher_checkpoint``: the path itself, or ``<dir>/model.safetensors``."""
    file = os.path.join(path, SAFE_WEIGHTS_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"Teacher checkpoint {path!r}: not a file, nor a directory with {SAFE_WEIGHTS_NAME}.")
    return file


def create_teacher(
    name: str, *, num_classes: int | None = None, pretrained: bool = False, checkpoint: str | None = None
) -> nn.Module:
    """A timm teacher: random, timm's pretrained weights (``pretrained``; Hub) or a local ``checkpoint`` (loaded by
    timm through ``pretrained_cfg_overlay=dict(file=...)``, with ``num_classes`` outputs).

    Raises:
        TeacherWeightsError: the pretrained weights are not reachable (offline / no network, not cached) or do
            not exist; the message names ``--teacher_pretrained false`` and ``--teacher_checkpoint``.
    """
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if checkpoint is not None:
        overlay = {"file": checkpoint_file(checkpoint), **kwargs}
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    if not pretrained:
        return timm.create_model(name, **kwargs)
    fixes = (
        "Pass local weights with --teacher_checkpoint /path/to/weights.safetensors (loaded by timm via "
        "pretrained_cfg_overlay=dict(file=...)), or --teacher_pretrained false for a randomly initialised teacher "
        "(smoke tests only: distilling from it teaches nothing)."
    )
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise TeacherWeightsError(f"timm has no pretrained weights for the teacher {name!r}. {fixes}")
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError / HTTP errors, urllib errors
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if HF_HUB_OFFLINE else "the download from the Hub failed"
        raise TeacherWeightsError(
            f"Could not load the pretrained weights of the teacher {name!r}: {why}, and they are not in the local "
            f"Hugging Face cache ({type(err).__name__}: {err}).\n{fixes}"
        ) from err


def load_splits(
    run: RecipeArguments, args: LKDConfig, train_transform: Callable, eval_transform: Callable
) -> datasets.DatasetDict:
    """``train`` / ``validation`` (held out of train, LKD's meta set) / ``test`` splits of ``run.dataset`` with the
    given transforms (``lkd_hf.load_image_splits`` + ``with_transform``). The main process loads (downloads,
    caches) first, the other processes then read its cache."""
    with args.main_process_first(desc="loading the dataset"):
        splits = load_image_splits(
            run.dataset, seed=args.seed, val_fraction=run.val_fraction, train_subset=run.train_subset,
            cache_dir=run.data_cache_dir, test_split=run.test_split,
        )
    transforms = {name: train_transform if name == "train" else eval_transform for name in splits}
    return datasets.DatasetDict({name: with_transform(ds, transforms[name]) for name, ds in splits.items()})


class StepDecay:
    """LR factor of a step schedule: linear warm-up over ``warmup`` steps, then ``rate ** (milestones passed)``."""

    def __init__(self, milestones: Sequence[int], rate: float, warmup: int = 0) -> None:
        self.milestones, self.rate, self.warmup = sorted(milestones), rate, warmup

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        return self.rate ** bisect.bisect_right(self.milestones, step)


class RecipeTrainer(LKDTrainer):
    """:class:`lkd_hf.LKDTrainer` with the step schedule of the standard recipes: the learning rate is multiplied by
    ``lr_decay_rate`` at each of ``lr_decay_epochs`` (epochs of ``num_train_epochs``; with ``max_steps`` the same
    fractions of the run). Without milestones, the Trainer's ``lr_scheduler_type`` applies."""

    def __init__(self, *args: Any, lr_decay_epochs: Sequence[float] = (), lr_decay_rate: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lr_decay_epochs, self.lr_decay_rate = list(lr_decay_epochs), lr_decay_rate

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if not self.lr_decay_epochs or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        epochs = self.args.num_train_epochs
        milestones = [round(e / epochs * num_training_steps) for e in self.lr_decay_epochs]
        decay = StepDecay(milestones, self.lr_decay_rate, self.args.get_warmup_steps(num_training_steps))
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, decay)
        self._created_lr_scheduler = True
        return self.lr_scheduler


def announce(args: LKDConfig, teacher: str | None, student: str, data: datasets.DatasetDict, source: str) -> None:
    """Print (once, on the main process) what is about to be trained."""
    if args.should_log:
        print(f"Training {student} from {teacher or '(no teacher)'} with loss={args.loss!r} on {len(data['train'])} "
              f"{source} images (hypergradient={args.hypergradient!r}, lr={args.learning_rate:g}, per-device batch "
              f"{args.per_device_train_batch_size}) -> {args.output_dir}")


def train_and_evaluate(
    run: RecipeArguments, args: LKDConfig, student: nn.Module, teacher: nn.Module | None, data: datasets.DatasetDict
) -> dict[str, float]:
    """Train ``student`` (from ``teacher``) on ``data["train"]``, LKD's meta steps and the choice of a temperature
    population's student on ``data["validation"]`` (the trainer's ``eval_dataset``); evaluate top-1/top-5 on
    ``data["test"]`` (``lkd_hf.metrics``); save the student (``model.safetensors``, a plain timm state dict) and learned
    loss (``lkd_loss/``), ``train_results.json``, ``eval_results.json`` (test) and ``trainer_state.json`` in
    ``args.output_dir``. Returns the test metrics."""
    trainer = RecipeTrainer(
        model=student, teacher=teacher, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
        meta_dataset=None if args.freeze_loss else data["validation"], lr_decay_epochs=run.lr_decay_epochs,
        lr_decay_rate=run.lr_decay_rate,
    )
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    metrics = trainer.evaluate(eval_dataset=data["test"])
    for split, split_metrics in (("train", result.metrics), ("eval", metrics)):
        trainer.log_metrics(split, split_metrics)
        trainer.save_metrics(split, split_metrics)
    trainer.save_state()
    return metrics
