"""FLOPs of one LKD meta step relative to one KD step, per hypergradient estimator and horizon K.

    python benchmarks/flops.py --out docs/benchmark_overhead/flops.json --table docs/benchmark_overhead/flops.md

Counted with ``torch.utils.flop_counter.FlopCounterMode``: the matrix multiplications and convolutions of the
forward, backward, double-backward and forward-mode passes (2 FLOPs per multiply-add). Elementwise, normalisation
and pooling ops are not counted. FLOPs do not depend on the values or the precision: everything runs in fp32 on
the CPU, with randomly initialised models.

* ``kd_step``: the teacher's forward without gradient, then the student's forward and backward of
  ``CE + KD(T=4)`` (a KD student step; the optimizer step has no matmuls).
* ``meta_step/<estimator>/k<K>``: one call of the estimator (:mod:`lkd_hf.meta.hypergradients`) on a
  ``MetaProblem`` built as ``LKDTrainer.compute_hypergradient`` builds it: the student's forward a
  ``torch.func.functional_call`` with cloned buffers, the training loss ``CE + LogitLossNet`` (the learned loss,
  default size) on teacher logits computed beforehand (the trainer reuses the student step's), the validation loss
  the calibrated CE of :mod:`lkd_hf.meta.outer_objectives`, every virtual step clipped to ``max_grad_norm=1``. The
  trainer's no-grad ``meta/val_loss_before`` forward (once per logging window) is not included.
* ``.../first_step_grads``: with ``MetaProblem.first_step_grads`` given: the first virtual step's gradient is free,
  as it is when the real student step supplies it.
* ``.../jvp``: with ``MetaProblem.mixed_product="jvp"`` (exact mixed products by forward mode).
* ``ratio/...``: the meta step's FLOPs over ``kd_step``'s.
* ``pass/<name>``: the passes the estimators are made of (``PASSES``).

A meta step is not run in full for every K (ResNet-18 at K=5 takes minutes on two cores): each kind of pass is
counted once, on the same problem, and a meta step's FLOPs are the sum of its passes (``meta_step_passes``).
``--verify`` also counts every estimator call in full and checks that the sums equal it (the tests check this on a
small model for K up to 3).

Main keys: validation batch = training batch (1x). ``val_batch_2x`` in each pair: the same with the trainer's
default ``meta_batch_size``, 2x the training batch (``kd_step`` and the training passes are the 1x section's).
Pairs: ResNet-34 -> ResNet-18 at 224 px, 1000 classes, batch 2 (FLOPs are linear in the batch, so the ratios hold
for any batch); the CPU benchmark pairs (``lkd_convnet_teacher`` -> ``lkd_convnet_s4`` / ``lkd_convnet_s16`` /
``cifar_resnet8``) on 1x28x28 inputs, 10 classes, batch 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import timm
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from lkd_hf import KDLoss, LogitLossNet  # importing lkd_hf registers its timm models
from lkd_hf.meta.hypergradients import MetaProblem, get_hypergradient
from lkd_hf.meta.outer_objectives import calibrated_cross_entropy

Params = dict[str, torch.Tensor]

ESTIMATORS = ("unrolled", "finite_difference", "implicit")
HORIZONS = (1, 5)
VARIANTS = {  # key suffix -> (mixed_product, first step's gradient given)
    "": ("finite_difference", False),
    "/first_step_grads": ("finite_difference", True),
    "/jvp": ("jvp", False),
    "/jvp+first_step_grads": ("jvp", True),
}
ESTIMATOR_VARIANTS = {"unrolled": ("", "/first_step_grads"), "finite_difference": tuple(VARIANTS),
                      "implicit": tuple(VARIANTS)}
PASSES = ("train_grad", "val_grad", "fd_forward", "fd_forward_backward", "fd_forward_backward_w", "jvp", "hvp")
"""``train_grad``: a virtual step's gradient (forward, backward w.r.t. the weights). ``val_grad``: the same for the
validation loss. ``fd_forward``: a finite-difference evaluation of the last step (forward without graph, backward
through the loss only). ``fd_forward_backward``: one of an earlier step (backward w.r.t. loss parameters and
weights). ``fd_forward_backward_w``: the same w.r.t. the weights only (``jvp``: Hessian-vector products).
``jvp``: a forward-mode mixed product (forward with tangents, double backward through the loss). ``hvp``: an exact
Hessian-vector product (forward, backward with graph, double backward through the student)."""


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair and its input."""

    teacher: str
    student: str
    in_chans: int
    img_size: int
    num_classes: int
    batch_size: int

    @property
    def name(self) -> str:
        return f"{self.teacher}->{self.student}"


