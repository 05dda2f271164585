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
