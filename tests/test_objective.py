"""The student objective alone: ``DistillationObjective`` on hand-made tensors (values against independent
computations) and ``build_objective`` from an ``LKDConfig``."""

import math

import pytest
import torch

from lkd_hf import (
    DistillationObjective,
    FeatureLossNet,
    FitNetLoss,
    KDLoss,
    LogitLossNet,
    build_objective,
)

NUM_CLASSES = 10


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(8, NUM_CLASSES, generator=generator)
    teacher = 3 * torch.randn(8, NUM_CLASSES, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (8,), generator=generator)
    return student, teacher, labels


def cross_entropy(logits, labels):
    log_p = logits.double() - logits.double().exp().sum(-1, keepdim=True).log()
    return -log_p[torch.arange(len(labels)), labels].mean()


def hinton_kd(student, teacher, temperature):
    def log_softmax(z):
        z = z.double() / temperature
        return z - z.exp().sum(-1, keepdim=True).log()

    log_p_s, log_p_t = log_softmax(student), log_softmax(teacher)
    return temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def close(value, expected):
    torch.testing.assert_close(value.double(), torch.as_tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-6)


# --- DistillationObjective ----------------------------------------------------------------------------------------
def test_cross_entropy_only(logits):
    student, _, labels = logits
    objective = DistillationObjective(None, ce_weight=0.5)
    total, parts = objective(student, None, labels)
    assert set(parts) == {"ce"}
    close(parts["ce"], cross_entropy(student, labels))
    close(total, 0.5 * cross_entropy(student, labels))
    assert objective.loss_modules == [] and objective.knobs() == {}


def test_cross_entropy_plus_weighted_kd(logits):
    student, teacher, labels = logits
    objective = DistillationObjective(KDLoss(temperature=4.0), ce_weight=0.5, distill_weight=3.0)
    total, parts = objective(student, teacher, labels)
    assert set(parts) == {"ce", "distill"}
    close(parts["ce"], cross_entropy(student, labels))
    close(parts["distill"], hinton_kd(student, teacher, 4.0))
    close(total, 0.5 * cross_entropy(student, labels) + 3.0 * hinton_kd(student, teacher, 4.0))
    assert objective.knobs() == {}  # a hand-made loss's temperature is a number, not a learned knob


def test_feature_terms_are_summed_over_the_taps_and_named_after_them(logits):
    student, teacher, labels = logits
    generator = torch.Generator().manual_seed(1)
    shapes = [(8, 4, 3, 3), (8, 6, 1, 1)]
    student_features = [torch.randn(shape, generator=generator) for shape in shapes]
    teacher_features = [torch.randn(shape, generator=generator) for shape in shapes]
    kd, fitnet = KDLoss(temperature=2.0), FitNetLoss()
    objective = DistillationObjective(kd, fitnet, ce_weight=1.0, distill_weight=0.5, feature_weight=2.0,
                                      taps=["layer3", -1])
    assert objective.loss_modules == [kd, fitnet]  # the logit loss first
    total, parts = objective(student, teacher, labels, student_features, teacher_features)
    assert set(parts) == {"ce", "distill", "feature", "feature/layer3", "feature/-1"}
    mse = [((s.double() - t.double()) ** 2).mean() for s, t in zip(student_features, teacher_features)]
    close(parts["feature/layer3"], mse[0])
    close(parts["feature/-1"], mse[1])
    close(parts["feature"], mse[0] + mse[1])
    expected = cross_entropy(student, labels) + 0.5 * hinton_kd(student, teacher, 2.0) + 2.0 * (mse[0] + mse[1])
    close(total, expected)


def test_a_feature_loss_alone_has_no_distill_part(logits):
    student, _, labels = logits
    features = [torch.ones(8, 2, 2, 2)]
    objective = DistillationObjective(None, FitNetLoss(), taps=[-1])
    total, parts = objective(student, None, labels, features, [torch.zeros(8, 2, 2, 2)])
    assert set(parts) == {"ce", "feature", "feature/-1"}
    close(parts["feature"], 1.0)
    close(total, cross_entropy(student, labels) + 1.0)


def test_learned_losses_report_their_knobs():
    objective = DistillationObjective(LogitLossNet(temperature=2.0), FeatureLossNet())
    knobs = objective.knobs()
    assert set(knobs) == {"lkd/temperature", "lkd/weight", "lkd/feature_weight"}
    assert knobs == pytest.approx({"lkd/temperature": 2.0, "lkd/weight": 1.0, "lkd/feature_weight": 1.0})
    assert all(isinstance(v, float) for v in knobs.values())


