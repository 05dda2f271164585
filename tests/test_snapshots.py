"""SnapshotPool: bounded, spread over the run, the four sampling strategies, seeding from checkpoints."""

import collections
import os

import pytest
import torch

from lkd_hf.meta.snapshots import SnapshotPool


def params(value: float):
    return {"w": torch.full((10,), float(value)), "b": torch.full((2,), float(value))}


def test_pool_is_bounded_and_spread_over_the_whole_run():
    pool = SnapshotPool(max_size=4, interval=1, strategy="uniform")
    recorded = [step for step in range(40) if pool.maybe_record(step, params(step))]
    assert len(pool) <= 4
    steps = [s.step for s in pool.snapshots]
    assert steps[0] == 0 and steps[-1] >= 24  # thinning keeps the start and the recent part of the run
    assert pool.interval >= 8  # doubled at each thinning
    assert recorded[:3] == [0, 1, 2]
    assert pool.nbytes == len(pool) * 12 * 4
    for s in pool.snapshots:  # copies, not views of the live tensors
        assert torch.equal(s.params["w"], torch.full((10,), float(s.step)))


def test_current_strategy_always_uses_live_weights():
    pool = SnapshotPool(strategy="current", interval=1)
    for step in range(5):
        pool.maybe_record(step, params(step))
    assert all(pool.sample(10) is None for _ in range(20))


def test_uniform_strategy_samples_snapshots_and_live_weights_evenly():
    pool = SnapshotPool(strategy="uniform", interval=10, max_size=8, seed=1)
    for step in (0, 10, 20):
        pool.maybe_record(step, params(step))
    counts = collections.Counter(
        (s.step if s is not None else "live") for s in (pool.sample(25) for _ in range(4000))
    )
    assert set(counts) == {0, 10, 20, "live"}
    assert all(800 < c < 1200 for c in counts.values())


def test_fixed_strategy_picks_the_snapshot_at_the_given_distance():
    pool = SnapshotPool(strategy="fixed", distance=300, interval=100, max_size=32)
    for step in range(0, 1001, 100):
        pool.maybe_record(step, params(step))
    assert pool.sample(1000).step == 700
    assert pool.sample(1040).step == 700  # nearest to 740
    assert SnapshotPool(strategy="fixed", distance=10, interval=100).sample(5) is None  # empty pool: live weights


def test_gaussian_strategy_draws_varied_distances_around_the_scale():
    pool = SnapshotPool(strategy="gaussian", distance=200, interval=50, max_size=64, seed=0)
    for step in range(0, 2001, 50):
        pool.maybe_record(step, params(step))
    lags = [2000 - (s.step if s is not None else 2000) for s in (pool.sample(2000) for _ in range(2000))]
    mean_lag = sum(lags) / len(lags)
    assert 120 < mean_lag < 200  # E|N(0, 200)| = 160
    assert len(set(lags)) > 5 and max(lags) >= 400


def test_bad_pool_settings_are_errors():
    with pytest.raises(ValueError, match="Known: current, uniform, gaussian, fixed"):
        SnapshotPool(strategy="nearest")
    with pytest.raises(ValueError, match="max_size >= 2"):
        SnapshotPool(max_size=1)


def test_disk_pool_writes_files_reads_them_back_and_deletes_thinned_ones(tmp_path):
    pool = SnapshotPool(max_size=2, interval=1, storage_dir=str(tmp_path / "pool"))
    for step in range(3):
        pool.maybe_record(step, params(step))
    assert [s.step for s in pool.snapshots] == [0, 2]
    assert sorted(os.listdir(tmp_path / "pool")) == ["snapshot-0.safetensors", "snapshot-2.safetensors"]
    assert pool.nbytes == 0 and pool.disk_bytes > 0
    assert torch.equal(pool.snapshots[1].params["w"], torch.full((10,), 2.0))


def test_sample_recorded_never_returns_the_live_weights():
    pool = SnapshotPool(interval=1, seed=0)
    with pytest.raises(ValueError, match="empty"):
        pool.sample_recorded()
    for step in (0, 1, 2):
        pool.maybe_record(step, params(step))
    assert {pool.sample_recorded().step for _ in range(60)} == {0, 1, 2}
