"""Reuse means what it says: a setting the run would silently ignore is a warning, one that contradicts another an
error."""

import warnings

import pytest

from lkd_hf import LKDTrainer


def test_a_fixed_learned_loss_warns_that_the_meta_dataset_is_unused(tmp_path, make_config, make_dataset, make_models):
    student, teacher = make_models()
    args = make_config(tmp_path, loss="lkd", lkd_init="pretrained")  # the shipped loss, kept fixed by default
    assert args.freeze_loss
    with pytest.warns(UserWarning, match=r"meta_dataset unused: the learned loss is kept fixed .*freeze_loss=False"):
        trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64),
                             meta_dataset=make_dataset(16, seed=1))
    assert trainer.loss_learner is None


def test_a_learned_loss_uses_the_meta_dataset_without_a_warning(tmp_path, make_config, make_dataset, make_models):
    student, teacher = make_models()
    args = make_config(tmp_path, loss="lkd", lkd_init="pretrained", freeze_loss=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*unused")
        trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64),
                             meta_dataset=make_dataset(16, seed=1))
    assert trainer.loss_learner.meta_dataset is not None


# --- resume compares the settings that shape what is learned -------------------------------------------------------
LEARNED = {"loss": "lkd", "lkd_init": "kd", "max_steps": 1, "save_strategy": "steps", "save_steps": 1,
           "meta_interval": 1, "hypergradient": "finite_difference", "per_device_train_batch_size": 8}


def _lkd_trainer(tmp_path, eval_dataset=None, **fields):
    from conftest import make_config, make_dataset, make_models

    student, teacher = make_models()
    return LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, **{**LEARNED, **fields}),
                      train_dataset=make_dataset(64), eval_dataset=eval_dataset)


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """The output folder of a learned-loss run (from KD, meta steps) with a checkpoint at step 1 (trained once)."""
    tmp_path = tmp_path_factory.mktemp("learned")
    _lkd_trainer(tmp_path).train()
    return tmp_path


@pytest.fixture
def resumed(learned_run, tmp_path):
    """``resumed(**fields)``: a trainer on a copy of :func:`learned_run`'s folder with these settings."""
    import shutil

    shutil.copytree(learned_run / "out", tmp_path / "out")
    return lambda **fields: _lkd_trainer(tmp_path, **{"max_steps": 2, "save_strategy": "no", **fields})


@pytest.mark.parametrize("fields, named", [
    ({"loss": "kd"}, r"loss \(the loss spec.*\): saved 'lkd', now 'kd'"),
    ({"freeze_loss": True}, r"freeze_loss .*: saved False, now True"),
    ({"lkd_init": "pretrained", "freeze_loss": False}, r"lkd_init .*: saved 'kd', now 'pretrained'"),
    ({"lkd_init": "dist"}, r"lkd_init .*: saved 'kd', now 'dist'.*\n- logit_net .*'base': 'kd'.*'base': 'dist'"),
    ({"loss": "lkd+feat"}, r"loss .*: saved 'lkd', now 'lkd\+feat'"),
    ({"loss_hidden_dim": 8}, r"logit_net .*'hidden_dim': 32.*'hidden_dim': 8"),
    ({"loss_kwargs": {"lkd": {"init": "dist"}}}, r"lkd_init .*: saved 'kd', now 'dist'"),  # the start set per loss
])
def test_resume_with_settings_that_change_what_is_learned_is_refused_naming_each(resumed, fields, named):
    trainer = resumed(**fields)
    refused = rf"(?s)Cannot resume from .*checkpoint-1: this run's settings differ.*{named}"
    with pytest.raises(ValueError, match=refused):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0


def test_resume_with_another_start_temperature_of_a_learned_loss_restores_the_learned_one(resumed, learned_run):
    import torch
    from safetensors.torch import load_file

    trainer = resumed(temperature=9.0)
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 2
    saved = load_file(str(learned_run / "out" / "checkpoint-1" / "lkd_loss" / "model.safetensors"))
    assert abs(trainer.distill_loss.temperature.item() - saved["logit.log_temperature"].exp().item()) < 0.5
    assert not torch.isclose(trainer.distill_loss.temperature, torch.tensor(9.0))


def test_resume_of_a_population_with_other_factors_or_size_is_refused(tmp_path):
    from conftest import make_dataset

    first = _lkd_trainer(tmp_path, eval_dataset=make_dataset(16, seed=3), population_temperature_factors=[1.0, 2.0])
    first.train()
    for factors, now in (([1.0, 3.0], r"\[\[1\.0, 1\.0\], \[3\.0, 1\.0\]\]"), ([1.0], r"\[\[1\.0, 1\.0\]\]"),
                         ([1.0, 2.0, 3.0], r"\[\[1\.0, 1\.0\], \[2\.0, 1\.0\], \[3\.0, 1\.0\]\]")):
        trainer = _lkd_trainer(tmp_path, eval_dataset=make_dataset(16, seed=3), population_temperature_factors=factors,
                               max_steps=2, save_strategy="no")
        saved = r"\[\[1\.0, 1\.0\], \[2\.0, 1\.0\]\]"
        with pytest.raises(ValueError, match=rf"(?s)population .*: saved {saved}, now {now}"):
            trainer.train(resume_from_checkpoint=True)


# --- loss_from reuses what the loss spec names ------------------------------------------------------------------
@pytest.fixture
def bundle_folder(tmp_path, learned_bundle, monkeypatch):
    """A bundle of a logit and a feature loss network saved in ``tmp_path / "bundle"`` (without its plot)."""
    import lkd_hf.hub

    monkeypatch.setattr(lkd_hf.hub, "plot_learned_loss", lambda *args, **kwargs: None)
    learned_bundle().save_pretrained(tmp_path / "bundle")
    return str(tmp_path / "bundle")


def test_loss_from_with_a_spec_naming_no_learned_loss_is_an_error(tmp_path, make_config, make_dataset, make_models,
                                                                  bundle_folder):
    student, teacher = make_models()
    with pytest.raises(ValueError, match=r"holds a learned logit \('lkd'\) and feature \('feat'\) loss, but "
                                         r"loss='kd' names none of them.*loss='lkd\+feat'"):
        LKDTrainer(model=student, teacher=teacher, train_dataset=make_dataset(64),
                   args=make_config(tmp_path, loss="kd", loss_from=bundle_folder))


def test_a_bundles_feature_network_with_a_logit_only_spec_is_left_out_with_a_warning(
        tmp_path, make_config, make_dataset, make_models, bundle_folder):
    student, teacher = make_models()
    with pytest.warns(UserWarning, match=r"its learned feature loss network is not used, loss='lkd' does not name it"):
        trainer = LKDTrainer(model=student, teacher=teacher, train_dataset=make_dataset(64),
                             args=make_config(tmp_path, loss="lkd", loss_from=bundle_folder))
    assert trainer.feature_loss is None and trainer.distill_loss is not None
