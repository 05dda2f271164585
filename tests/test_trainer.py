"""LKDTrainer and LKDConfig: objective, meta step, bad-input errors, logging, evaluation, saving."""

import os

import datasets
import numpy as np
import pytest
import timm
import torch
from transformers import HfArgumentParser

from lkd_hf import LearnedLoss, LKDConfig, LKDTrainer, LogitLossNet
from lkd_hf.trainer import LOSS_DIRNAME

NUM_CLASSES = 10


def make_dataset(
    n: int, num_classes: int = NUM_CLASSES, size: int = 32, seed: int = 0, label_offset: int = 0, noise: float = 0.8
):
    """Learnable synthetic images: each class is a fixed random pattern plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).normal(size=(num_classes, 3, size, size)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=n)
    images = prototypes[labels] + noise * rng.normal(size=(n, 3, size, size)).astype(np.float32)
    ds = datasets.Dataset.from_dict({"pixel_values": images, "labels": labels + label_offset})
    return ds.with_format("torch")


def make_models(num_classes: int = NUM_CLASSES, teacher_classes: int | None = None):
    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=num_classes)
    teacher = timm.create_model("test_resnet", num_classes=teacher_classes or num_classes)
    return student, teacher


def make_config(tmp_path, **overrides) -> LKDConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        max_steps=6,
        learning_rate=0.05,
        optim="sgd",
        logging_steps=3,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        meta_interval=2,
        seed=0,
    )
    defaults.update(overrides)
    return LKDConfig(**defaults)


# --- config ---------------------------------------------------------------------------------------------------
def test_config_defaults_and_cli_parsing(tmp_path):
    (config,) = HfArgumentParser(LKDConfig).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--loss", "kd", "--temperature", "2", "--per_device_train_batch_size", "8",
              "--hypergradient", "finite_difference", "--lookahead_steps", "3"]
    )
    assert (config.loss, config.temperature, config.hypergradient, config.lookahead_steps) == ("kd", 2.0, "finite_difference", 3)
    assert config.remove_unused_columns is False
    assert config.label_names == ["labels"]
    assert config.meta_batch_size == 16  # 2x the training batch by default


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_config_rejects_val_fraction_outside_unit_interval(tmp_path, fraction):
    with pytest.raises(ValueError, match="lkd_val_fraction"):
        make_config(tmp_path, lkd_val_fraction=fraction)


def test_config_rejects_unknown_hypergradient(tmp_path):
    with pytest.raises(ValueError, match="Known: finite_difference, implicit, unrolled"):
        make_config(tmp_path, hypergradient="first_order")


# --- bad input at construction ---------------------------------------------------------------------------------
def test_unknown_loss_lists_known_losses(tmp_path):
    student, teacher = make_models()
    with pytest.raises(ValueError, match=r"Unknown loss 'kdd'.*Known losses: .*dkd.*kd.*lkd"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, loss="kdd"), train_dataset=make_dataset(32))


def test_class_count_mismatch_is_an_error(tmp_path):
    student, teacher = make_models(teacher_classes=7)
    with pytest.raises(ValueError, match=r"different numbers of classes \(7 vs 10\)"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path), train_dataset=make_dataset(32))


def test_teacher_sharing_parameters_with_student_is_an_error(tmp_path):
    student, _ = make_models()
    with pytest.raises(ValueError, match="shares .* parameter"):
        LKDTrainer(model=student, teacher=student, args=make_config(tmp_path), train_dataset=make_dataset(32))


def test_optimizer_over_teacher_parameters_is_an_error(tmp_path):
    student, teacher = make_models()
    optimizer = torch.optim.SGD(list(student.parameters()) + list(teacher.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="would update the teacher"):
        LKDTrainer(
            model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32),
            optimizers=(optimizer, None),
        )


def test_teacher_is_frozen_in_eval_mode_and_unchanged_by_training(tmp_path):
    student, teacher = make_models()
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path), train_dataset=make_dataset(64))
    assert not any(p.requires_grad for p in teacher.parameters())
    trainer.train()
    assert not trainer.teacher.training
    for k, v in trainer.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_teacher_required_unless_ce(tmp_path):
    student, _ = make_models()
    with pytest.raises(ValueError, match="pass `teacher=`"):
        LKDTrainer(model=student, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32))
    LKDTrainer(model=student, args=make_config(tmp_path, loss="ce"), train_dataset=make_dataset(32))


def test_val_fraction_leaving_an_empty_split_is_an_error(tmp_path):
    student, teacher = make_models()
    with pytest.raises(ValueError, match="empty split"):
        LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, lkd_val_fraction=0.1), train_dataset=make_dataset(3))


def test_labels_outside_class_range_are_an_error(tmp_path):
    student, teacher = make_models()
    trainer = LKDTrainer(
        model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32, label_offset=5)
    )
    with pytest.raises(ValueError, match=r"outside \[0, 10\)|\[0, 10\)"):
        trainer.train()


# --- the meta step ---------------------------------------------------------------------------------------------
def _lkd_trainer(tmp_path, noise: float = 0.8, **overrides):
    student, teacher = make_models()
    args = make_config(tmp_path, **overrides)
    return LKDTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=make_dataset(96, noise=noise),
        eval_dataset=make_dataset(64, seed=1, noise=noise),
    )


def _one_batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._with_teacher_outputs(trainer._prepare_inputs(batch))


@pytest.mark.parametrize("hypergradient", ["unrolled", "finite_difference", "implicit"])
def test_meta_step_updates_only_the_loss_network(tmp_path, hypergradient):
    trainer = _lkd_trainer(tmp_path, hypergradient=hypergradient, lookahead_lr=0.1)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    student = trainer.model
    student.train()
    student_state = {k: v.clone() for k, v in student.state_dict().items()}  # includes BN running statistics
    loss_before = [p.clone() for p in trainer.loss_params]
    trainer._recent_batches.append(_one_batch(trainer))
    trainer.meta_step(student)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, student_state[k], rtol=0, atol=0, msg=f"meta step changed student {k}")
    assert all(p.grad is None for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(loss_before, trainer.loss_params))
    assert all(p.grad is None for p in trainer.loss_params)
    assert trainer._metrics["meta/hypergrad_norm"][0] > 0


def test_compute_hypergradient_changes_nothing_and_is_the_gradient_meta_step_applies(tmp_path):
    trainer = _lkd_trainer(tmp_path, meta_val_source="train_batch", meta_optimizer="sgd", meta_learning_rate=1.0,
                           meta_max_grad_norm=0.0, lookahead_lr=0.1, snapshot_strategy="current")
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.model.train()
    trainer._recent_batches.append(_one_batch(trainer))
    before = [p.detach().clone() for p in trainer.loss_params]
    grads = trainer.compute_hypergradient(trainer.model).grads
    assert [g.shape for g in grads] == [p.shape for p in trainer.loss_params]
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.loss_params))
    assert sum(g.norm() for g in grads) > 0
    trainer.meta_step(trainer.model)  # SGD, lr 1, no clipping, momentum buffer starts at the gradient: phi -= grad
    for a, p, g in zip(before, trainer.loss_params, grads):
        torch.testing.assert_close(p.detach(), a - g, rtol=1e-5, atol=1e-7)


def _hypergradient(tmp_path, **fields):
    trainer = _lkd_trainer(tmp_path, meta_val_source="train_batch", lookahead_lr=0.1, snapshot_strategy="current",
                           **fields)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.model.train()
    trainer._recent_batches.append(_one_batch(trainer))
    torch.manual_seed(0)
    return trainer.compute_hypergradient(trainer.model)


def test_virtual_step_clips_its_gradient_like_the_real_step(tmp_path):
    # plain CE: these tiny students separate the batch, where the calibrated CE (and its gradient) goes to 0
    unclipped = _hypergradient(tmp_path / "a", max_grad_norm=0.0, meta_val_loss="ce")
    clipped = _hypergradient(tmp_path / "b", max_grad_norm=1e-6, meta_val_loss="ce")  # the virtual step all but vanishes
    norm = lambda result: torch.sqrt(sum(g.square().sum() for g in result.grads))  # noqa: E731
    assert norm(unclipped) > 0
    assert norm(clipped) < 1e-3 * norm(unclipped)


def test_meta_val_loss_selects_the_outer_objective(tmp_path):
    plain = _hypergradient(tmp_path / "a", meta_val_loss="ce")
    calibrated = _hypergradient(tmp_path / "b", meta_val_loss="calibrated_ce")
    assert calibrated.val_loss < plain.val_loss  # same virtual step; the temperature-scaled CE is never larger
    assert any(not torch.allclose(a, b) for a, b in zip(plain.grads, calibrated.grads))


def test_config_rejects_unknown_meta_val_loss(tmp_path):
    with pytest.raises(ValueError, match="meta_val_loss"):
        make_config(tmp_path, meta_val_loss="accuracy")


def test_meta_step_with_frozen_knobs_learns_only_the_corrections(tmp_path):
    trainer = _lkd_trainer(tmp_path, lkd_learn_knobs=False, lookahead_lr=0.1, meta_learning_rate=0.1)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.model.train()
    net = trainer.distill_loss
    knobs = (net.log_temperature.detach().clone(), net.log_weight.detach().clone())
    heads = [p.detach().clone() for p in (net.class_head.weight, net.sample_head.weight)]
    trainer._recent_batches.append(_one_batch(trainer))
    trainer.meta_step(trainer.model)
    assert torch.equal(net.log_temperature, knobs[0]) and torch.equal(net.log_weight, knobs[1])
    assert all(not torch.equal(a, b) for a, b in zip(heads, (net.class_head.weight, net.sample_head.weight)))


def test_student_backward_does_not_touch_loss_network_gradients(tmp_path):
    trainer = _lkd_trainer(tmp_path)
    batch = _one_batch(trainer)
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch).backward()
    assert any(p.grad is not None for p in trainer.model.parameters())
    assert all(p.grad is None for p in trainer.loss_params)


def test_meta_gradient_is_clipped(tmp_path):
    trainer = _lkd_trainer(tmp_path, meta_max_grad_norm=1e-6, meta_optimizer="sgd", meta_learning_rate=1.0, lookahead_lr=0.1)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    trainer.model.train()
    before = torch.cat([p.detach().reshape(-1).clone() for p in trainer.loss_params])
    trainer._recent_batches.append(_one_batch(trainer))
    trainer.meta_step(trainer.model)
    after = torch.cat([p.detach().reshape(-1) for p in trainer.loss_params])
    assert 0 < (after - before).norm().item() <= 1.01e-6  # SGD (momentum starts at 0): step = lr * clipped grad


def test_non_finite_learned_loss_skips_meta_update_and_training_goes_on(tmp_path, monkeypatch):
    trainer = _lkd_trainer(tmp_path, max_steps=4)
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
def test_hand_made_losses_train_and_log_components(tmp_path, loss):
    trainer = _lkd_trainer(tmp_path, loss=loss)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "ce" in logged
    assert ("distill" in logged) == (loss != "ce")
    assert not any(k.startswith("meta/") for k in logged)


def test_lkd_training_logs_meta_statistics_and_evaluates(tmp_path):
    trainer = _lkd_trainer(tmp_path)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert {"ce", "distill", "meta/val_loss_before", "meta/val_loss_after", "meta/hypergrad_norm", "meta/time_share", "lkd/temperature", "lkd/weight"} <= logged
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_accuracy"] <= metrics["eval_top5_accuracy"] <= 1.0
    assert np.isfinite(metrics["eval_loss"])


@pytest.mark.slow
def test_short_lkd_run_learns_the_loss_and_the_student(tmp_path):
    """Loss network parameters move, held-out accuracy ends well above chance, and the saved loss reloads."""
    trainer = _lkd_trainer(tmp_path, noise=0.4, max_steps=50, meta_interval=2, meta_learning_rate=1e-2, learning_rate=0.05)
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
def test_meta_steps_start_from_recorded_snapshots(tmp_path):
    trainer = _lkd_trainer(
        tmp_path, max_steps=12, meta_interval=2, snapshot_interval=2, snapshot_strategy="fixed", snapshot_distance=4,
        logging_steps=12,
    )
    trainer.train()
    assert [s.step for s in trainer.snapshot_pool.snapshots] == [0, 2, 4, 6, 8, 10]
    logs = trainer.state.log_history[0]
    assert logs["meta/pool_mb"] > 0
    assert logs["meta/start_step_lag"] > 0  # the hypergradients were taken at earlier students


def test_gaussian_horizon_draws_varied_k_within_bounds(tmp_path):
    trainer = _lkd_trainer(tmp_path, lookahead_steps=3, lookahead_steps_std=1.0)
    draws = [trainer._sample_horizon() for _ in range(300)]
    assert min(draws) >= 1 and max(draws) <= 5 and len(set(draws)) >= 4
    assert 2.7 < sum(draws) / len(draws) < 3.3


def test_multi_step_horizon_and_train_batch_validation_run(tmp_path):
    trainer = _lkd_trainer(tmp_path, lookahead_steps=2, meta_val_source="train_batch", hypergradient="finite_difference")
    trainer.train()
    assert any("meta/val_loss_after" in entry for entry in trainer.state.log_history)


def test_frozen_loss_from_a_saved_loss_network_runs_without_meta_steps(tmp_path):
    learned = LogitLossNet(temperature=2.0)
    with torch.no_grad():
        learned.log_weight.fill_(-0.5)
        learned.class_head.bias.fill_(0.3)
    learned.save_pretrained(str(tmp_path / "learned"))
    student, teacher = make_models()
    train = make_dataset(64)
    args = make_config(tmp_path, loss_from=str(tmp_path / "learned"), freeze_loss=True)
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=train)
    assert trainer.loss_params == [] and trainer.meta_dataset is None
    assert len(trainer.train_dataset) == 64  # nothing held out: no meta steps
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    torch.testing.assert_close(trainer.distill_loss.cpu()(s, t, y), learned(s, t, y))
    trainer.distill_loss.to(trainer.args.device)
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "distill" in logged and not any(k.startswith("meta/") for k in logged)


def test_disk_backed_snapshot_pool_gives_the_same_meta_steps_as_memory(tmp_path):
    def run(**overrides):
        trainer = _lkd_trainer(
            tmp_path, max_steps=10, meta_interval=2, snapshot_interval=2, snapshot_strategy="fixed",
            snapshot_distance=4, logging_steps=10, **overrides,
        )
        trainer.train()
        return trainer

    memory = run()
    disk = run(snapshot_storage_dir=str(tmp_path / "pool"))
    assert disk.snapshot_pool.nbytes == 0 and disk.snapshot_pool.disk_bytes > 0
    assert sorted(os.listdir(tmp_path / "pool")) == [f"snapshot-{s}.safetensors" for s in (0, 2, 4, 6, 8)]
    assert disk.state.log_history[0]["meta/pool_disk_mb"] > 0
    for a, b in zip(memory.loss_params, disk.loss_params):
        torch.testing.assert_close(a, b)


def test_learn_loss_trains_only_the_loss_network_from_checkpoint_snapshots(tmp_path):
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
    assert [s.step for s in trainer.snapshot_pool.snapshots] == [3, 6]
    initial = [p.detach().clone() for p in trainer.loss_params]
    logs = trainer.learn_loss(4)
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.loss_params))
    assert all(torch.equal(before[n], p) for n, p in student.state_dict().items())  # the student is not trained
    assert {"meta/val_loss_before", "meta/val_loss_after", "lkd/temperature"} <= set(logs)
    assert [e["step"] for e in trainer.state.log_history] == [2, 4]


def test_learn_loss_needs_snapshots_and_a_learnable_loss(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        _lkd_trainer(tmp_path, snapshot_checkpoints=[str(tmp_path)])
    with pytest.raises(ValueError, match="snapshot_checkpoints"):
        _lkd_trainer(tmp_path).learn_loss(1)
    student, teacher = make_models()
    trainer = LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, loss="kd"), train_dataset=make_dataset(32))
    with pytest.raises(ValueError, match="learnable loss"):
        trainer.learn_loss(1)
