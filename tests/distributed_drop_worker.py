"""One rank of a 2-process CPU run (gloo) of a three-student population that drops its worst student halfway; run by
``tests/test_population.py`` with ``torch.distributed.run``. Each rank writes, to ``rank<N>.txt`` in the given
folder, the student it dropped, the student it kept and whether every student's weights are equal on both ranks (a
file per rank: lines printed by two processes to one pipe can interleave)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lkd_hf import LKDTrainer
# This script is not a test module: it imports the plain factories behind conftest's fixtures (tests/ is the
# script's directory, so it is on sys.path).
from conftest import make_config, make_dataset, make_models


def main() -> None:
    out = sys.argv[1]
    student, teacher = make_models()
    args = make_config(Path(out), output_dir=os.path.join(out, "run"), loss="lkd", temperature=3.0, freeze_loss=True,
                       population_temperature_factors=[1.0, 2.0, 1 / 3],
                       population_weight_factors=[1.0, 2.0, 1 / 16], population_drop_fractions=[0.5],
                       ddp_backend="gloo", per_device_train_batch_size=8, max_steps=6, dataloader_num_workers=0)
    trainer = LKDTrainer(model=student, teacher=teacher, args=args, train_dataset=make_dataset(256, size=16),
                         eval_dataset=make_dataset(32, size=16, seed=1))
    members = list(trainer.model.members)
    trainer.train()
    dropped = next(log["population/dropped"] for log in trainer.state.log_history if "population/dropped" in log)
    weights = torch.cat([p.detach().flatten() for member in members for p in member.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, weights)
    Path(out, f"rank{os.environ['RANK']}.txt").write_text(
        f"dropped {dropped}, kept {trainer.distiller.kept}, equal {all(torch.equal(gathered[0], g) for g in gathered)}")
    dist.barrier()  # a clean exit: no collective left running at interpreter shutdown
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
