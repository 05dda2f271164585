"""KD with logit standardization and CTKD (curriculum temperature) against independent computations."""

import math
import os

import numpy as np
import pytest
import torch

from lkd_hf import LKDTrainer
from lkd_hf.losses import (
    CTKDLoss,
    DKDLoss,
    LogitAdjustedLoss,
    LSKDLoss,
    available_losses,
    build_loss,
    class_prior,
    kd_loss,
)


def _softmax(z, t=1.0):
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def _zscore(z, eps=1e-7):
    return (z - z.mean(axis=1, keepdims=True)) / (eps + z.std(axis=1, ddof=1, keepdims=True))


def _kl_rows(p, q):
    return np.mean(np.sum(p * np.log(p / q), axis=1))


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3 + 1
    y = torch.randint(0, 10, (8,), generator=g)
    return s, t, y


def test_ls_matches_independent_zscore_kd(logits):
    s, t, y = logits
    T = 2.0
    ps, pt = _softmax(_zscore(s.numpy()), T), _softmax(_zscore(t.numpy()), T)
    expected = T**2 * _kl_rows(pt, ps)
    assert LSKDLoss(T)(s, t, y).item() == pytest.approx(expected, rel=1e-10)


def test_ls_is_invariant_to_per_sample_shift_and_positive_scale(logits):
    s, t, y = logits
    g = torch.Generator().manual_seed(1)
    shift_s, shift_t = torch.randn(8, 1, generator=g, dtype=s.dtype) * 50, torch.randn(8, 1, generator=g, dtype=s.dtype)
    scale_s = torch.rand(8, 1, generator=g, dtype=s.dtype) * 20 + 0.05
    scale_t = torch.rand(8, 1, generator=g, dtype=s.dtype) * 20 + 0.05
    loss = LSKDLoss(2.0)
    reference = loss(s, t, y)
    torch.testing.assert_close(loss(s * scale_s + shift_s, t * scale_t + shift_t, y), reference, rtol=1e-6, atol=0)
    plain = kd_loss(s * scale_s + shift_s, t, 2.0).item()  # plain KD is not invariant: the property is not vacuous
    assert not math.isclose(plain, kd_loss(s, t, 2.0).item(), rel_tol=1e-3)


def test_dkd_with_logit_stand_is_dkd_on_zscored_logits(logits):
    s, t, y = logits
    z_s = torch.from_numpy(_zscore(s.numpy()))
    z_t = torch.from_numpy(_zscore(t.numpy()))
    torch.testing.assert_close(DKDLoss(1.0, 8.0, 2.0, logit_stand=True)(s, t, y), DKDLoss(1.0, 8.0, 2.0)(z_s, z_t, y))
    torch.testing.assert_close(
        DKDLoss(1.0, 8.0, 2.0, logit_stand=True)(3 * s - 7, t, y), DKDLoss(1.0, 8.0, 2.0, logit_stand=True)(s, t, y)
    )


def test_ctkd_starts_at_the_reference_temperature_and_computes_kd_at_it(logits):
    s, t, y = logits
    loss = CTKDLoss()
    T = 1.0 + 20.0 / (1.0 + math.exp(-1.0))  # t_start + t_end * sigmoid(1)
    assert loss.temperature.item() == pytest.approx(T, rel=1e-6)
    ps, pt = _softmax(s.numpy(), T), _softmax(t.numpy(), T)
    assert loss(s, t, y).item() == pytest.approx(T**2 * _kl_rows(pt, ps), rel=1e-5)
    assert CTKDLoss.trains_with_student and [n for n, _ in loss.named_parameters()] == ["global_t"]


def test_ctkd_reverses_the_temperature_gradient_scaled_by_lambda(logits):
    s, t, y = logits
    loss = CTKDLoss(curriculum_fraction=0.5)
    loss.set_progress(1, 4)  # halfway through the curriculum
    lam = loss.grl_lambda().item()
    assert lam == pytest.approx(0.5)
    student = s.clone().requires_grad_(True)
    loss(student, t, y).backward()

    raw = loss.global_t.detach().clone().requires_grad_(True)  # same loss, no reversal
    plain_student = s.clone().requires_grad_(True)
    kd_loss(plain_student, t, 1.0 + 20.0 * torch.sigmoid(raw)).backward()

    assert raw.grad.abs().item() > 0
    assert torch.sign(loss.global_t.grad) == -torch.sign(raw.grad)
    torch.testing.assert_close(loss.global_t.grad, -lam * raw.grad)
    torch.testing.assert_close(student.grad, plain_student.grad)  # the student's gradient is untouched


