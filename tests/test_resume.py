"""Exact resume: a run stopped at step k and resumed from its checkpoint ends at step n with the same loss networks,
meta optimizer, snapshot pool and student as an uninterrupted run (CPU, seeded)."""

import json
import os

import pytest
import timm
import torch

from lkd_hf import LKDTrainer, LossLearner
from lkd_hf.meta.snapshots import SnapshotPool
from lkd_hf.constants import LKD_STATE_DIRNAME
from lkd_hf.meta.batches import MetaBatchSampler
from lkd_hf.meta.learner import SNAPSHOTS_SUBDIR as LKD_SNAPSHOTS_SUBDIR
from lkd_hf.meta.learner import STATE_NAME as LKD_STATE_NAME
from lkd_hf.resume.settings import RUN_SETTINGS_NAME

N_STEPS, RESUME_STEP = 12, 6


@pytest.fixture
def make_trainer(make_config, make_dataset):
    """``make_trainer(tmp_path, run, feature=False, **overrides)``: a fresh trainer; every run builds identical models
    and data (the resumed one from scratch too)."""

    def build(tmp_path, run: str, feature: bool = False, **overrides) -> LKDTrainer:
        torch.manual_seed(0)
        teacher = timm.create_model("test_resnet", num_classes=10)
        student = timm.create_model(
            "test_resnet", num_classes=10, **({"channels": (16, 24, 32, 48)} if feature else {})
        )
        fields = dict(
            output_dir=str(tmp_path / run),
            max_steps=N_STEPS,
            save_strategy="steps",
            save_steps=RESUME_STEP,
            # not a divisor of the resume step: statistics of an unfinished logging window are restored
            logging_steps=4,
            meta_interval=2,
            lookahead_steps=2,  # K-step horizons reuse the training batches before the checkpoint
            snapshot_interval=2,
            snapshot_pool_size=2,  # pool thinned at steps 4 (before the checkpoint) and 8 (after)
            meta_batch_size=8,  # 5 meta batches an epoch: the meta stream crosses an epoch after resuming
            lkd_val_fraction=0.25,
            meta_learning_rate=0.05,
        )
        if feature:
            # checkpoint at an epoch end
            fields.update(loss="lkd+feat", feature_taps=[-2, -1], per_device_train_batch_size=20)
        fields.update(overrides)
        return LKDTrainer(
            model=student, teacher=teacher, args=make_config(tmp_path, **fields), train_dataset=make_dataset(160)
        )

    return build


def resumed(make_trainer, tmp_path, reference: LKDTrainer, run: str, **kwargs) -> LKDTrainer:
    trainer = make_trainer(tmp_path, run, **kwargs)
    trainer.train(resume_from_checkpoint=os.path.join(reference.args.output_dir, f"checkpoint-{RESUME_STEP}"))
    return trainer


def assert_same_training_state(a: LKDTrainer, b: LKDTrainer) -> None:
    """Bit-identical loss networks, meta optimizer, snapshot pool, LKD RNGs and student (with BN statistics)."""
    assert a.state.global_step == b.state.global_step == N_STEPS
    for x, y in zip(a.loss_params, b.loss_params, strict=True):
        assert torch.equal(x, y)
    sa, sb = a.loss_learner.optimizer.state_dict(), b.loss_learner.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for key, value in sa["state"][i].items():
            assert torch.equal(value, sb["state"][i][key]), f"meta optimizer state {i}/{key}"
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), f"student {name}"
    assert [s.step for s in a.loss_learner.snapshot_pool.snapshots] == [
        s.step for s in b.loss_learner.snapshot_pool.snapshots
    ]
    assert a.loss_learner.snapshot_pool.interval == b.loss_learner.snapshot_pool.interval
    for s, t in zip(a.loss_learner.snapshot_pool.snapshots, b.loss_learner.snapshot_pool.snapshots):
        assert all(torch.equal(v, t.params[n]) for n, v in s.params.items())
    assert a.loss_learner.snapshot_pool._rng.getstate() == b.loss_learner.snapshot_pool._rng.getstate()
    assert a.loss_learner.horizon_rng.getstate() == b.loss_learner.horizon_rng.getstate()
    assert a.loss_learner.meta_batches.position == b.loss_learner.meta_batches.position


