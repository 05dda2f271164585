"""Faults injected into training: non-finite steps, bad settings, shared output folders, interrupted saves and
damaged LKD state. Each run fails loudly and early, or goes on without losing or corrupting anything."""

import json
import os

import pytest
import timm
import torch
from conftest import load_script
from torch import nn

from lkd_hf import LKDTrainer
from lkd_hf.constants import LKD_STATE_DIRNAME
from lkd_hf.meta.learner import STATE_NAME, SNAPSHOTS_SUBDIR
from lkd_hf.safe_io import LOCK_NAME, OutputDirLock


class FlakyTeacher(nn.Module):
    """A teacher whose logits are NaN on the calls listed in ``bad_calls`` (0-based)."""

    def __init__(self, teacher: nn.Module, bad_calls: set[int] | None = None, always: bool = False) -> None:
        super().__init__()
        self.teacher, self.bad_calls, self.always, self.calls = teacher, bad_calls or set(), always, 0
        self.num_classes = teacher.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.teacher(x)
        bad = self.always or self.calls in self.bad_calls
        self.calls += 1
        return torch.full_like(logits, float("nan")) if bad else logits


def _all_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(t).all() for t in model.state_dict().values())


@pytest.fixture
def lkd_run(tmp_path, make_config, make_dataset, make_models):
    """Build an LKD trainer on 64 synthetic images: ``lkd_run(teacher_wrapper=None, train_dataset=None, **fields)``."""

    def build(teacher_wrapper=None, train_dataset=None, **fields):
        student, teacher = make_models()
        teacher = teacher if teacher_wrapper is None else teacher_wrapper(teacher)
        args = make_config(tmp_path, **{"loss": "kd", **fields})
        return LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=train_dataset or make_dataset(64))

    return build


# --- non-finite student steps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["kd", "lkd"])
def test_a_nan_teacher_batch_skips_the_step_and_leaves_the_student_unchanged(lkd_run, loss):
    trainer = lkd_run(lambda t: FlakyTeacher(t, bad_calls={1}), loss=loss, max_steps=3, logging_steps=1,
                      meta_interval=1, hypergradient="finite_difference")
    with pytest.warns(RuntimeWarning, match=r"Step 1: non-finite teacher_logits, distill"):
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["skipped_steps"] for h in logs] == [0, 1, 0]
    assert all(torch.isfinite(torch.tensor(h["distill"])) for h in logs if "distill" in h)
    assert _all_finite(trainer.model)


def test_the_skipped_step_does_not_move_the_student(lkd_run):
    """Weights after step 1 (skipped) equal those after step 0: the optimizer saw no gradient."""
    trainer = lkd_run(lambda t: FlakyTeacher(t, bad_calls={1}), max_steps=2, optim="sgd", weight_decay=0.1)
    seen = []
    trainer.add_callback(type("Recorder", (__import__("transformers").TrainerCallback,), {
        "on_step_end": lambda self, args, state, control, model=None, **kw: seen.append(
            [p.detach().clone() for p in model.parameters()])
    })())
    with pytest.warns(RuntimeWarning, match="Step 1"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1]))


def test_nan_pixels_skip_the_step_and_keep_the_batch_norm_statistics_finite(lkd_run, make_dataset):
    import datasets

    data = make_dataset(32)[:]
    pixels = data["pixel_values"].clone()
    pixels[3] = float("nan")
    bad = datasets.Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": data["labels"].numpy()})
    bad = bad.with_format("torch")
    trainer = lkd_run(train_dataset=bad, max_steps=2, per_device_train_batch_size=32)
    with pytest.warns(RuntimeWarning, match="Step 0: non-finite pixel_values"):
        trainer.train()
    assert _all_finite(trainer.model)


def test_consecutive_non_finite_steps_stop_training_with_a_clear_error(lkd_run):
    trainer = lkd_run(lambda t: FlakyTeacher(t, always=True), max_steps=10, max_nonfinite_steps=3)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="3 student steps in a row .* training stops"):
        trainer.train()
    assert trainer.state.global_step == 2  # steps 0, 1, 2 skipped: stopped in the third


def test_a_non_finite_student_is_never_saved(lkd_run, tmp_path):
    trainer = lkd_run()
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(RuntimeError, match="Refusing saving the student .* non-finite weights"):
        trainer.save_model(str(tmp_path / "saved"))
    assert not os.path.exists(tmp_path / "saved" / "model.safetensors")


