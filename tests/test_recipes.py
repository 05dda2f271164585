"""The recipes run offline end to end on tiny settings (bundled ``digits`` data, tiny models, a few steps)."""

import os
import pathlib
import subprocess
import sys

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
    learn_loss = load_recipe("learn_loss")
    with pytest.raises(ValueError, match="No student checkpoints given"):
        learn_loss.expand_checkpoints([])
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"No student checkpoint in .*checkpoint-5.*<run>/checkpoint-<step>/model"):
        learn_loss.expand_checkpoints([str(tmp_path / "run")])


def test_learn_loss_recipe_names_the_earlier_run_without_a_traceback(tmp_path):
    command = [sys.executable, str(RECIPES / "learn_loss.py"), "--student_checkpoints", str(tmp_path / "kd_run")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: No student checkpoint in")
    assert "recipes/quickstart.py --methods kd" in result.stderr


def test_recipe_help_shows_how_derived_fields_are_set(capsys):
    cifar = load_recipe("cifar")
    with pytest.raises(SystemExit):
        cifar.parse_recipe_args(cifar.CifarArguments, cifar.TRAINER_DEFAULTS, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'finite_difference' for students without double backward, else 'unrolled'" in text
    assert "(default: None)" not in text.split("--hypergradient HYPERGRADIENT", 1)[1].split("--", 1)[0]


def test_recipe_help_lists_its_own_options_first_each_default_once_and_the_rest_behind_help_all(capsys):
    imagenet = load_recipe("imagenet")
    with pytest.raises(SystemExit):
        imagenet.parse_recipe_args(imagenet.ImageNetArguments, imagenet.TRAINER_DEFAULTS, ["--help"])
    short = capsys.readouterr().out
    options = short.split("options:", 1)[1]
    assert options.index("--preset") < options.index("--image_size") < options.index("--output_dir")
    assert " ".join(options.split("--image-size IMAGE_SIZE", 1)[1].split("--", 1)[0].split()) == (
        "Input size (default: the teacher's, 224)."
    )
    assert "--adam_beta1" not in short and "--help_all" in short and len(short.splitlines()) < 200
    with pytest.raises(SystemExit):
        imagenet.parse_recipe_args(imagenet.ImageNetArguments, imagenet.TRAINER_DEFAULTS, ["--help_all"])
    assert "--adam_beta1" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["missing", "flat"])
def test_imagenet_recipe_names_its_folder_layout_once_without_a_traceback(layout, tmp_path):
    dataset = tmp_path / "imgs"
    if layout == "flat":
        for name in ("cat", "dog"):
            (dataset / name).mkdir(parents=True)
    command = [sys.executable, str(RECIPES / "imagenet.py"), "--dataset", str(dataset), "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    layout_text = load_recipe("imagenet").FOLDER_LAYOUT
    assert result.stderr.startswith("error: ") and result.stderr.count(layout_text) == 1


@pytest.mark.slow
def test_quickstart_saves_each_student_and_learned_loss_and_leaves_no_lock(tmp_path):
    out = tmp_path / "quickstart"
    load_recipe("quickstart").main([
        "--methods", "ce,lkd", "--student_epochs", "0.25", "--train_subset", "256", "--output_dir", str(out),
        "--teacher_dir", str(RECIPES.parent / "benchmarks" / "teacher"),
    ])
    assert (out / "ce" / "model.safetensors").is_file() and (out / "lkd" / "model.safetensors").is_file()
    assert LearnedLoss.from_pretrained(str(out / "lkd" / "lkd_loss")).logit is not None
    assert not list(out.rglob("_lkd_run.lock"))


def test_quickstart_without_its_teacher_says_how_to_get_one(tmp_path):
    command = [sys.executable, str(RECIPES / "quickstart.py"), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)  # no benchmarks/teacher here
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: No 'lkd_convnet_teacher' teacher trained on 'animal-mnist' in 'benchmarks/teacher'" in result.stderr
    assert "--train_teacher" in result.stderr
