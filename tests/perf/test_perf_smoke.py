"""`python -m bench perf` end to end on the embedded MLP at tiny sizes, and its pieces."""

import csv
import re

import pytest
import torch
from closed_form_flops import mlp_flops

from bench.core.schedules import DiscreteSchedule
from bench.core.time_grids import time_grid
from bench.perf.cli import main
from bench.perf.networks import DEFAULT_CELLS, EDMAsEps, EpsChannels, build_perf_network
from bench.perf.options import PerfOptions
from bench.perf.rows import COLUMNS, append_csv, format_table
from bench.perf.rows import __doc__ as ROWS_DOC
from bench.perf.run import run_perf
from bench.perf.sampler_loops import PEERS, SCHEDULE, diffusers_version, peer_loop, plan_samplers
from bench.samplers import SAMPLERS

TINY = ["--networks", "mlp", "--batch", "8", "--steps", "2", "--repeats", "1", "--warmup", "0", "--no-cells"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def documented_columns() -> list[str]:
    """Column names as listed in bench.perf.rows' docstring, in order."""
    block = ROWS_DOC.split("Columns of results/perf.csv")[1]
    names = []
    for line in block.splitlines()[1:]:
        match = re.match(r"  (\w+(?:, \w+)*)\s", line)
        if match:
            names += match.group(1).split(", ")
    return names


def test_documented_columns_are_the_csv_columns():
    assert documented_columns() == list(COLUMNS)


def test_perf_runs_end_to_end_and_appends_to_the_csv(tmp_path, capsys):
    out = tmp_path / "results" / "perf.csv"
    assert main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:4] == ["network", "batch", "loop", "sampler"]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == documented_columns()
    assert {r["network"] for r in rows} == {"mlp"} and {r["batch"] for r in rows} == {"8"}
    assert len({r["run_id"] for r in rows}) == 1
    network = [r for r in rows if r["loop"] == "network"]
    assert len(network) == 1 and float(network[0]["ms_per_nfe"]) > 0 and network[0]["overhead_pct"] == "0"
    net, _ = build_perf_network("mlp", DiscreteSchedule.named(*SCHEDULE))
    flops = mlp_flops(net, 8)
    for row in rows:
        if row["ms_per_nfe"]:  # every timed row turns the same network's FLOPs per NFE
            assert float(row["gflop_per_nfe"]) == pytest.approx(flops / 1e9, rel=1e-5)
            assert float(row["tflops"]) == pytest.approx(flops / float(row["ms_per_nfe"]) / 1e9, rel=1e-4)
            assert row["precision"] == "fp32" and row["peak_tflops"] == row["peak_pct"] == ""  # a CPU has no peak
    ours = {r["sampler"]: r for r in rows if r["loop"] == "ours"}
    assert set(ours) == set(SAMPLERS)
    for name in ("ddpm", "ddim"):
        row = ours[name]
        assert row["nfe"] == row["steps"] == "2"
        assert float(row["ms_per_nfe"]) > 0 and float(row["images_per_s"]) > 0
        shares = [float(row[k]) for k in ("net_pct", "noise_pct", "arith_pct")]
        assert sum(shares) == pytest.approx(100.0, abs=1e-3) and min(shares[:2]) >= 0
        assert row["mem_kind"] in ("rss_hwm", "ru_maxrss")
        assert row["noise_module"] == "bench.core.noise" and '"autocast": {"enabled": false}' in row["speed"]
    peers = {r["sampler"]: r for r in rows if r["loop"] == "diffusers"}
    if diffusers_version():
        assert set(peers) == {"ddpm", "ddim"}
        assert all(float(ours[n]["ours_over_peer"]) > 0 for n in peers)
        # Same sampler on the same timesteps: DDIM (eta = 0) x_0 agrees up to diffusers' float32 state.
        assert float(peers["ddim"]["peer_max_rel_diff"]) < 1e-4
    # A second run appends under the same header.
    assert main([*TINY, "--no-peer", "--samplers", "ddim", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines.count(",".join(COLUMNS)) == 1 and len(lines) == 1 + len(rows) + 2


def test_samplers_that_need_options_or_another_denoiser_are_skipped_with_a_note(monkeypatch):
    def needs_gamma(denoiser, x_T, grid, *, noise, gamma):
        return x_T

    def needs_sigmas(denoiser, x_T, grid, *, noise):
        raise ValueError("sigma grid must descend")

    monkeypatch.setitem(SAMPLERS, "needs_gamma", needs_gamma)
    monkeypatch.setitem(SAMPLERS, "needs_sigmas", needs_sigmas)
    plans = {p.name: p for p in plan_samplers()}
    assert plans["needs_gamma"].skip == "skipped: needs option(s) gamma"
    assert plans["needs_sigmas"].skip == (
        "skipped: does not run on a plain eps denoiser (ValueError: sigma grid must descend)"
    )
    assert plans["ddpm"].skip == plans["ddim"].skip == ""
    rows = run_perf(
        PerfOptions(networks=("mlp",), batch=4, steps=2, repeats=1, warmup=0, peer=False,
                         samplers=("needs_gamma", "ddim"))
    )
    skipped = [r for r in rows if r.sampler == "needs_gamma"]
    assert len(skipped) == 1 and skipped[0].ms_per_nfe is None and skipped[0].note.startswith("skipped: needs")
    assert "needs_gamma" in format_table(rows)


def test_edm_adapter_gives_eps_of_the_vp_chain():
    """With D(y; sigma) = 0, eps = y / sigma = x / sqrt(1 - abar); with D(y; sigma) = y, eps = 0."""

    class Zero(torch.nn.Module):
        def forward(self, y, sigma):
            return torch.zeros_like(y)

    class Identity(torch.nn.Module):
        def forward(self, y, sigma):
            return y

    schedule = DiscreteSchedule.named("linear", 1000)
    x = torch.randn(3, 1, 2, 2)
    t = torch.tensor([0.0, 499.0, 999.0])
    abar = schedule.alpha_bars[[0, 499, 999]].float().reshape(-1, 1, 1, 1)
    eps = EDMAsEps(Zero(), schedule.alpha_bars)(x, t)
    torch.testing.assert_close(eps, x / torch.sqrt(1 - abar), rtol=1e-5, atol=0)
    assert torch.count_nonzero(EDMAsEps(Identity(), schedule.alpha_bars)(x, t)) == 0


def test_adm_adapter_keeps_the_eps_channels():
    class SixChannels(torch.nn.Module):
        def forward(self, x, t):
            return torch.cat([x, -x], dim=1)

    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(EpsChannels(SixChannels(), 3)(x, torch.zeros(2)), x)


def test_peer_loop_refuses_a_grid_diffusers_would_not_visit():
    pytest.importorskip("diffusers")
    schedule = DiscreteSchedule.named("linear", 1000)
    grid = time_grid("uniform", 1000, 3)  # 0, 333, 666, 999: leading spacing gives 0, 250, 500, 750
    net = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"visits \[750, 500, 250, 0\], not our grid \[999, 666, 333, 0\]"):
        peer_loop(PEERS["ddim"], net, schedule, grid, torch.zeros(1, 1, 2, 2), seed=0)


def test_bad_options_are_rejected_with_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"networks \['vgg'\] must be a non-empty subset of"):
        PerfOptions(networks=("vgg",))
    with pytest.raises(ValueError, match="repeats=0 must be an integer >= 1"):
        PerfOptions(repeats=0)
    with pytest.raises(ValueError, match=r"samplers \['nope'\] are not registered"):
        PerfOptions(samplers=("nope",))
    with pytest.raises(ValueError, match="noise module 'bench.core.time_grids' has no NoiseSource"):
        run_perf(PerfOptions(networks=("mlp",), noise_module="bench.core.time_grids"))
    bad = tmp_path / "perf.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="has columns \\['a', 'b'\\], not the perf columns"):
        append_csv([], bad)


