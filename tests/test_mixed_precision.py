"""Mixed precision (CPU bf16, tiny: bf16 autocast is ~26x slower than fp32 on this CPU).

The student step runs under the Trainer's bf16 autocast; the meta step runs in fp32 (``lkd_hf.trainer.full_precision``)
and the loss networks stay in fp32. One step per run: the first meta step comes before any student update (bf16
student steps of this tiny model can overflow on CPU, for plain CE too, which is not what these tests are about).
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import lkd_hf.trainer
from lkd_hf import LKDTrainer

from test_trainer import make_config, make_dataset, make_models


def _trainer(tmp_path, name: str, **overrides) -> LKDTrainer:
    student, teacher = make_models()
    args = make_config(tmp_path / name, per_device_train_batch_size=8, meta_batch_size=16, max_steps=1,
                       meta_interval=1, logging_steps=1, **overrides)
    return LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(48, size=16))


def _first_hypergradient(trainer: LKDTrainer) -> torch.Tensor:
    """Train; return the flattened hypergradient of the first meta step (before cross-rank averaging/clipping)."""
    grads = []
    average = trainer._average_across_ranks
    trainer._average_across_ranks = lambda g: grads.append(torch.cat([x.flatten() for x in g])) or average(g)
    trainer.train()
    return grads[0]


def test_bf16_student_step_with_fp32_meta_step(tmp_path):
    reference = _first_hypergradient(_trainer(tmp_path, "fp32"))

    mixed = _trainer(tmp_path, "bf16", bf16=True)
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


def test_meta_step_under_bf16_autocast_would_distort_the_hypergradient(tmp_path, monkeypatch):
    """Negative control: without ``full_precision`` the meta step's forwards run in bf16 and the hypergradient moves
    away from the fp32 one, which is why the meta step leaves autocast."""
    reference = _first_hypergradient(_trainer(tmp_path, "fp32"))
    monkeypatch.setattr(lkd_hf.trainer, "full_precision", lambda module, device_type: contextlib.nullcontext())
    distorted = _first_hypergradient(_trainer(tmp_path, "bf16", bf16=True))
    close = F.cosine_similarity(distorted, reference, dim=0) > 0.99 and abs(distorted.norm() / reference.norm() - 1) < 0.1
    assert not close
