"""Time grids follow each paper's code exactly."""

import math

import pytest
import torch

from bench.grids import time_grid


def test_uniform_is_ddim_range_with_skip():
    assert time_grid("uniform", 1000, 10).tolist() == list(range(0, 1000, 100))
    assert len(time_grid("uniform", 1000, 30)) == 31  # ddim's range(0, T, T // K) gives 31 steps


def test_quad_is_ddim_quadratic():
    expected = [int(s) for s in (torch.linspace(0, math.sqrt(0.8 * 1000), 10, dtype=torch.float64) ** 2)]
    assert time_grid("quad", 1000, 10).tolist() == expected
    assert expected[0] == 0 and expected[-1] == 800  # sqrt(0.8 T)^2


def test_even_includes_both_ends():
    g = time_grid("even", 1000, 10)
    assert g[0] == 0 and g[-1] == 999 and len(g) == 10
    assert time_grid("even", 1000, 1000).tolist() == list(range(1000))
    assert time_grid("even", 1000, 1).tolist() == [999]


@pytest.mark.parametrize("K", [0, 1001, 2.5, True])
def test_bad_K(K):
    with pytest.raises(ValueError, match=r"K=.* must be an integer in \[1, T=1000\]"):
        time_grid("even", 1000, K)


def test_unknown_grid_lists_allowed():
    with pytest.raises(ValueError, match=r"'log' is not one of \['uniform', 'quad', 'even'\]"):
        time_grid("log", 1000, 10)
