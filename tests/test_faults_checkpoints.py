"""Faults in checkpoints: every file of a checkpoint is verified before a resume uses it (the Trainer's own files
included), a full disk during a save ends the run naming the folder, and the next resume uses the last complete
checkpoint."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_config, make_dataset, make_models

from lkd_hf import LKDTrainer
from lkd_hf.constants import LKD_STATE_DIRNAME, LOSS_DIRNAME
from lkd_hf.meta.learner import STATE_NAME
from lkd_hf.resume.checks import (
    checkpoint_problem,
    checkpoint_to_resume,
    last_complete_checkpoint,
)

RUN_FIELDS = {"loss": "lkd", "max_steps": 2, "save_strategy": "steps", "save_steps": 1, "meta_interval": 1,
              "hypergradient": "finite_difference", "lkd_val_fraction": 0.25, "per_device_train_batch_size": 8}


def _trainer(tmp_path, **fields):
    student, teacher = make_models()
    return LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, **{**RUN_FIELDS, **fields}),
                      train_dataset=make_dataset(64))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The output folder of an LKD run of 2 steps with checkpoints at steps 1 and 2 (trained once per module)."""
    tmp_path = tmp_path_factory.mktemp("trained")
    _trainer(tmp_path).train()
    return str(tmp_path / "out")


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of :func:`trained_run`'s output folder: ``(output_dir, checkpoint-1, checkpoint-2)``."""
    out = str(tmp_path / "out")
    shutil.copytree(trained_run, out)
    return out, os.path.join(out, "checkpoint-1"), os.path.join(out, "checkpoint-2")


def _damage(path: str, how: str) -> None:
    if how == "missing":
        os.remove(path)
        return
    data = Path(path).read_bytes()
    Path(path).write_bytes(b"" if how == "empty" else data[: len(data) // 2])


CHECKPOINT_FILES = ["trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                    "training_args.bin", f"{LOSS_DIRNAME}/config.json", f"{LOSS_DIRNAME}/model.safetensors",
                    f"{LKD_STATE_DIRNAME}/{STATE_NAME}"]
REQUIRED_FILES = ["trainer_state.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                  f"{LKD_STATE_DIRNAME}/{STATE_NAME}"]  # the others: only their damage is a fault


@pytest.mark.parametrize("name, how", [(name, how) for name in CHECKPOINT_FILES
                                       for how in ("missing", "empty", "truncated")
                                       if how != "missing" or name in REQUIRED_FILES])
def test_a_damaged_file_makes_resume_skip_the_checkpoint_naming_the_file(run_copy, name, how):
    out, first, last = run_copy
    path = os.path.join(last, name)
    _damage(path, how)
    assert checkpoint_problem(first) is None
    skipped = f"Skipping the incomplete checkpoint .*checkpoint-2: .*{os.path.basename(name)}"
    with pytest.warns(UserWarning, match=skipped):
        assert last_complete_checkpoint(out) == first
    with pytest.raises(ValueError, match=f"Cannot resume from .*checkpoint-2: .*{os.path.basename(name)}.* earlier "
                                         "checkpoint, or pass resume_from_checkpoint=True"):
        checkpoint_to_resume(last, out)


def test_a_flipped_byte_in_a_torch_file_is_found_by_its_checksum(run_copy):
    _, _, last = run_copy
    import zipfile

    path = os.path.join(last, "rng_state.pth")
    data = bytearray(Path(path).read_bytes())
    entry = max(zipfile.ZipFile(path).infolist(), key=lambda info: info.file_size)
    name_and_extra = int.from_bytes(data[entry.header_offset + 26: entry.header_offset + 28], "little") + \
        int.from_bytes(data[entry.header_offset + 28: entry.header_offset + 30], "little")
    data[entry.header_offset + 30 + name_and_extra + entry.file_size // 2] ^= 0xFF  # a byte of its stored data
    Path(path).write_bytes(bytes(data))
    assert "rng_state.pth holds a damaged entry" in checkpoint_problem(last)


def test_a_model_only_run_does_not_need_the_optimizer(run_copy):
    _, _, last = run_copy
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        os.remove(os.path.join(last, name))
    assert checkpoint_problem(last, full_state=False) is None
    assert "optimizer.pt is missing" in checkpoint_problem(last)


@pytest.mark.parametrize("explicit", [True, False])
def test_train_refuses_a_damaged_checkpoint_path_or_skips_it_when_resuming_from_the_last(run_copy, tmp_path, explicit):
    """An explicit path: an error before training. ``True``: the last complete checkpoint, and the run finishes."""
    _, _, last = run_copy
    _damage(os.path.join(last, "optimizer.pt"), "truncated")
    trainer = _trainer(tmp_path, save_strategy="no")
    problem = r"optimizer\.pt cannot be read .*BadZipFile"
    expect = pytest.raises(ValueError, match=problem) if explicit else pytest.warns(UserWarning, match=problem)
    with expect:
        trainer.train(resume_from_checkpoint=last if explicit else True)
    assert trainer.state.global_step == (0 if explicit else 2)


FULL_DISK_RUN = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from conftest import make_config, make_dataset, make_models
    from transformers import TrainerCallback
    from lkd_hf import LKDTrainer

    class DiskFullAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    student, teacher = make_models()
    trainer = LKDTrainer(model=student, teacher=teacher, args=make_config(Path({tmp!r}), **{fields!r}),
                         train_dataset=make_dataset(64), callbacks=[DiskFullAfterFirstSave()])
    try:
        trainer.train()
    except RuntimeError as error:
        print(error)
        sys.exit(3)
""")


def test_a_full_disk_during_a_save_ends_the_run_naming_the_folder_and_resume_uses_the_last_complete_one(tmp_path):
    script = FULL_DISK_RUN.format(tests=str(Path(__file__).parent), tmp=str(tmp_path), fields=RUN_FIELDS)
    root = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                            check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Saving the checkpoint" in result.stdout and "checkpoint-2 failed" in result.stdout
    assert "If the disk is full, free space, then resume with train(resume_from_checkpoint=True)" in result.stdout
    trainer = _trainer(tmp_path, save_strategy="no")
    with pytest.warns(UserWarning, match=r"Skipping the incomplete checkpoint .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 2
