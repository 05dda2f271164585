"""LearnedLoss folders that are damaged, hand-edited or caught by a failing save: loading refuses them with a message
naming the file, the field or tensor and what to do; saving replaces a folder as a whole or not at all."""

import json
import os
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file

import lkd_hf.hub
from lkd_hf import LearnedLoss
from lkd_hf.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from lkd_hf.learned_loss_config import FORMAT_VERSION

ADVICE = "save_pretrained"  # every load error says how to get a good folder


@pytest.fixture(autouse=True)
def no_plot(monkeypatch):
    """Saves without the plot (slow, and not what these tests are about)."""
    monkeypatch.setattr(lkd_hf.hub, "plot_learned_loss", lambda *args, **kwargs: None)


@pytest.fixture
def saved(tmp_path, learned_bundle):
    """A bundle saved in ``tmp_path / "loss"``, and that folder."""
    bundle = learned_bundle()
    folder = tmp_path / "loss"
    bundle.save_pretrained(folder)
    return bundle, folder


REMOVE = object()  # edit_config(folder, name=REMOVE) deletes the field


def edit_config(folder, **changes) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps({k: v for k, v in config.items() if v is not REMOVE}))


def load_error(folder, error_type=ValueError) -> str:
    with pytest.raises(error_type) as error:
        LearnedLoss.from_pretrained(folder)
    return str(error.value)


# --- config.json -------------------------------------------------------------------------------------------------
def test_missing_format_version_names_the_field_not_a_legacy_loader(saved):
    _, folder = saved
    edit_config(folder, format_version=REMOVE)
    message = load_error(folder)
    assert "`format_version` is missing" in message and str(folder / CONFIG_NAME) in message and ADVICE in message


@pytest.mark.parametrize("version", ["1", None, 1.0, True, [1]])
def test_format_version_of_another_type_is_a_value_error_naming_it(saved, version):
    _, folder = saved
    edit_config(folder, format_version=version)
    message = load_error(folder)
    assert "`format_version` must be an integer" in message and str(folder / CONFIG_NAME) in message


@pytest.mark.parametrize("version", [0, -1])
def test_format_version_below_one_is_refused(saved, version):
    _, folder = saved
    edit_config(folder, format_version=version)
    assert f"`format_version` {version} is not a LearnedLoss format" in load_error(folder)


def test_newer_format_version_says_to_upgrade(saved):
    _, folder = saved
    edit_config(folder, format_version=FORMAT_VERSION + 1)
    message = load_error(folder)
    assert f"format version {FORMAT_VERSION + 1}" in message and "Upgrade lkd_hf" in message
    assert str(folder / CONFIG_NAME) in message


@pytest.mark.parametrize(
    "name, value, type_name",
    [
        ("num_classes", "10", "str"),
        ("num_classes", 0, "int"),
        ("num_classes", 10.0, "float"),
        ("steps", -1, "int"),
        ("teacher", 4, "int"),
        ("teacher_taps", "4", "str"),
        ("teacher_feature_shapes", [[96, 1]], "list"),
        ("student_feature_shapes", [[96, 1, "1"]], "list"),
        ("metrics", None, "NoneType"),
        ("metrics", {"eval_accuracy": "0.8"}, "dict"),
        ("logit_net", "kd", "str"),
        ("meta_steps", -1, "int"),
        ("meta_steps", True, "bool"),
        ("population_factors", [[1.0]], "list"),
        ("population_factors", [[1.0, 0.0]], "list"),
        ("population_member", "1", "str"),
        ("population_network_knobs", {"temperature": 6.0}, "dict"),
        ("population_dropped", [1, 1], "list"),
        ("population_dropped", 1, "int"),
    ],
)
def test_field_of_the_wrong_type_is_refused_naming_field_and_type(saved, name, value, type_name):
    _, folder = saved
    edit_config(folder, **{name: value})
    message = load_error(folder)
    assert f"`{name}` must be" in message and f"({type_name})" in message, message
    assert str(folder / CONFIG_NAME) in message and ADVICE in message


