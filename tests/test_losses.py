"""Hand-made baselines against independent (numpy) computations, the loss registry, and LogitLossNet."""

import math
import os

import numpy as np
import pytest
import torch

from lkd_hf.losses.networks import LogitLossNet
from lkd_hf.losses import DISTLoss, DKDLoss, KDLoss, available_losses, build_loss, register_loss
from lkd_hf.plots import starting_loss


def _softmax(z, t=1.0):
    e = np.exp((z - z.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (8,), generator=g)
    return s, t, y


def test_kd_matches_independent_kl(logits):
    s, t, y = logits
    T = 4.0
    ps, pt = _softmax(s.numpy(), T), _softmax(t.numpy(), T)
    expected = T**2 * np.mean([sum(pt[i, c] * math.log(pt[i, c] / ps[i, c]) for c in range(10)) for i in range(8)])
    assert KDLoss(T)(s, t, y).item() == pytest.approx(expected, rel=1e-10)


def test_dist_matches_numpy_pearson(logits):
    s, t, y = logits
    beta, gamma, T = 1.5, 0.5, 2.0
    ps, pt = _softmax(s.numpy(), T), _softmax(t.numpy(), T)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(8)])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(10)])
    expected = T**2 * (beta * inter + gamma * intra)
    assert DISTLoss(beta, gamma, T)(s, t, y).item() == pytest.approx(expected, rel=1e-6)


def test_dkd_matches_decoupled_definition(logits):
    s, t, y = logits
    alpha, beta, T = 1.0, 8.0, 4.0
    ps, pt = _softmax(s.numpy(), T), _softmax(t.numpy(), T)
    tckd, nckd = [], []
    for i, yi in enumerate(y.tolist()):
        bs, bt = np.array([ps[i, yi], 1 - ps[i, yi]]), np.array([pt[i, yi], 1 - pt[i, yi]])
        tckd.append(np.sum(bt * np.log(bt / bs)))
        others = [c for c in range(10) if c != yi]
        qs, qt = ps[i, others] / ps[i, others].sum(), pt[i, others] / pt[i, others].sum()
        nckd.append(np.sum(qt * np.log(qt / qs)))
    expected = T**2 * (alpha * np.mean(tckd) + beta * np.mean(nckd))
    assert DKDLoss(alpha, beta, T)(s, t, y).item() == pytest.approx(expected, rel=1e-6)


def test_registry_lists_known_losses_on_unknown_name():
    assert {"ce", "kd", "dist", "dkd", "lkd", "ls", "ctkd"} <= set(available_losses())
    with pytest.raises(ValueError, match=r"Unknown loss .nope.*ce, ctkd, dist, dkd"):
        build_loss("nope", None)


def test_register_custom_loss_and_refuse_duplicates():
    @register_loss("test_l1_logits")
    def _build(config):
        return torch.nn.L1Loss()

    assert isinstance(build_loss("test_l1_logits", None), torch.nn.L1Loss)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("test_l1_logits")(_build)
    with pytest.raises(ValueError, match=r"'\+'"):
        register_loss("a+b")