PAIRS = (
    Pair("resnet34", "resnet18", 3, 224, 1000, 2),
    Pair("lkd_convnet_teacher", "lkd_convnet_s4", 1, 28, 10, 64),
    Pair("lkd_convnet_teacher", "lkd_convnet_s16", 1, 28, 10, 64),
    Pair("lkd_convnet_teacher", "cifar_resnet8", 1, 28, 10, 64),
)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that ``FlopCounterMode`` counts while ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def make_batch(teacher: nn.Module, batch_size: int, input_size: tuple[int, int, int], num_classes: int) -> dict:
    """A random batch with the teacher's logits (computed without gradient, as the trainer does once per batch)."""
    pixel_values = torch.randn(batch_size, *input_size)
    with torch.no_grad():
        teacher_logits = teacher(pixel_values).float()
    labels = torch.randint(0, num_classes, (batch_size,))
    return {"pixel_values": pixel_values, "labels": labels, "teacher_logits": teacher_logits}


def kd_step(teacher: nn.Module, student: nn.Module, batch: dict, temperature: float = 4.0) -> Callable[[], None]:
    """A KD student step on ``batch``: teacher forward without gradient, student forward and backward of CE + KD."""
    kd = KDLoss(temperature)
    params = [p for p in student.parameters() if p.requires_grad]

    def step() -> None:
        with torch.no_grad():
            teacher_logits = teacher(batch["pixel_values"]).float()
        logits = student(batch["pixel_values"])
        loss = F.cross_entropy(logits.float(), batch["labels"]) + kd(logits, teacher_logits, batch["labels"])
        torch.autograd.grad(loss, params)

    return step


def kd_step_flops(teacher: nn.Module, student: nn.Module, batch: dict, temperature: float = 4.0) -> int:
    """FLOPs of a KD student step (:func:`kd_step`)."""
    return count_flops(kd_step(teacher, student, batch, temperature))


def meta_problem(
    student: nn.Module, loss_net: nn.Module, train_batches: list[dict], val_batch: dict, **fields: Any
) -> tuple[MetaProblem, Params]:
    """The ``MetaProblem`` and start weights that ``LKDTrainer.compute_hypergradient`` builds for a logit loss
    (``ce_weight = distill_weight = 1``, calibrated-CE outer objective, virtual steps clipped to norm 1)."""
    params = {n: p for n, p in student.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in student.named_parameters() if not p.requires_grad}
    buffers = {n: b.clone() for n, b in student.named_buffers()}

    def forward(weights: Params, batch: dict) -> torch.Tensor:
        return functional_call(student, {**frozen, **buffers, **weights}, (batch["pixel_values"],))

    def train_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), batch["labels"])
        return ce + loss_net(logits, batch["teacher_logits"], batch["labels"])

    def val_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return calibrated_cross_entropy(logits.float(), batch["labels"])

    problem = MetaProblem(
        forward=forward, train_loss=train_loss, val_loss=val_loss,
        loss_params=[p for p in loss_net.parameters() if p.requires_grad],
        train_batches=train_batches, val_batch=val_batch, lr=0.05, max_grad_norm=1.0, **fields,
    )
    return problem, params