def test_ctkd_sgd_steps_move_the_temperature_to_raise_the_loss(logits):
    s, t, y = logits
    loss = CTKDLoss(curriculum_fraction=0.0)  # lambda_max from the start
    student = s.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([student, *loss.parameters()], lr=1.0)
    start = loss.temperature.item()
    with torch.no_grad():
        kd_at_start = kd_loss(s, t, start).item()
    for _ in range(5):
        optimizer.zero_grad()
        loss(student, t, y).backward()
        optimizer.step()
    moved = loss.temperature.item()
    assert abs(moved - start) > 1e-3
    with torch.no_grad():  # at the original logits the new temperature gives a larger KD loss: it ascended
        assert kd_loss(s, t, moved).item() > kd_at_start


def test_ctkd_lambda_follows_the_cosine_curriculum_and_survives_state_dict():
    loss = CTKDLoss(lambda_min=0.2, lambda_max=1.0, curriculum_fraction=0.25)
    assert loss.grl_lambda().item() == pytest.approx(0.2)  # before any progress is recorded
    expected = {0: 0.2, 100: 0.2 + 0.8 * (1 - math.cos(math.pi * 0.4)) / 2, 125: 0.6, 250: 1.0, 1000: 1.0}
    for step, value in expected.items():
        loss.set_progress(step, 1000)
        assert loss.grl_lambda().item() == pytest.approx(value, rel=1e-9)

    loss.set_progress(125, 1000)
    with torch.no_grad():
        loss.global_t.fill_(-0.3)
    state = loss.state_dict()
    assert {"global_t", "progress_step", "progress_total"} <= set(state)
    resumed = CTKDLoss(lambda_min=0.2, lambda_max=1.0, curriculum_fraction=0.25)
    resumed.load_state_dict(state)
    assert resumed.grl_lambda().item() == pytest.approx(0.6)
    assert resumed.temperature.item() == pytest.approx(loss.temperature.item())


def test_ctkd_rejects_bad_ranges():
    with pytest.raises(ValueError, match="temperature_range"):
        CTKDLoss(temperature_range=0.0)
    with pytest.raises(ValueError, match="curriculum_fraction"):
        CTKDLoss(curriculum_fraction=1.5)


def test_ls_and_ctkd_are_registered_and_built_from_the_config(tmp_path):
    from lkd_hf import LKDConfig

    assert {"ls", "ctkd"} <= set(available_losses("logit"))
    config = LKDConfig(
        output_dir=str(tmp_path), report_to="none", ls_temperature=3.0, ctkd_temperature_min=0.5,
        ctkd_temperature_range=10.0, ctkd_lambda_max=2.0, ctkd_curriculum_fraction=0.1, dkd_logit_stand=True,
    )
    ls = build_loss("ls", config)
    assert isinstance(ls, LSKDLoss) and ls.temperature == 3.0
    ctkd = build_loss("ctkd", config)
    assert isinstance(ctkd, CTKDLoss)
    assert (ctkd.temperature_min, ctkd.temperature_range, ctkd.lambda_max, ctkd.curriculum_fraction) == (
        0.5, 10.0, 2.0, 0.1
    )
    assert build_loss("dkd", config).logit_stand
    defaults = LKDConfig(output_dir=str(tmp_path), report_to="none")
    assert defaults.ls_temperature == 2.0 and not defaults.dkd_logit_stand
    assert build_loss("ctkd", defaults).curriculum_fraction == pytest.approx(1 / 24)


def test_ctkd_temperature_is_trained_by_the_student_optimizer_and_resumes(
    tmp_path, make_config, make_dataset, make_models
):
    student, teacher = make_models()
    args = make_config(tmp_path, loss="ctkd", max_steps=4, ctkd_curriculum_fraction=0.5, save_strategy="steps",
                       save_steps=4)
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64))
    assert trainer.loss_learner is None  # no meta steps: the temperature is the student optimizer's
    start = trainer.distill_loss.temperature.item()
    trainer.train()
    (global_t,) = trainer.objective.student_trained_parameters()
    assert any(p is global_t for group in trainer.optimizer.param_groups for p in group["params"])
    assert trainer.distill_loss.temperature.item() != start
    resumed = LKDTrainer(model=make_models()[0], teacher=teacher, args=args, train_dataset=make_dataset(64))
    resumed.objective.load_student_trained(os.path.join(args.output_dir, "checkpoint-4"))
    assert int(resumed.distill_loss.progress_step) == 3
    assert resumed.distill_loss.temperature.item() == trainer.distill_loss.temperature.item() != start


