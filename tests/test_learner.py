"""LossLearner without a Trainer: the schedule (``is_due``, ``observe``, ``sample_horizon``), the meta step, the
hypergradient, learning the loss from snapshots, metrics, and saving / loading its state."""

import itertools
import os
from types import SimpleNamespace

import pytest
import torch

import lkd_hf.meta.learner
from lkd_hf import DistillationObjective, ImageCollator, LogitLossNet, LossLearner
from lkd_hf.constants import LKD_STATE_DIRNAME
from lkd_hf.meta.learner import SNAPSHOTS_SUBDIR, STATE_NAME

NUM_CLASSES = 10
LR = 0.05  # the student's learning rate handed to the learner
SIZE = 16  # image side


@pytest.fixture
def make_learner(tmp_path, make_config, make_dataset, make_models):
    """``make_learner(path=tmp_path, meta_data=True, **config_overrides)``: a learner of a tiny student's learned
    logit loss, with the student (in training mode) and six training batches of 16 images (16x16) with their
    ``teacher_logits``. ``meta_data``: give the learner a validation set of 32 images."""

    def build(path=tmp_path, meta_data: bool = True, **overrides) -> SimpleNamespace:
        student, teacher = make_models()
        teacher.eval().requires_grad_(False)
        args = make_config(path, **overrides)
        loss_net = LogitLossNet(
            temperature=args.temperature, hidden_dim=args.loss_hidden_dim,
            learn_temperature=args.lkd_learn_knobs, learn_weight=args.lkd_learn_knobs,
        )
        objective = DistillationObjective(loss_net, ce_weight=args.ce_weight, distill_weight=args.distill_weight)
        collate = ImageCollator(num_classes=NUM_CLASSES)
        meta = make_dataset(32, size=SIZE, seed=1) if meta_data else None
        learner = LossLearner(objective, args, meta_dataset=meta, collate_fn=collate)
        train = collate([example for example in make_dataset(96, size=SIZE)])
        with torch.no_grad():
            train["teacher_logits"] = teacher(train["pixel_values"])
        size = args.per_device_train_batch_size
        batches = [{k: v[i : i + size] for k, v in train.items()} for i in range(0, 96, size)]
        student.train()
        return SimpleNamespace(learner=learner, student=student, loss_net=loss_net, batches=batches, args=args)

    return build


def student_state(student):
    return {k: v.detach().clone() for k, v in student.state_dict().items()}  # with the BN running statistics


def assert_same_state(student, state):
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=f"student {k} changed")


def perturb(student, scale: float) -> None:
    """Stands in for a student step: every weight moves."""
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale)


# --- construction ----------------------------------------------------------------------------------------------
def test_unknown_hypergradient_and_a_loss_without_trainable_parameters_are_errors(
    make_learner, make_config, tmp_path
):
    with pytest.raises(ValueError, match="Known: finite_difference, implicit, unrolled"):
        make_learner(hypergradient="first_order")
    frozen = DistillationObjective(LogitLossNet().requires_grad_(False))
    with pytest.raises(ValueError, match="no trainable loss parameters"):
        LossLearner(frozen, make_config(tmp_path))


def test_loss_parameters_are_frozen_outside_meta_steps(make_learner):
    setup = make_learner(hypergradient="finite_difference")
    params, batch = setup.learner.params, setup.batches[0]
    assert [id(p) for p in params] == [id(p) for p in setup.loss_net.parameters()]  # all of the learned loss's
    assert not any(p.requires_grad for p in params)
    total, _ = setup.learner.objective(setup.student(batch["pixel_values"]), batch["teacher_logits"], batch["labels"])
    total.backward()  # a student step
    assert all(p.grad is None for p in params)
    setup.student.zero_grad(set_to_none=True)
    setup.learner.observe(0, batch, setup.student)
    setup.learner.step(setup.student, 0, LR)
    assert not any(p.requires_grad for p in params)


