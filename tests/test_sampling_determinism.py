"""Stored samples do not depend on the shard count, the batch size or the thread count."""

import numpy as np
import pytest
import torch

from bench.core.schedules import DiscreteSchedule
from bench.nets.factory import build_network
from bench.runtime.io import load_npz
from bench.steps.sample import sample_shard

SAMPLERS = {
    "ddpm": {"fn": "ddpm", "grid": "even", "options": {"variance": "beta_tilde", "clip_x0": True}},
    "ddim": {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.5}},
}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = build_network({"type": "mlp", "width": 64, "depth": 2, "emb_dim": 16}, channels=1, image_size=8)
    for p in net.out.parameters():
        torch.nn.init.normal_(p, std=0.05)  # a zero-initialised head would make every sample trivial
    return net.eval()


def shards(net, tmp_path, sampler, bounds, batch_size, tag):
    sch = DiscreteSchedule.named("linear", 100)
    out = []
    for i, (a, b) in enumerate(bounds):
        path = sample_shard(net, sch, SAMPLERS[sampler], 20, a, b, base_seed=7, shape=(1, 8, 8), max_level=16,
                            batch_size=batch_size, out_path=tmp_path / f"{tag}{i}.npz", context="test")
        out.append(load_npz(path))
    return out


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_shard_count_and_batch_size_do_not_change_samples(net, tmp_path, sampler):
    one = shards(net, tmp_path, sampler, [(0, 60)], 60, "one")[0]
    three = shards(net, tmp_path, sampler, [(0, 20), (20, 40), (40, 60)], 7, "three")
    merged = np.concatenate([s["images"] for s in three])
    assert np.array_equal(np.concatenate([s["seeds"] for s in three]), one["seeds"])
    assert np.array_equal(merged, one["images"])
    assert one["images"].dtype == np.uint8 and one["images"].max() <= 16
    assert len(np.unique(one["images"].reshape(60, -1), axis=0)) == 60  # distinct seeds, distinct samples
    assert int(one["nfe"]) == 20


def test_same_seed_same_sample_across_thread_counts(net, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = shards(net, tmp_path, "ddpm", [(0, 30)], 30, "t1")[0]
        torch.set_num_threads(2)
        b = shards(net, tmp_path, "ddpm", [(0, 30)], 30, "t2")[0]
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(a["images"], b["images"])


@pytest.mark.parametrize("network", [{"width": 64, "depth": 2, "emb_dim": 16}, {"width": 192, "depth": 3, "emb_dim": 128}])
def test_mlp_rows_of_a_mixed_t_batch_equal_the_rows_computed_one_by_one(network):
    """The time embedding runs once per distinct t; no row's output may depend on what shares its call."""
    torch.manual_seed(1)
    mlp = build_network({"type": "mlp", **network}, channels=1, image_size=8)
    torch.nn.init.normal_(mlp.out.weight, std=0.05)
    mlp.eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 1, 8, 8, generator=gen)
    t = torch.tensor([3.0, 999.0, 3.0, 500.0, 0.0] * 8)
    with torch.inference_mode():
        batch = mlp(x, t)
        for i in range(len(x)):
            assert torch.equal(mlp(x[i : i + 1], t[i : i + 1]), batch[i : i + 1]), f"row {i}"
        # A one-t batch (the sampling case, embedding broadcast) and small mixed batches agree too.
        same_t = mlp(x, torch.full((40,), 3.0))
        assert torch.equal(same_t[t == 3.0], batch[t == 3.0])
        assert torch.equal(mlp(x[:3], t[:3]), batch[:3]) and torch.equal(mlp(x[1:4], t[1:4]), batch[1:4])
        # Training mode embeds each row separately: the same outputs.
        mlp.train()
        assert torch.equal(mlp(x, t), batch)


PC_BLOCK = {"fn": "pc", "grid": "ve", "options": {"snr": 0.16, "n_steps_each": 1, "norm_block": 8}}


def pc_shards(net, tmp_path, sampler, bounds, batch_size, tag):
    from bench.methods.ncsn import VESchedule

    out = []
    for i, (a, b) in enumerate(bounds):
        path = sample_shard(net, VESchedule(0.01, 3.0), sampler, 6, a, b, base_seed=7, shape=(1, 8, 8), max_level=16,
                            batch_size=batch_size, out_path=tmp_path / f"{tag}{i}.npz", context="test", family="ve")
        out.append(load_npz(path))
    return out


def test_pc_norm_blocks_make_samples_independent_of_shards_and_batches(net, tmp_path):
    """PC's corrector averages norms over seed blocks [8b, 8b + 8): whole blocks per shard, any batch size
    (batch 3 < block: the block's network calls are cut into chunks of 3), the cell's last block shorter."""
    one = pc_shards(net, tmp_path, PC_BLOCK, [(0, 20)], 20, "one")[0]
    for bounds, batch in (([(0, 8), (8, 16), (16, 20)], 3), ([(0, 16), (16, 20)], 16), ([(0, 16), (16, 20)], 9)):
        parts = pc_shards(net, tmp_path, PC_BLOCK, bounds, batch, f"b{batch}")
        assert np.array_equal(np.concatenate([s["images"] for s in parts]), one["images"]), (bounds, batch)
        assert all(int(s["nfe"]) == 12 for s in parts)
    # The blocks couple: per-sample norms (norm_block 1) give other samples.
    alone = pc_shards(net, tmp_path, {**PC_BLOCK, "options": {**PC_BLOCK["options"], "norm_block": 1}}, [(0, 20)], 20, "a")
    assert not np.array_equal(alone[0]["images"], one["images"])


def test_a_shard_that_splits_a_pc_norm_block_is_refused(net, tmp_path):
    with pytest.raises(ValueError, match="shard starting at sample index 4 splits a block of 8 samples"):
        pc_shards(net, tmp_path, PC_BLOCK, [(4, 12)], 8, "bad")


def test_chunked_calls_equal_one_call_and_name_the_bad_row_of_the_whole_batch():
    from bench.core.denoiser import NonFiniteOutputError, check_finite
    from bench.steps.sample import ChunkedCalls

    calls = []

    def view(x, sigma):
        calls.append(len(x))
        out = 2.0 * x / sigma
        check_finite(out, 3)
        return out

    x = torch.arange(20.0).view(10, 2)
    torch.testing.assert_close(ChunkedCalls(view, 4)(x, 0.5), view(x, 0.5), rtol=0, atol=0)
    assert calls[:3] == [4, 4, 2]
    x[7, 1] = float("nan")
    with pytest.raises(NonFiniteOutputError) as err:
        ChunkedCalls(view, 4)(x, 0.5)
    assert (err.value.step, err.value.index) == (3, 7)
