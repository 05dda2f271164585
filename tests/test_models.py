"""The timm-registered model families: registry, creation, timm's feature API, data config and sizes."""

import pytest
import timm
import torch
from timm.data import resolve_data_config
from torch import nn
from torch.func import functional_call

import lkd_hf.models  # noqa: F401  (registers the models)
from lkd_hf.channels import adapt_channel_stats
from lkd_hf.models import CifarResNet, ConvNet, WideResNet

CONVNETS = ["lkd_convnet_teacher", "lkd_convnet_s4", "lkd_convnet_s16"]
CIFAR_RESNETS = [
    "cifar_resnet8", "cifar_resnet14", "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56",
    "cifar_resnet110", "cifar_resnet8x4", "cifar_resnet32x4",
]
WRNS = ["cifar_wrn_40_2", "cifar_wrn_40_1", "cifar_wrn_16_2", "cifar_wrn_16_1"]
ALL = CONVNETS + CIFAR_RESNETS + WRNS
NUM_CLASSES = 7


def _input_shape(name):
    return (1, 28, 28) if name.startswith("lkd_convnet") else (3, 32, 32)


def _x(name, batch=2, seed=0):
    return torch.randn(batch, *_input_shape(name), generator=torch.Generator().manual_seed(seed))


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def models():
    """Every registered model, created once (``num_classes=7``, eval mode) and shared by the tests."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = timm.create_model(name, num_classes=NUM_CLASSES).eval()
        return cache[name]

    return get


def test_all_names_registered_and_listed():
    assert set(timm.list_models("lkd_*")) == set(CONVNETS)
    assert set(timm.list_models("cifar_*")) == set(CIFAR_RESNETS + WRNS)
    # the CIFAR nets do not shadow timm's ImageNet resnets
    assert timm.models.get_pretrained_cfg("resnet18").input_size == (3, 224, 224)
    for name in ALL:
        assert timm.is_model(name)
        assert timm.models.get_pretrained_cfg(name).architecture == name


@pytest.mark.parametrize("name", ALL)
def test_create_model_gives_logits(models, name):
    model = models(name)
    expected_cls = ConvNet if name in CONVNETS else CifarResNet if name in CIFAR_RESNETS else WideResNet
    assert isinstance(model, expected_cls)
    assert model.num_classes == NUM_CLASSES
    assert model.get_classifier().out_features == NUM_CLASSES
    assert model.in_chans == _input_shape(name)[0]
    with torch.no_grad():
        logits = model(_x(name))
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates_match_feature_info(models, name):
    model = models(name)
    x = _x(name)
    info = model.feature_info
    n = len(info)
    assert n == (3 if name in CONVNETS else 4)
    assert info[-1]["num_chs"] == model.num_features
    with torch.no_grad():
        final, feats = model.forward_intermediates(x, indices=list(range(n)), output_fmt="NCHW")
        assert isinstance(final, torch.Tensor) and isinstance(feats, list) and len(feats) == n
        for f, fi in zip(feats, info):
            assert f.shape == (2, fi["num_chs"], x.shape[2] // fi["reduction"], x.shape[3] // fi["reduction"])
        assert final.shape[1] == model.num_features
        assert final.shape[-2:] == feats[-1].shape[-2:]

        # intermediates_only: just the list, same tensors
        only = model.forward_intermediates(x, indices=[0, n - 1], intermediates_only=True)
        assert isinstance(only, list) and len(only) == 2
        torch.testing.assert_close(only[0], feats[0])
        torch.testing.assert_close(only[1], feats[-1])

        # negative indices count from the end; an int takes the last n; None takes all
        (last,) = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
        torch.testing.assert_close(last, feats[-1])
        (second_last,) = model.forward_intermediates(x, indices=[-2], intermediates_only=True)
        torch.testing.assert_close(second_last, feats[-2])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [f.shape for f in last_two] == [f.shape for f in feats[-2:]]
        assert len(model.forward_intermediates(x, intermediates_only=True)) == n

        # stop_early still gives the same tap
        (early,) = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early, feats[1])

        # out-of-range indices and other output formats raise
        for bad in ([n], [-n - 1], n + 1, 0):
            with pytest.raises(AssertionError):
                model.forward_intermediates(x, indices=bad)
        with pytest.raises(AssertionError):
            model.forward_intermediates(x, indices=[-1], output_fmt="NHWC")


@pytest.mark.parametrize("name", ALL)
def test_final_features_through_head_equal_forward(models, name):
    model = models(name)
    assert not model.training
    x = _x(name, seed=1)
    with torch.no_grad():
        final, _ = model.forward_intermediates(x, indices=[-1])
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        pre = model.forward_head(final, pre_logits=True)
    assert pre.shape == (2, model.num_features)


def test_wrn_norm_applies_final_bn_relu_to_last_tap(models):
    model = models("cifar_wrn_16_1")
    x = _x("cifar_wrn_16_1")
    with torch.no_grad():
        final, (raw,) = model.forward_intermediates(x, indices=[-1])
        _, (normed,) = model.forward_intermediates(x, indices=[-1], norm=True)
    assert (raw < 0).any()  # pre-activation stage output
    torch.testing.assert_close(normed, final)
    torch.testing.assert_close(normed, torch.relu(model.bn1(raw)))


@pytest.mark.parametrize("name, expected", [
    ("lkd_convnet_s4", (1, 28, 28)), ("lkd_convnet_teacher", (1, 28, 28)),
    ("cifar_resnet20", (3, 32, 32)), ("cifar_resnet8x4", (3, 32, 32)), ("cifar_wrn_16_1", (3, 32, 32)),
])
def test_resolve_data_config_default(models, name, expected):
    cfg = resolve_data_config({}, model=models(name))
    assert cfg["input_size"] == expected
    assert len(cfg["mean"]) == len(cfg["std"]) == expected[0]
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    pcfg = models(name).pretrained_cfg
    assert pcfg["num_classes"] == (10 if name in CONVNETS else 100)
    assert pcfg["classifier"] == "fc"
    first_conv = models(name).get_submodule(pcfg["first_conv"])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == expected[0]


def test_convnet_pretrained_cfg_and_defaults():
    model = timm.create_model("lkd_convnet_s4")
    assert model.num_classes == 10 and model.in_chans == 1
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (1, 28, 28)
    assert cfg["mean"] == (0.5,) and cfg["std"] == (0.5,)
    assert model.default_cfg is model.pretrained_cfg


def test_convnet_in_chans_3():
    model = timm.create_model("lkd_convnet_s16", in_chans=3, num_classes=4).eval()
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 28, 28)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert model.in_chans == 3
    with torch.no_grad():
        assert model(torch.randn(2, 3, 28, 28)).shape == (2, 4)
    # the shared registry config is untouched
    assert timm.models.get_pretrained_cfg("lkd_convnet_s16").input_size == (1, 28, 28)
    assert resolve_data_config({}, model=timm.create_model("lkd_convnet_s16"))["input_size"] == (1, 28, 28)


def test_cifar_in_chans_1_adapts_cfg():
    model = timm.create_model("cifar_resnet8", in_chans=1)
    cfg = resolve_data_config({}, model=model)
    assert cfg["input_size"] == (1, 32, 32) and len(cfg["mean"]) == len(cfg["std"]) == 1
    assert model.conv1.in_channels == 1


@pytest.mark.parametrize("name, in_chans", [("cifar_resnet8", 1), ("cifar_resnet8", 4), ("lkd_convnet_s4", 3)])
def test_in_chans_adapts_the_stats_with_the_shared_rule(name, in_chans):
    default = timm.models.get_pretrained_cfg(name)
    cfg = timm.create_model(name, in_chans=in_chans).pretrained_cfg
    assert cfg["input_size"] == (in_chans, *default.input_size[1:])
    assert cfg["mean"] == adapt_channel_stats(default.mean, in_chans)
    assert cfg["std"] == adapt_channel_stats(default.std, in_chans)


def _convnet_params(widths, convs, in_chans=1, num_classes=10):
    total, prev = 0, in_chans
    for w in widths:
        for _ in range(convs):
            total += 9 * prev * w + 2 * w  # bias-free 3x3 conv + BN affine
            prev = w
    return total + prev * num_classes + num_classes


@pytest.mark.parametrize("name, widths, convs, drop_rate", [
    ("lkd_convnet_teacher", (32, 64, 128), 2, 0.2),
    ("lkd_convnet_s4", (4, 8, 16), 1, 0.0),
    ("lkd_convnet_s16", (16, 32, 64), 1, 0.0),
])
def test_convnet_architecture(name, widths, convs, drop_rate):
    model = timm.create_model(name)
    convs_found = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs_found) == len(widths) * convs
    assert [fi["num_chs"] for fi in model.feature_info] == list(widths)
    assert [fi["reduction"] for fi in model.feature_info] == [2 ** i for i in range(len(widths))]
    assert model.drop_rate == drop_rate
    assert _n_params(model) == _convnet_params(widths, convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == len(widths) - 1


# Published sizes at 100 classes (CRD, Tian et al. 2020, Table 1/2).
PUBLISHED_M_PARAMS = {
    "cifar_resnet20": 0.28, "cifar_resnet56": 0.86, "cifar_resnet110": 1.73,
    "cifar_resnet8x4": 1.23, "cifar_resnet32x4": 7.43,
    "cifar_wrn_40_2": 2.25, "cifar_wrn_40_1": 0.57, "cifar_wrn_16_2": 0.70,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M_PARAMS))
def test_parameter_counts_match_published(models, name):
    model = models(name)  # 7 classes: swap the classifier's size for 100 classes arithmetically
    n100 = _n_params(model) + (100 - NUM_CLASSES) * (model.num_features + 1)
    assert n100 == pytest.approx(PUBLISHED_M_PARAMS[name] * 1e6, rel=0.03)


def test_repdistiller_compatible_state_dict_names(models):
    keys = set(models("cifar_resnet8x4").state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.0.downsample.0.weight",
            "layer3.0.bn2.weight", "fc.weight", "fc.bias"} <= keys
    keys = set(models("cifar_wrn_16_2").state_dict())
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block1.layer.0.convShortcut.weight",
            "block3.layer.1.conv2.weight", "bn1.running_var", "fc.weight"} <= keys
    assert "block1.layer.0.convShortcut.weight" not in models("cifar_wrn_16_1").state_dict()


@pytest.mark.parametrize("name", ["lkd_convnet_s4", "cifar_resnet8", "cifar_wrn_16_1"])
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    x = _x(name)
    with torch.no_grad():
        feats = model(x)
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [x.shape[-1] // f.shape[-1] for f in feats] == model.feature_info.reduction()


@pytest.mark.parametrize("name", ["lkd_convnet_s4", "cifar_resnet8", "cifar_wrn_16_1"])
def test_prune_intermediate_layers(models, name):
    ref = models(name)
    x = _x(name)
    with torch.no_grad():
        _, ref_feats = ref.forward_intermediates(x)
    model = timm.create_model(name, num_classes=NUM_CLASSES)
    model.load_state_dict(ref.state_dict())
    model.eval()
    assert model.prune_intermediate_layers([1]) == [1]
    assert model.num_features == model.feature_info[1]["num_chs"]
    assert model.num_classes == 0
    with torch.no_grad():
        final, (feat,) = model.forward_intermediates(x, indices=[1])
        out = model(x)
    torch.testing.assert_close(feat, ref_feats[1])
    torch.testing.assert_close(final, ref_feats[1])
    torch.testing.assert_close(out, ref_feats[1])  # no pooling, no classifier


def test_reset_classifier(models):
    model = timm.create_model("lkd_convnet_s4")
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    model.reset_classifier(0)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, model.num_features)
    model.reset_classifier(0, "")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, model.num_features, 7, 7)


def test_grad_checkpointing_gives_same_output():
    model = timm.create_model("cifar_resnet8", num_classes=3).eval()
    x = _x("cifar_resnet8")
    with torch.no_grad():
        ref = model(x)
    model.set_grad_checkpointing(True)
    x.requires_grad_(True)
    out = model(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize("name", ["lkd_convnet_s4", "cifar_resnet8", "cifar_wrn_16_1"])
def test_double_backward_through_functional_call(name):
    """The ``unrolled`` hypergradient differentiates through a student step (``create_graph=True``)."""
    model = timm.create_model(name, num_classes=3)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    out = functional_call(model, {**params, **buffers}, (_x(name),))
    grads = torch.autograd.grad(out.logsumexp(1).mean(), list(params.values()), create_graph=True)
    second = torch.autograd.grad(sum((g ** 2).sum() for g in grads), list(params.values()))
    assert all(torch.isfinite(g).all() for g in second)
    assert any(g.abs().sum() > 0 for g in second)