@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_logit_loss_net_reproduces_kd_at_init(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    s, t = torch.randn(16, num_classes, generator=g) * 5, torch.randn(16, num_classes, generator=g) * 5
    y = torch.randint(0, num_classes, (16,), generator=g)
    net = LogitLossNet(temperature=4.0)
    expected = KDLoss(4.0)(s, t, y)
    torch.testing.assert_close(net(s, t, y), expected, rtol=1e-5, atol=1e-7)


def _randomize(net, seed=0, std=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return net


def test_logit_loss_net_is_permutation_equivariant():
    s, t = torch.randn(6, 7), torch.randn(6, 7)
    y = torch.randint(0, 7, (6,))
    net = _randomize(LogitLossNet())
    perm = torch.randperm(7)
    inverse = torch.argsort(perm)
    torch.testing.assert_close(net(s[:, perm], t[:, perm], inverse[y]), net(s, t, y))


def test_logit_loss_net_bounded_below_and_finite_for_extreme_logits():
    net = _randomize(LogitLossNet(), seed=1, std=2.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):  # some draws gave -2e-5 before the rounding guard
        for scale in (1.0, 100.0, 1e4):
            s, t = torch.randn(32, 50, generator=g) * scale, torch.randn(32, 50, generator=g) * scale
            value = net(s, t, torch.randint(0, 50, (32,), generator=g))
            assert torch.isfinite(value)
            assert value.item() >= 0.0


def test_logit_loss_net_weight_knob_turns_distillation_off_and_temperature_is_learnable():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    net = LogitLossNet(temperature=4.0)
    assert net.temperature.item() == pytest.approx(4.0)
    net(s, t, y).backward()
    assert net.log_temperature.grad is not None and net.log_temperature.grad.abs() > 0
    assert net.log_weight.grad is not None and net.log_weight.grad.abs() > 0
    assert net.class_head.weight.grad.abs().sum() > 0  # the correction receives gradient from the start
    with torch.no_grad():
        net.log_weight.fill_(-30.0)  # clamped at -10: distillation essentially off
    assert net(s, t, y).item() < 1e-3 * KDLoss(4.0)(s, t, y).item()


def test_logit_loss_net_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        LogitLossNet(temperature=0.0)


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_dist_based_logit_loss_net_reproduces_dist_at_init(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    s, t = torch.randn(16, num_classes, generator=g) * 3, torch.randn(16, num_classes, generator=g) * 3
    y = torch.randint(0, num_classes, (16,), generator=g)
    net = LogitLossNet(temperature=2.0, base="dist", dist_beta=1.5, dist_gamma=0.5)
    expected = DISTLoss(1.5, 0.5, 2.0)(s, t, y)
    torch.testing.assert_close(net(s, t, y), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(starting_loss(net)[0](s, t, y), expected, rtol=1e-5, atol=1e-7)  # plots' reference
    assert net(s, t, y).item() != pytest.approx(LogitLossNet(temperature=2.0)(s, t, y).item(), rel=1e-3)  # not KD


def test_dist_based_logit_loss_net_is_bounded_learnable_and_round_trips(tmp_path):
    net = _randomize(LogitLossNet(temperature=4.0, base="dist", dist_beta=2.0, dist_gamma=1.0), seed=2, std=2.0)
    bound = 4 * (2.0 + 1.0) * net.temperature.item() ** 2 * net.weight.item()
    for scale in (1.0, 100.0, 1e4):
        s, t = torch.randn(32, 20) * scale, torch.randn(32, 20) * scale
        value = net(s, t, torch.randint(0, 20, (32,)))
        assert torch.isfinite(value) and -1e-5 <= value.item() <= bound + 1e-4
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    fresh = LogitLossNet(base="dist")
    fresh(s, t, y).backward()  # the per-class and per-sample weights receive gradient from the start
    assert fresh.class_head.weight.grad.abs().sum() > 0 and fresh.sample_head.weight.grad.abs().sum() > 0
    assert fresh.log_temperature.grad.abs() > 0
    net.save_pretrained(tmp_path)
    loaded = LogitLossNet.from_pretrained(tmp_path)
    assert (loaded.base, loaded.dist_beta, loaded.dist_gamma) == ("dist", 2.0, 1.0)
    torch.testing.assert_close(loaded(s, t, y), net(s, t, y))


def test_lkd_init_selects_the_base_of_the_learned_loss(tmp_path):
    from lkd_hf import LKDConfig

    config = LKDConfig(output_dir=str(tmp_path), loss="lkd", lkd_init="dist", dist_temperature=3.0, report_to="none")
    net = build_loss("lkd", config)
    assert net.base == "dist" and net.temperature.item() == pytest.approx(3.0)
    assert build_loss("lkd", LKDConfig(output_dir=str(tmp_path), lkd_init="kd", report_to="none")).base == "kd"
    with pytest.raises(ValueError, match="lkd_init"):
        LKDConfig(output_dir=str(tmp_path), lkd_init="dkd", report_to="none")
    with pytest.raises(ValueError, match="base"):
        LogitLossNet(base="dkd")


def test_lkd_learn_knobs_false_freezes_temperature_and_weight(tmp_path):
    from lkd_hf import LKDConfig

    config = LKDConfig(output_dir=str(tmp_path), loss="lkd", lkd_learn_knobs=False, report_to="none")
    net = build_loss("lkd", config)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert "log_temperature" not in trainable and "log_weight" not in trainable
    assert {"class_head.weight", "sample_head.weight"} <= trainable
    default = build_loss("lkd", LKDConfig(output_dir=str(tmp_path), loss="lkd", report_to="none"))
    assert default.log_temperature.requires_grad and default.log_weight.requires_grad


# --- the shipped pre-learned loss --------------------------------------------------------------------------------
def test_pretrained_logit_loss_is_the_shipped_learned_loss_for_any_class_count():
    from lkd_hf import PRETRAINED_LOSS_DIR, LearnedLoss, pretrained_logit_loss

    net = pretrained_logit_loss()
    bundle = LearnedLoss.from_pretrained(PRETRAINED_LOSS_DIR)  # the public loader validates the folder too
    assert bundle.feature is None and net.base == "dist"
    assert (bundle.config.num_classes, bundle.config.teacher, bundle.config.student) == (None, None, None)
    for classes in (10, 1000):
        torch.manual_seed(classes)
        s, t, y = torch.randn(8, classes), torch.randn(8, classes) * 3, torch.randint(0, classes, (8,))
        loss = net(s, t, y)
        assert torch.isfinite(loss) and loss >= 0
        torch.testing.assert_close(loss, bundle.logit(s, t, y))
    assert net.log_temperature.requires_grad and net.log_weight.requires_grad
    fixed = pretrained_logit_loss(learn_knobs=False)
    assert not fixed.log_temperature.requires_grad and not fixed.log_weight.requires_grad
    assert all(p.requires_grad for p in fixed.mlp.parameters())


def test_lkd_starts_from_the_pretrained_loss_by_default(tmp_path):
    from lkd_hf import LKDConfig, pretrained_logit_loss

    config = LKDConfig(output_dir=str(tmp_path), loss="lkd", temperature=2.0, report_to="none")
    assert config.lkd_init == "pretrained"
    net, shipped = build_loss("lkd", config), pretrained_logit_loss()
    assert net.state_dict().keys() == shipped.state_dict().keys()
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, shipped.state_dict()[name])
    assert net.temperature.item() != pytest.approx(2.0)  # `temperature` is KD's start only
    frozen = build_loss("lkd", LKDConfig(output_dir=str(tmp_path), lkd_learn_knobs=False, report_to="none"))
    assert not frozen.log_temperature.requires_grad


def test_pretrained_loss_record_names_its_sources_and_matches_its_weights():
    import json

    from lkd_hf import PRETRAINED_LOSS_DIR, pretrained_logit_loss

    with open(os.path.join(PRETRAINED_LOSS_DIR, "pretraining.json")) as f:
        record = json.load(f)

    def keys(value):
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        return {k for v in value for k in keys(v)} if isinstance(value, list) else set()

    assert not [k for k in keys(record) if "test" in k]  # learned on training and validation splits only
    assert record["datasets"] == ["animal-mnist", "digits"]  # mnist-5k, where the benchmark scores it, stays unseen
    assert all(len(t["runs"]) == len(record["datasets"]) * len(record["pairs"]) for t in record["trials"])
    best = max(record["trials"], key=lambda t: t["mean_val_top1"])
    assert best["mean_val_top1"] == record["best"]["mean_val_top1"]
    net = pretrained_logit_loss()  # the best trial's DIST, its per-sample and per-class weights neutral
    assert net.temperature.item() == pytest.approx(best["temperature"], rel=1e-5)
    assert net.weight.item() == pytest.approx(best["weight"], rel=1e-5)
    gamma = record["dist_gamma"]  # the intra-class weight stage, at the best trial's temperature and weight
    assert [c for c in gamma["candidates"] if c["dist_gamma"] == 1.0][0]["runs"] == best["runs"]
    assert all(len(c["runs"]) == len(best["runs"]) for c in gamma["candidates"])
    assert gamma["best"] == max(gamma["candidates"], key=lambda c: c["mean_val_top1"])["dist_gamma"]
    assert net.dist_gamma == gamma["best"] and net.dist_beta == 1.0
    assert all((p == 0).all() for head in (net.class_head, net.sample_head) for p in head.parameters())


def test_pretrained_loss_is_rebuilt_exactly_from_its_record():
    """``benchmarks/pretrain_loss.py`` saves a function of the best trial's temperature and weight and the chosen
    intra-class weight alone (its network built under seed 0), so the shipped folder can be rebuilt from
    ``pretraining.json``."""
    import json

    from lkd_hf import PRETRAINED_LOSS_DIR, pretrained_logit_loss

    with open(os.path.join(PRETRAINED_LOSS_DIR, "pretraining.json")) as f:
        record = json.load(f)
    best = record["best"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        rebuilt = LogitLossNet(temperature=best["temperature"], base="dist", dist_gamma=record["dist_gamma"]["best"])
    with torch.no_grad():
        rebuilt.log_weight.fill_(math.log(best["weight"]))
    shipped = pretrained_logit_loss().state_dict()
    for name, value in rebuilt.state_dict().items():
        torch.testing.assert_close(shipped[name], value, rtol=0, atol=0)


def test_each_loss_gets_only_its_own_options(tmp_path):
    from lkd_hf import LKDConfig

    config = LKDConfig(output_dir=str(tmp_path), report_to="none", temperature=3.0,
                       loss_kwargs='{"dist": {"beta": 2.0}, "kd": {"temperature": 5.0}}')  # a JSON string as on the CLI
    dist, kd, dkd = build_loss("dist", config), build_loss("kd", config), build_loss("dkd", config)
    assert (dist.beta, dist.gamma) == (2.0, 1.0)
    assert kd.temperature == 5.0 and dkd.temperature == 3.0  # loss_kwargs over the shared field
    assert build_loss("kd", config, temperature=6.0).temperature == 6.0
    with pytest.raises(ValueError, match=r"'dist' takes no option\(s\) bta.*beta, gamma, temperature"):
        build_loss("dist", LKDConfig(output_dir=str(tmp_path), report_to="none", loss_kwargs={"dist": {"bta": 1.0}}))


def test_the_per_loss_fields_still_work_with_a_deprecation_warning(tmp_path):
    from lkd_hf import LKDConfig

    with pytest.warns(FutureWarning, match=r"dkd_beta is deprecated: set loss_kwargs=\{'dkd': \{'beta': 4.0\}\}"):
        config = LKDConfig(output_dir=str(tmp_path), report_to="none", dkd_beta=4.0, dist_gamma=2.0,
                           loss_kwargs={"dist": {"gamma": 3.0}})
    assert config.loss_kwargs == {"dkd": {"beta": 4.0}, "dist": {"gamma": 3.0}, "lkd": {"dist_gamma": 2.0}}
    assert build_loss("dkd", config).beta == 4.0 and build_loss("dist", config).gamma == 3.0  # loss_kwargs first
