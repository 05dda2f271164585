"""The accuracy benchmark's bookkeeping (``benchmarks/accuracy.py``): what ``--resume`` may continue."""

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import load_script

from lkd_hf import PRETRAINED_LOSS_DIR, LearnedLoss

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def accuracy():
    return load_script(BENCHMARKS / "accuracy.py", "lkd_accuracy_benchmark")


def _results_file(accuracy, args, **config_changes):
    results = accuracy.Results(args)
    results.data["runs"].append(dict(pair="teacher->s4", method="ce", seed=0, test_top1=0.5))
    results.data["config"] = {**results.config, **config_changes}
    results.save()


def test_resume_continues_records_made_with_the_same_settings_defaults_and_start(accuracy, tmp_path):
    args = accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path), resume=True)
    _results_file(accuracy, args)
    resumed = accuracy.Results(args)
    assert resumed.get("teacher->s4", "ce", 0)["test_top1"] == 0.5
    assert resumed.config["lkd_defaults"]["population_temperature_factors"] is None  # LKDConfig's own fields
    assert "learning_rate" not in resumed.config["lkd_defaults"]  # not TrainingArguments'


@pytest.mark.parametrize("changed", ["lkd_defaults", "lkd_start_sha256", "epochs"])
def test_resume_refuses_records_made_under_other_lkd_defaults_or_start(accuracy, tmp_path, changed):
    args = accuracy.AccuracyArguments(quick=True, output_dir=str(tmp_path), resume=True)
    config = accuracy.Results(args).config
    earlier = {"lkd_defaults": {**config["lkd_defaults"], "population_weight_factors": [1.0, 3.0]},
               "lkd_start_sha256": "0" * 64, "epochs": config["epochs"] + 1}[changed]
    _results_file(accuracy, args, **{changed: earlier})
    with pytest.raises(ValueError, match=f"other {changed} than this run"):
        accuracy.Results(args)
    fresh = accuracy.Results(dataclasses.replace(args, resume=False))  # without --resume: starts over
    assert fresh.data["runs"] == []


def test_the_start_fingerprint_follows_the_loss_folder(accuracy, tmp_path):
    start = accuracy.folder_sha256(PRETRAINED_LOSS_DIR)
    LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR).save_pretrained(tmp_path / "copy")
    assert accuracy.folder_sha256(str(tmp_path / "copy")) == start  # the same loss saved again
    changed = LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR)
    with torch.no_grad():
        changed.logit.log_weight.add_(0.1)
    changed.save_pretrained(tmp_path / "changed")
    assert accuracy.folder_sha256(str(tmp_path / "changed")) != start


def test_dataset_roles_are_declared_for_every_setting_and_unknown_keys_are_refused():
    roles = load_script(BENCHMARKS / "roles.py", "lkd_benchmark_roles")
    assert roles.role("mnist-5k") == roles.role("animal-mnist/noise40") == "design"
    assert roles.role("letters") == roles.role("letters/lt50") == "evaluation"
    assert roles.parse_key("letters/weak") == ("letters", "weak")
    with pytest.raises(ValueError, match="Unknown dataset"):
        roles.role("cifar10")
    with pytest.raises(ValueError, match="Unknown setting"):
        roles.role("mnist-5k/noise30")
