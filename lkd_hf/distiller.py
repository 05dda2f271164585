"""The student side of a distillation run: :class:`Distiller`, a timm :class:`~timm.task.TrainingTask`.

A ``Distiller`` owns the student (wrapped with its feature connectors for a feature loss, or as a population of
students trained side by side), the frozen teacher and its forward, and the objective of each student. It works in a
plain PyTorch loop as in :class:`~lkd_hf.LKDTrainer`, which wires it to the Trainer's hooks::

    distiller = Distiller(student, teacher, DistillationObjective(pretrained_logit_loss(), distill_weight=1.0))
    optimizer = torch.optim.SGD(distiller.trainable_module.parameters(), lr=0.1)
    for images, labels in loader:
        result = distiller(images, labels)  # {"loss", "output", "parts"}
        result["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    student = distiller.student  # the plain timm student
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from timm.task import TrainingTask
from torch import nn

from .features import StudentWithConnectors, Tap, forward_with_features
from .losses.networks import FeatureLossNet, LogitLossNet
from .model_info import model_num_classes, timm_name
from .objective import DistillationObjective
from .population import StudentPopulation, member_objectives
from .resume.state import load_student_params


class Distiller(TrainingTask):
    """A student distilled from a frozen teacher with a :class:`~lkd_hf.DistillationObjective`.

    The trainable module (``trainable_module``, what an optimizer trains and a checkpoint holds) is the student; for
    an objective with a feature loss, the student with one connector per tap (:class:`~lkd_hf.StudentWithConnectors`);
    with several ``population_factors``, that many students side by side (:class:`~lkd_hf.population.
    StudentPopulation`), each with the objective's logit loss at its own temperature and weight. The first student is
    the one whose loss is learned (:attr:`learning_student`); :meth:`keep` keeps one once training ends (its index:
    :attr:`kept`).

    Args:
        student: the timm student (trained).
        teacher: the teacher, frozen (``requires_grad=False``, eval mode); ``None`` when the objective has no
            distillation loss.
        objective: the student's objective (default: cross-entropy alone).
        feature_taps: the student's feature taps (feature loss only; see :func:`~lkd_hf.features.resolve_taps`).
        teacher_feature_taps: the paired teacher taps (default: ``feature_taps``).
        input_size: ``(C, H, W)`` of one image; needed to build the connectors of a feature loss.
        population_factors: ``(temperature factor, weight factor)`` per student, the first ``(1.0, 1.0)``; one pair
            trains a single student.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        objective: DistillationObjective | None = None,
        feature_taps: Sequence[Tap] = (-1,),
        teacher_feature_taps: Sequence[Tap] | None = None,
        input_size: tuple[int, int, int] | None = None,
        population_factors: Sequence[tuple[float, float]] = ((1.0, 1.0),),
    ) -> None:
        super().__init__(verbose=False)
        objective = objective if objective is not None else DistillationObjective(None)
        if objective.loss_modules and teacher is None:
            raise ValueError("This loss distills from a teacher: pass `teacher=` (or use loss='ce').")
        module, self._kind = student, "student"  # what the trainable module is
        if objective.feature_loss is not None:
            if input_size is None:
                raise ValueError("A feature loss needs input_size=(C, H, W) to build the feature connectors.")
            module, self._kind = StudentWithConnectors.build(
                student, teacher, feature_taps, teacher_feature_taps or feature_taps, input_size=input_size
            ), "connected"
            objective.taps = list(module.taps)
        self.factors = tuple(tuple(pair) for pair in population_factors)
        if len(self.factors) > 1:  # students side by side, one per (temperature, weight) factor pair
            module, self._kind = StudentPopulation.of_copies(module, len(self.factors)), "population"
        self.trainable_module = module
        self.teacher = teacher
        self.objectives = member_objectives(objective, self.factors)
        self.objective = objective
        self.kept: int | None = None  # the population's student that keep() kept
        self._stopped_before_keep: list[int] = []  # stopped_members when keep() ended the population

    def train(self, mode: bool = True) -> Distiller:
        """Set the students' mode; the teacher stays in evaluation mode.

        Args:
            mode: training (``True``) or evaluation mode.
        """
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # which student
    @property
    def population(self) -> StudentPopulation | None:
        """The students trained side by side (``None`` for a single student, or once one is kept)."""
        return self.trainable_module if self._kind == "population" else None

    @property
    def connected(self) -> StudentWithConnectors | None:
        """The student with its feature connectors (``None`` without a feature loss)."""
        return self.trainable_module if self._kind == "connected" else None

    @property
    def learning_student(self) -> nn.Module:
        """The student the loss learns from (with its connectors): a population's first member, else the trainable
        module."""
        return self.population.members[0] if self.population is not None else self.trainable_module

    @property
    def kept_module(self) -> nn.Module:
        """The student that answers in evaluation and is saved (with its connectors): a population's selected
        member, else the trainable module."""
        population = self.population
        return population.members[population.selected] if population is not None else self.trainable_module

    @property
    def student(self) -> nn.Module:
        """The plain student of :attr:`kept_module`, without connectors (loadable by ``timm.create_model``)."""
        module = self.kept_module
        return module.student if module is self.connected else module

    @property
    def num_students(self) -> int:
        """The number of students trained side by side (1 without a population, or once one is kept)."""
        return 1 if self.population is None else len(self.population.members)

    @property
    def active_members(self) -> list[int]:
        """The indices of the students still training (``[0]`` without a population)."""
        return [0] if self.population is None else self.population.active_members

    @property
    def stopped_members(self) -> list[int]:
        """The indices of the population's students that stopped training part-way (:meth:`drop`; ``[]`` without a
        population)."""
        if self.population is None:
            return list(self._stopped_before_keep)
        return [k for k in range(self.num_students) if k not in self.population.active_members]

    def drop(self, k: int) -> None:
        """Stop training student ``k`` of the population (:meth:`StudentPopulation.drop`).

        Args:
            k: the index of a student still training.
        """
        if self.population is None:
            raise ValueError("This run trains a single student.")
        self.population.drop(k)

    def select(self, k: int) -> None:
        """Let student ``k`` of the population answer in evaluation mode (and be the one saved).

        Args:
            k: the member's index.
        """
        if self.population is None:
            if k != 0:
                raise ValueError("This run trains a single student.")
            return
        self.population.selected = k

    def keep(self, k: int) -> nn.Module:
        """Keep student ``k`` alone: it becomes the trainable module and its objective (its loss at its own temperature
        and weight, a plain network) :attr:`objective`. Returns it.

        Args:
            k: the member's index.
        """
        self.select(k)
        if self.population is None:
            return self.trainable_module
        self.kept, self._stopped_before_keep = k, self.stopped_members
        if k > 0:
            chosen = self.objectives[k]
            chosen.distill_loss = chosen.distill_loss.materialize()
            self.objective = chosen
        self.trainable_module, self._kind = self.population.members[k], "student"
        return self.trainable_module

    # the forward
    @property
    def teacher_taps(self) -> list[Tap] | None:
        """The teacher's feature taps (``None`` without a feature loss)."""
        return None if self.connected is None else self.connected.teacher_taps

    def teacher_outputs(self, input: torch.Tensor) -> dict[str, Any]:
        """The teacher's outputs on a batch, without gradients: ``teacher_logits`` (fp32) and, for a feature loss,
        ``teacher_features``; empty without a teacher.

        Args:
            input: ``(batch, channels, height, width)``.
        """
        if self.teacher is None:
            return {}
        with torch.no_grad():
            if self.objective.feature_loss is None:
                return {"teacher_logits": self.teacher(input).float()}
            teacher = extract_model_from_parallel(self.teacher)
            logits, features = forward_with_features(teacher, input, self.teacher_taps)
            return {"teacher_logits": logits.float(), "teacher_features": features}

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        teacher_outputs: dict[str, Any] | None = None,
        module: nn.Module | None = None,
    ) -> dict[str, Any]:
        """In training mode, the objectives summed over the students still training (:attr:`active_members`); in
        evaluation mode, the cross-entropy.

        Returns ``{"loss", "output", "parts", "members"}``: the loss to minimise, the first training student's logits
        and objective parts (``ce``, ``distill``, ``feature``, ``feature/<tap>``) and, per training student in the
        order of :attr:`active_members`, its objective (``loss``) and parts (``members``; no parts and no members in
        evaluation).

        Args:
            input: ``(batch, channels, height, width)``.
            target: ``(batch,)`` class indices.
            teacher_outputs: :meth:`teacher_outputs` of ``input`` when already computed.
            module: the trainable module as wrapped by the caller (e.g. DistributedDataParallel; default:
                :attr:`trainable_module`); its mode decides training or evaluation.
        """
        module = module if module is not None else self.trainable_module
        if not module.training:
            logits = module(input)
            return {"loss": F.cross_entropy(logits.float(), target), "output": logits, "parts": {}, "members": []}
        if teacher_outputs is None:
            teacher_outputs = self.teacher_outputs(input)
        with_features = self.objective.feature_loss is not None
        output = module(input, **({"return_features": True} if with_features else {}))
        logits, features = output if with_features else (output, None)
        logits = logits if self.population is not None else logits[None]  # (students, batch, classes)
        results = [objective(student_logits, teacher_outputs.get("teacher_logits"), target, features,
                             teacher_outputs.get("teacher_features"))
                   for objective, student_logits in zip([self.objectives[k] for k in self.active_members], logits,
                                                        strict=True)]
        return {"loss": sum(result[0] for result in results), "output": logits[0], "parts": results[0][1],
                "members": [{"loss": loss, **parts} for loss, parts in results]}

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip each training student's gradient on its own to ``max_norm``, as a run of that student alone would;
        returns the first training student's norm (before clipping).

        Args:
            max_norm: the largest gradient norm.
        """
        population = self.population
        students = ([population.members[k] for k in population.active_members] if population is not None
                    else [self.trainable_module])
        norms = [torch.nn.utils.clip_grad_norm_(student.parameters(), max_norm) for student in students]
        return norms[0]

    # weights on disk
    def weights_to_save(self, state_dict: dict[str, torch.Tensor] | None = None) -> tuple[dict | None, dict | None]:
        """The trainable module's weights split as saved: the student's (``model.safetensors``; a population's as
        ``members.<k>.*``) and the connectors' (``connectors.safetensors``; ``None`` without a feature loss).

        Args:
            state_dict: the trainable module's state dict (default: its own); ``None`` is passed on for a module
                without connectors (the caller reads its state dict).
        """
        if self.connected is None:
            return state_dict, None
        state_dict = state_dict if state_dict is not None else self.trainable_module.state_dict()
        connectors = {n[len("connectors."):]: t for n, t in state_dict.items() if n.startswith("connectors.")}
        student = {n[len("student."):]: t for n, t in state_dict.items() if n.startswith("student.")}
        return student, connectors

    def checkpoint_weights(self, checkpoint_dir: str) -> dict[str, torch.Tensor]:
        """The weights of a checkpoint folder named as in the trainable module (with connectors, ``student.*`` and
        ``connectors.*``).

        Args:
            checkpoint_dir: a checkpoint (or output) folder holding ``model.safetensors``.
        """
        return load_student_params(checkpoint_dir, with_connectors=self.connected is not None)

    @property
    def saves_connectors(self) -> bool:
        """Whether the trainable module has feature connectors, saved beside the student."""
        return self.connected is not None

    # the run, described
    def loss_networks(self) -> tuple[LogitLossNet | None, FeatureLossNet | None]:
        """The logit and feature losses of :attr:`objective` where they are loss networks (``None`` where hand-made or
        absent)."""
        logit, feature = self.objective.distill_loss, self.objective.feature_loss
        return (logit if isinstance(logit, LogitLossNet) else None,
                feature if isinstance(feature, FeatureLossNet) else None)

    def describe_population(self) -> dict[str, Any]:
        """The population behind :meth:`loss_networks` as :class:`~lkd_hf.LearnedLossConfig` fields: each student's
        factors (``population_factors``), the student kept (``population_member``; ``None`` before :meth:`keep`),
        the temperature and weight of the logit loss network the students share, before their factors
        (``population_network_knobs``) and the students that stopped training part-way (``population_dropped``);
        ``{}`` for a single student."""
        if len(self.factors) == 1:
            return {}
        shared = self.objectives[0].distill_loss
        return {"population_factors": [list(pair) for pair in self.factors], "population_member": self.kept,
                "population_network_knobs": {"temperature": float(shared.temperature.detach()),
                                             "weight": float(shared.weight.detach())},
                "population_dropped": self.stopped_members}

    def describe(self) -> dict[str, Any]:
        """The setting a learned loss is tied to: teacher / student names, ``num_classes`` and, with feature
        connectors, the taps and feature shapes. The keys are :class:`~lkd_hf.LearnedLossConfig` fields (and
        :meth:`~lkd_hf.LearnedLoss.check_compatible` arguments)."""
        teacher = None if self.teacher is None else extract_model_from_parallel(self.teacher)
        run: dict[str, Any] = {"teacher": timm_name(teacher), "student": timm_name(self.student),
                               "num_classes": model_num_classes(self.student)}
        if self.connected is not None:
            connected = self.connected
            run.update(
                student_taps=list(connected.taps),
                teacher_taps=list(connected.teacher_taps or []),
                student_feature_shapes=[list(c.in_shape) for c in connected.connectors],
                teacher_feature_shapes=[list(c.out_shape) for c in connected.connectors],
            )
        return run
