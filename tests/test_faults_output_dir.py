"""One owner per output folder: every call that writes into ``output_dir`` (``train``, ``save_model``,
``push_to_hub``, ``learn_loss``) holds its lock, and a trainer does not write into a folder another trainer's run
has taken over."""

import os
from pathlib import Path

import pytest
import torch

from lkd_hf import LKDTrainer
from lkd_hf.safe_io import LOCK_NAME, OWNER_NAME


@pytest.fixture
def two_trainers(tmp_path, make_config, make_dataset, make_models):
    """Two trainers of one process on one output folder."""

    def build(**fields):
        student, teacher = make_models()
        args = make_config(tmp_path, **{"loss": "lkd", "max_steps": 1, "hypergradient": "finite_difference", **fields})
        return LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(64))

    return build(), build(max_steps=2)  # the second trains another student


def test_save_model_after_another_trainers_run_on_the_folder_is_refused(two_trainers, tmp_path):
    first, second = two_trainers
    first.train()
    first.save_model()  # its own folder
    second.train()  # a new run takes the folder over
    weights = Path(first.args.output_dir, "model.safetensors")
    before = weights.read_bytes()
    second.save_model()
    after = weights.read_bytes()
    with pytest.raises(RuntimeError, match=r"holds the files of another trainer's run \(run [0-9a-f]+, .*\): "
                                           r"save_model\(\) of this trainer there would mix"):
        first.save_model()
    assert weights.read_bytes() == after != before
    first.save_model(str(tmp_path / "elsewhere"))  # another folder is fine
    assert os.path.isfile(tmp_path / "elsewhere" / "model.safetensors")


def test_push_to_hub_of_a_trainer_that_no_longer_owns_the_folder_is_refused_before_any_upload(two_trainers):
    first, second = two_trainers
    first.train()
    second.train()
    with pytest.raises(RuntimeError, match=r"push_to_hub\(\) of this trainer there would mix"):
        first.push_to_hub()


def test_writes_while_another_trainer_holds_the_folder_are_refused(two_trainers):
    first, second = two_trainers
    with first.output_dir_owner.hold(first.args.output_dir, claim=True, action="train()"):  # as while it trains
        for write in (second.save_model, lambda: second.learn_loss(1), second.train):
            with pytest.raises(RuntimeError, match=f"is in use by another run \\(run {first.output_dir_owner.id}, "):
                write()
        first.save_model()  # the holder's own writes pass
    second.train()  # a run of its own: it takes the folder over
    assert f"run {second.output_dir_owner.id}," in Path(second.args.output_dir, OWNER_NAME).read_text()
    assert not Path(second.args.output_dir, LOCK_NAME).exists()  # the owner stays recorded, the lock file goes


def test_save_model_refuses_a_non_finite_loss_network(tmp_path, make_config, make_dataset, make_models):
    student, teacher = make_models()
    trainer = LKDTrainer(model=student, teacher=teacher, train_dataset=make_dataset(64),
                         args=make_config(tmp_path, loss="lkd", hypergradient="finite_difference"))
    with torch.no_grad():
        next(trainer.distill_loss.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(RuntimeError, match=r"Refusing saving the loss network LogitLossNet to .*saved.*: non-finite"):
        trainer.save_model(str(tmp_path / "saved"))
    assert not os.path.exists(tmp_path / "saved")
