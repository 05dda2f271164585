"""Two CPU processes (gloo, ``torch.distributed.run``) train with ``loss="lkd"``: the loss networks start identical on
every rank (broadcast), their hypergradients are averaged across ranks before each update, the meta step runs on the
unwrapped student, and every rank draws its training and meta (validation) batches from its own shard.

The ranks run ``tests/distributed_worker.py``; see there for what each rank records.
"""

import os
import subprocess
import sys

import pytest
import torch

ESTIMATORS = ("unrolled", "finite_difference")
WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """``{estimator: [rank 0 record, rank 1 record]}`` of one 2-process launch that trains once per estimator."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        WORKER, str(out), ",".join(ESTIMATORS),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"2-process run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {e: [torch.load(out / f"{e}-rank{r}.pt") for r in range(2)] for e in ESTIMATORS}


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


pytestmark = [pytest.mark.slow, pytest.mark.parametrize("estimator", ESTIMATORS)]


def test_loss_networks_start_and_stay_identical_across_ranks(ranks, estimator):
    rank0, rank1 = ranks[estimator]
    assert not _equal(rank0["init_loss_params"], rank1["init_loss_params"])  # the ranks built different networks
    assert _equal(rank0["loss_params"], rank1["loss_params"])
    moved = sum((a - b).abs().sum().item() for a, b in zip(rank0["init_loss_params"], rank0["loss_params"]))
    assert moved > 1e-3  # rank 0's network (the broadcast one) was trained
    for name, p in rank0["student_params"].items():  # DDP keeps the students identical (BN statistics may differ)
        torch.testing.assert_close(p, rank1["student_params"][name], rtol=0, atol=0, msg=name)


def test_every_rank_does_the_same_meta_steps_on_the_unwrapped_ddp_student(ranks, estimator):
    rank0, rank1 = ranks[estimator]
    assert rank0["global_step"] == rank1["global_step"] == 6
    assert rank0["meta_steps"] == rank1["meta_steps"] == 3  # steps 0, 2, 4 (meta_interval=2)
    assert set(rank0["meta_model_types"]) == {"DistributedDataParallel"}  # meta_step got the wrapper, ran unwrapped


def test_hypergradients_are_averaged_across_ranks(ranks, estimator):
    rank0, rank1 = ranks[estimator]
    for step, (local0, local1) in enumerate(zip(rank0["local_grads"], rank1["local_grads"])):
        assert not _equal(local0, local1), f"meta step {step}: the ranks' own hypergradients should differ"
        assert _equal(rank0["averaged_grads"][step], rank1["averaged_grads"][step])
        for a, b, mean in zip(local0, local1, rank0["averaged_grads"][step]):
            torch.testing.assert_close(mean, (a + b) / 2)


def test_ranks_draw_training_and_meta_batches_from_disjoint_shards(ranks, estimator):
    rank0, rank1 = ranks[estimator]
    for key in ("train_examples", "meta_examples"):
        seen0, seen1 = torch.cat(rank0[key]), torch.cat(rank1[key])
        assert not torch.isin(seen0, seen1).any(), f"{key}: the ranks saw the same examples"
    assert all(len(batch) == 8 for batch in rank0["meta_examples"])  # meta_batch_size per process
