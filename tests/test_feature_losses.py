"""Feature distillation losses: FitNet and AT against numpy, FeatureLossNet's guarantees, and the registry."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lkd_hf.losses.networks import FeatureLossNet, LogitLossNet
from lkd_hf.losses import ATLoss, FitNetLoss, KDLoss, available_losses, build_loss
from lkd_hf.losses.registry import parse_loss_spec

SHAPES = [(2, 8, 4, 4), (3, 64, 7, 7), (2, 192, 2, 2)]


def _features(shape, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    t = torch.randn(shape, generator=g, dtype=torch.float64).relu() * scale  # teacher maps are often post-ReLU
    return s.to(dtype), t.to(dtype)


def _randomize(net, seed=0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "log_weight":
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


# ----------------------------------------------------------------------------------------- hand-made baselines


def test_fitnet_matches_numpy_mse():
    s, t = _features((3, 5, 4, 6), dtype=torch.float64)
    expected = np.mean((s.numpy() - t.numpy()) ** 2)
    assert FitNetLoss()(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_fitnet_computes_in_fp32_for_bf16_inputs_and_rejects_shape_mismatch():
    s, t = _features((2, 4, 3, 3), dtype=torch.bfloat16)
    out = FitNetLoss()(s, t)
    assert out.dtype == torch.float32
    expected = np.mean((s.float().numpy() - t.float().numpy()) ** 2)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="identical shape"):
        FitNetLoss()(torch.zeros(2, 4, 3, 3), torch.zeros(2, 5, 3, 3))


def _np_attention(f, p=2):
    a = (f**p).mean(axis=1).reshape(f.shape[0], -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def test_at_matches_numpy_attention_transfer_with_different_channel_counts():
    s, _ = _features((3, 5, 4, 6), seed=1, dtype=torch.float64)
    _, t = _features((3, 11, 4, 6), seed=2, dtype=torch.float64)
    expected = np.mean((_np_attention(s.numpy()) - _np_attention(t.numpy())) ** 2)
    assert ATLoss()(s, t).item() == pytest.approx(expected, rel=1e-10)
    # bf16 inputs are computed in fp32
    assert ATLoss()(s.bfloat16(), t.bfloat16()).dtype == torch.float32


def test_at_rejects_spatial_size_mismatch():
    with pytest.raises(ValueError, match="spatial size"):
        ATLoss()(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4))


# ----------------------------------------------------------------------------------------- FeatureLossNet


@pytest.mark.parametrize("shape", SHAPES)
def test_feature_loss_net_equals_mse_at_init(shape):
    net = FeatureLossNet()
    s, t = _features(shape)
    out = net(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.mse_loss(s, t), rtol=1e-6, atol=0)
    torch.testing.assert_close(out, net.mse_reference(s, t), rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_feature_loss_net_bf16_inputs_give_fp32_mse_of_the_bf16_values(shape):
    net = FeatureLossNet()
    s, t = _features(shape, seed=3, dtype=torch.bfloat16)
    out = net(s, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.mse_loss(s.float(), t.float()), rtol=1e-6, atol=0)


def test_feature_loss_net_is_small_and_independent_of_shapes():
    net = FeatureLossNet(hidden_dim=16)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 9 * 16 + 2 < 10_000
    assert sum(p.numel() for p in FeatureLossNet(hidden_dim=64).parameters()) < 10_000
    _randomize(net)
    for shape in SHAPES:  # one network serves every channel count and resolution
        assert torch.isfinite(net(*_features(shape)))
    assert "weight=1.000" in repr(net)


@pytest.mark.parametrize("shape", SHAPES)
def test_random_feature_loss_net_bounded_finite_zero_at_match(shape):
    net = _randomize(FeatureLossNet(), seed=1, std=2.0)
    s, t = _features(shape, seed=4)
    out = net(s, t)
    mse = F.mse_loss(s, t)
    assert 0 <= out.item() <= 2 * mse.item() * (1 + 1e-6)  # bounded: 0 <= L <= 2 * weight * MSE
    assert out.item() != pytest.approx(mse.item(), rel=1e-3)  # randomised: no longer plain MSE
    huge = net(s * 1e4, -t * 1e4)
    assert torch.isfinite(huge) and huge.item() >= 0
    assert torch.isfinite(net(s * 1e4, torch.zeros_like(t)))  # all-zero teacher map (scale = eps)
    assert net(t, t).item() == 0.0
    assert net(s * 1e4, s * 1e4).item() == 0.0


def test_random_feature_loss_net_invariant_to_channel_permutation():
    net = _randomize(FeatureLossNet(), seed=2)
    s, t = _features((3, 64, 7, 7), seed=5)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(net(s[:, perm], t[:, perm]), net(s, t), rtol=1e-5, atol=0)


def test_feature_loss_net_head_gets_gradient_at_init_and_all_parameters_after():
    net = FeatureLossNet()
    s, t = _features((2, 8, 4, 4), seed=6)
    net(s, t).backward()
    assert net.head.weight.grad.abs().sum() > 0 and net.head.bias.grad.abs().sum() > 0
    assert net.log_weight.grad.abs() > 0
    # at init dL/dlog_weight = MSE, since L = exp(log_weight) * MSE
    torch.testing.assert_close(net.log_weight.grad, F.mse_loss(s, t))

    net = _randomize(FeatureLossNet(), seed=3)
    s.requires_grad_(True)
    net(s, t).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_feature_loss_net_learn_weight_flag():
    net = FeatureLossNet(learn_weight=False)
    assert not net.log_weight.requires_grad
    with torch.no_grad():
        net.log_weight.fill_(100.0)  # clamped to a safe range
    assert float(net.weight) == pytest.approx(np.exp(3.0))


def test_feature_loss_net_gradcheck_and_gradient_checkpointing_match():
    net = _randomize(FeatureLossNet(hidden_dim=4), seed=4).double()
    s, t = _features((2, 3, 2, 2), seed=7, dtype=torch.float64)
    s.requires_grad_(True)
    params = tuple(net.parameters())

    def fn(s_, *ps):
        return torch.func.functional_call(net, dict(zip([n for n, _ in net.named_parameters()], ps)), (s_, t))

    assert torch.autograd.gradcheck(fn, (s, *params))

    def second_order(checkpointing):
        net.gradient_checkpointing = checkpointing
        (g,) = torch.autograd.grad(net(s, t), s, create_graph=True)
        return torch.autograd.grad(g.square().sum(), params)

    for a, b in zip(second_order(False), second_order(True)):
        torch.testing.assert_close(a, b)
    net.gradient_checkpointing = False


def test_feature_loss_net_save_and_load_roundtrip(tmp_path):
    net = _randomize(FeatureLossNet(hidden_dim=8), seed=5)
    with torch.no_grad():
        net.log_weight.fill_(-0.5)
    net.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    loaded = FeatureLossNet.from_pretrained(tmp_path)
    assert loaded.head.in_features == 8
    s, t = _features((2, 16, 5, 5), seed=8)
    torch.testing.assert_close(loaded(s, t), net(s, t), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- registry


@pytest.fixture
def cfg():
    return SimpleNamespace(temperature=4.0, loss_hidden_dim=32, feature_loss_hidden_dim=8)


def test_registry_builds_feature_losses(cfg):
    assert {"fitnet", "at", "feat"} <= set(available_losses("feature"))
    assert not {"fitnet", "at", "feat"} & set(available_losses("logit"))
    assert isinstance(build_loss("fitnet", cfg), FitNetLoss)
    assert isinstance(build_loss("at", cfg), ATLoss)
    feat = build_loss("feat", cfg)
    assert isinstance(feat, FeatureLossNet) and feat.head.in_features == 8
    default = build_loss("feat", SimpleNamespace())  # config without the field: default width 16
    assert default.head.in_features == 16


def test_registry_with_real_config(tmp_path):
    import lkd_hf

    cfg = lkd_hf.LKDConfig(output_dir=str(tmp_path), report_to=[])
    assert isinstance(build_loss("feat", cfg), FeatureLossNet)
    assert isinstance(build_loss("kd", cfg), KDLoss)


def test_parse_loss_specs():
    assert parse_loss_spec("kd+fitnet") == ("kd", "fitnet")
    assert parse_loss_spec("lkd+feat") == ("lkd", "feat")
    assert parse_loss_spec("at") == (None, "at")
    with pytest.raises(ValueError, match="two feature losses"):
        parse_loss_spec("fitnet+at")
    logit_cfg = SimpleNamespace(temperature=4.0, loss_hidden_dim=8)
    assert isinstance(build_loss(parse_loss_spec("lkd+feat").logit, logit_cfg), LogitLossNet)
