r"""Learn a logit loss beforehand, over several teacher -> student pairs (CPU): the loss that ``loss="lkd"`` starts
from by default, and the one the accuracy benchmark scores the default with on the other dataset.

    # the loss shipped with lkd_hf (LKDConfig.lkd_init="pretrained"), learned on animal-mnist and scikit-learn's
    # digits; the accuracy benchmark scores it on mnist-5k
    python benchmarks/pretrain_loss.py --datasets animal-mnist,digits --output_dir lkd_hf/pretrained/logit_loss
    # learned on mnist-5k and digits; the accuracy benchmark scores it on animal-mnist
    python benchmarks/pretrain_loss.py --datasets mnist-5k,digits \
        --output_dir benchmarks/pretrained_losses/mnist-5k+digits

Setting: ``common.Setting`` of each dataset (the accuracy benchmark's: up to 2000 training images, 6 epochs, the
committed teacher) and every pair of ``common.PAIRS``; seed 0. Only the training and validation splits are read.
``digits`` (scikit-learn's 1797 8x8 digits, 1258 / 180 / 359 train / validation / test, resized to 28x28) is a
source of pre-learning only, never scored by the accuracy benchmark: each benchmark dataset is scored with a loss
learned on the other one and digits.

The loss is a DIST-based ``LogitLossNet`` whose global knobs, temperature ``T`` and weight ``w``, are learned over
whole training runs, which a one-step hypergradient cannot see (it asks for a lower temperature early in training):
an optuna TPE study (``--trials`` trials, sampler seed 0) maximises the mean validation top-1 over every (dataset,
pair) of a student trained with DIST at ``T`` times ``w``. Then DIST's intra-class weight ``gamma`` (its inter-class
weight stays 1) is chosen the same way among ``--dist_gammas`` at the best trial's ``T`` and ``w`` (gamma 1 is that
trial). The best trial's loss at that ``gamma`` (exactly that DIST: its network's
output layers are zero) is saved in ``--output_dir`` as a :class:`lkd_hf.LearnedLoss` that records no teacher,
student or class count (the logit network is the same for any number of classes), with ``pretraining.json`` (every
trial and run) and a model card. ``loss="lkd"`` then learns its network during each run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import optuna  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from common import PAIRS, Setting, WorkerPool, split_list  # noqa: E402
from lkd_hf import LearnedLoss, LogitLossNet  # noqa: E402

TEMPERATURE_RANGE = (1.0, 20.0)  # LogitLossNet's temperature range ends at 20
WEIGHT_RANGE = (0.25, 4.0)


@dataclass
class PretrainArguments:
    datasets: str = field(metadata={"help": "Comma-separated bundled datasets to learn on (animal-mnist, mnist-5k)."})
    output_dir: str = field(metadata={"help": "Where the LearnedLoss folder and pretraining.json are written."})
    trials: int = field(default=16, metadata={"help": "Trials of the knob study (each trains one student per pair)."})
    startup_trials: int = field(default=6, metadata={"help": "Random trials before TPE models the objective."})
    pairs: str = field(default=",".join(PAIRS), metadata={"help": f"Comma-separated pairs of {list(PAIRS)}."})
    workers: int = field(default=2, metadata={"help": "Runs of one trial trained in parallel processes."})
    threads: int = field(default=1, metadata={"help": "torch threads per run."})
    dist_gammas: str = field(
        default="0.5,1,2,4,8",
        metadata={"help": "Comma-separated DIST intra-class weights tried at the best trial's temperature and weight."},
    )
    trials_from: str | None = field(
        default=None,
        metadata={"help": "The pretraining.json of an earlier study on the same datasets and pairs: reuse its trials "
                  "(the study is deterministic) and run only the intra-class weight stage."},
    )
    work_dir: str | None = field(default=None, metadata={"help": "Run folders (default: a temporary folder)."})


def _settings(datasets: list[str], threads: int) -> dict[str, Setting]:
    torch.set_num_threads(threads)
    return {name: Setting(dataset=name) for name in datasets}


def _validation_top1(settings: dict[str, Setting], task: tuple[str, str, str, dict[str, Any]]) -> dict[str, Any]:
    """Train one student (seed 0) with ``fields`` and return its validation top-1."""
    dataset, pair, output_dir, fields = task
    setting = settings[dataset]
    trainer, wall = setting.train_student(pair, 0, output_dir, fields)
    return dict(dataset=dataset, pair=pair, val_top1=setting.top1(trainer, "validation"), wall_s=wall)


def start_loss(temperature: float, weight: float, dist_gamma: float = 1.0, **metadata: Any) -> LearnedLoss:
    """The DIST-based learned loss at ``temperature``, ``weight`` and intra-class weight ``dist_gamma``, before its
    network learned anything.

    Args:
        temperature: DIST's temperature.
        weight: the loss's global weight.
        dist_gamma: DIST's intra-class weight (the inter-class weight is 1).
        **metadata: :class:`lkd_hf.LearnedLossConfig` fields, e.g. ``dataset``.
    """
    with torch.random.fork_rng():  # seeded: the saved loss is a function of its three knobs alone
        torch.manual_seed(0)
        net = LogitLossNet(temperature=temperature, base="dist", dist_gamma=dist_gamma)
    with torch.no_grad():
        net.log_weight.fill_(math.log(weight))
    return LearnedLoss.from_networks(logit=net, **metadata)


def model_card(record: dict[str, Any], logit: LogitLossNet) -> str:
    """The folder's model card: what the loss is, how it was learned (from ``record``) and how to use it.

    Args:
        record: the ``pretraining.json`` record.
        logit: the learned logit loss network.
    """
    best, gamma = record["best"], record["dist_gamma"]
    new_candidates = sum(c["dist_gamma"] != 1.0 for c in gamma["candidates"])  # gamma 1: the best trial's runs
    runs = (len(record["trials"]) + new_candidates) * len(record["datasets"]) * len(record["pairs"])
    reused = f"; the trials are those of `{record['trials_command']}`" if "trials_command" in record else ""
    return f"""---
