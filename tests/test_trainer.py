"""LKDTrainer and LKDConfig together: the config, bad input at construction, the student step beside the loss
learner, training logs, evaluation, saving, snapshots from a run and ``learn_loss``.

The student objective alone is tested in test_objective.py, the loss learner (meta steps) in test_learner.py.
"""

import os

import datasets
import numpy as np
import pytest
import timm
import torch
from transformers import HfArgumentParser

from lkd_hf import LearnedLoss, LKDConfig, LKDTrainer, LogitLossNet
from lkd_hf.constants import LOSS_DIRNAME


@pytest.fixture
def lkd_trainer(tmp_path, make_config, make_dataset, make_models):
    """``lkd_trainer(path=tmp_path, noise=0.8, **config_overrides)``: an ``LKDTrainer`` of the tiny pair (learned
    ``lkd`` loss by default) on 96 training and 64 evaluation images."""

    def build(path=tmp_path, noise: float = 0.8, **overrides) -> LKDTrainer:
        student, teacher = make_models()
        return LKDTrainer(
            model=student,
            teacher=teacher,
            args=make_config(path, **overrides),
            train_dataset=make_dataset(96, noise=noise),
            eval_dataset=make_dataset(64, seed=1, noise=noise),
        )

    return build


def _one_batch(trainer):
    return trainer.prepare_batch(next(iter(trainer.get_train_dataloader())))


# --- config ---------------------------------------------------------------------------------------------------
def test_config_defaults_and_cli_parsing(tmp_path):
    (config,) = HfArgumentParser(LKDConfig).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--loss", "kd", "--temperature", "2", "--per_device_train_batch_size", "8",
              "--hypergradient", "finite_difference", "--lookahead_steps", "3"]
    )
    assert (config.loss, config.temperature, config.hypergradient, config.lookahead_steps) == (
        "kd", 2.0, "finite_difference", 3
    )
    assert config.remove_unused_columns is False
    assert config.label_names == ["labels"]
    assert config.meta_batch_size == 8  # the training batch by default


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_config_rejects_val_fraction_outside_unit_interval(tmp_path, fraction, make_config):
    with pytest.raises(ValueError, match="lkd_val_fraction"):
        make_config(tmp_path, lkd_val_fraction=fraction)


def test_config_rejects_unknown_meta_val_loss(tmp_path, make_config):
    with pytest.raises(ValueError, match="meta_val_loss"):
        make_config(tmp_path, meta_val_loss="accuracy")


def test_unknown_hypergradient_is_rejected_at_construction(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models()
    with pytest.raises(ValueError, match="Known: finite_difference, implicit, unrolled"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, hypergradient="first_order"),
                   train_dataset=make_dataset(32))


# --- bad input at construction ---------------------------------------------------------------------------------
def test_unknown_loss_lists_known_losses(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models()
    with pytest.raises(ValueError, match=r"Unknown loss 'kdd'.*Known losses: .*dkd.*kd.*lkd"):
        LKDTrainer(
            model=student, teacher=teacher, args=make_config(tmp_path, loss="kdd"), train_dataset=make_dataset(32)
        )


def test_class_count_mismatch_is_an_error(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models(teacher_classes=7)
    with pytest.raises(ValueError, match=r"different numbers of classes \(7 vs 10\)"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path), train_dataset=make_dataset(32))


def test_teacher_sharing_parameters_with_student_is_an_error(tmp_path, make_models, make_dataset, make_config):
    student, _ = make_models()
    with pytest.raises(ValueError, match="shares .* parameter"):
        LKDTrainer(model=student, teacher=student, args=make_config(tmp_path), train_dataset=make_dataset(32))


def test_optimizer_over_teacher_parameters_is_an_error(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models()
    optimizer = torch.optim.SGD(list(student.parameters()) + list(teacher.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="would update the teacher"):
        LKDTrainer(
            model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32),
            optimizers=(optimizer, None),
        )


def test_teacher_is_frozen_in_eval_mode_and_unchanged_by_training(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models()
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path), train_dataset=make_dataset(64))
    assert not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    assert not trainer.teacher.training
    for k, v in trainer.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_teacher_required_unless_ce(tmp_path, make_models, make_dataset, make_config):
    student, _ = make_models()
    with pytest.raises(ValueError, match="pass `teacher=`"):
        LKDTrainer(model=student, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32))
    LKDTrainer(model=student, args=make_config(tmp_path, loss="ce"), train_dataset=make_dataset(32))