def test_a_loss_network_handed_on_to_another_run_stays_learnable_unless_frozen(make_learner, make_config, tmp_path):
    from lkd_hf import build_objective

    setup = make_learner(hypergradient="finite_difference")
    first = setup.learner.params
    assert not any(p.requires_grad for p in first)  # parked between meta steps
    second = LossLearner(DistillationObjective(setup.loss_net), make_config(tmp_path / "second"))
    assert [id(p) for p in second.params] == [id(p) for p in first]
    frozen = build_objective(
        make_config(tmp_path / "frozen", loss="lkd", freeze_loss=True), loss_network=setup.loss_net
    )
    assert frozen.meta_parameters() == []
    with pytest.raises(ValueError, match="no trainable loss parameters"):
        LossLearner(frozen, make_config(tmp_path / "frozen"))


# --- the schedule ----------------------------------------------------------------------------------------------
def test_is_due_after_the_warm_up_on_the_interval_and_once_per_step(make_learner):
    setup = make_learner(meta_warmup_steps=4, meta_interval=2, hypergradient="finite_difference")
    learner = setup.learner
    assert [step for step in range(12) if learner.is_due(step)] == [4, 6, 8, 10]
    learner.observe(4, setup.batches[0], setup.student)
    learner.step(setup.student, 4, LR)
    assert not learner.is_due(4)  # a second micro-batch of step 4 takes no second meta step
    assert learner.is_due(6)


def test_is_due_needs_validation_data_unless_the_training_batch_validates(make_learner, tmp_path):
    without = make_learner(tmp_path / "a", meta_data=False, meta_val_source="heldout").learner
    assert without.meta_batches is None and without.meta_dataset is None
    assert not any(without.is_due(step) for step in range(10))
    train_batch = make_learner(tmp_path / "b", meta_data=False, meta_val_source="train_batch").learner
    assert [step for step in range(5) if train_batch.is_due(step)] == [0, 2, 4]
    ignored = make_learner(tmp_path / "c", meta_val_source="train_batch").learner
    assert ignored.meta_batches is None  # the training batch validates: the validation set is not drawn from


def test_observe_keeps_the_batches_of_the_longest_horizon_and_records_snapshots_on_the_interval(make_learner):
    setup = make_learner(lookahead_steps=2, lookahead_steps_std=0.5, snapshot_interval=2)
    learner, student, batches = setup.learner, setup.student, setup.batches
    assert setup.args.max_lookahead_steps == 3
    states = []
    for step in range(5):
        states.append({n: p.detach().clone() for n, p in student.named_parameters()})
        learner.observe(step, batches[step], student)
        perturb(student, 0.01)
    assert [id(b) for b in learner.recent_batches] == [id(b) for b in batches[2:5]]
    assert [s.step for s in learner.snapshot_pool.snapshots] == [0, 2, 4]
    for snapshot in learner.snapshot_pool.snapshots:  # copies of the weights at their step
        assert snapshot.params.keys() == states[snapshot.step].keys()
        assert all(torch.equal(v, states[snapshot.step][n]) for n, v in snapshot.params.items())
    learner.observe(4, batches[5], student)  # another micro-batch of step 4: its batch, no second snapshot
    assert [s.step for s in learner.snapshot_pool.snapshots] == [0, 2, 4]
    assert learner.recent_batches[-1] is batches[5] and len(learner.recent_batches) == 3


def test_gaussian_horizon_draws_varied_k_within_bounds(make_learner):
    learner = make_learner(lookahead_steps=3, lookahead_steps_std=1.0).learner
    draws = [learner.sample_horizon() for _ in range(300)]
    assert min(draws) >= 1 and max(draws) <= 5 and len(set(draws)) >= 4
    assert 2.7 < sum(draws) / len(draws) < 3.3


def test_fixed_horizon_is_the_lookahead_steps(make_learner):
    learner = make_learner(lookahead_steps=3).learner
    assert {learner.sample_horizon() for _ in range(50)} == {3} == {learner.config.max_lookahead_steps}


