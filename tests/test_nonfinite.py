"""A network that emits NaN makes its cell fail with a message naming model, sampler, K, step and sample."""

import numpy as np
import torch
from torch import nn

from bench.io import load_npz
from bench.sampling import sample_shard
from bench.schedules import DiscreteSchedule


class NaNBelow(nn.Module):
    """Returns zeros, except NaN for sample ``bad_row`` of a batch once the timestep drops below ``step``."""

    def __init__(self, step: int, bad_row: int):
        super().__init__()
        self.step, self.bad_row = step, bad_row
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        out = torch.zeros_like(x)
        if t[0] < self.step:
            out[self.bad_row] = float("nan")
        return out


def test_nan_cell_is_recorded_as_failed_with_its_coordinates(tmp_path, capsys):
    sch = DiscreteSchedule.named("linear", 100)
    sampler = {"fn": "ddim", "grid": "uniform", "options": {"eta": 0.0}}
    path = sample_shard(NaNBelow(30, bad_row=3), sch, sampler, 10, 20, 30, base_seed=100, shape=(1, 8, 8),
                        max_level=16, batch_size=5, out_path=tmp_path / "shard.npz",
                        context="model mlp, sampler ddim_eta0, K=10")
    record = load_npz(path)
    assert "images" not in record
    message = str(record["error"])
    # uniform grid for T=100, K=10 is 0, 10, ..., 90: the first step below 30 is timestep index 20.
    assert "model mlp, sampler ddim_eta0, K=10" in message
    assert "step 20" in message and "sample index 23 (seed 123)" in message
    assert message in capsys.readouterr().err
    assert np.array_equal(record["seeds"], np.arange(120, 130))
