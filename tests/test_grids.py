"""Time grids follow each paper's code exactly."""

import math

import pytest
import torch

from bench.core.time_grids import time_grid


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
    with pytest.raises(ValueError, match=r"'log' is not one of \['uniform', 'quad', 'even', 'respace', 'optimal'\]"):
        time_grid("log", 1000, 10)


# --- iDDPM's respacing (improved_diffusion/respace.py space_timesteps), worked by hand ----------------------


def test_respace_sections_of_the_docstring_example():
    # T = 300, "10,15,20": three sections of 100 steps, strides 99/9, 99/14, 99/19 accumulated in floats.
    # In the second, 7 x 99/14 = 49.5 exactly, but the float sum is 49.4999... and rounds to 49.
    first = [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    second = [0, 7, 14, 21, 28, 35, 42, 49, 57, 64, 71, 78, 85, 92, 99]
    third = [0, 5, 10, 16, 21, 26, 31, 36, 42, 47, 52, 57, 63, 68, 73, 78, 83, 89, 94, 99]
    expected = first + [100 + i for i in second] + [200 + i for i in third]
    assert time_grid("respace", 300, 45, section_counts="10,15,20").tolist() == expected
    assert time_grid("respace", 300, 45, section_counts=[10, 15, 20]).tolist() == expected


def test_respace_gives_the_first_sections_the_remainder():
    # T = 10 in 3 sections: sizes 4, 3, 3 starting at 0, 4, 7; two steps each take both ends
    assert time_grid("respace", 10, 6, section_counts="2,2,2").tolist() == [0, 3, 4, 6, 7, 9]
    # one step per section takes the section's first step (stride 1, x = 0)
    assert time_grid("respace", 10, 3, section_counts="1,1,1").tolist() == [0, 4, 7]


def test_respace_ddim_takes_the_smallest_exact_integer_stride():
    assert time_grid("respace", 1000, 25, section_counts="ddim25").tolist() == list(range(0, 1000, 40))
    # 1000 / 30 is no integer: stride 34 is the smallest with len(range(0, 1000, 34)) = 30 (stride 33 gives 31)
    assert time_grid("respace", 1000, 30, section_counts="ddim30").tolist() == list(range(0, 1000, 34))
    with pytest.raises(ValueError, match=r"'ddim300': no integer stride takes exactly 300 of T=1000 steps"):
        time_grid("respace", 1000, 300, section_counts="ddim300")


def test_respace_without_counts_is_iddpm_timestep_respacing_k():
    # "--timestep_respacing K": one section. It equals `even` at the K the configs use ...
    for T, K in [(1000, 10), (1000, 25), (1000, 50), (1000, 100), (1000, 1000), (100, 2), (100, 5)]:
        assert time_grid("respace", T, K).tolist() == time_grid("even", T, K).tolist(), (T, K)
    # ... but not everywhere: at T = 1000, K = 21, 10 x 999/20 = 499.5 is a tie; even's product rounds it
    # to 500 (half to even), the accumulated sum 499.4999... to 499. With K = 1 iDDPM keeps step 0.
    assert time_grid("even", 1000, 21)[10] == 500 and time_grid("respace", 1000, 21)[10] == 499
    assert time_grid("respace", 1000, 1).tolist() == [0]


@pytest.mark.parametrize(
    "counts,K,message",
    [
        ("3,7", 10, r"section 1 of T=10 has 5 steps, fewer than the 7 asked for"),
        ("2,x", 4, r"section_counts '2,x': 'x' is not a step count; give comma-separated non-negative integers"),
        ("ddim", 4, r"section_counts 'ddim': '' is not a step count"),
        ("2,-1", 1, r"'-1' is not a step count"),
        ("2,2", 5, r"section_counts '2,2' take 4 steps, but the cell has K=5"),
    ],
)
def test_respace_refuses_bad_counts(counts, K, message):
    with pytest.raises(ValueError, match=message):
        time_grid("respace", 10, K, section_counts=counts)


def test_grid_options_are_checked_per_grid():
    with pytest.raises(ValueError, match=r"time grid 'even' takes grid_options \[\], not \['section_counts'\]"):
        time_grid("even", 10, 4, section_counts="4")
    with pytest.raises(ValueError, match=r"'optimal' is chosen from the model's Gamma_n: it needs alpha_bars and gamma"):
        time_grid("optimal", 10, 4)
    with pytest.raises(ValueError, match=r"'optimal' needs K >= 2 .* got K=1"):
        time_grid("optimal", 10, 1)