# --- the meta step ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hypergradient", ["unrolled", "finite_difference", "implicit"])
def test_meta_step_updates_only_the_loss_network(make_learner, hypergradient):
    setup = make_learner(hypergradient=hypergradient, lookahead_lr=0.1)
    student, learner = setup.student, setup.learner
    before = student_state(student)
    loss_before = [p.clone() for p in learner.params]
    learner.recent_batches.append(setup.batches[0])
    learner.step(student, 0, LR)
    assert_same_state(student, before)
    assert all(p.grad is None for p in student.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(loss_before, learner.params))
    assert all(p.grad is None for p in learner.params)
    assert learner.metrics["meta/hypergrad_norm"][0] > 0


def test_compute_hypergradient_changes_nothing_and_is_the_gradient_meta_step_applies(make_learner):
    setup = make_learner(meta_val_source="train_batch", meta_optimizer="sgd", meta_learning_rate=1.0,
                         meta_max_grad_norm=0.0, lookahead_lr=0.1, snapshot_strategy="current")
    learner = setup.learner
    learner.recent_batches.append(setup.batches[0])
    before = [p.detach().clone() for p in learner.params]
    grads = learner.compute_hypergradient(setup.student, LR).grads
    assert [g.shape for g in grads] == [p.shape for p in learner.params]
    assert all(torch.equal(a, p) for a, p in zip(before, learner.params))
    assert sum(g.norm() for g in grads) > 0
    learner.step(setup.student, 0, LR)  # SGD, lr 1, no clipping, momentum buffer starts at the gradient: phi -= grad
    for a, p, g in zip(before, learner.params, grads):
        torch.testing.assert_close(p.detach(), a - g, rtol=1e-5, atol=1e-7)


def test_compute_hypergradient_leaves_the_student_the_optimizer_the_pool_and_the_batches_alone(make_learner):
    setup = make_learner(hypergradient="finite_difference", lookahead_steps=2, snapshot_interval=1)
    learner, student = setup.learner, setup.student
    for step in range(2):
        learner.observe(step, setup.batches[step], student)
        perturb(student, 0.01)
    learner.step(student, 1, LR)  # the meta optimizer has state
    before, optimizer = student_state(student), learner.optimizer.state_dict()
    recent = [id(b) for b in learner.recent_batches]
    result = learner.compute_hypergradient(student, LR, learner.snapshot_pool.snapshots[0])
    assert torch.isfinite(result.val_loss) and all(torch.isfinite(g).all() for g in result.grads)
    assert_same_state(student, before)
    after = learner.optimizer.state_dict()
    for i, state in optimizer["state"].items():
        assert all(torch.equal(v, after["state"][i][k]) for k, v in state.items())
    assert [id(b) for b in learner.recent_batches] == recent
    assert [s.step for s in learner.snapshot_pool.snapshots] == [0, 1]
    assert learner.last_step == 1


def _hypergradient(make_learner, path, **fields):
    setup = make_learner(path, meta_val_source="train_batch", lookahead_lr=0.1, snapshot_strategy="current",
                         **fields)
    setup.learner.recent_batches.append(setup.batches[0])
    torch.manual_seed(0)
    return setup.learner.compute_hypergradient(setup.student, LR)


def test_virtual_step_clips_its_gradient_like_the_real_step(make_learner, tmp_path):
    # plain CE: these tiny students separate the batch, where the calibrated CE (and its gradient) goes to 0
    unclipped = _hypergradient(make_learner, tmp_path / "a", max_grad_norm=0.0, meta_val_loss="ce")
    clipped = _hypergradient(make_learner, tmp_path / "b", max_grad_norm=1e-6, meta_val_loss="ce")  # all but vanishes
    norm = lambda result: torch.sqrt(sum(g.square().sum() for g in result.grads))  # noqa: E731
    assert norm(unclipped) > 0
    assert norm(clipped) < 1e-3 * norm(unclipped)


