"""Ranges, not only types: every numeric field of ``LKDConfig``, every numeric option of a registered loss in its
``loss_kwargs`` and every numeric argument of a learned loss's networks in its ``config.json`` is checked against its
range, the error naming the field (and the file)."""

import json
import math

import pytest

import lkd_hf.hub
from lkd_hf import LearnedLoss
from lkd_hf.hub import CONFIG_NAME
from lkd_hf.ranges import LKD_CONFIG_RANGES, LOSS_OPTION_RANGES, NETWORK_RANGES, Range


def outside(allowed: Range) -> list:
    """Values just outside ``allowed``: beyond each end, NaN, and a fraction where an integer is due."""
    values = [math.nan]
    if allowed.low is not None:
        values.append(allowed.low if allowed.low_open else allowed.low - (1 if allowed.integer else 1e-6))
    if allowed.high is not None:
        values.append(allowed.high if allowed.high_open else allowed.high + 1e-6)
    if allowed.integer:
        values.append((allowed.low or 0) + 1.5)
    return values


@pytest.mark.parametrize("field, value", [(f, v) for f, r in LKD_CONFIG_RANGES.items() for v in outside(r)])
def test_every_numeric_config_field_outside_its_range_is_an_error_naming_it(tmp_path, make_config, field, value):
    with pytest.raises(ValueError, match=rf"{field} must be "):
        make_config(tmp_path, **{field: value})


def test_every_numeric_field_of_the_config_has_a_range():
    from dataclasses import fields

    from transformers import TrainingArguments

    from lkd_hf import LKDConfig

    inherited = {f.name for f in fields(TrainingArguments)}
    numeric = {f.name for f in fields(LKDConfig) if f.name not in inherited
               and any(kind in str(f.type) for kind in ("int", "float")) and "bool" not in str(f.type)}
    factors = {"population_temperature_factors", "population_weight_factors"}  # checked with their pairing rules
    assert numeric - factors == set(LKD_CONFIG_RANGES)


def test_a_list_field_names_its_element(tmp_path, make_config):
    with pytest.raises(ValueError, match=r"LKDConfig\.la_class_prior\[1\] must be in \[0, 1\]"):
        make_config(tmp_path, la_class_prior=[0.5, 1.5])


def test_the_defaults_and_the_ends_of_the_ranges_are_accepted(tmp_path, make_config):
    config = make_config(tmp_path, distill_weight=0.0, ce_weight=0.0, meta_warmup_ratio=0.0, lookahead_lr=1e-3,
                         meta_max_grad_norm=-1.0,
                         loss_kwargs={"dist": {"gamma": 0.0}, "ctkd": {"curriculum_fraction": 1.0}})
    assert config.distill_weight == 0.0 and config.lookahead_lr == 1e-3
    assert config.loss_kwargs["dist"] == {"gamma": 0.0}


# --- the options of the registered losses in loss_kwargs ---------------------------------------------------------
@pytest.mark.parametrize("loss, option, value", [(loss, option, value) for loss, options in LOSS_OPTION_RANGES.items()
                                                 for option, allowed in options.items() for value in outside(allowed)])
def test_every_numeric_loss_option_outside_its_range_is_an_error_naming_it(tmp_path, make_config, loss, option, value):
    with pytest.raises(ValueError, match=rf"LKDConfig\.loss_kwargs\['{loss}'\]\.{option} must be "):
        make_config(tmp_path, loss_kwargs={loss: {option: value}})


def test_every_numeric_option_of_the_registered_losses_has_a_range():
    import inspect

    from lkd_hf.losses import available_losses
    from lkd_hf.losses.registry import _entry

    numeric = {}
    for name in available_losses():
        parameters = inspect.signature(_entry(name)[1]).parameters.values()
        options = {p.name for p in parameters if any(kind in str(p.annotation) for kind in ("int", "float"))
                   and "bool" not in str(p.annotation)}
        if options:
            numeric[name] = options
    assert numeric == {name: set(options) for name, options in LOSS_OPTION_RANGES.items()}


def test_a_deprecated_field_and_its_loss_kwargs_option_are_both_checked(tmp_path, make_config):
    with pytest.raises(ValueError, match=r"LKDConfig\.dist_beta must be >= 0"):
        make_config(tmp_path, dist_beta=-1.0)
    with pytest.raises(ValueError, match=r"LKDConfig\.loss_kwargs\['dist'\]\.beta must be >= 0 \(a number\), got -1"):
        make_config(tmp_path, loss_kwargs='{"dist": {"beta": -1.0}}')  # as on the command line
    with pytest.raises(ValueError, match=r"LKDConfig\.loss_kwargs\['la'\]\.class_prior\[1\] must be in \[0, 1\]"):
        make_config(tmp_path, loss_kwargs={"la": {"class_prior": [0.5, 1.5]}})


@pytest.mark.parametrize("field, message", [
    ("distill_weight", r"LKDConfig\.distill_weight must be >= 0 \(a number\), got -1"),
    ("lookahead_lr", r"LKDConfig\.lookahead_lr must be > 0 \(a number or None\), got -1"),
    ("meta_learning_rate", r"LKDConfig\.meta_learning_rate must be > 0 \(a number\), got -1"),
])
def test_negative_weights_and_learning_rates_are_refused(tmp_path, make_config, field, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **{field: -1})


@pytest.fixture
def saved(tmp_path, learned_bundle, monkeypatch):
    """A bundle saved in ``tmp_path / "loss"`` (without its plot), and that folder."""
    monkeypatch.setattr(lkd_hf.hub, "plot_learned_loss", lambda *args, **kwargs: None)
    folder = tmp_path / "loss"
    learned_bundle().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("network, field, value", [
    ("logit_net", "dist_gamma", -1e6), ("logit_net", "dist_beta", -0.5), ("logit_net", "hidden_dim", -3),
    ("logit_net", "hidden_dim", 0), ("feature_net", "hidden_dim", -3), ("logit_net", "dist_gamma", "high"),
])
def test_a_bundle_argument_outside_its_range_is_refused_naming_the_file_and_field(saved, network, field, value):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config[network][field] = value
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    kind = {"logit_net": "LogitLossNet", "feature_net": "FeatureLossNet"}[network]
    with pytest.raises(ValueError) as error:
        LearnedLoss.from_pretrained(saved)
    message = str(error.value)
    assert str(saved / CONFIG_NAME) in message and f"`{network}`" in message
    assert f"{kind}.{field} must be {NETWORK_RANGES[kind][field]}, got {value!r}" in message
    assert "negative dimension" not in message