def test_the_loss_weight_gets_the_gradient_of_its_weighted_term(logits):
    """``LogitLossNet = exp(log_weight) * ...``: at ``log_weight = 0`` the objective's derivative along ``log_weight``
    is ``distill_weight * distill``; the cross-entropy does not depend on it."""
    student, teacher, labels = logits
    net = LogitLossNet(temperature=4.0)
    total, parts = DistillationObjective(net, ce_weight=2.0, distill_weight=0.25)(student, teacher, labels)
    (grad,) = torch.autograd.grad(total, [net.log_weight])
    close(grad, 0.25 * parts["distill"].detach())
    close(parts["distill"], hinton_kd(student, teacher, 4.0))  # the learned loss is Hinton KD at initialisation


def test_cross_entropy_of_half_precision_logits_is_taken_in_float32(logits):
    student, _, labels = logits
    half = student.to(torch.bfloat16)
    _, parts = DistillationObjective(None)(half, None, labels)
    assert parts["ce"].dtype == torch.float32
    close(parts["ce"], cross_entropy(half.float(), labels))


# --- build_objective -------------------------------------------------------------------------------------------
def test_build_objective_takes_the_registered_loss_and_the_weights_of_the_config(tmp_path, make_config):
    args = make_config(tmp_path, loss="kd", temperature=2.0, ce_weight=0.3, distill_weight=5.0, feature_weight=7.0)
    objective = build_objective(args)
    assert isinstance(objective.distill_loss, KDLoss) and objective.distill_loss.temperature == 2.0
    assert objective.feature_loss is None
    assert (objective.ce_weight, objective.distill_weight, objective.feature_weight) == (0.3, 5.0, 7.0)
    assert build_objective(make_config(tmp_path, loss="ce")).loss_modules == []
    fitnet = build_objective(make_config(tmp_path, loss="fitnet"))
    assert fitnet.distill_loss is None and isinstance(fitnet.feature_loss, FitNetLoss)


def test_build_objective_of_learned_losses_trainable_or_frozen(tmp_path, make_config):
    fields = dict(loss="lkd+feat", temperature=3.0, loss_hidden_dim=8, feature_loss_hidden_dim=4)
    learned = build_objective(make_config(tmp_path, **fields))
    logit, feature = learned.loss_modules
    assert isinstance(logit, LogitLossNet) and isinstance(feature, FeatureLossNet)
    assert logit.mlp[0].out_features == 8 and feature.input_layer.out_features == 4
    assert logit.temperature.item() == pytest.approx(3.0)
    assert all(p.requires_grad for m in learned.loss_modules for p in m.parameters())
    frozen = build_objective(make_config(tmp_path, freeze_loss=True, **fields))
    assert not any(p.requires_grad for m in frozen.loss_modules for p in m.parameters())
    assert len(list(frozen.loss_modules[0].parameters())) == len(list(logit.parameters()))


@pytest.mark.parametrize("fields, frozen", [
    (dict(loss="lkd", lkd_init="pretrained"), True),  # the shipped start: its knobs were learned over whole runs
    (dict(loss="lkd", lkd_init="kd", loss_from="a/learned-loss"), True),  # a loaded learned loss
    (dict(loss="lkd", lkd_init="pretrained", freeze_loss=False), False),  # learned further when asked
    (dict(loss="lkd", lkd_init="kd"), False),  # hand-made starts are learned
    (dict(loss="lkd", lkd_init="dist"), False),
    (dict(loss="lkd+feat", lkd_init="pretrained"), False),  # a fresh feature network is learned
    (dict(loss="kd"), False),
])
def test_a_loss_learned_beforehand_is_kept_fixed_by_default(tmp_path, make_config, fields, frozen):
    assert make_config(tmp_path, **fields).freeze_loss is frozen


def test_build_objective_uses_the_networks_passed_in(tmp_path, make_config):
    logit, feature = LogitLossNet(temperature=2.0), FeatureLossNet()
    objective = build_objective(make_config(tmp_path, loss="lkd+feat", freeze_loss=True), logit, feature)
    assert objective.distill_loss is logit and objective.feature_loss is feature
    assert not any(p.requires_grad for p in [*logit.parameters(), *feature.parameters()])
    kept = LogitLossNet(temperature=2.0)
    assert build_objective(make_config(tmp_path, loss="kd"), kept).distill_loss is kept  # instead of the registered one
    assert math.isclose(objective.knobs()["lkd/temperature"], 2.0, rel_tol=1e-6)


def test_build_objective_of_an_unknown_loss_lists_the_known_ones(tmp_path, make_config):
    with pytest.raises(ValueError, match=r"Unknown loss 'kdd'.*Known losses"):
        build_objective(make_config(tmp_path, loss="kdd"))