library_name: lkd_hf
tags:
- knowledge-distillation
- lkd
- loss-network
---

# A distillation loss learned beforehand over several teacher -> student pairs

A DIST-based `lkd_hf.LogitLossNet` with temperature {logit.temperature.item():.3f}, weight
{logit.weight.item():.3f} and intra-class weight {logit.dist_gamma:g}, learned on {", ".join(record["datasets"])}
with the pairs {", ".join(record["pairs"])} (training and validation splits only). Its per-sample and per-class
weights are neutral (exactly DIST); a run with `loss="lkd", freeze_loss=False` learns them. \
It works for any number of classes.

## How it was learned

`{record["command"]}` ({record["seconds"]:.0f} s on 2 CPU cores{reused}): an optuna TPE study of {len(record["trials"])}
trials over the temperature in [1, 20] and the weight in [0.25, 4] maximised the mean validation top-1 of students
trained with DIST at that temperature and weight, over whole training runs (a one-step hypergradient sees a short
stretch of training only). Best: T = {best["temperature"]:.3f}, w = {best["weight"]:.3f}, mean validation top-1
{100 * best["mean_val_top1"]:.2f}%. Then DIST's intra-class weight among {", ".join(f"{c['dist_gamma']:g}" for c in
gamma["candidates"])} at that temperature and weight: {gamma["best"]:g} (mean validation top-1
{100 * max(c["mean_val_top1"] for c in gamma["candidates"]):.2f}%). {runs} student runs of 6 epochs in all;
`pretraining.json` holds every one.

## Use

