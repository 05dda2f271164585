"""The ImageNet and CIFAR recipes run offline, as plain ``python`` scripts and under ``accelerate launch`` (one CPU
process), on a tiny generated image folder with tiny non-pretrained models, for 2 steps; a pretrained teacher that
is not cached fails at once with a message naming the ways out. Plus, in-process, the recipe arithmetic (batch split,
LR scaling, step schedule, hypergradient choice) and ``load_image_splits(test_split=...)``."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import save_file

import lkd_hf  # noqa: F401  (registers the CIFAR nets in timm)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
CLASSES = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # one colour per class
SMALL_RUN = [
    "--max_steps", "2", "--global_batch_size", "4", "--val_fraction", "0.25", "--meta_interval", "1",
    "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
    "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0",
    "--freeze_loss", "false",  # LKD's meta steps (the shipped start is kept fixed by default)
]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> pathlib.Path:
    """``train/<class>/*.png`` (8 per class) and ``validation/<class>/*.png`` (2 per class), 3 classes, 36x44 RGB."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("validation", 2)):
        for label, colour in enumerate(CLASSES):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-40, 40, (36, 44, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def offline_env(tmp_path) -> dict[str, str]:
    """The environment of a recipe subprocess: offline, a fresh HF_HOME (no accelerate config, empty caches), CPU."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "HF_", "WORLD_SIZE"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
            "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}


LAUNCHERS = {
    "python": [sys.executable],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


def run_recipe(launcher: str, recipe: str, args: list[str], env: dict[str, str], timeout: int = 240):
    command = [*LAUNCHERS[launcher], str(RECIPES / f"{recipe}.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_finished(proc: subprocess.CompletedProcess, output_dir: pathlib.Path, learned_loss: bool) -> dict:
    """The run exited 0 after 2 steps, wrote top-1 accuracy, the student and (LKD) the loss; returns the state."""
    assert proc.returncode == 0, f"recipe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    assert (output_dir / "model.safetensors").is_file()
    assert (output_dir / "lkd_loss").is_dir() == learned_loss
    meta_logged = [log for log in state["log_history"] if "meta/val_loss_after" in log]
    assert len(meta_logged) == (2 if learned_loss else 0)  # a meta step per step (meta_interval=1), on the meta set
    return state


def train_lrs(state: dict) -> list[float]:
    return [log["learning_rate"] for log in state["log_history"] if "learning_rate" in log]


@pytest.mark.parametrize("launcher", ["python", "accelerate"])
def test_imagenet_recipe_runs_two_steps(launcher, image_folder, offline_env, tmp_path):
    out = tmp_path / "imagenet"
    proc = run_recipe(launcher, "imagenet", [
        "--teacher_model", "test_resnet", "--student_model", "test_resnet", "--teacher_pretrained", "false",
        "--dataset", str(image_folder), "--image_size", "32", "--output_dir", str(out), *SMALL_RUN,
    ], offline_env)
    state = assert_finished(proc, out, learned_loss=True)
    # LR 0.1 per 256 images at a global batch of 4; the 30/60/90-of-100-epoch steps fall on steps 1, 1, 2 of 2
    assert train_lrs(state) == pytest.approx([0.1 * 4 / 256, 0.1 * 4 / 256 * 0.01])
    assert "randomly initialised" in proc.stdout


@pytest.mark.parametrize("launcher", ["python", "accelerate"])
def test_cifar_recipe_runs_two_steps(launcher, image_folder, offline_env, tmp_path):
    """python: no checkpoint, so the teacher is trained first (cross-entropy) into <output_dir>/teacher;
    accelerate: the teacher comes from a --teacher_checkpoint file."""
    out = tmp_path / "cifar"
    args = [
        "--teacher_model", "cifar_resnet8", "--student_model", "cifar_resnet8", "--dataset", str(image_folder),
        "--output_dir", str(out), "--loss", "kd", *SMALL_RUN,
    ]
    if launcher == "accelerate":
        checkpoint = tmp_path / "teacher.safetensors"
        save_file(timm.create_model("cifar_resnet8", num_classes=len(CLASSES)).state_dict(), str(checkpoint))
        args += ["--teacher_checkpoint", str(checkpoint)]
    proc = run_recipe(launcher, "cifar", args, offline_env)
    state = assert_finished(proc, out, learned_loss=False)
    # LR 0.05 per 64 images at a global batch of 4; 150/180/210 of 240 epochs fall on steps 1, 2, 2 of 2
    assert train_lrs(state) == pytest.approx([0.05 * 4 / 64, 0.05 * 4 / 64 * 0.1])
    teacher_trained = launcher == "python"
    assert (out / "teacher" / "model.safetensors").is_file() == teacher_trained
    if teacher_trained:
        assert json.loads((out / "teacher" / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.slow
def test_imagenet_recipe_splits_the_global_batch_over_two_processes(image_folder, offline_env, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU (torchrun, gloo): each process takes half the
    global batch, only the main process prints, and the run writes its results once."""
    out = tmp_path / "imagenet"
    args = [*SMALL_RUN, "--global_batch_size", "8", "--meta_batch_size", "4"]  # the later flag wins
    proc = subprocess.run([
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(RECIPES / "imagenet.py"),
        "--teacher_model", "test_resnet", "--student_model", "test_resnet", "--teacher_pretrained", "false",
        "--dataset", str(image_folder), "--image_size", "32", "--output_dir", str(out), *args,
    ], cwd=ROOT, env=offline_env, capture_output=True, text=True, timeout=240)
    state = assert_finished(proc, out, learned_loss=True)
    assert proc.stdout.count("Training test_resnet from test_resnet") == 1
    assert "per-device batch 4)" in proc.stdout
    assert train_lrs(state) == pytest.approx([0.1 * 8 / 256, 0.1 * 8 / 256 * 0.01])


def test_imagenet_recipe_without_reachable_teacher_weights_fails_fast(image_folder, offline_env, tmp_path):
    out = tmp_path / "imagenet"
    start = time.monotonic()
    proc = run_recipe("python", "imagenet", [
        "--dataset", str(image_folder), "--output_dir", str(out), *SMALL_RUN,  # default preset: resnet34.tv_in1k
    ], offline_env, timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode != 0
    assert "error: Could not load the pretrained weights of the teacher 'resnet34.tv_in1k'" in proc.stderr
    assert "HF_HUB_OFFLINE=1" in proc.stderr
    assert "--teacher_pretrained false" in proc.stderr and "--teacher_checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # failed before loading data or training


# ----------------------------------------------------------------------------------------------------------------
# in-process: the recipe arithmetic


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    import common

    return common


def test_batch_split_learning_rate_scaling_and_schedule_switch(common, monkeypatch, tmp_path):
    student = "test_resnet"
    base = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    monkeypatch.setattr(common, "world_size", lambda: 8)  # as under accelerate launch --num_processes 8
    run, values = common.parse_recipe_args(common.RecipeArguments, {}, [*base, "--global_batch_size", "512"])
    args = common.training_config(run, values, student)
    assert args.per_device_train_batch_size == 64 and args.learning_rate == pytest.approx(0.2)
    assert run.lr_decay_epochs == [] and args.lr_scheduler_type == "constant"  # no decay epochs given

    run, values = common.parse_recipe_args(common.RecipeArguments, {}, [
        *base, "--per_device_train_batch_size", "16", "--learning_rate", "0.3", "--lr_decay_epochs", "1", "2",
        "--lr_scheduler_type", "cosine",
    ])
    args = common.training_config(run, values, student)
    assert args.per_device_train_batch_size == 16 and args.learning_rate == 0.3
    assert run.lr_decay_epochs == [] and args.lr_scheduler_type == "cosine"  # an explicit schedule wins

    run, values = common.parse_recipe_args(common.RecipeArguments, {}, [*base, "--global_batch_size", "12"])
    with pytest.raises(ValueError, match="does not split over 8 process"):
        common.training_config(run, values, student)


def test_test_split_chooses_the_evaluated_split(image_folder, tmp_path):
    """A source with train/validation/test evaluates on 'test' by default; test_split='validation' (ImageNet-1k,
    whose test split is unlabelled) evaluates on validation instead; an unknown split is refused."""
    from lkd_hf.data import load_image_splits

    source = tmp_path / "three_splits"
    shutil.copytree(image_folder, source)
    for label in range(len(CLASSES)):  # one test image per class
        (source / "test" / f"class{label}").mkdir(parents=True)
        shutil.copy(source / "train" / f"class{label}" / "0.png", source / "test" / f"class{label}" / "0.png")
    cache = str(tmp_path / "cache")
    assert len(load_image_splits(str(source), cache_dir=cache)["test"]) == 3
    assert len(load_image_splits(str(source), cache_dir=cache, test_split="validation")["test"]) == 6
    with pytest.raises(ValueError, match="test_split='val' is not a split"):
        load_image_splits(str(source), cache_dir=cache, test_split="val")


def test_step_decay_with_warmup(common):
    decay = common.StepDecay([10, 20], rate=0.1, warmup=4)
    assert [decay(s) for s in (0, 2, 4, 9, 10, 19, 20, 99)] == pytest.approx([0, 0.5, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_hypergradient_follows_the_student(common, tmp_path):
    run, values = common.parse_recipe_args(common.RecipeArguments, {}, ["--output_dir", str(tmp_path)])
    for name, expected in (("test_resnet", "unrolled"), ("mobilenetv3_small_050", "finite_difference"),
                           ("test_vit", "finite_difference")):
        assert common.training_config(run, values, name).hypergradient == expected, name
    values["hypergradient"] = "unrolled"  # an explicit choice is kept
    assert common.training_config(run, values, "test_vit").hypergradient == "unrolled"
