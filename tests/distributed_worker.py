"""One rank of a 2-process CPU (gloo) LKD run; launched by ``tests/test_distributed.py`` (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT_DIR [ESTIMATORS]

For each hypergradient estimator (comma-separated, default ``unrolled``) it trains a tiny timm student with
``loss="lkd"`` and writes ``OUT_DIR/<estimator>-rank<r>.pt`` with what the test compares across ranks:

* ``init_loss_params``: this rank's loss-network parameters *before* the trainer was built. Every rank perturbs
  them differently, so that only the start-up broadcast can make the ranks agree;
* ``loss_params`` (after training), ``student_params``, ``meta_steps`` (meta steps done), ``meta_model_types`` (the
  class of the model each meta step was given: the DDP wrapper);
* ``local_grads`` / ``averaged_grads``: per meta step, this rank's own hypergradient and the one used for the update
  (recorded around the loss learner's ``mean_across_processes``);
* ``train_examples`` / ``meta_examples``: per batch, a fingerprint (pixel sum) of each example of the training and
  meta (validation) batches this rank used, to show that the ranks see disjoint shards of both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

import lkd_hf.meta.learner as learner_module
from lkd_hf import LKDTrainer, LogitLossNet
# This script is not a test module: it imports the plain factories behind conftest's fixtures (tests/ is the
# script's directory, so it is on sys.path).
from conftest import make_config, make_dataset, make_models


def run(out_dir: str, estimator: str) -> None:
    rank = int(os.environ["RANK"])
    student, teacher = make_models()
    loss_net = LogitLossNet(temperature=4.0, hidden_dim=8)
    with torch.no_grad():  # a different loss network on every rank: the broadcast at start must fix this
        generator = torch.Generator().manual_seed(100 + rank)
        for p in loss_net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    init_loss_params = [p.detach().clone() for p in loss_net.parameters()]

    args = make_config(
        Path(out_dir),
        output_dir=os.path.join(out_dir, f"run-{estimator}"),
        loss="lkd",
        hypergradient=estimator,
        ddp_backend="gloo",
        per_device_train_batch_size=8,
        meta_batch_size=8,
        lkd_val_fraction=0.1,  # meta steps on a held-out shard
        lookahead_lr=0.1,
        meta_learning_rate=1e-2,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        # every rank keeps its snapshots in its own files (thinned: snapshot_pool_size 2, recorded every step)
        snapshot_storage_dir=os.path.join(out_dir, f"pool-{estimator}"),
        snapshot_interval=1,
        snapshot_pool_size=2,
    )
    trainer = LKDTrainer(
        model=student, teacher=teacher, args=args, train_dataset=make_dataset(256, size=16), loss_network=loss_net
    )
    assert trainer.args.world_size == 2 and trainer.args.process_index == rank, "not a 2-process run"

    keys = ("local_grads", "averaged_grads", "train_examples", "meta_examples", "meta_model_types")
    record: dict[str, list] = {key: [] for key in keys}
    learner = trainer.loss_learner
    average = learner_module.mean_across_processes

    def recording_average(grads):
        record["local_grads"].append([g.detach().clone() for g in grads])
        averaged = average(grads)
        record["averaged_grads"].append([g.detach().clone() for g in averaged])
        return averaged

    learner_module.mean_across_processes = recording_average
    prepare_meta_batch = learner.prepare_batch

    def recording_prepare_meta_batch(batch):
        batch = prepare_meta_batch(batch)
        record["meta_examples"].append(batch["pixel_values"].flatten(1).sum(1))  # one fingerprint per example
        return batch

    learner.prepare_batch = recording_prepare_meta_batch
    training_step = trainer.training_step

    def recording_training_step(model, inputs, *rest, **kwargs):
        record["train_examples"].append(inputs["pixel_values"].flatten(1).sum(1))
        return training_step(model, inputs, *rest, **kwargs)

    trainer.training_step = recording_training_step
    meta_step = trainer.meta_step

    def recording_meta_step(model, *rest, **kwargs):
        record["meta_model_types"].append(type(model).__name__)  # the DDP wrapper; meta_step unwraps it
        return meta_step(model, *rest, **kwargs)

    trainer.meta_step = recording_meta_step
    trainer.train()

    torch.save(
        {
            **record,
            "init_loss_params": init_loss_params,
            "loss_params": [p.detach().cpu().clone() for p in trainer.loss_params],
            "student_params": {n: p.detach().cpu().clone() for n, p in trainer.student.named_parameters()},
            "meta_steps": len(record["averaged_grads"]),
            "global_step": trainer.state.global_step,
        },
        os.path.join(out_dir, f"{estimator}-rank{rank}.pt"),
    )


def main() -> None:
    out_dir = sys.argv[1]
    estimators = sys.argv[2].split(",") if len(sys.argv) > 2 else ["unrolled"]
    for estimator in estimators:
        run(out_dir, estimator)
    if torch.distributed.is_initialized():  # a clean exit: no collective left running at interpreter shutdown
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