def test_meta_val_loss_selects_the_outer_objective(make_learner, tmp_path):
    plain = _hypergradient(make_learner, tmp_path / "a", meta_val_loss="ce")
    calibrated = _hypergradient(make_learner, tmp_path / "b", meta_val_loss="calibrated_ce")
    assert calibrated.val_loss < plain.val_loss  # same virtual step; the temperature-scaled CE is never larger
    assert any(not torch.allclose(a, b) for a, b in zip(plain.grads, calibrated.grads))


def test_meta_step_with_frozen_knobs_learns_only_the_corrections(make_learner):
    setup = make_learner(lkd_learn_knobs=False, lookahead_lr=0.1, meta_learning_rate=0.1)
    net = setup.loss_net
    knobs = (net.log_temperature.detach().clone(), net.log_weight.detach().clone())
    heads = [p.detach().clone() for p in (net.class_head.weight, net.sample_head.weight)]
    setup.learner.recent_batches.append(setup.batches[0])
    setup.learner.step(setup.student, 0, LR)
    assert torch.equal(net.log_temperature, knobs[0]) and torch.equal(net.log_weight, knobs[1])
    assert all(not torch.equal(a, b) for a, b in zip(heads, (net.class_head.weight, net.sample_head.weight)))


def test_meta_gradient_is_clipped(make_learner):
    setup = make_learner(meta_max_grad_norm=1e-6, meta_optimizer="sgd", meta_learning_rate=1.0, lookahead_lr=0.1)
    learner = setup.learner
    before = torch.cat([p.detach().reshape(-1).clone() for p in learner.params])
    learner.recent_batches.append(setup.batches[0])
    learner.step(setup.student, 0, LR)
    after = torch.cat([p.detach().reshape(-1) for p in learner.params])
    assert 0 < (after - before).norm().item() <= 1.01e-6  # SGD (momentum starts at 0): step = lr * clipped grad


def test_non_finite_hypergradient_skips_the_update_and_is_counted(make_learner, monkeypatch):
    setup = make_learner(hypergradient="finite_difference")
    learner = setup.learner
    before = [p.clone() for p in learner.params]
    original = LogitLossNet.forward
    monkeypatch.setattr(LogitLossNet, "forward", lambda self, s, t, y: original(self, s, t, y) * float("nan"))
    learner.recent_batches.append(setup.batches[0])
    with pytest.warns(RuntimeWarning, match="meta update skipped"):
        learner.step(setup.student, 0, LR)
    assert all(torch.equal(a, b) for a, b in zip(before, learner.params))
    assert learner.last_step == 0 and not learner.is_due(0)
    metrics = learner.pop_metrics()
    assert metrics["meta/skipped"] == 1.0 and "meta/val_loss_after" not in metrics
    assert learner.updates == 0  # a skipped meta step did not update the loss


def test_metrics_average_over_the_window_and_reset(make_learner):
    setup = make_learner(hypergradient="finite_difference", snapshot_interval=2, snapshot_strategy="fixed",
                         snapshot_distance=2, meta_interval=2)
    learner, student = setup.learner, setup.student
    assert learner.pool_metrics() == {"meta/pool_mb": 0.0}
    for step in range(5):
        learner.observe(step, setup.batches[step], student)
        if learner.is_due(step):
            learner.step(student, step, LR)
    norms = [v.item() for v in learner.metrics["meta/hypergrad_norm"]]
    metrics = learner.pop_metrics()
    assert len(norms) == 3 and metrics["meta/hypergrad_norm"] == pytest.approx(sum(norms) / 3)
    assert learner.updates == 3
    assert metrics["meta/skipped"] == 0.0
    assert metrics["meta/start_step_lag"] == pytest.approx(4 / 3)  # steps 0, 2, 4 start from the snapshots 0, 0, 2
    assert {"meta/val_loss_before", "meta/val_loss_after"} <= set(metrics)
    assert learner.pop_metrics() == {}
    pool_bytes = sum(p.numel() * p.element_size() for p in student.parameters()) * 3
    assert learner.pool_metrics() == {"meta/pool_mb": pytest.approx(pool_bytes / 2**20)}
    assert learner.knobs() == {"lkd/temperature": pytest.approx(setup.loss_net.temperature.item()),
                               "lkd/weight": pytest.approx(setup.loss_net.weight.item())}


