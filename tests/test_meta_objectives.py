"""Outer objectives of the meta step: temperature-scaled (calibrated) cross-entropy."""

import pytest
import torch
import torch.nn.functional as F

from lkd_hf.meta.outer_objectives import META_VAL_LOSSES, calibrated_cross_entropy, fit_logit_scale


def _logits(scale: float, seed: int = 0):
    torch.manual_seed(seed)
    labels = torch.randint(0, 10, (128,))
    logits = torch.randn(128, 10, dtype=torch.float64)
    logits[torch.arange(128), labels] += 1.0
    return logits * scale, labels


@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0])
def test_fitted_scale_minimises_the_cross_entropy(scale):
    logits, labels = _logits(scale)
    best = min(F.cross_entropy(logits * a, labels).item() for a in torch.logspace(-4, 4, 4000, dtype=torch.float64))
    fitted = F.cross_entropy(logits * fit_logit_scale(logits, labels), labels).item()
    assert fitted <= best + 1e-6


def test_calibrated_ce_ignores_the_logit_scale_and_never_exceeds_plain_ce():
    logits, labels = _logits(0.05)
    calibrated = calibrated_cross_entropy(logits, labels)
    assert calibrated < F.cross_entropy(logits, labels) - 0.1  # tiny logits: plain CE is far from calibrated
    for factor in (0.1, 3.0, 40.0):
        torch.testing.assert_close(calibrated_cross_entropy(logits * factor, labels), calibrated)


def test_calibrated_ce_gradient_has_no_component_along_the_scale():
    """Envelope theorem: at the fitted scale, rescaling the logits does not change the loss to first order."""
    logits, labels = _logits(0.3)
    logits.requires_grad_(True)
    (grad,) = torch.autograd.grad(calibrated_cross_entropy(logits, labels), logits)
    (plain,) = torch.autograd.grad(F.cross_entropy(logits, labels), logits)
    assert abs((grad * logits).sum().item()) < 1e-6 * grad.norm().item() * logits.norm().item()
    assert abs((plain * logits).sum().item()) > 1e-2 * plain.norm().item() * logits.norm().item()


def test_registry_names():
    assert set(META_VAL_LOSSES) == {"ce", "calibrated_ce"}