def first_step_grads(problem: MetaProblem, params: Params) -> list[torch.Tensor]:
    """``grad_w L_train(w_0, train_batches[0])``: what the real student step computes."""
    w = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    batch = problem.train_batches[0]
    return list(torch.autograd.grad(problem.train_loss(problem.forward(w, batch), batch), list(w.values())))


def pass_flops(problem: MetaProblem, params: Params) -> dict[str, int]:
    """FLOPs of each pass of ``PASSES``, on ``problem``'s first training batch and its validation batch."""
    batch, phi = problem.train_batches[0], problem.loss_params
    start = {n: p.detach() for n, p in params.items()}
    tangent = [torch.randn_like(p) for p in start.values()]

    def leaves() -> Params:
        return {n: p.clone().requires_grad_(True) for n, p in start.items()}

    def grad(loss_fn: Callable, data: dict, wrt_phi: bool, wrt_w: bool) -> None:
        w = leaves() if wrt_w else start
        with torch.set_grad_enabled(wrt_w):
            output = problem.forward(w, data)
        wrt = (phi if wrt_phi else []) + (list(w.values()) if wrt_w else [])
        torch.autograd.grad(loss_fn(output, data), wrt, allow_unused=True)

    def jvp() -> None:
        with torch.no_grad(), fwAD.dual_level():
            duals = {n: fwAD.make_dual(p, t) for (n, p), t in zip(start.items(), tangent)}
            output, output_tangent = fwAD.unpack_dual(problem.forward(duals, batch))
            output, output_tangent = output.clone(), output_tangent.clone()
        output = output.requires_grad_(True).view_as(output)
        (output_grad,) = torch.autograd.grad(problem.train_loss(output, batch), output, create_graph=True)
        torch.autograd.grad((output_grad * output_tangent).sum(), phi, allow_unused=True)

    def hvp() -> None:
        w = leaves()
        grads = torch.autograd.grad(problem.train_loss(problem.forward(w, batch), batch), list(w.values()),
                                    create_graph=True)
        torch.autograd.grad(sum((g * t).sum() for g, t in zip(grads, tangent)), list(w.values()), allow_unused=True)

    runs = {
        "train_grad": lambda: grad(problem.train_loss, batch, wrt_phi=False, wrt_w=True),
        "val_grad": lambda: grad(problem.val_loss, problem.val_batch, wrt_phi=False, wrt_w=True),
        "fd_forward": lambda: grad(problem.train_loss, batch, wrt_phi=True, wrt_w=False),
        "fd_forward_backward": lambda: grad(problem.train_loss, batch, wrt_phi=True, wrt_w=True),
        "fd_forward_backward_w": lambda: grad(problem.train_loss, batch, wrt_phi=False, wrt_w=True),
        "jvp": jvp,
        "hvp": hvp,
    }
    return {name: count_flops(runs[name]) for name in PASSES}


def meta_step_passes(
    estimator: str, k: int, mixed_product: str = "finite_difference", first_step_given: bool = False
) -> dict[str, int]:
    """How many passes of each kind one meta step makes (with clipping).

    Args:
        estimator: ``"unrolled"``, ``"finite_difference"`` or ``"implicit"``.
        k: the horizon K.
        mixed_product: the ``MetaProblem.mixed_product`` (not ``unrolled``).
        first_step_given: whether ``MetaProblem.first_step_grads`` is given.
    """
    passes = {"train_grad": k - int(first_step_given), "val_grad": 1}  # every step's gradient (clipping), validation
    if estimator == "unrolled":  # every step an exact (forward-mode) mixed product; k > 0 an exact HVP
        return {**passes, "jvp": k, "hvp": k - 1}
    if mixed_product == "jvp":  # every step a forward-mode mixed product; k > 0 a central-difference HVP
        passes.update(jvp=k, fd_forward_backward_w=2 * (k - 1))
    else:  # the last step two forwards; the others two forward/backward passes
        passes.update(fd_forward=2, fd_forward_backward=2 * (k - 1))
    return passes