def test_val_fraction_leaving_an_empty_split_is_an_error(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models()
    with pytest.raises(ValueError, match="empty split"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, lkd_val_fraction=0.1),
                   train_dataset=make_dataset(3).cast_column("labels", datasets.ClassLabel(num_classes=10)))


def test_labels_outside_class_range_are_an_error(tmp_path, make_models, make_dataset, make_config):
    student, teacher = make_models()
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):  # at construction, before any training
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"),
                   train_dataset=make_dataset(32, label_offset=5))


# --- the student step beside the loss learner -----------------------------------------------------------------
def test_prepare_batch_adds_the_teacher_outputs_once(lkd_trainer):
    trainer = lkd_trainer()
    batch = next(iter(trainer.get_train_dataloader()))
    prepared = trainer.prepare_batch(batch)
    assert set(prepared) == {"pixel_values", "labels", "teacher_logits"}
    with torch.no_grad():
        torch.testing.assert_close(prepared["teacher_logits"], trainer.teacher(batch["pixel_values"]))


def test_meta_calls_run_at_the_global_step_with_the_student_learning_rate(lkd_trainer):
    trainer = lkd_trainer(meta_val_source="train_batch", snapshot_strategy="current")
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.model.train()
    learner = trainer.loss_learner
    learner.recent_batches.append(_one_batch(trainer))
    assert [id(p) for p in trainer.loss_params] == [id(p) for p in learner.params]
    assert trainer.loss_knobs() == learner.knobs()
    torch.manual_seed(0)
    via_trainer = trainer.compute_hypergradient(trainer.model)
    torch.manual_seed(0)
    direct = learner.compute_hypergradient(trainer.student, lr=trainer.args.learning_rate)
    for a, b in zip(via_trainer.grads, direct.grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    trainer.state.global_step = 4
    trainer.meta_step(trainer.model)
    assert learner.last_step == 4 and not learner.is_due(4)


@pytest.mark.parametrize("hypergradient", ["unrolled", "finite_difference"])
def test_meta_step_from_the_live_weights_reuses_the_real_step_gradient(lkd_trainer, hypergradient, monkeypatch):
    """With the look-ahead from the live weights on the current batch (K=1), the meta step follows the student's
    backward and takes its gradient as the first virtual step's: the same hypergradient as computing it again."""
    trainer = lkd_trainer(meta_val_source="train_batch", snapshot_strategy="current", meta_interval=1,
                          hypergradient=hypergradient, max_steps=2)
    learner = trainer.loss_learner
    assert learner.reuses_step_gradient
    assert not lkd_trainer(snapshot_strategy="uniform").loss_learner.reuses_step_gradient
    assert not lkd_trainer(snapshot_strategy="current", lookahead_steps=2).loss_learner.reuses_step_gradient
    calls = []

    def compare(student, step, lr, snapshot=None, horizon=None, first_step_grads=None):
        assert first_step_grads is not None and snapshot is None
        reference = [p.grad.clone() for p in student.parameters() if p.requires_grad]
        reused = learner.compute_hypergradient(student, lr, None, horizon, first_step_grads).grads
        for g, expected in zip(first_step_grads, reference, strict=True):
            torch.testing.assert_close(g, expected)
        computed = learner.compute_hypergradient(student, lr, None, horizon).grads
        for a, b in zip(reused, computed, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        calls.append(step)

    monkeypatch.setattr(learner, "step", compare)
    trainer.train()
    assert calls == [0, 1]


def test_student_backward_does_not_touch_loss_network_gradients(lkd_trainer, tmp_path):
    trainer = lkd_trainer(tmp_path)
    batch = _one_batch(trainer)
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    assert any(p.grad is not None for p in trainer.model.parameters())
    assert all(p.grad is None for p in trainer.loss_params)


def test_non_finite_learned_loss_skips_meta_update_and_training_goes_on(lkd_trainer, tmp_path, monkeypatch):
    trainer = lkd_trainer(tmp_path, max_steps=4)
    before = [p.clone() for p in trainer.loss_params]
    original = LogitLossNet.forward

    def nan_in_meta_steps(self, s, t, y):
        value = original(self, s, t, y)
        return value * float("nan") if self.log_weight.requires_grad else value

    monkeypatch.setattr(LogitLossNet, "forward", nan_in_meta_steps)
    with pytest.warns(RuntimeWarning, match="meta update skipped"):
        trainer.train()
    assert trainer.state.global_step == 4
    for a, b in zip(before, trainer.loss_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


# --- training runs, logging, evaluation ------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["ce", "kd", "dist", "dkd"])
def test_hand_made_losses_train_and_log_components(tmp_path, loss, lkd_trainer):
    trainer = lkd_trainer(tmp_path, loss=loss)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "ce" in logged
    assert ("distill" in logged) == (loss != "ce")
    assert not any(k.startswith("meta/") for k in logged)


def test_lkd_training_logs_meta_statistics_and_evaluates(tmp_path, lkd_trainer):
    trainer = lkd_trainer(tmp_path)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {
        "ce", "distill", "meta/val_loss_before", "meta/val_loss_after", "meta/hypergrad_norm", "meta/time_share",
        "lkd/temperature", "lkd/weight",
    } <= logged
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= metrics["eval_top5_accuracy"] <= 1.0
    assert np.isfinite(metrics["eval_loss"])


@pytest.mark.slow
def test_short_lkd_run_learns_the_loss_and_the_student(tmp_path, lkd_trainer):
    """Loss network parameters move, held-out accuracy ends well above chance, and the saved loss reloads."""
    trainer = lkd_trainer(
        tmp_path, noise=0.4, max_steps=50, meta_interval=2, meta_learning_rate=1e-2, learning_rate=0.05
    )
    initial = [p.clone() for p in trainer.loss_params]
    trainer.train()
    moved = sum((a - b).abs().sum().item() for a, b in zip(initial, trainer.loss_params))
    assert moved > 1e-3
    accuracy = trainer.evaluate()["eval_accuracy"]
    assert accuracy > 0.3  # chance is 0.1
    trainer.save_model()
    loaded = LearnedLoss.from_pretrained(str(tmp_path / "out" / LOSS_DIRNAME)).logit
    s, t, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    torch.testing.assert_close(loaded(s, t, y), trainer.distill_loss.cpu()(s, t, y))
    student = timm.create_model("test_resnet", num_classes=10)
    from safetensors.torch import load_file

    student.load_state_dict(load_file(str(tmp_path / "out" / "model.safetensors")))


# --- snapshots, horizons, loss reuse ---------------------------------------------------------------------------
def test_meta_steps_start_from_recorded_snapshots(tmp_path, lkd_trainer):
    trainer = lkd_trainer(
        tmp_path, max_steps=12, meta_interval=2, snapshot_interval=2, snapshot_strategy="fixed", snapshot_distance=4,
        logging_steps=12,
    )
    trainer.train()
    assert [s.step for s in trainer.loss_learner.snapshot_pool.snapshots] == [0, 2, 4, 6, 8, 10]
    logs = trainer.state.log_history[0]
    assert logs["meta/pool_mb"] > 0
    assert logs["meta/start_step_lag"] > 0  # the hypergradients were taken at earlier students


def test_multi_step_horizon_and_train_batch_validation_run(tmp_path, lkd_trainer):
    trainer = lkd_trainer(tmp_path, lookahead_steps=2, meta_val_source="train_batch", hypergradient="finite_difference")
    trainer.train()
    assert any("meta/val_loss_after" in entry for entry in trainer.state.log_history)


def test_frozen_loss_from_a_saved_loss_network_runs_without_meta_steps(
    tmp_path, make_models, make_dataset, make_config
):
    learned = LogitLossNet(temperature=2.0)
    with torch.no_grad():
        learned.log_weight.fill_(-0.5)
        learned.class_head.bias.fill_(0.3)
    learned.save_pretrained(str(tmp_path / "learned"))
    student, teacher = make_models()
    train = make_dataset(64)
    args = make_config(tmp_path, loss_from=str(tmp_path / "learned"), freeze_loss=True)
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=train)
    assert trainer.loss_params == [] and trainer.loss_learner is None
    assert len(trainer.train_dataset) == 64  # nothing held out: no meta steps
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    torch.testing.assert_close(trainer.distill_loss.cpu()(s, t, y), learned(s, t, y))
    trainer.distill_loss.to(trainer.args.device)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "distill" in logged and not any(k.startswith("meta/") for k in logged)


def test_learn_knobs_false_keeps_a_loss_from_networks_temperature_and_weight(
    tmp_path, make_models, make_dataset, make_config
):
    LogitLossNet(temperature=2.0).save_pretrained(str(tmp_path / "learned"))
    student, teacher = make_models()
    for learn_knobs in (True, False):
        args = make_config(tmp_path, loss_from=str(tmp_path / "learned"), freeze_loss=False,
                           lkd_learn_knobs=learn_knobs, lkd_val_fraction=0.25)
        trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64))
        knobs = [trainer.distill_loss.log_temperature, trainer.distill_loss.log_weight]
        learned = {id(p) for p in trainer.loss_params}
        assert all((id(k) in learned) == learn_knobs for k in knobs)
        assert id(trainer.distill_loss.class_head.weight) in learned  # the per-class weights are learned either way