`LKDConfig(loss="lkd")` uses this loss as it is (`lkd_init="pretrained"`, the default); with an `eval_dataset`, three
students train side by side, at its temperature and weight, at twice both, and at a third of the temperature and a
sixteenth of the weight; the worst by validation top-1 stops training halfway, the worse of the other two at three
quarters, and the last one is kept. `freeze_loss=False` learns it further during the run;
`lkd_hf.pretrained_logit_loss()` returns it.
"""


def main() -> None:
    (args,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses()
    datasets, pairs = split_list(args.datasets), split_list(args.pairs)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="lkd_pretrain_")
    command = (f"python benchmarks/pretrain_loss.py --datasets {args.datasets} --output_dir {args.output_dir} "
               f"--trials {args.trials} --dist_gammas {args.dist_gammas}")
    record: dict[str, Any] = dict(datasets=datasets, pairs=pairs, command=command)
    start = time.perf_counter()
    with WorkerPool(args.workers, _settings, datasets, args.threads) as pool:
        if args.trials_from is not None:
            earlier = reused_trials(args.trials_from, datasets, pairs)
            record.update(earlier, command=f"{command} --trials_from {args.trials_from}")
        else:
            record.update(study(args, datasets, pairs, work_dir, pool))
        record["dist_gamma"] = gamma_stage(record, split_list(args.dist_gammas), work_dir, pool)
    record["seconds"] = record.pop("earlier_seconds", 0.0) + time.perf_counter() - start
    save(record, args.output_dir)
    print(f"saved {args.output_dir} ({record['seconds']:.0f} s)")


def reused_trials(path: str, datasets: list[str], pairs: list[str]) -> dict[str, Any]:
    """The trials, best trial, time and command of the study recorded in ``path`` (a ``pretraining.json``).

    Args:
        path: the earlier record.
        datasets: this run's datasets; the record must have been learned on the same.
        pairs: this run's pairs; the same.
    """
    with open(path) as f:
        earlier = json.load(f)
    if (earlier["datasets"], earlier["pairs"]) != (datasets, pairs):
        raise ValueError(f"--trials_from {path} was learned on {earlier['datasets']} with {earlier['pairs']}, not on "
                         f"{datasets} with {pairs}.")
    seconds = earlier["seconds"] - earlier.get("dist_gamma", {}).get("seconds", 0.0)  # the study's own
    return dict(trials=earlier["trials"], best=earlier["best"], earlier_seconds=seconds,
                trials_command=earlier.get("trials_command", earlier["command"]))


def _runs(pool: WorkerPool, fields: dict[str, Any], folder: str, datasets: list[str],
          pairs: list[str]) -> tuple[float, list[dict[str, Any]]]:
    """Train one student per (dataset, pair) with ``fields``; their mean validation top-1 and their records."""
    tasks = [(d, p, os.path.join(folder, d, p.replace("->", "_to_")), fields) for d in datasets for p in pairs]
    runs = list(pool.results(_validation_top1, tasks))
    return sum(r["val_top1"] for r in runs) / len(runs), runs


def study(args: PretrainArguments, datasets: list[str], pairs: list[str], work_dir: str,
          pool: WorkerPool) -> dict[str, Any]:
    """The optuna study of the temperature and weight: its trials and best trial."""
    trials: list[dict[str, Any]] = []
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=args.startup_trials)
    optuna_study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        t = trial.suggest_float("temperature", *TEMPERATURE_RANGE, log=True)
        w = trial.suggest_float("weight", *WEIGHT_RANGE, log=True)
        fields = dict(loss="dist", dist_temperature=t, distill_weight=w)
        value, runs = _runs(pool, fields, os.path.join(work_dir, f"trial{trial.number}"), datasets, pairs)
        trials.append(dict(number=trial.number, temperature=t, weight=w, mean_val_top1=value, runs=runs))
        print(f"trial {trial.number}: T {t:.2f} w {w:.2f} -> mean val top-1 {value:.4f}", flush=True)
        return value

    optuna_study.optimize(objective, n_trials=args.trials)
    best = dict(optuna_study.best_params, mean_val_top1=optuna_study.best_value)
    return dict(trials=trials, best=best)


def gamma_stage(record: dict[str, Any], gammas: list[str], work_dir: str, pool: WorkerPool) -> dict[str, Any]:
    """DIST's intra-class weight at the best trial's temperature and weight: every candidate's runs and the best
    (gamma 1 is the best trial itself; a tie keeps the smaller weight) and the stage's time."""
    start, best = time.perf_counter(), record["best"]
    trial = max(record["trials"], key=lambda t: t["mean_val_top1"])
    candidates = []
    for gamma in sorted(float(g) for g in gammas):
        if gamma == 1.0:
            value, runs = trial["mean_val_top1"], trial["runs"]
        else:
            fields = dict(loss="dist", dist_temperature=best["temperature"], distill_weight=best["weight"],
                          dist_gamma=gamma)
            value, runs = _runs(pool, fields, os.path.join(work_dir, f"gamma{gamma:g}"), record["datasets"],
                                record["pairs"])
            print(f"gamma {gamma:g}: mean val top-1 {value:.4f}", flush=True)
        candidates.append(dict(dist_gamma=gamma, mean_val_top1=value, runs=runs))
    chosen = max(candidates, key=lambda c: c["mean_val_top1"])  # the first of equals: the smallest gamma
    return dict(candidates=candidates, best=chosen["dist_gamma"], seconds=time.perf_counter() - start)


def save(record: dict[str, Any], output_dir: str) -> None:
    """Write the best trial's loss, ``pretraining.json`` and the model card to ``output_dir`` (replaced).

    Args:
        record: the ``pretraining.json`` record (``best``: the trial's ``temperature`` and ``weight``;
            ``dist_gamma``: the intra-class weight stage, its ``best``).
        output_dir: the folder.
    """
    best = record["best"]
    learned = start_loss(best["temperature"], best["weight"], record["dist_gamma"]["best"],
                         dataset=",".join(record["datasets"]))
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    learned.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "pretraining.json"), "w") as f:
        json.dump(record, f, indent=1)
    plot = os.path.join(output_dir, "learned_loss.png")
    if os.path.exists(plot):
        os.remove(plot)
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(model_card(record, learned.logit))


if __name__ == "__main__":
    main()
