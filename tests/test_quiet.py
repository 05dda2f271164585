"""Quiet by default: no deprecation warnings from the package's own metadata or code, no pin_memory warning on CPU,
learned-loss knobs as plain numbers."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_metadata_builds_without_a_warning(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copy(ROOT / "README.md", tmp_path)
    (tmp_path / "lkd_hf").mkdir()
    shutil.copy(ROOT / "lkd_hf" / "version.py", tmp_path / "lkd_hf")
    (tmp_path / "lkd_hf" / "__init__.py").touch()
    (tmp_path / "out").mkdir()
    build = (
        "import sys; from setuptools.build_meta import prepare_metadata_for_build_wheel as prepare; "
        "out = sys.argv[1]; name = prepare(out); print(open(f'{out}/{name}/METADATA').read())"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", build, str(tmp_path / "out")], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "License-Expression: Apache-2.0" in result.stdout


def test_the_unrolled_check_does_not_pass_on_torchs_jit_deprecation():
    # a fresh interpreter: torch warns only at its first forward-mode call of a process
    check = (
        "import timm, lkd_hf; from lkd_hf.run_checks import check_unrolled_support; "
        "check_unrolled_support(timm.create_model('test_resnet', num_classes=10), (3, 32, 32))"
    )
    result = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", check], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_cpu_runs_do_not_pin_memory(tmp_path):
    from lkd_hf import LKDConfig

    assert LKDConfig(output_dir=str(tmp_path), use_cpu=True).dataloader_pin_memory is False
    on_cpu_only = not torch.accelerator.is_available()
    assert LKDConfig(output_dir=str(tmp_path)).dataloader_pin_memory is not on_cpu_only


@pytest.mark.filterwarnings("error")
def test_loaded_learned_loss_knobs_are_plain_numbers():
    import lkd_hf

    loss = lkd_hf.LearnedLoss.from_pretrained(lkd_hf.PRETRAINED_LOSS_DIR)
    knobs = loss.logit.knobs()
    assert set(knobs) == {"temperature", "weight", "dist_beta", "dist_gamma"}
    assert all(type(value) is float for value in knobs.values())
    assert knobs["temperature"] == pytest.approx(float(loss.logit.temperature.detach()))
    assert f"temperature={knobs['temperature']:.3f}" in repr(loss.logit) and "tensor" not in repr(loss.logit)
    assert lkd_hf.FeatureLossNet().knobs() == {"weight": 1.0}