def meta_steps(horizons: tuple[int, ...]) -> Iterator[tuple[str, str, int, str]]:
    """``(key, estimator, K, variant suffix)`` of every meta step counted; ``key`` is
    ``"meta_step/<estimator>/k<K><suffix>"``."""
    for estimator in ESTIMATORS:
        for k in horizons:
            for suffix in ESTIMATOR_VARIANTS[estimator]:
                yield f"meta_step/{estimator}/k{k}{suffix}", estimator, k, suffix


def meta_step_table(passes: dict[str, int], kd_step: int, horizons: tuple[int, ...] = HORIZONS) -> dict[str, float]:
    """``meta_step/<estimator>/k<K><variant>``: the sum of the meta step's passes (``meta_step_passes``), and
    ``ratio/<estimator>/k<K><variant>``: that over ``kd_step``.

    Args:
        passes: FLOPs per pass (``pass_flops``).
        kd_step: FLOPs of a KD step.
        horizons: the horizons K.
    """
    meta = {}
    for key, estimator, k, suffix in meta_steps(horizons):
        recipe = meta_step_passes(estimator, k, *VARIANTS[suffix])
        meta[key] = sum(n * passes[name] for name, n in recipe.items())
    ratios = {f"ratio/{key[len('meta_step/'):]}": flops / kd_step for key, flops in meta.items()}
    return {**meta, **ratios}