def test_string_num_classes_is_refused_at_load_not_in_the_compatibility_check(saved):
    """Not "learned for 10 classes, this run has 10" from comparing ``"10"`` with ``10`` later."""
    _, folder = saved
    edit_config(folder, num_classes="10")
    message = load_error(folder)
    assert "`num_classes` must be a positive integer or null, got '10' (str)" in message


def test_a_population_member_outside_the_population_is_refused(saved):
    _, folder = saved
    edit_config(folder, population_factors=[[1.0, 1.0], [2.0, 2.0]], population_member=2)
    message = load_error(folder)
    assert "`population_member` 2 is not a student of `population_factors`" in message and ADVICE in message
    edit_config(folder, population_member=1)
    assert LearnedLoss.from_pretrained(folder).config.population_member == 1


@pytest.mark.parametrize("dropped", [[2], [1]])
def test_a_dropped_student_outside_the_population_or_kept_is_refused(saved, dropped):
    _, folder = saved
    edit_config(folder, population_factors=[[1.0, 1.0], [2.0, 2.0]], population_member=1, population_dropped=dropped)
    message = load_error(folder)
    assert f"`population_dropped` {dropped} must name students of `population_factors`" in message and ADVICE in message
    edit_config(folder, population_dropped=[0])
    assert LearnedLoss.from_pretrained(folder).config.population_dropped == [0]


def test_missing_fields_are_named(saved):
    _, folder = saved
    edit_config(folder, num_classes=REMOVE, teacher_taps=REMOVE)
    assert "missing field(s) `num_classes`, `teacher_taps`" in load_error(folder)


def test_no_network_at_all_is_refused(saved):
    _, folder = saved
    edit_config(folder, logit_net=None, feature_net=None)
    message = load_error(folder)
    assert "`logit_net` and `feature_net` are both null" in message and str(folder / CONFIG_NAME) in message


def test_network_arguments_that_do_not_fit_name_the_field(saved):
    _, folder = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit_config(folder, logit_net={**config["logit_net"], "temperatur": 4.0})
    message = load_error(folder)
    assert "`logit_net`" in message and "LogitLossNet arguments" in message and "temperatur" in message
    edit_config(folder, logit_net={**config["logit_net"], "temperature": 100.0})  # outside the allowed range
    assert "`logit_net`" in load_error(folder)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_config_that_is_not_a_json_object_is_refused_naming_the_file(saved, content):
    _, folder = saved
    (folder / CONFIG_NAME).write_bytes(content.encode("latin-1"))
    message = load_error(folder)
    assert str(folder / CONFIG_NAME) in message and ADVICE in message


def test_config_of_an_unknown_kind_is_not_taken_for_the_legacy_layout(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / WEIGHTS_NAME).write_bytes(b"")
    assert "`format_version` is missing" in load_error(tmp_path)


# --- model.safetensors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [("logit.log_temperature", float("nan")), ("feature.head.bias", float("inf"))])
def test_non_finite_weights_are_refused_naming_the_tensor(saved, name, value):
    _, folder = saved
    weights = load_file(folder / WEIGHTS_NAME)
    weights[name] = torch.full_like(weights[name], value)
    save_file(weights, folder / WEIGHTS_NAME)
    message = load_error(folder)
    assert f"tensor {name!r} holds non-finite values" in message and str(folder / WEIGHTS_NAME) in message
    assert "learn the loss again" in message


def test_non_finite_weights_in_the_legacy_layout_are_refused(tmp_path, learned_networks):
    logit, feature = learned_networks()
    with torch.no_grad():
        feature.log_weight.fill_(float("nan"))
    logit.save_pretrained(tmp_path)
    feature.save_pretrained(tmp_path / "feature")
    message = load_error(tmp_path)
    assert "tensor 'log_weight' holds non-finite values" in message
    assert str(tmp_path / "feature" / WEIGHTS_NAME) in message


def test_missing_weights_are_named(saved):
    _, folder = saved
    (folder / WEIGHTS_NAME).unlink()
    message = load_error(folder, FileNotFoundError)
    assert str(folder / WEIGHTS_NAME) in message and "incomplete copy" in message and ADVICE in message


