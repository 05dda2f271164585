"""Mixed precision (CPU bf16, tiny: bf16 autocast is ~26x slower than fp32 on this CPU).

The student step runs under the Trainer's bf16 autocast; the meta step's training-loss passes run in fp32 and its
validation pass in ``meta_precision`` (bf16 under ``bf16=True`` by default; ``lkd_hf.meta.learner.full_precision``
keeps Accelerate's autocast wrapper out of it), and the loss networks stay in fp32. One step per run: the first
meta step comes before any student update (bf16 student steps of this tiny model can overflow on CPU, for plain CE
too, which is not what these tests are about).
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import lkd_hf.meta.learner as learner_module
from lkd_hf import LKDTrainer


@pytest.fixture
def make_trainer(make_config, make_dataset, make_models):
    """``make_trainer(tmp_path, name, **overrides)``: one step of the tiny pair, with a meta step before it."""

    def build(tmp_path, name: str, size: int = 16, **overrides) -> LKDTrainer:
        student, teacher = make_models()
        args = make_config(tmp_path / name, per_device_train_batch_size=8, meta_batch_size=16, max_steps=1,
                           meta_interval=1, logging_steps=1, **overrides)
        return LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(48, size=size))

    return build


def _first_hypergradient(trainer: LKDTrainer) -> torch.Tensor:
    """Train; return the flattened hypergradient of the first meta step (before cross-rank averaging/clipping)."""
    grads = []
    average = learner_module.mean_across_processes
    learner_module.mean_across_processes = lambda g: grads.append(torch.cat([x.flatten() for x in g])) or average(g)
    try:
        trainer.train()
    finally:
        learner_module.mean_across_processes = average
    return grads[0]


def test_bf16_student_step_with_fp32_meta_step(tmp_path, make_trainer):
    reference = _first_hypergradient(make_trainer(tmp_path, "fp32"))

    mixed = make_trainer(tmp_path, "bf16", bf16=True, meta_precision="fp32")
    hypergradient = _first_hypergradient(mixed)
    assert mixed.accelerator.mixed_precision == "bf16"
    assert mixed.state.global_step == 1
    assert all(p.dtype == torch.float32 for p in mixed.loss_params)
    assert all(p.dtype == torch.float32 for p in mixed.student.parameters())  # fp32 master weights
    logged = [h for h in mixed.state.log_history if "meta/hypergrad_norm" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["meta/hypergrad_norm"])) for h in logged)
    # the meta step saw (nearly) the fp32 problem: only the teacher's and BN's bf16 inputs differ
    assert F.cosine_similarity(hypergradient, reference, dim=0) > 0.99
    assert hypergradient.norm() == pytest.approx(reference.norm().item(), rel=0.1)


def test_meta_step_under_bf16_autocast_would_distort_the_hypergradient(tmp_path, monkeypatch, make_trainer):
    """Negative control: without ``full_precision`` the meta step's forwards run in bf16 and the hypergradient moves
    away from the fp32 one, which is why the meta step leaves autocast."""
    reference = _first_hypergradient(make_trainer(tmp_path, "fp32"))
    monkeypatch.setattr(learner_module, "full_precision", lambda module: contextlib.nullcontext())
    distorted = _first_hypergradient(make_trainer(tmp_path, "bf16", bf16=True, meta_precision="fp32"))
    close = (
        F.cosine_similarity(distorted, reference, dim=0) > 0.99
        and abs(distorted.norm() / reference.norm() - 1) < 0.1
    )
    assert not close


def test_a_bf16_run_takes_bf16_meta_steps_that_stay_close_to_fp32(tmp_path, make_trainer):
    """``meta_precision="auto"`` follows ``bf16=True``: the validation pass in bf16, exact forward-mode products.
    32 px: at 16 px this CPU's bf16 kernels can return NaN gradients for the 1x1 maps of the last stage."""
    reference = _first_hypergradient(make_trainer(tmp_path, "fp32", size=32))
    mixed = make_trainer(tmp_path, "bf16", size=32, bf16=True)
    assert mixed.loss_learner.bf16
    hypergradient = _first_hypergradient(mixed)
    assert F.cosine_similarity(hypergradient, reference, dim=0) > 0.99