def differs(a: LKDTrainer, b: LKDTrainer) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.loss_params, b.loss_params))


# --- whole runs ------------------------------------------------------------------------------------------------
def test_resumed_lkd_run_equals_uninterrupted_run_and_needs_the_lkd_state(tmp_path, monkeypatch, make_trainer):
    """Logit LKD, uniform pool, unrolled hypergradient, checkpoint in the middle of an epoch."""
    full = make_trainer(tmp_path, "full")
    initial = [p.detach().clone() for p in full.loss_params]
    full.train()
    assert any(not torch.equal(a, b) for a, b in zip(initial, full.loss_params))  # the loss was learned
    state_dir = os.path.join(full.args.output_dir, f"checkpoint-{RESUME_STEP}", LKD_STATE_DIRNAME)
    assert sorted(os.listdir(state_dir)) == ["manifest.json", "recent_batches.pt", LKD_SNAPSHOTS_SUBDIR, LKD_STATE_NAME]
    assert sorted(os.listdir(os.path.join(state_dir, LKD_SNAPSHOTS_SUBDIR))) == [
        "pool.json", "snapshot-0.safetensors", "snapshot-4.safetensors"
    ]

    resumed_run = resumed(make_trainer, tmp_path, full, "resumed")
    assert_same_training_state(full, resumed_run)

    # negative control: the Trainer's own resume (student, optimizer, scheduler, RNG, data) without the LKD state
    monkeypatch.setattr(LossLearner, "load_checkpoint", lambda self, checkpoint, loss="": None)
    partial = resumed(make_trainer, tmp_path, full, "partial")
    assert differs(full, partial)


def test_resumed_feature_distillation_run_equals_uninterrupted_run(tmp_path, make_trainer):
    """lkd+feat (both loss networks learned, connectors restored), checkpoint at an epoch boundary."""
    full = make_trainer(tmp_path, "full", feature=True)
    full.train()
    assert full.state.epoch == pytest.approx(2.0)  # 6 steps an epoch: the checkpoint is at the epoch boundary
    resumed_run = resumed(make_trainer, tmp_path, full, "resumed", feature=True)
    assert_same_training_state(full, resumed_run)
    assert len(resumed_run.loss_params) > len(list(resumed_run.distill_loss.parameters()))  # feature loss learned too


def test_resumed_finite_difference_run_with_disk_pool_and_gaussian_horizon(tmp_path, make_trainer):
    """finite_difference estimator, a disk-backed pool and random horizons (the horizon RNG is restored)."""
    options = dict(hypergradient="finite_difference", lookahead_steps_std=0.5, snapshot_strategy="gaussian",
                   snapshot_distance=4)
    full = make_trainer(tmp_path, "full", snapshot_storage_dir=str(tmp_path / "pool_full"), **options)
    full.train()
    # the original run thinned the pool after the checkpoint: snapshot-4 is gone from its storage, not from checkpoint-6
    assert sorted(os.listdir(tmp_path / "pool_full")) == ["snapshot-0.safetensors", "snapshot-8.safetensors"]
    resumed_run = resumed(
        make_trainer, tmp_path, full, "resumed", snapshot_storage_dir=str(tmp_path / "pool_resumed"), **options
    )
    assert resumed_run.loss_learner.snapshot_pool.nbytes == 0
    assert sorted(os.listdir(tmp_path / "pool_resumed")) == ["snapshot-0.safetensors", "snapshot-8.safetensors"]
    assert_same_training_state(full, resumed_run)


