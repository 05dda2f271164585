"""The Distiller without a Trainer: its forward in timm's task convention, the students it knows (population,
connectors), what it saves and describes, and a plain PyTorch loop distilling with the shipped learned loss."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from lkd_hf import DistillationObjective, Distiller, FeatureLossNet, KDLoss, LogitLossNet, pretrained_logit_loss


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _frozen(teacher: torch.nn.Module) -> torch.nn.Module:
    return teacher.eval().requires_grad_(False)


def test_a_plain_pytorch_loop_distills_with_the_shipped_learned_loss(make_models, make_dataset):
    student, teacher = make_models()
    data = make_dataset(64)
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    # the loop of docs/distiller.md
    distiller = Distiller(student, _frozen(teacher), DistillationObjective(pretrained_logit_loss(learn_knobs=False)))
    optimizer = torch.optim.SGD(distiller.trainable_module.parameters(), lr=0.003, momentum=0.9)
    distiller.train()
    distilled = []
    for _ in range(5):
        for batch in loader:
            result = distiller(batch["pixel_values"], batch["labels"])
            result["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
            distilled.append(result["parts"]["distill"].item())

    assert set(result) == {"loss", "output", "parts", "members"} and set(result["parts"]) == {"ce", "distill"}
    assert result["members"] == [{"loss": result["loss"], **result["parts"]}]  # one student: its objective is the loss
    assert len(distilled) == 20 and sum(distilled[-4:]) < 0.6 * sum(distilled[:4])  # the student follows the teacher
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())  # the teacher does not
    assert distiller.student is student and not teacher.training


def test_the_training_forward_is_the_objective_of_the_student_and_teacher_logits(make_models):
    student, teacher = make_models()
    objective = DistillationObjective(KDLoss(temperature=4.0), ce_weight=0.5, distill_weight=2.0)
    distiller = Distiller(student, _frozen(teacher), objective).train()
    x, y = _batch()
    result = distiller(x, y)
    torch.manual_seed(0)
    with torch.no_grad():
        teacher_logits = teacher(x)
    expected, parts = objective(student(x), teacher_logits, y)
    torch.testing.assert_close(result["loss"], expected)
    torch.testing.assert_close(result["parts"]["distill"], parts["distill"])
    assert result["output"].shape == (8, 10)
    outputs = distiller.teacher_outputs(x)
    assert set(outputs) == {"teacher_logits"} and not outputs["teacher_logits"].requires_grad
    reused = distiller(x, y, teacher_outputs={"teacher_logits": 2.0 * teacher_logits})  # given outputs are used
    assert not torch.allclose(reused["parts"]["distill"], result["parts"]["distill"])


def test_the_evaluation_forward_is_the_cross_entropy(make_models):
    student, teacher = make_models()
    distiller = Distiller(student, _frozen(teacher), DistillationObjective(KDLoss())).eval()
    x, y = _batch()
    result = distiller(x, y)
    torch.testing.assert_close(result["loss"], F.cross_entropy(student(x), y))
    assert result["parts"] == {} and result["members"] == []


def test_a_distillation_loss_needs_a_teacher(make_models):
    student, _ = make_models()
    with pytest.raises(ValueError, match="teacher"):
        Distiller(student, None, DistillationObjective(KDLoss()))
    Distiller(student).train()(*_batch())  # cross-entropy alone needs none


def test_a_population_trains_side_by_side_and_keeps_one(make_models):
    student, teacher = make_models()
    loss = LogitLossNet(temperature=3.0)
    distiller = Distiller(student, _frozen(teacher), DistillationObjective(loss),
                          population_factors=((1.0, 1.0), (2.0, 3.0))).train()
    assert distiller.num_students == 2 and distiller.learning_student is student
    members = list(distiller.trainable_module.members)
    x, y = _batch()
    result = distiller(x, y)
    teacher_logits = distiller.teacher_outputs(x)["teacher_logits"]
    alone = [objective(member(x), teacher_logits, y) for objective, member in zip(distiller.objectives, members)]
    torch.testing.assert_close(result["loss"], alone[0][0] + alone[1][0])
    assert [sorted(member) for member in result["members"]] == [["ce", "distill", "loss"]] * 2
    for member, (objective, parts) in zip(result["members"], alone, strict=True):  # each student's own objective
        torch.testing.assert_close(member["loss"], objective)
        torch.testing.assert_close(member["distill"], parts["distill"])
    assert distiller.describe_population() == {
        "population_factors": [[1.0, 1.0], [2.0, 3.0]], "population_member": None,
        "population_network_knobs": {"temperature": pytest.approx(3.0), "weight": pytest.approx(1.0)},
        "population_dropped": []}

    result["loss"].backward()
    norms = [torch.nn.utils.get_total_norm([p.grad for p in m.parameters()]) for m in members]
    assert distiller.clip_grad_norm_(1e-3) == norms[0]
    for member in members:  # each clipped on its own
        assert math.isclose(torch.nn.utils.get_total_norm([p.grad for p in member.parameters()]).item(), 1e-3,
                            rel_tol=1e-4)

    distiller.eval()
    distiller.select(1)
    torch.testing.assert_close(distiller(x, y)["output"], members[1](x))
    assert distiller.student is members[1]
    kept = distiller.keep(1)
    assert kept is members[1] is distiller.trainable_module and distiller.num_students == 1
    torch.testing.assert_close(distiller.objective.distill_loss.temperature, 2.0 * loss.temperature)
    assert distiller.kept == 1 and distiller.describe_population()["population_member"] == 1
    assert distiller.describe_population()["population_network_knobs"]["temperature"] == pytest.approx(3.0)
    assert distiller.loss_networks()[0] is distiller.objective.distill_loss


def test_a_feature_loss_connects_the_student_and_saves_the_connectors_apart(make_models):
    student, teacher = make_models()
    objective = DistillationObjective(None, FeatureLossNet(hidden_dim=4))
    distiller = Distiller(student, _frozen(teacher), objective, feature_taps=[-1], input_size=(3, 32, 32)).train()
    assert distiller.student is student and distiller.trainable_module is not student
    x, y = _batch()
    outputs = distiller.teacher_outputs(x)
    assert len(outputs["teacher_features"]) == 1
    result = distiller(x, y, outputs)
    assert {"ce", "feature"} <= set(result["parts"]) and len([k for k in result["parts"] if "/" in k]) == 1
    student_weights, connectors = distiller.weights_to_save()
    assert student_weights.keys() == student.state_dict().keys() and connectors
    described = distiller.describe()
    assert described["student"] == described["teacher"] == "test_resnet" and described["num_classes"] == 10
    assert distiller.describe_population() == {}  # a single student
    assert len(described["student_taps"]) == len(described["teacher_feature_shapes"]) == 1
    with pytest.raises(ValueError, match="input_size"):
        Distiller(
            timm.create_model("test_resnet", num_classes=10),
            teacher,
            DistillationObjective(None, objective.feature_loss),
        )