# --- learning the loss alone -----------------------------------------------------------------------------------
def test_learn_trains_only_the_loss_from_the_pool_snapshots(make_learner, monkeypatch):
    setup = make_learner(hypergradient="finite_difference", lookahead_steps=2, meta_learning_rate=0.05)
    learner, student = setup.learner, setup.student
    with pytest.raises(ValueError, match="snapshot_checkpoints"):
        learner.learn(student, 1, iter(setup.batches), LR, log=lambda step, logs: None, log_every=1, progress=False)
    for step in (3, 6):
        perturb(student, 0.01)
        learner.snapshot_pool.add(step, {n: p for n, p in student.named_parameters()})
    before, initial = student_state(student), [p.detach().clone() for p in learner.params]

    starts, drawn, logged = [], [], []
    compute = learner.compute_hypergradient
    monkeypatch.setattr(
        learner, "compute_hypergradient",
        lambda s, lr, snapshot, horizon=None, first_step_grads=None: starts.append(snapshot)
        or compute(s, lr, snapshot, horizon, first_step_grads),
    )

    def batches():
        for batch in itertools.cycle(setup.batches):
            drawn.append(batch)
            yield batch

    logs = learner.learn(student, 4, batches(), LR, log=lambda step, logs: logged.append((step, logs)), log_every=2,
                         progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(initial, learner.params))
    assert_same_state(student, before)  # the student is not trained
    assert len(starts) == 4 and all(s is not None and s.step in (3, 6) for s in starts)  # never the live weights
    assert len(drawn) == 4 * 2  # K fresh training batches per meta step
    assert [step for step, _ in logged] == [2, 4] and logged[-1][1] == logs
    assert {"meta/val_loss_before", "meta/val_loss_after", "lkd/temperature"} <= set(logs)


# --- saving and loading ----------------------------------------------------------------------------------------
ROUND_TRIP = dict(hypergradient="finite_difference", lookahead_steps=2, lookahead_steps_std=0.5, meta_interval=2,
                  snapshot_interval=1, snapshot_pool_size=2, meta_batch_size=8, meta_learning_rate=0.05)


def _run(learner, student, batches, steps):
    for step in steps:
        learner.observe(step, batches[step], student)
        if learner.is_due(step):
            torch.manual_seed(step)  # the estimators draw their seeds from the global RNG
            learner.step(student, step, LR)
        perturb(student, 0.01)


def test_saved_and_loaded_learner_takes_the_same_next_meta_step(make_learner, tmp_path):
    reference = make_learner(tmp_path / "a", **ROUND_TRIP)
    student, batches = reference.student, reference.batches
    _run(reference.learner, student, batches, range(4))
    reference.learner.save(str(tmp_path / "state"), extra={"note": 1})
    assert {"recent_batches.pt", SNAPSHOTS_SUBDIR, STATE_NAME} <= set(os.listdir(tmp_path / "state"))

    restored = make_learner(tmp_path / "b", **ROUND_TRIP).learner
    assert restored.load(str(tmp_path / "state")) == {"note": 1}
    a, b = reference.learner.state_dict(), restored.state_dict()
    assert a.keys() == b.keys()
    for key in ("horizon_rng", "meta_batches_drawn", "last_meta_step", "meta_updates", "meta_seconds",
                "format_version"):
        assert a[key] == b[key], key
    assert restored.updates == reference.learner.updates > 0
    assert all(torch.equal(v, b["distill_loss"][k]) for k, v in a["distill_loss"].items())
    assert len(restored.recent_batches) == 2  # the last K_max - 1: the next step's batch completes the horizon
    steps = [s.step for s in reference.learner.snapshot_pool.snapshots]
    assert [s.step for s in restored.snapshot_pool.snapshots] == steps

    for learner in (reference.learner, restored):
        learner.observe(4, batches[4], student)
        torch.manual_seed(4)
        learner.step(student, 4, LR)
    for x, y in zip(reference.learner.params, restored.params, strict=True):
        assert torch.equal(x, y)
    sa, sb = reference.learner.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert all(torch.equal(v, sb[i][k]) for i in sa for k, v in sa[i].items())
    assert reference.learner.horizon_rng.getstate() == restored.horizon_rng.getstate()
    assert reference.learner.snapshot_pool._rng.getstate() == restored.snapshot_pool._rng.getstate()
    assert reference.learner.meta_batches.position == restored.meta_batches.position > 0
    assert reference.learner.pop_metrics() == restored.pop_metrics()


