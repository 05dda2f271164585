"""Feature taps (forward_intermediates and hooks), connectors and the student + connectors wrapper."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import lkd_hf  # noqa: F401  (registers lkd_hf's timm models)
from lkd_hf.features import (
    Connector,
    StudentWithConnectors,
    build_connectors,
    feature_shapes,
    forward_with_features,
    resolve_taps,
    to_nchw,
)

SIZE = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name, **kwargs):
    torch.manual_seed(0)
    if name.startswith("test_vit"):
        kwargs.setdefault("img_size", 32)
    return timm.create_model(name, num_classes=10, **kwargs)


def _x(size=SIZE, batch=4):
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------------------
# forward_with_features
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size", [
    ("test_resnet", SIZE),
    ("test_efficientnet", SIZE),
    ("test_vit", SIZE),
    ("mobilenetv3_small_050", SIZE),
    ("lkd_convnet_s4", (1, 28, 28)),
    ("cifar_resnet8", SIZE),
])
def test_logits_equal_plain_forward(name, size):
    model = _model(name).eval()
    x = _x(size)
    num_stages = len(model.feature_info)
    first_stage = dict(model.named_modules())[model.feature_info[0]["module"]]
    calls = []
    first_stage.register_forward_hook(lambda module, args, output: calls.append(1))
    for taps in (list(range(num_stages)), [num_stages - 1]):
        calls.clear()
        with torch.no_grad():
            logits, features = forward_with_features(model, x, taps)
            assert len(calls) == 1  # one forward pass
            expected = model(x)
        assert torch.allclose(logits, expected, rtol=0, atol=1e-6)
        assert len(features) == len(taps)
        for tap, feature in zip(taps, features):
            info = model.feature_info[tap]
            assert feature.shape[:2] == (x.shape[0], info["num_chs"])
            assert feature.ndim == 4


def test_features_in_tap_order_with_duplicates():
    model = _model("test_resnet").eval()
    x = _x()
    with torch.no_grad():
        _, ordered = forward_with_features(model, x, [1, 3])
        _, features = forward_with_features(model, x, [3, 1, 3])
    assert torch.equal(features[0], ordered[1]) and torch.equal(features[2], ordered[1])
    assert torch.equal(features[1], ordered[0])
    with torch.no_grad():
        _, (last,) = forward_with_features(model, x, [-1])  # unresolved taps are resolved
        _, (expected,) = forward_with_features(model, x, [4])
    assert torch.equal(last, expected)
    with pytest.raises(ValueError, match="unknown module name"):
        forward_with_features(model, x, ["layer9"])


def test_feature_shapes_match_feature_info_and_restore_modes():
    model = _model("test_resnet")
    model.train()
    model.layer2.eval()  # a submodule in a different mode must keep it
    shapes = feature_shapes(model, [0, 1, 2, 3, -1], (3, 64, 64))
    assert shapes == [(f["num_chs"], 64 // f["reduction"], 64 // f["reduction"]) for f in model.feature_info]
    assert model.training and model.layer1.training and not model.layer2.training


def test_vit_int_taps_drop_prefix_tokens():
    model = _model("test_vit").eval()
    assert model.num_prefix_tokens == 1
    outputs = []
    handle = model.blocks[-1].register_forward_hook(lambda module, args, output: outputs.append(output))
    with torch.no_grad():
        _, (feature,) = forward_with_features(model, _x(), [-1])
    handle.remove()
    (tokens,) = outputs
    # un-normed last block output, class token dropped, laid out on the 2x2 patch grid
    assert feature.shape == (4, 64, 2, 2)
    assert torch.allclose(feature.flatten(2).transpose(1, 2), tokens[:, 1:], atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Hook fallback (str taps)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, str_taps, int_taps", [
    ("test_resnet", ["act1", "layer1", "layer4"], [0, 1, 4]),
    ("test_vit", ["blocks.1", "blocks.5"], [1, 5]),
])
def test_str_taps_equal_int_taps(name, str_taps, int_taps):
    model = _model(name).eval()
    assert [model.feature_info[i]["module"] for i in int_taps] == str_taps
    x = _x()
    with torch.no_grad():
        logits, hooked = forward_with_features(model, x, str_taps)
        _, taken = forward_with_features(model, x, int_taps)
        mixed_logits, mixed = forward_with_features(model, x, [str_taps[0], int_taps[-1]])
        expected = model(x)
    assert torch.equal(logits, expected) and torch.allclose(mixed_logits, expected, rtol=0, atol=1e-6)
    for a, b in zip(hooked, taken):
        assert torch.equal(a, b)
    assert torch.equal(mixed[0], hooked[0]) and torch.equal(mixed[1], taken[-1])


def test_str_taps_on_model_without_forward_intermediates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    x = _x()
    with torch.no_grad():
        logits, (conv, flat) = forward_with_features(model, x, resolve_taps(model, ["0", "3"]))
        assert torch.equal(logits, model(x))
        assert torch.equal(conv, model[0](x))
    assert flat.shape == (4, 8, 1, 1)  # (B, C) -> (B, C, 1, 1)
    assert feature_shapes(model, ["0", "3"], SIZE) == [(8, 16, 16), (8, 1, 1)]


def test_hooks_removed_after_exception():
    model = _model("test_resnet").eval()
    with pytest.raises(RuntimeError):
        forward_with_features(model, torch.randn(2, 1, 32, 32), ["layer1", "layer2", 3])  # wrong in_chans
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad():
        _, (feature,) = forward_with_features(model, _x(), ["layer1"])
    assert feature.shape == (4, 32, 8, 8)
    assert all(not m._forward_hooks for m in model.modules())


def test_module_running_twice_is_rejected():
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 1), act, nn.Conv2d(4, 4, 1), act)
    with pytest.raises(ValueError, match="ran 2 times"):
        forward_with_features(model, _x(), ["1"])
    assert not act._forward_hooks


def test_to_nchw_token_layouts():
    tokens = torch.randn(2, 17, 8)  # class token + 4x4 patches
    grid = to_nchw(tokens)
    assert grid.shape == (2, 8, 4, 4)
    assert torch.equal(grid[:, :, 0, 1], tokens[:, 2])
    assert torch.equal(to_nchw(tokens[:, 1:]), grid)  # square: nothing dropped
    registers = torch.randn(2, 5 + 9, 8)  # class + 4 register tokens, 3x3 patches
    assert torch.equal(to_nchw(registers, num_prefix_tokens=5)[:, :, 2, 2], registers[:, -1])
    with pytest.raises(ValueError, match="square grid"):
        to_nchw(torch.randn(2, 7, 8))


# ------------------------------------------------------------------------------------------------------------
# Tap validation
# ------------------------------------------------------------------------------------------------------------


def test_resolve_taps_normalises():
    model = _model("test_resnet")
    assert resolve_taps(model, [-1, 0, "layer2", -5]) == [4, 0, "layer2", 0]


def test_out_of_range_index_lists_stages():
    model = _model("test_resnet")
    with pytest.raises(ValueError, match="out of range") as err:
        resolve_taps(model, [1, 5])
    message = str(err.value)
    assert "5 feature stages" in message
    assert "4: module 'layer4', 96 channels, reduction 32" in message
    assert "0: module 'act1', 32 channels, reduction 2" in message
    with pytest.raises(ValueError, match="out of range"):
        resolve_taps(model, [-6])


def test_unknown_module_name_lists_modules():
    with pytest.raises(ValueError, match="unknown module name 'layer9'") as err:
        resolve_taps(_model("test_resnet"), ["layer9"])
    assert "'layer1'" in str(err.value) and "layer4" in str(err.value)
    model = nn.Sequential(*[nn.Identity() for _ in range(30)])
    with pytest.raises(ValueError, match="unknown module name") as err:
        resolve_taps(model, ["body"])
    assert "\n  19\n" in str(err.value) and "30 modules in total" in str(err.value)


def test_int_taps_need_forward_intermediates():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="name modules instead") as err:
        resolve_taps(model, [0])
    assert "\n  0\n  1" in str(err.value)


def test_bad_tap_lists():
    model = _model("test_resnet")
    with pytest.raises(ValueError, match="empty"):
        resolve_taps(model, [])
    with pytest.raises(TypeError):
        resolve_taps(model, "layer1")
    with pytest.raises(TypeError):
        resolve_taps(model, [1.0])


def test_mismatched_tap_lengths():
    student, teacher = _model("cifar_resnet8"), _model("test_resnet")
    with pytest.raises(ValueError, match="2 student taps .* 1 teacher taps"):
        StudentWithConnectors.build(student, teacher, [1, 2], [1], SIZE)
    with pytest.raises(ValueError, match="paired one to one"):
        build_connectors([(4, 2, 2)], [(4, 2, 2), (4, 2, 2)])
    with pytest.raises(ValueError, match="one connector per tap"):
        StudentWithConnectors(student, [1, 2], build_connectors([(16, 32, 32)], [(32, 8, 8)]))


# ------------------------------------------------------------------------------------------------------------
# Connector
# ------------------------------------------------------------------------------------------------------------


def _regressed(connector, x):
    return connector.bn(connector.conv(x))


def test_connector_pools_larger_maps():
    connector = Connector((16, 8, 8), (32, 4, 4)).eval()
    x = torch.randn(2, 16, 8, 8)
    out = connector(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.allclose(out, F.adaptive_avg_pool2d(_regressed(connector, x), (4, 4)))
    assert connector.conv.bias is None and connector.conv.kernel_size == (1, 1)


def test_connector_interpolates_smaller_maps():
    connector = Connector((16, 2, 2), (8, 8, 8)).eval()
    x = torch.randn(2, 16, 2, 2)
    out = connector(x)
    assert out.shape == (2, 8, 8, 8)
    expected = F.interpolate(_regressed(connector, x), size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected)
    assert Connector((4, 8, 2), (4, 4, 4))(torch.randn(2, 4, 8, 2)).shape == (2, 4, 4, 4)  # mixed: bilinear


def test_connector_equal_size_regresses_only():
    connector = Connector((8, 4, 4), (8, 4, 4)).eval()
    x = torch.randn(2, 8, 4, 4)
    assert isinstance(connector.bn, nn.BatchNorm2d) and connector.conv.in_channels == 8
    assert torch.equal(connector(x), _regressed(connector, x))


# ------------------------------------------------------------------------------------------------------------
# StudentWithConnectors
# ------------------------------------------------------------------------------------------------------------


PAIRS = [
    # teacher, teacher kwargs, teacher taps, student, student kwargs, student taps
    ("test_resnet", {}, [1, 2, -1], "test_resnet", {"channels": (16, 24, 32, 48)}, [1, 2, -1]),
    ("test_resnet", {}, [1, 3], "mobilenetv3_small_050", {}, [0, -1]),
    ("test_vit", {}, [2, -1], "test_resnet", {}, [2, 4]),
    ("test_resnet", {}, [1, -1], "test_vit", {}, [0, "blocks.5"]),
    ("test_resnet", {}, ["layer1", 2], "cifar_resnet8", {}, ["layer2", -1]),
]


@pytest.mark.parametrize(
    "teacher_name, teacher_kwargs, teacher_taps, student_name, student_kwargs, student_taps", PAIRS)
def test_wrapper_connects_to_teacher_shapes_and_trains(
        teacher_name, teacher_kwargs, teacher_taps, student_name, student_kwargs, student_taps):
    teacher = _model(teacher_name, **teacher_kwargs).eval()
    student = _model(student_name, **student_kwargs).train()
    wrapper = StudentWithConnectors.build(student, teacher, student_taps, teacher_taps, SIZE)
    assert wrapper.student is student and len(wrapper.connectors) == len(student_taps)
    assert wrapper.taps == resolve_taps(student, student_taps)
    assert wrapper.teacher_taps == resolve_taps(teacher, teacher_taps)
    assert student.training  # the dry run restored the mode

    x = _x()
    with torch.no_grad():
        teacher_logits, teacher_features = forward_with_features(teacher, x, wrapper.teacher_taps)
    logits, features = wrapper(x, return_features=True)
    assert logits.shape == teacher_logits.shape == (4, 10)
    assert [f.shape for f in features] == [t.shape for t in teacher_features]

    loss = sum(F.mse_loss(f, t) for f, t in zip(features, teacher_features))
    loss.backward()
    for name, param in wrapper.connectors.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    first = next(student.parameters())  # the stem feeds every tap
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.get_classifier().parameters())  # logits unused by the loss


@pytest.mark.parametrize("name, kwargs", [("test_resnet", {"channels": (16, 24, 32, 48)}), ("test_vit", {})])
def test_exported_student_loads_into_fresh_timm_model(name, kwargs):
    teacher = _model("test_resnet").eval()
    wrapper = StudentWithConnectors.build(_model(name, **kwargs), teacher, [1, -1], [1, -1], SIZE)
    wrapper.train()
    x = _x()
    wrapper(x, return_features=True)  # update BatchNorm statistics
    state = wrapper.student.state_dict()
    assert set(wrapper.state_dict()) == {f"student.{k}" for k in state} | {
        f"connectors.{k}" for k in wrapper.connectors.state_dict()}

    torch.manual_seed(123)
    fresh_kwargs = {**kwargs, "img_size": 32} if name == "test_vit" else kwargs
    fresh = timm.create_model(name, num_classes=10, **fresh_kwargs)
    assert list(fresh.state_dict()) == list(state)
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    wrapper.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), wrapper(x))


@pytest.mark.parametrize("student_taps", [[1, -1], ["layer1", "layer3"]])
def test_functional_call_matches_module_call(student_taps):
    teacher = _model("test_resnet").eval()
    student = _model("cifar_resnet8")
    wrapper = StudentWithConnectors.build(student, teacher, student_taps, [1, -1], SIZE).eval()
    x = _x()
    state = {**dict(wrapper.named_parameters()), **dict(wrapper.named_buffers())}
    with torch.no_grad():
        logits, features = torch.func.functional_call(wrapper, state, (x,), {"return_features": True})
        expected_logits, expected_features = wrapper(x, return_features=True)
    assert torch.equal(logits, expected_logits)
    assert all(torch.equal(a, b) for a, b in zip(features, expected_features))

    # the supplied tensors are the ones used, on the forward_intermediates / hook path and in the connectors
    changed = copy.deepcopy(wrapper)
    with torch.no_grad():
        for param in changed.parameters():
            param.mul_(1.5)
    new_state = {**dict(changed.named_parameters()), **dict(changed.named_buffers())}
    with torch.no_grad():
        logits, features = torch.func.functional_call(wrapper, new_state, (x,), {"return_features": True})
        expected_logits, expected_features = changed(x, return_features=True)
    assert not torch.allclose(logits, wrapper(x))
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(features, expected_features))

    # and gradients flow to the supplied parameters
    params = {k: v.detach().requires_grad_() for k, v in wrapper.named_parameters()}
    _, features = torch.func.functional_call(
        wrapper, {**params, **dict(wrapper.named_buffers())}, (x,), {"return_features": True})
    sum(f.square().mean() for f in features).backward()
    assert params["student.conv1.weight"].grad.abs().sum() > 0
    assert params["connectors.1.conv.weight"].grad.abs().sum() > 0