def test_every_pair_of_the_embedded_config_is_timed_on_its_own_family_denoiser():
    from bench.config import load_config
    from bench.perf.cells import config_pairs

    rows = run_perf(PerfOptions(networks=("mlp",), batch=4, steps=2, repeats=1, warmup=0, peer=False,
                                          samplers=("ddim",), cells=DEFAULT_CELLS))
    cell_rows = [r for r in rows if r.network.startswith("cell:")]
    pairs = config_pairs(load_config(DEFAULT_CELLS, check_paths=False))
    assert [(r.network[len("cell:"):], r.sampler) for r in cell_rows] == pairs
    assert len(pairs) == 22 and {m for m, _ in pairs} == {"mlp", "iddpm", "ddgm", "ddgm_gmm", "ncsn", "edm"}
    by_pair = {(r.network, r.sampler): r for r in cell_rows}
    assert by_pair[("cell:mlp", "ddim_eta0")].nfe == 2
    assert by_pair[("cell:edm", "edm_heun")].nfe == 3  # Heun: 2K - 1
    # FLOPs per NFE are the network's: the same for every sampler on one model's network.
    assert len({r.gflop_per_nfe for r in cell_rows if r.network == "cell:mlp"}) == 1
    # iDDPM's network also predicts the variance: a wider output layer than the eps-only MLP.
    assert by_pair[("cell:iddpm", "iddpm_learned")].gflop_per_nfe > by_pair[("cell:mlp", "ddim_eta0")].gflop_per_nfe
    assert "Gamma_n = 0.9 stand-in" in by_pair[("cell:mlp", "analytic_ddpm_ot")].note
    assert by_pair[("cell:ddgm", "ddgm_alg4")].note.startswith("ddgm family, mlp network")
    for r in cell_rows:
        assert r.batch == 4 and r.shape == "1x8x8" and r.ms_per_nfe > 0
        assert r.gflop_per_nfe > 0 and r.tflops == pytest.approx(r.gflop_per_nfe / r.ms_per_nfe)
        assert r.net_pct + r.noise_pct + r.arith_pct == pytest.approx(100.0, abs=1e-6)
        assert 0 < r.net_pct <= 100 and r.noise_pct >= 0
        # overhead is the rest of the run over its own network time
        assert r.overhead_pct == pytest.approx(100.0 * (100.0 / r.net_pct - 1.0), rel=1e-9)
    assert len(format_table(rows).splitlines()) == len(rows) + 2


def test_missing_cells_config_is_named():
    with pytest.raises(ValueError, match=r"cells config 'no/such.yaml' is not a file"):
        PerfOptions(cells="no/such.yaml")