def test_ctkd_temperature_gradient_does_not_pile_up_across_steps(tmp_path, make_config, make_dataset, make_models):
    student, teacher = make_models()
    args = make_config(tmp_path, loss="ctkd", max_steps=3, ctkd_curriculum_fraction=0.5)
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64))
    (global_t,) = trainer.objective.student_trained_parameters()
    seen = []
    trainer.add_callback(type("Recorder", (__import__("transformers").TrainerCallback,), {
        "on_step_begin": lambda self, args, state, control, **kw: seen.append(global_t.grad)
    })())
    trainer.train()
    assert seen == [None, None, None]  # cleared after every optimizer step


def test_dkd_warmup_ramps_the_loss_linearly_over_its_fraction_of_the_steps(logits):
    s, t, y = logits
    full = DKDLoss(1.0, 8.0, 4.0)(s, t, y)
    warm = DKDLoss(1.0, 8.0, 4.0, warmup_fraction=0.25)
    assert warm(s, t, y).item() == 0.0  # no progress recorded yet: the first step
    for step, factor in ((10, 0.1), (50, 0.5), (100, 1.0), (400, 1.0)):
        warm.set_progress(step, 400)
        torch.testing.assert_close(warm(s, t, y), factor * full)
    no_warmup = DKDLoss(1.0, 8.0, 4.0)
    no_warmup.set_progress(0, 400)
    torch.testing.assert_close(no_warmup(s, t, y), full)
    with pytest.raises(ValueError, match="warmup_fraction"):
        DKDLoss(warmup_fraction=1.5)


def test_logit_adjustment_is_the_cross_entropy_of_logits_shifted_by_tau_log_prior(logits):
    s, _, y = logits
    prior = [0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]
    z = s.numpy() + 1.5 * np.log(prior)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    expected = -np.mean(log_p[np.arange(len(y)), y.numpy()])
    assert LogitAdjustedLoss(prior, tau=1.5)(s, None, y).item() == pytest.approx(expected, rel=1e-5)
    uniform = LogitAdjustedLoss([1.0] * 10, tau=2.0)  # a balanced prior shifts every logit alike: plain CE
    torch.testing.assert_close(uniform(s, None, y), torch.nn.functional.cross_entropy(s.float(), y))
    # the adjustment lowers the loss of samples from frequent classes less than of rare ones: head 0, tail 9
    head, tail = torch.zeros(1, 10), torch.zeros(1, 10)
    adjusted = LogitAdjustedLoss(prior, tau=1.0)
    assert adjusted(head, None, torch.tensor([0])) < adjusted(tail, None, torch.tensor([9]))
    with pytest.raises(ValueError, match="positive"):
        LogitAdjustedLoss([0.5, 0.5, 0.0])


def test_class_prior_counts_the_labels_and_la_is_built_from_the_config(tmp_path):
    from lkd_hf import LKDConfig

    assert class_prior([0, 0, 1, 3], 4) == [0.5, 0.25, 0.0, 0.25]
    config = LKDConfig(output_dir=str(tmp_path), report_to="none", loss="la", ce_weight=0.0, la_tau=0.5,
                       la_class_prior=[0.75, 0.25], dkd_warmup_fraction=20 / 240)
    la = build_loss("la", config)
    assert isinstance(la, LogitAdjustedLoss) and la.tau == 0.5
    torch.testing.assert_close(la.log_prior, torch.tensor([0.75, 0.25]).log())
    assert build_loss("dkd", config).warmup_fraction == pytest.approx(1 / 12)
    defaults = LKDConfig(output_dir=str(tmp_path), report_to="none")
    assert defaults.dkd_warmup_fraction == 0.0 and defaults.la_class_prior is None
    with pytest.raises(ValueError, match="la_class_prior"):
        build_loss("la", defaults)