def pair_flops(
    teacher: nn.Module,
    student: nn.Module,
    input_size: tuple[int, int, int],
    num_classes: int,
    batch_size: int,
    val_batch_size: int,
    horizons: tuple[int, ...] = HORIZONS,
    verify: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """``kd_step``, ``pass/<name>``, ``meta_step/...`` and ``ratio/...`` for one teacher -> student pair.

    Args:
        teacher / student: the models (used in eval and train mode respectively, as the trainer uses them).
        input_size: ``(channels, height, width)`` of the inputs.
        num_classes: classes of the labels.
        batch_size: training batch (every virtual step's).
        val_batch_size: validation batch of the meta step.
        horizons: the horizons K.
        verify: also count every estimator call in full and raise if a sum of passes differs from it.
        seed: seed of the data and of the learned loss's initialisation.
    """
    torch.manual_seed(seed)
    teacher.eval()
    student.train()
    num_batches = max(2, *horizons) if verify else 2
    train_batches = [make_batch(teacher, batch_size, input_size, num_classes) for _ in range(num_batches)]
    val_batch = make_batch(teacher, val_batch_size, input_size, num_classes)
    problem, params = meta_problem(student, LogitLossNet(), train_batches, val_batch)
    passes = pass_flops(problem, params)
    kd_step = kd_step_flops(teacher, student, train_batches[0])
    table = meta_step_table(passes, kd_step, horizons)
    for key, estimator, k, suffix in meta_steps(horizons) if verify else ():
        counted = full_meta_step_flops(problem, params, estimator, k, suffix)
        if counted != table[key]:
            raise AssertionError(f"{key}: the sum of its passes is {table[key]}, a full count {counted}")
    return {"kd_step": kd_step, **{f"pass/{n}": v for n, v in passes.items()}, **table}


def full_meta_step_flops(problem: MetaProblem, params: Params, estimator: str, k: int, suffix: str = "") -> int:
    """One call of ``estimator`` at horizon ``k`` with the variant ``suffix`` (a key of ``VARIANTS``), counted in
    full; a given first-step gradient is computed outside the count."""
    mixed_product, given = VARIANTS[suffix]
    sub = dataclasses.replace(problem, train_batches=problem.train_batches[:k], mixed_product=mixed_product)
    if given:
        sub.first_step_grads = first_step_grads(sub, params)
    return count_flops(lambda: get_hypergradient(estimator)(sub, params))


def run_pair(pair: Pair, horizons: tuple[int, ...], verify: bool = False) -> dict[str, Any]:
    """The flops.json entry of ``pair``: 1x validation batch as main keys, 2x under ``val_batch_2x``."""
    torch.manual_seed(0)
    models = [timm.create_model(name, pretrained=False, num_classes=pair.num_classes, in_chans=pair.in_chans)
              for name in (pair.teacher, pair.student)]
    input_size = (pair.in_chans, pair.img_size, pair.img_size)
    entry: dict[str, Any] = {"batch_size": pair.batch_size, "input_size": list(input_size),
                             "num_classes": pair.num_classes}
    for multiple in (1, 2):
        val_batch_size = multiple * pair.batch_size
        counts = pair_flops(*models, input_size, pair.num_classes, pair.batch_size, val_batch_size, horizons, verify)
        section = {"val_batch_size": val_batch_size, **counts}
        if multiple == 1:
            entry.update(section)
        else:
            entry["val_batch_2x"] = {k: v for k, v in section.items() if k != "kd_step"}
    return entry


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """Meta-step FLOPs over KD-step FLOPs: a row per estimator/K/variant, a column per pair and validation batch."""
    columns = [(pair, section) for section in (None, "val_batch_2x") for pair in results]
    header = ["meta step / KD step (FLOPs)"] + [f"{pair} val {'2x' if section else '1x'}" for pair, section in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    kd_steps = [f"{results[pair]['kd_step'] / 1e9:.3f}" for pair, _ in columns]
    lines.append("| " + " | ".join(["KD step GFLOPs"] + kd_steps) + " |")
    for key in [k for k in next(iter(results.values())) if k.startswith("ratio/")]:
        cells = [(results[p][s] if s else results[p])[key] for p, s in columns]
        lines.append("| " + " | ".join([key[len("ratio/"):]] + [f"{c:.3f}" for c in cells]) + " |")
    return "\n".join(lines)


TABLE_CAPTION = """# FLOPs of an LKD meta step over a KD step

`python benchmarks/flops.py --out docs/benchmark_overhead/flops.json --table docs/benchmark_overhead/flops.md`
({seconds:.0f} s, {threads} thread(s)); what is counted: the script's docstring. KD step: teacher forward, student
forward and backward. Meta step: `<estimator>/k<K>` as the trainer builds it (clipped virtual steps, calibrated-CE
validation loss); `/first_step_grads`: the first virtual step's gradient supplied (by the student step) and not
counted; `/jvp`: `mixed_product="jvp"`. Columns: validation batch 1x (the trainer's default) or 2x the training
batch: 2 images of 224 px for ResNet-34 -> ResNet-18, 64 of 1x28x28 for the CPU pairs (the ratios do not depend on
the batch).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=",".join(p.name for p in PAIRS), help="comma-separated teacher->student")
    parser.add_argument("--horizons", default=",".join(map(str, HORIZONS)), help="comma-separated K")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1: steady on a busy machine)")
    parser.add_argument("--verify", action="store_true", help="also count every estimator call in full (slow)")
    parser.add_argument("--out", default=None, help="write the JSON here")
    parser.add_argument("--table", default=None, help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    by_name = {p.name: p for p in PAIRS}
    horizons = tuple(int(k) for k in args.horizons.split(","))
    results, start = {}, time.perf_counter()
    for name in args.pairs.split(","):
        pair_start = time.perf_counter()
        results[name] = run_pair(by_name[name], horizons, args.verify)
        print(f"{name}: {time.perf_counter() - pair_start:.1f} s", flush=True)
    table = markdown_table(results)
    seconds = time.perf_counter() - start
    print(table)
    print(f"total {seconds:.1f} s")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
    if args.table:
        with open(args.table, "w") as f:
            f.write(TABLE_CAPTION.format(seconds=seconds, threads=args.threads) + "\n" + table + "\n")


if __name__ == "__main__":
    main()