def test_checkpoint_state_lives_in_its_folder_and_a_checkpoint_without_it_warns(make_learner, tmp_path):
    setup = make_learner(hypergradient="finite_difference")
    _run(setup.learner, setup.student, setup.batches, range(2))
    checkpoint = tmp_path / "checkpoint-2"
    setup.learner.save_checkpoint(str(checkpoint))
    assert os.listdir(checkpoint) == [LKD_STATE_DIRNAME]
    fresh = make_learner(tmp_path / "fresh", hypergradient="finite_difference").learner
    assert fresh.load_checkpoint(str(checkpoint)) == {} and fresh.last_step == setup.learner.last_step == 0
    with pytest.warns(UserWarning, match="holds no LKD state"):
        assert fresh.load_checkpoint(str(tmp_path)) is None


def test_a_state_saved_without_the_count_of_updates_leaves_it_unknown(make_learner, tmp_path, monkeypatch):
    setup = make_learner(hypergradient="finite_difference")
    _run(setup.learner, setup.student, setup.batches, range(2))
    state_dict = type(setup.learner).state_dict
    monkeypatch.setattr(type(setup.learner), "state_dict",
                        lambda self: {k: v for k, v in state_dict(self).items() if k != "meta_updates"})
    setup.learner.save(str(tmp_path / "state"))
    monkeypatch.undo()
    restored = make_learner(tmp_path / "fresh", hypergradient="finite_difference").learner
    restored.load(str(tmp_path / "state"))
    assert restored.updates is None  # not 0: meta steps may have updated the loss before
    _run(restored, setup.student, setup.batches, range(2, 4))
    assert restored.updates is None and restored.last_step == 2


def test_state_of_a_newer_format_is_refused(make_learner, tmp_path, monkeypatch):
    learner = make_learner().learner
    learner.save(str(tmp_path / "state"))
    monkeypatch.setattr(lkd_hf.meta.learner, "STATE_FORMAT_VERSION", lkd_hf.meta.learner.STATE_FORMAT_VERSION - 1)
    with pytest.raises(ValueError, match="Upgrade lkd_hf"):  # an older lkd_hf reading it
        learner.load(str(tmp_path / "state"))


def test_the_learner_reads_only_the_meta_settings_of_the_config(tmp_path, make_config):
    from lkd_hf.meta.settings import MetaConfig

    args = make_config(tmp_path, loss="lkd", lkd_init="kd", meta_learning_rate=0.02, bf16=False,
                       meta_precision="bf16", lookahead_steps=2, lookahead_steps_std=0.4)
    settings = MetaConfig.from_config(args)
    assert (settings.meta_learning_rate, settings.lookahead_steps, settings.max_lookahead_steps) == (0.02, 2, 3)
    assert settings.bf16_validation and not settings.mixed_precision  # meta_precision resolved
    assert not hasattr(settings, "output_dir")  # no TrainingArguments inside
    objective = DistillationObjective(LogitLossNet())
    learner = LossLearner(objective, settings)
    assert learner.config is settings and learner.optimizer.param_groups[0]["lr"] == 0.02
    assert LossLearner(DistillationObjective(LogitLossNet()), args).config == settings