def test_disk_backed_snapshot_pool_gives_the_same_meta_steps_as_memory(tmp_path, lkd_trainer):
    def run(**overrides):
        trainer = lkd_trainer(
            tmp_path, max_steps=10, meta_interval=2, snapshot_interval=2, snapshot_strategy="fixed",
            snapshot_distance=4, logging_steps=10, **overrides,
        )
        trainer.train()
        return trainer

    memory = run()
    disk = run(snapshot_storage_dir=str(tmp_path / "pool"))
    assert disk.loss_learner.snapshot_pool.nbytes == 0 and disk.loss_learner.snapshot_pool.disk_bytes > 0
    assert sorted(os.listdir(tmp_path / "pool")) == [f"snapshot-{s}.safetensors" for s in (0, 2, 4, 6, 8)]
    assert disk.state.log_history[0]["meta/pool_disk_mb"] > 0
    for a, b in zip(memory.loss_params, disk.loss_params):
        torch.testing.assert_close(a, b)


def test_learn_loss_trains_only_the_loss_network_from_checkpoint_snapshots(
    tmp_path, make_models, make_dataset, make_config
):
    student, teacher = make_models()
    train = make_dataset(128)
    kd_args = make_config(tmp_path, loss="kd", max_steps=6, save_strategy="steps", save_steps=3)
    LKDTrainer(model=student, teacher=teacher, args=kd_args, train_dataset=train).train()
    checkpoints = [str(tmp_path / "out" / f"checkpoint-{k}") for k in (3, 6)]

    before = {n: p.detach().clone() for n, p in student.state_dict().items()}
    args = make_config(
        tmp_path, output_dir=str(tmp_path / "learn"), snapshot_checkpoints=checkpoints, lookahead_steps=2,
        logging_steps=2, meta_learning_rate=0.05,
    )
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=train)
    assert [s.step for s in trainer.loss_learner.snapshot_pool.snapshots] == [3, 6]
    initial = [p.detach().clone() for p in trainer.loss_params]
    logs = trainer.learn_loss(4)
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.loss_params))
    assert all(torch.equal(before[n], p) for n, p in student.state_dict().items())  # the student is not trained
    assert {"meta/val_loss_before", "meta/val_loss_after", "lkd/temperature"} <= set(logs)
    assert [e["step"] for e in trainer.state.log_history] == [2, 4]


def test_learn_loss_needs_snapshots_and_a_learnable_loss(tmp_path, make_models, make_dataset, make_config, lkd_trainer):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        lkd_trainer(tmp_path, snapshot_checkpoints=[str(tmp_path)])
    with pytest.raises(ValueError, match="snapshot_checkpoints"):
        lkd_trainer(tmp_path).learn_loss(1)
    student, teacher = make_models()
    trainer = LKDTrainer(
        model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32)
    )
    with pytest.raises(ValueError, match="learnable loss"):
        trainer.learn_loss(1)
