"""LKDTrainer with feature losses: taps in the same forward, connectors, learned feature loss, export to plain timm."""

import os

import pytest
import timm
import torch
from safetensors.torch import load_file

from lkd_hf import LearnedLoss, LKDTrainer
from lkd_hf.features import StudentWithConnectors
from lkd_hf.constants import CONNECTORS_NAME, LOSS_DIRNAME

PAIRS = {  # teacher -> student, with the hypergradient estimator each supports
    "resnet->resnet": ("test_resnet", {}, "test_resnet", {"channels": (16, 24, 32, 48)}, "unrolled"),
    "resnet->mobilenetv3": ("test_resnet", {}, "mobilenetv3_small_050", {}, "finite_difference"),
    "vit->resnet": ("test_vit", {"img_size": 32}, "test_resnet", {}, "finite_difference"),
    "resnet->vit": ("test_resnet", {}, "test_vit", {"img_size": 32}, "finite_difference"),
}


def build_pair(name: str):
    teacher_name, teacher_kwargs, student_name, student_kwargs, estimator = PAIRS[name]
    torch.manual_seed(0)
    teacher = timm.create_model(teacher_name, num_classes=10, **teacher_kwargs)
    student = timm.create_model(student_name, num_classes=10, **student_kwargs)
    return teacher, student, estimator


@pytest.fixture
def feature_trainer(make_config, make_dataset):
    """``feature_trainer(tmp_path, pair="resnet->resnet", **overrides)``: an lkd+feat trainer of a teacher -> student
    pair of ``PAIRS`` on 96 images."""

    def build(tmp_path, pair="resnet->resnet", **overrides):
        teacher, student, estimator = build_pair(pair)
        fields = dict(loss="lkd+feat", feature_taps=[-2, -1], hypergradient=estimator, meta_learning_rate=0.05)
        fields.update(overrides)
        args = make_config(tmp_path, **fields)
        return LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(96))

    return build


@pytest.mark.parametrize("pair", list(PAIRS))
def test_learned_feature_loss_trains_every_pair_and_both_loss_networks_move(tmp_path, pair, feature_trainer):
    trainer = feature_trainer(tmp_path, pair, max_steps=4, logging_steps=4)
    assert isinstance(trainer.model, StudentWithConnectors)
    feature_params = list(trainer.feature_loss.parameters())
    logit_params = list(trainer.distill_loss.parameters())
    before = [p.detach().clone() for p in feature_params + logit_params]
    trainer.train()
    after = feature_params + logit_params
    moved = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert any(moved[: len(feature_params)]) and any(moved[len(feature_params):])
    logs = trainer.state.log_history[0]
    assert {"feature", "meta/val_loss_after", "lkd/feature_weight"} <= set(logs)
    assert sum(k.startswith("feature/") for k in logs) == 2  # one per tap


def test_feature_objective_is_fitnet_at_initialisation(tmp_path, feature_trainer):
    trainer = feature_trainer(tmp_path, loss="kd+feat")
    fitnet = feature_trainer(tmp_path, loss="kd+fitnet")
    fitnet.model.load_state_dict(trainer.model.state_dict())
    examples = [trainer.train_dataset[i] for i in range(8)]
    batch = trainer.with_teacher_outputs(trainer._prepare_inputs(trainer.data_collator(examples)))
    trainer.model.train(), fitnet.model.train()
    torch.manual_seed(0)
    learned = trainer.compute_loss(trainer.model, batch)
    torch.manual_seed(0)
    handmade = fitnet.compute_loss(fitnet.model, batch)
    torch.testing.assert_close(learned, handmade)
    assert trainer.loss_params == list(trainer.feature_loss.parameters())  # only the feature loss is learned


def test_teacher_features_come_from_the_same_forward_as_its_logits(tmp_path, feature_trainer):
    trainer = feature_trainer(tmp_path)
    calls = []
    trainer.teacher.conv1.register_forward_pre_hook(lambda *a: calls.append(1))  # one stem pass = one forward
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    out = trainer.with_teacher_outputs(trainer._prepare_inputs(batch))
    assert len(calls) == 1
    torch.testing.assert_close(out["teacher_logits"], trainer.teacher(batch["pixel_values"]))
    # test_resnet layer3, layer4
    assert [tuple(f.shape[1:]) for f in out["teacher_features"]] == [(192, 2, 2), (96, 1, 1)]


def test_hand_made_feature_baselines_combine_with_logit_losses(tmp_path, feature_trainer):
    for loss in ("kd+fitnet", "at", "dkd+at"):
        trainer = feature_trainer(tmp_path, loss=loss, max_steps=2, logging_steps=2)
        trainer.train()
        assert trainer.loss_params == [] and "feature" in trainer.state.log_history[0]
    with pytest.raises(ValueError, match="two feature losses"):
        feature_trainer(tmp_path, loss="fitnet+at")


def test_tap_errors_list_the_available_stages(tmp_path, feature_trainer):
    with pytest.raises(ValueError, match="layer4"):
        feature_trainer(tmp_path, feature_taps=[7])
    with pytest.raises(ValueError, match="pair one to one"):
        feature_trainer(tmp_path, feature_taps=[1, 2], teacher_feature_taps=[1])


def test_unrolled_on_mobilenetv3_names_the_alternative(tmp_path, feature_trainer):
    with pytest.raises(ValueError, match="finite_difference"):  # found by a dry run at construction
        feature_trainer(tmp_path, "resnet->mobilenetv3", hypergradient="unrolled", max_steps=2)


def test_exported_student_reloads_in_plain_timm_and_connectors_resume(tmp_path, feature_trainer):
    trainer = feature_trainer(tmp_path, max_steps=3, save_strategy="steps", save_steps=3)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    plain = timm.create_model("test_resnet", num_classes=10, channels=(16, 24, 32, 48)).eval()
    plain.load_state_dict(load_file(str(out / "model.safetensors")))  # strict: no connector keys
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), trainer.student.eval()(x))
    assert os.path.exists(out / CONNECTORS_NAME)
    reloaded = LearnedLoss.from_pretrained(str(out / LOSS_DIRNAME)).feature
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(reloaded(s, t), trainer.feature_loss.cpu()(s, t))

    fresh = feature_trainer(tmp_path)
    fresh._load_from_checkpoint(str(out / "checkpoint-3"))
    for (name, a), b in zip(trainer.model.state_dict().items(), fresh.model.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, msg=name)


def test_loss_from_reuses_both_networks_frozen(tmp_path, feature_trainer):
    trainer = feature_trainer(tmp_path, max_steps=2)
    trainer.train()
    trainer.save_model()
    reuse = feature_trainer(tmp_path / "reuse", loss_from=str(tmp_path / "out" / LOSS_DIRNAME), freeze_loss=True)
    assert reuse.loss_params == [] and reuse.loss_learner is None
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(reuse.feature_loss.cpu()(s, t), trainer.feature_loss.cpu()(s, t))
