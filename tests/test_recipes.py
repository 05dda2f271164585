"""The recipes run offline end to end on tiny settings (bundled ``digits`` data, tiny models, a few steps)."""

import os
import pathlib

import pytest
import timm
import torch
from conftest import load_script
from safetensors.torch import save_file

from lkd_hf import LearnedLoss, LKDConfig, LKDTrainer, LogitLossNet, build_datasets
from lkd_hf.data import dataset_num_classes

RECIPES = pathlib.Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str):
    return load_script(RECIPES / f"{name}.py", f"recipe_{name}")


def test_learn_loss_recipe_learns_from_checkpoints_and_the_loss_is_reusable_frozen(tmp_path):
    torch.manual_seed(0)
    data = build_datasets("digits", timm.create_model("lkd_convnet_s4"), augment="none")
    classes = dataset_num_classes(data["train"])
    teacher = timm.create_model("lkd_convnet_s16", num_classes=classes)
    os.makedirs(tmp_path / "teacher")
    save_file(teacher.state_dict(), str(tmp_path / "teacher" / "model.safetensors"))
    kd_run = dict(per_device_train_batch_size=32, use_cpu=True, report_to="none", disable_tqdm=True)
    student = timm.create_model("lkd_convnet_s4", num_classes=classes)
    LKDTrainer(
        model=student, teacher=teacher, train_dataset=data["train"],
        args=LKDConfig(output_dir=str(tmp_path / "kd"), loss="kd", max_steps=4, save_steps=2, **kd_run),
    ).train()

    out = load_recipe("learn_loss").main([
        "--student_checkpoints", str(tmp_path / "kd"), "--student_model", "lkd_convnet_s4",
        "--teacher_model", "lkd_convnet_s16", "--teacher_weights", str(tmp_path / "teacher"), "--dataset", "digits",
        "--meta_steps", "3", "--meta_learning_rate", "0.05", "--output_dir", str(tmp_path / "learned"),
        "--per_device_train_batch_size", "32", "--use_cpu", "--report_to", "none", "--disable_tqdm", "true",
    ])
    bundle = LearnedLoss.from_pretrained(out)
    assert (bundle.config.dataset, bundle.config.student, bundle.config.steps) == ("digits", "lkd_convnet_s4", 3)
    learned = bundle.logit
    assert not torch.equal(learned.log_weight, LogitLossNet().log_weight) or not torch.equal(
        learned.class_head.weight, LogitLossNet().class_head.weight
    )

    frozen = LKDTrainer(
        model=timm.create_model("lkd_convnet_s4", num_classes=classes), teacher=teacher, train_dataset=data["train"],
        args=LKDConfig(output_dir=str(tmp_path / "reuse"), loss_from=out, freeze_loss=True, max_steps=2, **kd_run),
    )
    frozen.train()
    assert frozen.loss_params == [] and frozen.loss_learner is None


def test_learn_loss_recipe_needs_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="No student checkpoints"):
        load_recipe("learn_loss").expand_checkpoints([])


def test_recipe_help_shows_how_derived_fields_are_set(capsys):
    cifar = load_recipe("cifar")
    with pytest.raises(SystemExit):
        cifar.parse_recipe_args(cifar.CifarArguments, cifar.TRAINER_DEFAULTS, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'finite_difference' for students without double backward, else 'unrolled'" in text
    assert "(default: None)" not in text.split("--hypergradient HYPERGRADIENT", 1)[1].split("--", 1)[0]