def test_weights_of_other_networks_are_refused_naming_the_file(saved, tmp_path):
    _, folder = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit_config(folder, logit_net={**config["logit_net"], "hidden_dim": 8})  # the weights have 32
    message = load_error(folder)
    assert str(folder / WEIGHTS_NAME) in message and "do not fit the networks of its config.json" in message
    (folder / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    message = load_error(folder)
    assert str(folder / WEIGHTS_NAME) in message and "not a readable safetensors file" in message


# --- saving --------------------------------------------------------------------------------------------------------
def leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("_"))


@pytest.mark.parametrize("failing", ["weights", "card"])
def test_a_failing_save_leaves_the_previous_folder_intact_and_no_temporary_folder(
    saved, monkeypatch, failing, learned_bundle, assert_same_losses
):
    previous, folder = saved
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def write_half_then_fail(model, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("No space left on device")

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    if failing == "weights":
        monkeypatch.setattr(lkd_hf.hub, "save_model", write_half_then_fail)
    else:  # after the weights, the config and the plot are written
        monkeypatch.setattr(LearnedLoss, "generate_model_card", fail)
    with pytest.raises(OSError, match="No space left"):
        learned_bundle(num_classes=7).save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    loaded = LearnedLoss.from_pretrained(folder)
    assert loaded.config.num_classes == 10
    assert_same_losses(loaded, previous)
    assert leftovers(folder.parent) == []


def test_save_over_an_existing_folder_replaces_it_whole(saved, learned_networks):
    _, folder = saved
    (folder / "notes.txt").write_text("a file of the previous save")
    (folder / CARD_NAME).write_text("an edited card")
    logit, _ = learned_networks()
    LearnedLoss.from_networks(logit, num_classes=7).save_pretrained(folder)
    assert not (folder / "notes.txt").exists()
    assert "an edited card" not in (folder / CARD_NAME).read_text()
    loaded = LearnedLoss.from_pretrained(folder)
    assert loaded.config.num_classes == 7 and loaded.feature is None
    assert set(load_file(folder / WEIGHTS_NAME)) == {f"logit.{k}" for k in logit.state_dict()}
    assert leftovers(folder.parent) == []


def test_of_two_interleaved_saves_the_last_rename_wins_whole(saved, monkeypatch, learned_bundle, assert_same_losses):
    """Save A writes its weights, save B then runs whole, then A finishes: the folder is all A's, not A's config
    beside B's weights."""
    _, folder = saved
    first, second = learned_bundle(num_classes=5), learned_bundle(num_classes=3)
    with torch.no_grad():
        second.logit.log_weight.add_(1.0)  # other weights than first's
    first_wrote, second_done = threading.Event(), threading.Event()
    write = lkd_hf.hub.save_model

    def save_model(model, filename, *args, **kwargs):
        write(model, filename, *args, **kwargs)
        if model is first:
            first_wrote.set()
            assert second_done.wait(60)

    monkeypatch.setattr(lkd_hf.hub, "save_model", save_model)
    errors = []
    writer = threading.Thread(target=lambda: _record(errors, first.save_pretrained, folder))
    writer.start()
    assert first_wrote.wait(60)
    second.save_pretrained(folder)
    assert LearnedLoss.from_pretrained(folder).config.num_classes == 3
    second_done.set()
    writer.join(60)
    assert errors == []
    loaded = LearnedLoss.from_pretrained(folder)
    assert loaded.config.num_classes == 5
    assert_same_losses(loaded, first)
    assert leftovers(folder.parent) == []


def _record(errors: list, call, *args) -> None:
    try:
        call(*args)
    except Exception as error:  # reported by the test's thread
        errors.append(error)


def test_save_onto_a_file_is_refused(tmp_path, learned_bundle):
    (tmp_path / "loss").write_text("")
    with pytest.raises(NotADirectoryError, match="it is a file"):
        learned_bundle().save_pretrained(tmp_path / "loss")
    assert leftovers(tmp_path) == []
