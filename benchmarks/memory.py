"""Peak memory of one LKD meta step relative to one KD step, ResNet-34 -> ResNet-18 at 224 px.

    python benchmarks/memory.py --out docs/benchmark_overhead/memory_cpu.json             # CPU, batch 8
    python benchmarks/memory.py --device cuda --batch_size 128 --out memory_cuda.json     # a GPU

Each row runs once in a fresh subprocess, on random weights and a random batch (memory does not depend on the
values), built as ``benchmarks/flops.py`` builds them (``flops.meta_problem``: the trainer's ``MetaProblem``, the
default ``LogitLossNet``, calibrated-CE validation, virtual steps clipped to norm 1, validation batch = training
batch):

* ``kd``: a KD student step: the teacher's forward without gradient, the student's forward and backward of
  ``CE + KD(T=4)``;
* ``<estimator>/k<K>``: one call of the estimator;
* ``unrolled-one-graph/k<K>``: for reference, the exact hypergradient by back-propagating through one graph of all
  ``K`` virtual steps (``create_graph=True`` at every step), which ``unrolled`` computed before it recomputed each
  step instead.

Memory: on CUDA the growth of ``torch.cuda.max_memory_allocated`` over the memory allocated before the call, on CPU
the growth of the process's peak resident memory (VmHWM, reset before the call) over its resident memory then; the
models, batches and the Python runtime are there before and not counted. ``ratio`` is a row's growth over ``kd``'s.
Target (``unrolled``): at most 3x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import timm
import torch

from flops import first_step_grads, kd_step, make_batch, meta_problem
from lkd_hf import LogitLossNet
from lkd_hf.meta.hypergradients import get_hypergradient
from overhead import PeakMemory

ROWS = ("kd", "unrolled/k1", "unrolled/k5", "unrolled-one-graph/k1", "unrolled-one-graph/k5",
        "finite_difference/k1", "finite_difference/k5")
TEACHER, STUDENT, NUM_CLASSES = "resnet34", "resnet18", 1000


def unrolled_one_graph(problem, start_params) -> list[torch.Tensor]:
    """The exact hypergradient by back-propagating through one graph of all ``K`` clipped virtual steps."""
    names = list(start_params)
    w = {n: p.detach().requires_grad_(True) for n, p in start_params.items()}
    for batch in problem.train_batches:
        loss = problem.train_loss(problem.forward(w, batch), batch)
        grads = torch.autograd.grad(loss, [w[n] for n in names], create_graph=True)
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        coef = torch.clamp(problem.max_grad_norm / (norm + 1e-6), max=1.0)
        w = {n: w[n] - problem.lr * coef * g for n, g in zip(names, grads)}
    val = problem.val_loss(problem.forward(w, problem.val_batch), problem.val_batch)
    return list(torch.autograd.grad(val, problem.loss_params))


def run_row(row: str, device: str, batch_size: int, img_size: int = 224) -> dict[str, Any]:
    """Build the pair and the batches, then measure the peak memory of one call of ``row``."""
    torch.manual_seed(0)
    teacher = timm.create_model(TEACHER, num_classes=NUM_CLASSES).to(device).eval()
    student = timm.create_model(STUDENT, num_classes=NUM_CLASSES).to(device).train()
    loss_net = LogitLossNet().to(device)
    name, _, k = row.partition("/k")
    horizon = int(k) if k else 1
    batches = [make_batch(teacher, batch_size, (3, img_size, img_size), NUM_CLASSES) for _ in range(horizon + 1)]
    batches = [{key: value.to(device) for key, value in b.items()} for b in batches]
    problem, params = meta_problem(student, loss_net, batches[:horizon], batches[horizon])
    if name == "kd":
        call = kd_step(teacher, student, batches[0])
    elif name == "unrolled-one-graph":
        def call() -> None:
            unrolled_one_graph(problem, params)
    else:
        problem.first_step_grads = first_step_grads(problem, params)  # the real step supplies it in training

        def call() -> None:
            get_hypergradient(name)(problem, params)
    memory = PeakMemory(device)
    memory.start()
    call()
    return dict(memory.stop(), row=row, device=device, batch_size=batch_size, img_size=img_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"Comma-separated of {ROWS}.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each row.")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # a subprocess's single row
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row is not None:
        print(json.dumps(run_row(args.row, args.device, args.batch_size, args.img_size)))
        return
    results = {}
    for row in args.rows.split(","):
        command = [sys.executable, __file__, "--row", row, "--device", args.device, "--batch_size",
                   str(args.batch_size), "--img_size", str(args.img_size)]
        command += ["--threads", str(args.threads)] if args.threads else []
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[row] = json.loads(output.strip().splitlines()[-1])
        print(f"{row:<24} growth {results[row]['delta_mb']:9.1f} MB  peak {results[row]['peak_mb']:9.1f} MB",
              flush=True)
    kd = results.get("kd", {}).get("delta_mb")
    for row, result in results.items():
        result["ratio"] = result["delta_mb"] / kd if kd else None
    print("\n| row | growth (MB) | ratio to kd |\n|---|---|---|")
    for row, result in results.items():
        ratio = "-" if result["ratio"] is None else f"{result['ratio']:.2f}"
        print(f"| {row} | {result['delta_mb']:.1f} | {ratio} |")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(dict(command="python " + " ".join(sys.argv), rows=results), f, indent=1)


if __name__ == "__main__":
    main()
