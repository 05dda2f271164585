"""The population: students side by side, each at its temperature and weight of the learned loss, trained
as they would be alone; the trainer keeps the best on its evaluation dataset."""

import collections
import logging
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from lkd_hf import LearnedLoss, LKDConfig, LKDTrainer, LogitLossNet
from lkd_hf import population_choice
from lkd_hf import trainer as trainer_module
from lkd_hf.objective import build_objective
from lkd_hf.population import (
    DEFAULT_DROP_FRACTIONS,
    DEFAULT_TEMPERATURE_FACTORS,
    DEFAULT_WEIGHT_FACTORS,
    ScaledLoss,
    StudentPopulation,
    member_objectives,
    population_drops,
    population_factors,
    selection_score,
)


def _logits(seed: int, shape=(8, 10)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the pieces ----------------------------------------------------------------------------------------------
def test_population_stacks_members_in_training_and_gives_the_selected_one_in_evaluation():
    torch.manual_seed(0)
    student = timm.create_model("test_resnet", num_classes=10)
    population = StudentPopulation.of_copies(student, 3)
    assert population.members[0] is student
    x = torch.randn(4, 3, 32, 32)
    population.eval()
    for k in range(3):  # copies start from the same weights but share none
        assert torch.equal(population.members[k](x), student(x))
    assert not set(map(id, population.members[1].parameters())) & set(map(id, student.parameters()))
    with torch.no_grad():
        next(population.members[2].parameters()).add_(1.0)
    population.selected = 2
    assert torch.equal(population(x), population.members[2](x))
    population.train()
    assert population(x).shape == (3, 4, 10)
    with pytest.raises(ValueError, match="at least two"):
        StudentPopulation([student])


@pytest.mark.parametrize("base", ["kd", "dist"])
def test_scaled_loss_is_the_network_at_the_scaled_temperature_and_weight(base):
    torch.manual_seed(0)
    net = LogitLossNet(temperature=3.0, base=base)
    for module in (net.mlp, net.class_head, net.sample_head):  # a learned-looking network (the heads start at zero)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        net.log_weight.fill_(0.2)
    reference = LogitLossNet(temperature=7.5, base=base)
    reference.load_state_dict({**net.state_dict(), "log_temperature": net.log_temperature.detach() + math.log(2.5),
                               "log_weight": net.log_weight.detach() + math.log(1.5)})
    scaled = ScaledLoss(net, 2.5, 1.5)
    student, teacher, labels = _logits(1).requires_grad_(), _logits(2), torch.arange(8) % 10
    value = scaled(student, teacher, labels)
    expected = reference(student, teacher, labels)
    assert torch.allclose(value, expected, rtol=1e-5)
    assert torch.allclose(torch.autograd.grad(value, student)[0], torch.autograd.grad(expected, student)[0], rtol=1e-5)
    assert torch.allclose(scaled.temperature, reference.temperature)
    assert torch.allclose(scaled.weight, reference.weight) and torch.allclose(scaled.weight, 1.5 * net.weight)
    # the parameters are the network's own: a gradient reaches them
    grads = torch.autograd.grad(scaled(student, teacher, labels),
                                [net.log_temperature, net.log_weight, net.class_head.weight])
    assert all(g.abs().sum() > 0 for g in grads)
    materialized = scaled.materialize()
    assert isinstance(materialized, LogitLossNet) and materialized is not net
    assert torch.allclose(materialized(student, teacher, labels), expected, rtol=1e-5)
    assert torch.allclose(net.temperature, torch.tensor(3.0))  # the wrapped network is left as it was
    assert torch.allclose(net.log_weight, torch.tensor(0.2))
    # past the network's range the scaled loss reports the clamped value it is evaluated at, as the network does
    hot = ScaledLoss(net, 10.0, 50.0)
    assert torch.allclose(hot.temperature, hot.materialize().temperature)
    assert torch.allclose(hot.weight, hot.materialize().weight) and hot.weight < 50.0 * net.weight
    with pytest.raises(ValueError, match="> 0"):
        ScaledLoss(net, 0.0)
    with pytest.raises(ValueError, match="> 0"):
        ScaledLoss(net, 1.0, -1.0)


def test_selection_score_follows_metric_for_best_model():
    metrics = {"eval_m1_loss": 0.5, "eval_m1_accuracy": 0.8}
    assert selection_score(metrics, None, None, "eval_m1") == 0.8  # accuracy when evaluated
    assert selection_score(metrics, "loss", None, "eval_m1") == -0.5  # a loss: lower is better
    assert selection_score(metrics, "eval_accuracy", True, "eval_m1") == 0.8
    assert selection_score({"eval_loss": 0.3}, None, None) == -0.3  # no accuracy: the loss
    with pytest.raises(KeyError, match="top5"):
        selection_score(metrics, "top5", None, "eval_m1")


def test_which_runs_train_a_population(tmp_path, make_config):
    def factors(has_eval=True, **fields):
        args = make_config(tmp_path, **fields)
        return population_factors(args, build_objective(args), has_eval)

    default = tuple(zip(DEFAULT_TEMPERATURE_FACTORS, DEFAULT_WEIGHT_FACTORS, strict=True))
    assert default[0] == (1.0, 1.0) and len(default) == 3
    assert factors(loss="lkd", freeze_loss=True) == default
    assert factors(loss="lkd") == default[:2]  # learned by meta steps (from KD): they learn from the first student
    assert factors(False, loss="lkd") == ((1.0, 1.0),)  # nothing to choose on
    assert factors(loss="kd") == ((1.0, 1.0),) and factors(loss="lkd+feat") == ((1.0, 1.0),)
    assert factors(loss="lkd", population_temperature_factors=[1, 1.5, 3]) == ((1.0, 1.0), (1.5, 1.0), (3.0, 1.0))
    assert factors(loss="lkd", population_weight_factors=[1, 0.5]) == ((1.0, 1.0), (1.0, 0.5))
    assert factors(loss="lkd", population_temperature_factors=[1, 2, 2],
                   population_weight_factors=[1, 1, 2]) == ((1.0, 1.0), (2.0, 1.0), (2.0, 2.0))
    assert factors(loss="kd", population_temperature_factors=[1.0]) == ((1.0, 1.0),)
    with pytest.raises(ValueError, match="needs a learned logit loss"):
        factors(loss="kd", population_temperature_factors=[1.0, 2.0])
    with pytest.raises(ValueError, match="needs a learned logit loss"):
        factors(False, loss="lkd", population_weight_factors=[1.0, 2.0])


def test_which_populations_drop_students(tmp_path, make_config):
    def drops(has_eval=True, **fields):
        args = make_config(tmp_path, **fields)
        objective = build_objective(args)
        return population_drops(args, population_factors(args, objective, has_eval))

    fixed = dict(loss="lkd", freeze_loss=True)
    assert drops(**fixed) == DEFAULT_DROP_FRACTIONS == (0.5, 0.75)  # the default population, its loss fixed
    assert drops(loss="lkd") == ()  # meta steps
    assert drops(False, **fixed) == () and drops(loss="kd") == ()  # a single student
    assert drops(**fixed, population_temperature_factors=[1, 2, 3]) == ()  # a population set by hand
    assert drops(**fixed, population_drop_fractions=[]) == ()
    assert drops(**fixed, population_temperature_factors=[1, 2, 3], population_drop_fractions=[0.4]) == (0.4,)


@pytest.mark.parametrize("fields, match", [
    (dict(population_temperature_factors=[2.0, 1.0]), "must start with 1.0"),
    (dict(population_weight_factors=[1.0, 0.0]), "must start with 1.0"),
    (dict(population_weight_factors=[1.0, float("inf")]), "must start with 1.0"),
    (dict(population_temperature_factors=[]), "must start with 1.0"),
    (dict(population_temperature_factors=[1.0, 2.0, 2.0]), "must differ"),
    (dict(population_temperature_factors=[1.0, 2.0, 2.0], population_weight_factors=[1.0, 2.0, 2.0]), "must differ"),
    (dict(population_temperature_factors=[1.0, 2.0], population_weight_factors=[1.0, 2.0, 3.0]), "one factor per"),
])
def test_config_rejects_populations_it_cannot_train(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        LKDConfig(output_dir=str(tmp_path), **fields)


def test_member_objectives_share_the_loss_and_scale_its_temperature_and_weight(tmp_path, make_config):
    args = make_config(tmp_path, loss="lkd", ce_weight=0.5, distill_weight=2.0)
    objective = build_objective(args)
    members = member_objectives(objective, ((1.0, 1.0), (2.0, 3.0)))
    assert members[0] is objective
    scaled = members[1].distill_loss
    assert scaled.loss is objective.distill_loss and (scaled.temperature_factor, scaled.weight_factor) == (2.0, 3.0)
    assert (members[1].ce_weight, members[1].distill_weight) == (0.5, 2.0)
    assert members[1].meta_parameters() == objective.meta_parameters()


# --- in the trainer ------------------------------------------------------------------------------------------
def _trainer(tmp_path, run, make_config, make_dataset, **fields) -> LKDTrainer:
    torch.manual_seed(0)
    student, teacher = (timm.create_model("test_resnet", num_classes=10) for _ in range(2))
    fields = {"output_dir": str(tmp_path / run), "max_steps": 6, "max_grad_norm": 0.05, **fields}
    return LKDTrainer(model=student, teacher=teacher, args=make_config(tmp_path, **fields),
                      train_dataset=make_dataset(64), eval_dataset=make_dataset(48, seed=1))


def _training_logs(trainer: LKDTrainer) -> list[dict[str, float]]:
    return [log for log in trainer.state.log_history if "loss" in log]


def test_each_member_trains_as_it_would_alone(tmp_path, make_config, make_dataset):
    """A member at factors (2, 2) of a frozen KD(T=3) loss ends where a single student with KD(T=6) at twice the
    distillation weight ends; the tight max_grad_norm clips every step, so a clipping shared by the members would
    show. The logged ``loss`` is the first member's objective, as its run alone logs it; ``member<k>/loss`` each
    member's."""
    population = _trainer(tmp_path, "population", make_config, make_dataset, loss="lkd", temperature=3.0,
                          freeze_loss=True, population_temperature_factors=[1.0, 2.0],
                          population_weight_factors=[1.0, 2.0])
    assert isinstance(population.model, StudentPopulation)
    members = population.model.members
    population.train()
    alone, alone_logs = {}, {}
    for factor in (1.0, 2.0):
        single = _trainer(tmp_path, f"alone{factor}", make_config, make_dataset, loss="lkd", temperature=3.0 * factor,
                          distill_weight=factor, freeze_loss=True, population_temperature_factors=[1.0])
        assert not isinstance(single.model, StudentPopulation)
        single.train()
        alone[factor], alone_logs[factor] = single.model.state_dict(), _training_logs(single)
    for member, factor in zip(members, (1.0, 2.0)):
        for name, value in member.state_dict().items():
            assert torch.allclose(value, alone[factor][name], atol=1e-6), f"factor {factor}: {name}"
    assert any(not torch.equal(v, alone[2.0][k]) for k, v in alone[1.0].items())  # the members differ

    logs = _training_logs(population)
    assert len(logs) == len(alone_logs[1.0]) == 2
    for log, first, second in zip(logs, alone_logs[1.0], alone_logs[2.0], strict=True):
        assert log["loss"] == pytest.approx(first["loss"], rel=1e-5)  # not the sum over the members
        assert log["member0/loss"] == pytest.approx(first["loss"], rel=1e-5)
        assert log["member1/loss"] == pytest.approx(second["loss"], rel=1e-5)
        assert (log["ce"], log["distill"]) == (log["member0/ce"], log["member0/distill"])
        for k in (0, 1):  # ce_weight = distill_weight = 1: each member's objective is the sum of its parts
            assert log[f"member{k}/loss"] == pytest.approx(log[f"member{k}/ce"] + log[f"member{k}/distill"], rel=1e-5)
    assert not any(key.startswith("member") for log in alone_logs[1.0] for key in log)
    summary = next(log for log in population.state.log_history if "train_loss" in log)
    assert summary["train_loss"] == pytest.approx(sum(log["loss"] for log in logs) / len(logs), rel=1e-5)


def test_a_fixed_loss_is_not_called_learned_and_the_card_names_the_student_kept(tmp_path, make_config, make_dataset):
    trainer = _trainer(tmp_path, "run", make_config, make_dataset, loss="lkd", lkd_init="pretrained")
    assert trainer.args.freeze_loss and trainer.loss_learner is None  # the default for the shipped loss
    trainer.train()
    selected = next(log for log in trainer.state.log_history if "population/selected" in log)["population/selected"]
    config = trainer.learned_loss().config
    assert (config.meta_steps, config.learned_in_run, config.population_member) == (0, False, selected)
    card = trainer.learned_loss().generate_model_card().text
    assert "did not learn it" in card and "kept fixed: no meta step" in card
    assert "learned with" not in card and "Learned distillation loss" not in card and "meta steps)" not in card
    assert f"This file holds the loss of student {selected} (the one kept)" in card
    dropped = sorted(log["population/dropped"] for log in trainer.state.log_history if "population/dropped" in log)
    assert len(dropped) == 2 and config.population_dropped == dropped  # the default drops two of three students
    assert f"Students {dropped[0]} and {dropped[1]} stopped training part-way" in card


def test_the_best_member_is_kept_with_its_loss(tmp_path, make_config, make_dataset):
    trainer = _trainer(tmp_path, "run", make_config, make_dataset, loss="lkd", temperature=3.0, max_grad_norm=1.0)
    population = trainer.model
    trainer.train()
    logged = next(log for log in trainer.state.log_history if "population/selected" in log)
    scores = [logged[f"population/score_{k}"] for k in range(len(trainer.distiller.factors))]
    best = logged["population/selected"]
    assert scores[best] == max(scores)
    assert trainer.model is population.members[best] and trainer.student is trainer.model
    assert trainer.evaluate()["eval_accuracy"] == scores[best] == logged["eval_accuracy"]
    assert trainer.learned_loss().config.student == "test_resnet"  # the kept student, not the population
    temperature_factor, weight_factor = trainer.distiller.factors[best]
    assert logged["population/temperature_factor"] == temperature_factor
    assert logged["population/weight_factor"] == weight_factor
    learned = trainer.distiller.objectives[0].distill_loss
    knobs = trainer.loss_knobs()
    assert math.isclose(knobs["lkd/temperature"], temperature_factor * float(learned.temperature), rel_tol=1e-5)
    assert math.isclose(knobs["lkd/weight"], weight_factor * float(learned.weight), rel_tol=1e-5)
    assert isinstance(trainer.distill_loss, LogitLossNet)
    # what is saved is the kept student, loadable by timm, with its loss
    trainer.save_model(str(tmp_path / "saved"))
    weights = load_file(os.path.join(tmp_path, "saved", "model.safetensors"))
    fresh = timm.create_model("test_resnet", num_classes=10)
    fresh.load_state_dict(weights)
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in fresh.state_dict().items())
    saved_loss = LearnedLoss.from_pretrained(os.path.join(tmp_path, "saved", "lkd_loss")).logit
    assert torch.allclose(saved_loss.temperature, trainer.distill_loss.temperature)
    assert torch.allclose(saved_loss.weight, trainer.distill_loss.weight)


def test_a_later_member_is_kept_with_its_scaled_loss(tmp_path, make_config, make_dataset, monkeypatch, caplog):
    """The second student (twice the temperature and weight) wins the selection: it and its loss at its own
    temperature and weight are what the trainer keeps and saves; the console, the saved config and the card say
    so, and that the shared loss was learned."""
    monkeypatch.setattr(population_choice, "selection_score",
                        lambda metrics, metric, greater, prefix: float(prefix == "eval_member1"))
    trainer = _trainer(tmp_path, "run", make_config, make_dataset, loss="lkd", temperature=3.0, max_grad_norm=1.0)
    members = trainer.model.members
    learned = trainer.objective.distill_loss
    with caplog.at_level(logging.WARNING, logger=trainer_module.__name__):
        trainer.train()
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Population:")]
    evaluations = {k: next(log[f"eval_member{k}_accuracy"] for log in trainer.state.log_history
                           if f"eval_member{k}_accuracy" in log) for k in (0, 1)}
    line = (f"Population: keeping student 1 of 2 (temperature factor 2, weight factor 2), eval_accuracy "
            f"{evaluations[1]:.4g} (each student's: {evaluations[0]:.4g}, {evaluations[1]:.4g}); it trained with the "
            f"logit loss at temperature {2 * float(learned.temperature):.4g}, weight {2 * float(learned.weight):.4g}.")
    assert lines == [line]
    logged = next(log for log in trainer.state.log_history if "population/selected" in log)
    assert logged["population/selected"] == 1 and trainer.model is members[1]
    assert (logged["population/temperature_factor"], logged["population/weight_factor"]) == (2.0, 2.0)
    assert not any(key == "eval_" or key.startswith("eval_member") for key in logged)
    assert logged["eval_accuracy"] == trainer.evaluate()["eval_accuracy"]
    trainer.save_model(str(tmp_path / "saved"))
    saved = LearnedLoss.from_pretrained(os.path.join(tmp_path, "saved", "lkd_loss")).logit
    torch.testing.assert_close(saved.log_temperature, learned.log_temperature + math.log(2.0))
    torch.testing.assert_close(saved.log_weight, learned.log_weight + math.log(2.0))
    student, teacher, labels = _logits(1), _logits(2), torch.arange(8) % 10
    torch.testing.assert_close(saved(student, teacher, labels), trainer.distiller.objectives[1].distill_loss(
        student, teacher, labels))

    bundle = LearnedLoss.from_pretrained(os.path.join(tmp_path, "saved", "lkd_loss"))
    config = bundle.config
    assert config.meta_steps == trainer.loss_learner.updates > 0 and config.learned_in_run
    assert (config.population_member, config.population_factors) == (1, [[1.0, 1.0], [2.0, 2.0]])
    assert config.population_network_knobs == {"temperature": pytest.approx(float(learned.temperature)),
                                               "weight": pytest.approx(float(learned.weight))}
    card = (tmp_path / "saved" / "lkd_loss" / "README.md").read_text()
    assert f"| learned: {config.meta_steps} meta step" in card and "Learned distillation loss" in card
    knobs = f"temperature {saved.temperature.item():.3f}, weight {saved.weight.item():.3f} (at the end of the run)"
    assert knobs in card
    assert (f"shared logit loss network (temperature {learned.temperature.item():.3f}, weight "
            f"{learned.weight.item():.3f} at the end of the run)") in card
    assert ("This file holds the loss of student 1 (the one kept): the shared network at temperature factor 2 and "
            "weight factor 2, as that student used it.") in card
    assert "| population | 2 students, student 1 kept |" in card


def test_a_population_resumes_exactly(tmp_path, make_config, make_dataset):
    fields = dict(loss="lkd", temperature=3.0, max_steps=6, save_strategy="steps", save_steps=3, max_grad_norm=1.0)
    full = _trainer(tmp_path, "full", make_config, make_dataset, **fields)
    full.train()
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-3")
    assert any(k.startswith("members.1.") for k in load_file(os.path.join(checkpoint, "model.safetensors")))
    resumed = _trainer(tmp_path, "resumed", make_config, make_dataset, **fields)
    resumed.train(resume_from_checkpoint=checkpoint)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert full.loss_knobs() == resumed.loss_knobs()


# --- dropping the worst student part-way --------------------------------------------------------------------------
THREE = dict(loss="lkd", temperature=3.0, freeze_loss=True, population_temperature_factors=[1.0, 2.0, 1 / 3],
             population_weight_factors=[1.0, 2.0, 1 / 16])


def test_a_dropped_student_stops_training_and_the_best_of_the_rest_is_kept(tmp_path, make_config, make_dataset,
                                                                            monkeypatch, caplog):
    """Three students, the worst dropped after 3 of 6 steps: from then on it is neither updated nor a candidate; the
    console and the log name it, and the better of the other two is kept at the end."""
    scores = {0: [0.5, 0.2], 1: [0.6, 0.9], 2: [0.1, 0.3]}  # each student's score at the drop, then at the end
    calls = collections.Counter()

    def score(metrics, metric, greater, prefix):
        k = int(prefix.removeprefix("eval_member"))
        calls[k] += 1
        return scores[k][calls[k] - 1]

    monkeypatch.setattr(population_choice, "selection_score", score)
    trainer = _trainer(tmp_path, "drop", make_config, make_dataset, population_drop_fractions=[0.5], logging_steps=1,
                       **THREE)
    members = list(trainer.model.members)
    weights = {}

    class Weights(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            weights[state.global_step] = [[p.detach().clone() for p in m.parameters()] for m in members]

    trainer.add_callback(Weights())
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert calls == {0: 2, 1: 2, 2: 1}  # the dropped student is not evaluated at the end
    logged = next(log for log in trainer.state.log_history if "population/dropped" in log)
    assert logged["population/dropped"] == 2 and logged["step"] == 3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Population:")]
    assert lines[0].startswith("Population: dropping student 2 of 3 after step 3 of 6, eval_accuracy ")
    assert lines[1].startswith("Population: keeping student 1 of 3") and lines[1].endswith(
        "dropped); it trained with the logit loss at temperature "
        f"{2 * 3.0:.4g}, weight {2 * float(trainer.distiller.objectives[0].distill_loss.weight):.4g}.")
    assert trainer.model is members[1]
    for before, after in zip(weights[3][2], weights[6][2], strict=True):  # the dropped student stays as it was
        assert torch.equal(before, after)
    for k in (0, 1):  # the others train on
        assert not all(torch.equal(a, b) for a, b in zip(weights[3][k], weights[6][k], strict=True))
    member_logs = {key for log in trainer.state.log_history if log["step"] > 3 for key in log}
    assert "member2/loss" not in member_logs and "member1/loss" in member_logs


def test_two_drops_leave_the_last_student_to_train_alone(tmp_path, make_config, make_dataset, monkeypatch):
    """Drops after half and three quarters of 8 steps: the worst of three goes after step 4, the worse of two after
    step 6, and the last student is the one kept."""
    monkeypatch.setattr(population_choice, "selection_score",
                        lambda metrics, metric, greater, prefix: {"eval_member0": 0.5, "eval_member1": 0.2,
                                                                  "eval_member2": 0.9}[prefix])
    trainer = _trainer(tmp_path, "twice", make_config, make_dataset, population_drop_fractions=[0.5, 0.75],
                       max_steps=8, logging_steps=1, **THREE)
    trainer.train()
    drops = [(log["step"], log["population/dropped"]) for log in trainer.state.log_history
             if "population/dropped" in log]
    assert drops == [(4, 1), (6, 0)] and trainer.distiller.kept == 2
    last = [log for log in _training_logs(trainer) if log["step"] > 6]
    keys = {key for log in last for key in log if key.startswith("member")}
    assert last and keys and all(key.startswith("member2/") for key in keys)
    config = trainer.learned_loss().config  # the saved loss says which students stopped part-way
    assert (config.population_member, config.population_dropped) == (2, [0, 1])
    assert ("Students 0 and 1 stopped training part-way, each the worst on the validation metric of the students "
            "still training when it was dropped.") in trainer.learned_loss().generate_model_card().text


class _Jittered(torch.utils.data.Dataset):
    """Training images with noise drawn from torch's random stream on each read (a random augmentation)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        example = self.dataset[i]
        return {"pixel_values": example["pixel_values"] + 0.5 * torch.randn_like(example["pixel_values"]),
                "labels": example["labels"]}


def test_the_drops_evaluations_leave_the_training_random_stream_alone(tmp_path, make_config, make_dataset):
    """The students still training after a drop end as they end in a run without drops: the evaluation at the drop
    draws nothing from the random stream that the training's augmentation draws from."""
    members = {}
    for run, drop in (("plain", {}), ("dropping", {"population_drop_fractions": [0.25]})):
        torch.manual_seed(0)
        student, teacher = (timm.create_model("test_resnet", num_classes=10) for _ in range(2))
        args = make_config(tmp_path, output_dir=str(tmp_path / run), max_steps=8, max_grad_norm=1.0, **THREE, **drop)
        trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=_Jittered(make_dataset(64)),
                             eval_dataset=make_dataset(48, seed=1))
        members[run] = list(trainer.model.members)
        trainer.train()
    dropped = next(log["population/dropped"] for log in trainer.state.log_history if "population/dropped" in log)
    for k in {0, 1, 2} - {dropped}:
        for a, b in zip(members["plain"][k].parameters(), members["dropping"][k].parameters(), strict=True):
            assert torch.equal(a, b)


def test_when_the_first_student_is_dropped_the_logged_loss_is_the_next_ones(tmp_path, make_config, make_dataset,
                                                                             monkeypatch):
    monkeypatch.setattr(population_choice, "selection_score",
                        lambda metrics, metric, greater, prefix: -1.0 if prefix == "eval_member0" else 0.0)
    trainer = _trainer(tmp_path, "drop0", make_config, make_dataset, population_drop_fractions=[0.5], logging_steps=1,
                       **THREE)
    trainer.train()
    after = [log for log in _training_logs(trainer) if log["step"] > 3]
    assert after and all("member0/loss" not in log and log["loss"] == log["member1/loss"] for log in after)
    assert trainer.distiller.kept == 1  # the better of students 1 and 2 by the patched scores (a tie: the earlier)


def test_a_run_resumes_exactly_before_and_after_its_drop(tmp_path, make_config, make_dataset):
    fields = dict(THREE, max_steps=6, save_strategy="steps", save_steps=2, logging_steps=1, max_grad_norm=1.0,
                  population_drop_fractions=[0.5])
    full = _trainer(tmp_path, "full", make_config, make_dataset, **fields)
    members = list(full.model.members)
    full.train()
    for checkpoint in ("checkpoint-2", "checkpoint-4"):  # before the drop (after step 3) and after it
        resumed = _trainer(tmp_path, f"resumed-{checkpoint}", make_config, make_dataset, **fields)
        resumed_members = list(resumed.model.members)
        resumed.train(resume_from_checkpoint=os.path.join(full.args.output_dir, checkpoint))
        for a, b in zip(members, resumed_members, strict=True):
            for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
                assert torch.equal(x, y)
        assert resumed.distiller.kept == full.distiller.kept
    saved = load_file(os.path.join(full.args.output_dir, "checkpoint-4", "model.safetensors"))
    assert saved["active"].sum() == 2  # one student dropped at step 3, in the checkpoint of step 4
    other = _trainer(tmp_path, "other", make_config, make_dataset, **dict(fields, population_drop_fractions=[0.25]))
    with pytest.raises(ValueError, match="population_drop"):
        other.train(resume_from_checkpoint=os.path.join(full.args.output_dir, "checkpoint-4"))


@pytest.mark.parametrize("fields, message", [
    (dict(loss="lkd", temperature=3.0, freeze_loss=True, population_temperature_factors=[1.0, 2.0]),
     "needs more students"),  # two students, two drops
    (dict(THREE, freeze_loss=False), "kept fixed"),
])
def test_drops_need_more_students_and_a_fixed_loss(tmp_path, make_config, make_dataset, fields, message):
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, "bad", make_config, make_dataset, population_drop_fractions=[0.5, 0.75], **fields)
    for fractions in ([1.0], [0.0], [0.75, 0.5], [0.5, 0.5]):
        with pytest.raises(ValueError, match="population_drop_fractions"):
            make_config(tmp_path, population_drop_fractions=fractions)
    default = dict(loss="lkd", temperature=3.0, freeze_loss=True, ddp_find_unused_parameters=False)
    with pytest.raises(ValueError, match="ddp_find_unused_parameters"):  # under DDP a dropped student's weights idle
        _trainer(tmp_path, "ddp", make_config, make_dataset, **default)
    _trainer(tmp_path, "no-drops", make_config, make_dataset, **default, population_drop_fractions=[])


@pytest.mark.slow
def test_two_processes_drop_and_keep_the_same_students(tmp_path):
    """Under DistributedDataParallel (two CPU processes, gloo) the dropped student's idle weights are allowed
    (``ddp_find_unused_parameters``), both ranks drop and keep the same students and end with the same weights."""
    worker = os.path.join(os.path.dirname(__file__), "distributed_drop_worker.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
               str(tmp_path)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [(tmp_path / f"rank{rank}.txt").read_text() for rank in (0, 1)]
    assert results[0] == results[1] and results[0].startswith("dropped ") and results[0].endswith("equal True")