# --- settings checked at construction -------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["temperature", "dist_temperature", "ls_temperature", "ctkd_temperature_range"])
def test_temperatures_must_be_positive(tmp_path, make_config, field):
    with pytest.raises(ValueError, match=f"{field} must be > 0"):
        make_config(tmp_path, **{field: 0.0})


def test_meta_batch_size_must_be_positive(tmp_path, make_config):
    with pytest.raises(ValueError, match="meta_batch_size must be >= 1"):
        make_config(tmp_path, meta_batch_size=0)


class NoDoubleBackwardNet(nn.Module):
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.hardsigmoid(self.conv(x)).mean((2, 3)))  # no double backward in torch


def test_unrolled_on_a_student_without_double_backward_fails_at_construction(tmp_path, make_config, make_dataset):
    teacher = timm.create_model("test_resnet", num_classes=10)
    args = make_config(tmp_path, loss="lkd", hypergradient="unrolled")
    with pytest.raises(ValueError, match=r"does not support .*LKDConfig\(hypergradient='finite_difference'\)"):
        LKDTrainer(model=NoDoubleBackwardNet(), teacher=teacher, args=args, train_dataset=make_dataset(32))
    args = make_config(tmp_path, loss="lkd", hypergradient="finite_difference")
    LKDTrainer(model=NoDoubleBackwardNet(), teacher=teacher, args=args, train_dataset=make_dataset(32))


def test_a_train_set_without_labels_fails_at_construction(lkd_run, make_dataset):
    with pytest.raises(ValueError, match="train_dataset"):
        lkd_run(train_dataset=make_dataset(32).remove_columns("labels"))


def test_meta_warmup_ratio_delays_the_first_meta_step(lkd_run):
    trainer = lkd_run(loss="lkd", max_steps=8, meta_interval=1, meta_warmup_ratio=0.5, logging_steps=1,
                      meta_val_source="train_batch", hypergradient="finite_difference")
    trainer.train()
    meta_logged = [h["step"] for h in trainer.state.log_history if "meta/hypergrad_norm" in h]
    assert meta_logged and min(meta_logged) == 5  # step 4 (= ceil(0.5 * 8)) is logged as step 5


# --- one run per output folder ----------------------------------------------------------------------------------
def test_a_second_run_on_an_output_dir_in_use_fails_at_start(lkd_run, tmp_path):
    trainer = lkd_run()
    with OutputDirLock(trainer.args.output_dir):
        with pytest.raises(RuntimeError, match="is in use by another run .* pid"):
            trainer.train()
    assert trainer.state.global_step == 0


def test_a_lock_left_by_a_crashed_run_does_not_block(lkd_run):
    trainer = lkd_run(max_steps=1)
    os.makedirs(trainer.args.output_dir, exist_ok=True)
    with open(os.path.join(trainer.args.output_dir, LOCK_NAME), "w") as f:
        f.write("host gone, pid 999999")  # the file of a dead process holds no OS lock
    trainer.train()
    assert trainer.state.global_step == 1
    assert not os.path.exists(os.path.join(trainer.args.output_dir, LOCK_NAME))  # the run removes it when it ends


def test_the_next_run_locks_the_folder_anew_and_removes_its_file_too(tmp_path):
    with OutputDirLock(str(tmp_path)) as first:
        assert os.path.exists(first.path)
    assert not os.path.exists(first.path)
    with OutputDirLock(str(tmp_path)):
        with pytest.raises(RuntimeError, match="in use by another run"):
            OutputDirLock(str(tmp_path)).__enter__()
    assert not os.path.exists(first.path)


# --- interrupted saves and damaged state -------------------------------------------------------------------------
@pytest.fixture
def checkpointed(lkd_run):
    """An LKD run of 2 steps with checkpoints at steps 1 and 2: ``(trainer, checkpoint-1, checkpoint-2)``."""
    trainer = lkd_run(loss="lkd", max_steps=2, save_strategy="steps", save_steps=1, meta_interval=1,
                      hypergradient="finite_difference", lkd_val_fraction=0.25, per_device_train_batch_size=8)
    trainer.train()
    out = trainer.args.output_dir
    return trainer, os.path.join(out, "checkpoint-1"), os.path.join(out, "checkpoint-2")