def test_hand_made_loss_resumes_and_a_checkpoint_without_lkd_state_or_settings_warns(tmp_path, make_trainer):
    kd = make_trainer(tmp_path, "kd", loss="kd")
    kd.train()
    checkpoint = os.path.join(kd.args.output_dir, f"checkpoint-{RESUME_STEP}")
    assert not os.path.exists(os.path.join(checkpoint, LKD_STATE_DIRNAME))  # nothing to save for a hand-made loss
    settings_path = os.path.join(checkpoint, RUN_SETTINGS_NAME)
    with open(settings_path) as f:
        settings = json.load(f)
    assert settings["population_drop"] is None  # no drops are recorded as a checkpoint without the field reads
    del settings["population_drop"]
    with open(settings_path, "w") as f:  # as written before checkpoints recorded the population's drops
        json.dump(settings, f)
    kd_resumed = resumed(make_trainer, tmp_path, kd, "kd_resumed", loss="kd")
    for (name, x), (_, y) in zip(kd.model.state_dict().items(), kd_resumed.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name

    lkd = make_trainer(tmp_path, "lkd_from_kd")
    with pytest.raises(ValueError, match=r"(?s)settings differ.*- loss \(the loss spec.*\): saved 'kd', now 'lkd'"):
        lkd.train(resume_from_checkpoint=checkpoint)  # the checkpoint of another loss
    os.remove(os.path.join(checkpoint, RUN_SETTINGS_NAME))  # as written before checkpoints recorded their settings
    initial = [p.detach().clone() for p in lkd.loss_params]
    with pytest.warns(UserWarning) as warned:
        lkd.train(resume_from_checkpoint=checkpoint)
    messages = " ".join(str(w.message) for w in warned)
    assert f"records no {RUN_SETTINGS_NAME}" in messages and "holds no LKD state" in messages
    assert lkd.state.global_step == N_STEPS
    assert any(not torch.equal(a, b) for a, b in zip(initial, lkd.loss_params))  # learned from its initial weights


def test_checkpoint_of_another_loss_is_an_error(tmp_path, make_trainer):
    lkd = make_trainer(tmp_path, "lkd", max_steps=RESUME_STEP)
    lkd.train()
    feature = make_trainer(tmp_path, "feat", feature=True)
    with pytest.raises(ValueError, match="without a feature distillation loss"):
        feature.loss_learner.load_checkpoint(os.path.join(lkd.args.output_dir, f"checkpoint-{RESUME_STEP}"))


# --- the parts -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size, batch_size", [(23, 5), (3, 8)])
def test_meta_batch_stream_restarts_at_any_position(size, batch_size):
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    stream = take(MetaBatchSampler(size, batch_size, seed=3), 20)
    assert take(MetaBatchSampler(size, batch_size, seed=3, start=7), 13) == stream[7:]
    per_epoch = max(size // batch_size, 1)
    first_epoch = [i for batch in stream[:per_epoch] for i in batch]
    assert len(set(first_epoch)) == len(first_epoch) == min(size, per_epoch * batch_size)  # no repeats in an epoch
    epochs = {tuple(map(tuple, stream[e * per_epoch : (e + 1) * per_epoch])) for e in range(20 // per_epoch)}
    assert len(epochs) > 1  # reshuffled per epoch
    assert take(MetaBatchSampler(size, batch_size, seed=4), 20) != stream


@pytest.mark.parametrize("source_on_disk, target_on_disk", [(False, False), (True, True), (False, True), (True, False)])
def test_pool_state_round_trip(tmp_path, source_on_disk, target_on_disk):
    def pool(name, on_disk):
        return SnapshotPool(max_size=2, interval=1, seed=5, storage_dir=str(tmp_path / name) if on_disk else None)

    source = pool("source", source_on_disk)
    for step in range(3):  # thinned once: [0, 2], interval 2
        source.maybe_record(step, {"w": torch.full((4,), float(step))})
    source.sample(3)
    source.save_state(str(tmp_path / "saved"))
    source.maybe_record(4, {"w": torch.full((4,), 4.0)})  # thins again: a disk pool deletes snapshot-2's file

    target = pool("target", target_on_disk)
    target.maybe_record(0, {"w": torch.full((4,), -1.0)})  # replaced by the restored snapshots
    target.load_state(str(tmp_path / "saved"))
    assert [s.step for s in target.snapshots] == [0, 2] and target.interval == 2
    assert [s.params["w"][0].item() for s in target.snapshots] == [0.0, 2.0]
    assert (target.nbytes == 0) == target_on_disk
    if target_on_disk:
        assert sorted(os.listdir(tmp_path / "target")) == ["snapshot-0.safetensors", "snapshot-2.safetensors"]

    reference = pool("reference", False)  # the same history, never saved: the RNG continues identically
    for step in range(3):
        reference.maybe_record(step, {"w": torch.full((4,), float(step))})
    reference.sample(3)
    assert [getattr(target.sample(5), "step", None) for _ in range(30)] == [
        getattr(reference.sample(5), "step", None) for _ in range(30)
    ]