def test_resume_skips_an_incomplete_last_checkpoint(checkpointed, lkd_run):
    _, _, last = checkpointed
    os.remove(os.path.join(last, "trainer_state.json"))  # killed while saving: the Trainer writes it last
    resumed = lkd_run(loss="lkd", max_steps=2, save_strategy="no", meta_interval=1,
                      hypergradient="finite_difference", lkd_val_fraction=0.25, per_device_train_batch_size=8)
    with pytest.warns(UserWarning, match="Skipping the incomplete checkpoint .*checkpoint-2"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2


def _damage(path: str, how: str) -> None:
    data = open(path, "rb").read()
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    else:  # flip one byte in the middle
        i = len(data) // 2
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    open(path, "wb").write(data)


@pytest.mark.parametrize("target, how", [
    (STATE_NAME, "truncate"), (STATE_NAME, "empty"), (STATE_NAME, "flip"),
    (f"{SNAPSHOTS_SUBDIR}/pool.json", "truncate"), (f"{SNAPSHOTS_SUBDIR}/snapshot-0.safetensors", "truncate"),
])
def test_damaged_lkd_state_is_an_error_naming_the_file(checkpointed, target, how):
    trainer, _, last = checkpointed
    path = os.path.join(last, LKD_STATE_DIRNAME, target)
    _damage(path, how)
    with pytest.raises(ValueError, match=f"{os.path.basename(target)}.*(checksum|earlier checkpoint)"):
        trainer.loss_learner.load_checkpoint(last)


def test_lkd_state_without_its_manifest_is_an_error(checkpointed):
    trainer, _, last = checkpointed
    os.remove(os.path.join(last, LKD_STATE_DIRNAME, "manifest.json"))
    with pytest.raises(ValueError, match="manifest.json"):
        trainer.loss_learner.load_checkpoint(last)


def test_a_failing_lkd_state_save_leaves_the_previous_state_whole(checkpointed, monkeypatch):
    trainer, _, last = checkpointed
    state_dir = os.path.join(last, LKD_STATE_DIRNAME)
    before = {f: open(os.path.join(state_dir, f), "rb").read() for f in (STATE_NAME, "manifest.json")}

    def broken(directory):
        os.makedirs(directory)
        raise OSError("disk full")

    monkeypatch.setattr(trainer.loss_learner.snapshot_pool, "save_state", broken)
    with pytest.raises(OSError, match="disk full"):
        trainer.loss_learner.save_checkpoint(last)
    assert {f: open(os.path.join(state_dir, f), "rb").read() for f in before} == before
    assert not [f for f in os.listdir(last) if f"{LKD_STATE_DIRNAME}.tmp-" in f]  # no temporary folder left
    trainer.loss_learner.load_checkpoint(last)  # still loads
    assert json.load(open(os.path.join(state_dir, "manifest.json")))["files"]


def test_an_eval_set_without_labels_fails_at_construction(tmp_path, make_config, make_dataset, make_models):
    student, teacher = make_models()
    with pytest.raises(ValueError, match="eval_dataset"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"),
                   train_dataset=make_dataset(32), eval_dataset=make_dataset(16).remove_columns("labels"))


# --- where the meta steps validate -----------------------------------------------------------------------------
def test_by_default_no_training_image_is_held_out(lkd_run):
    trainer = lkd_run(loss="lkd")
    assert len(trainer.train_dataset) == 64
    assert trainer.loss_learner.val_source == "train_batch" and trainer.loss_learner.meta_dataset is None


def test_a_validation_split_passed_in_is_the_meta_set(tmp_path, make_config, make_dataset, make_models):
    student, teacher = make_models()
    validation = make_dataset(24, seed=5)
    trainer = LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, loss="lkd"),
                         train_dataset=make_dataset(64), meta_dataset=validation)
    assert len(trainer.train_dataset) == 64
    assert trainer.loss_learner.val_source == "heldout" and trainer.loss_learner.meta_dataset is validation


def test_holding_out_part_of_the_training_set_is_asked_for(lkd_run):
    trainer = lkd_run(loss="lkd", lkd_val_fraction=0.25)
    assert len(trainer.train_dataset) == 48 and len(trainer.loss_learner.meta_dataset) == 16
    with pytest.raises(ValueError, match="needs validation data"):
        lkd_run(loss="lkd", meta_val_source="heldout")


def test_the_recipes_start_no_more_dataloader_workers_than_cores():
    """More workers than cores make torch warn once per DataLoader (six times a run)."""
    import pathlib

    recipes = pathlib.Path(__file__).resolve().parents[1] / "recipes"
    for name in ("cifar", "imagenet"):
        module = load_script(recipes / f"{name}.py", f"recipe_{name}_workers")
        assert module.TRAINER_DEFAULTS["dataloader_num_workers"] <= (os.cpu_count() or 1)
