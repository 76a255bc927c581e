"""NCSN (v1)'s released CIFAR-10 model on its annealed Langevin: its level-indexed score (the network's output itself),
its sampler's step sizes, its run.zip checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from served_checkpoint import fetch_and_convert
from torch import nn

from bench.checkpoints.convert import convert_checkpoint
from bench.checkpoints.layouts import CheckpointLoadError, load_ncsn_run_zip
from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import RegistryError, get_checkpoint, validate_registry
from bench.core.noise import NoiseSource
from bench.families import check_model, make_denoiser
from bench.methods.ncsn import VESchedule
from bench.methods.ncsn_levels import NoiseConditionalScore
from bench.nets.ncsnv1 import CondRefineNetDilated, ncsn_v1_sigmas
from bench.report.specs import load_table_spec
from bench.samplers import langevin
from bench.steps.plan import table_cells
from bench.steps.sample import sampler_view

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())
MANIFEST = json.loads((Path(__file__).parent / "manifests" / "ncsn_cifar10.json").read_text())

# ermongroup/ncsn @7f27f4a1: configs/anneal.yml model keys with its CIFAR-10 ngf, on [0, 1] data; the sampler as
# runners/anneal_runner.py test() calls it (L262: n_steps_each 100, step_lr 0.00002), no final denoising.
SIGMA_BEGIN, SIGMA_END, NUM_CLASSES, NGF = 1.0, 0.01, 10, 128
N_STEPS_EACH, STEP_LR = 100, 2e-5
MEMBER = "run/logs/cifar10/checkpoint.pth"

pytestmark = pytest.mark.usefixtures("fast_distributions")


class GaussianScoreNet(nn.Module):
    """An exact NCSN-like network for data N(m, c I) on [0, 1]: net(x, y) = -(x - m) / (c + sigmas[y]^2), the score
    itself, as CondRefineNetDilated outputs it."""

    def __init__(self, m: torch.Tensor, c: float, sigmas: torch.Tensor):
        super().__init__()
        self.register_buffer("m", m)
        self.sigmas = sigmas
        self.c = c
        self.centers_input = True
        self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert y.dtype == torch.int64 and torch.all(y == y[0])
        return -(x - self.m) / (self.c + self.sigmas[y[0]] ** 2)


def official_chain(net: GaussianScoreNet, x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """runners/anneal_runner.py L203-219 written out on [0, 1] data, its randn replaced by the bench sampler's draws.

    step_size = step_lr (sigma_c / sigma_L)^2, x <- x + step_size s(x, c) + sqrt(2 step_size) z, numpy float64
    sigmas (L232-233), no denoising step. Level c (descending) is the bench grid's position L - 1 - c.
    """
    sigmas = np.exp(np.linspace(np.log(SIGMA_BEGIN), np.log(SIGMA_END), NUM_CLASSES))
    for c, sigma in enumerate(sigmas):
        step_size = STEP_LR * (sigma / sigmas[-1]) ** 2
        for s in range(N_STEPS_EACH):
            grad = net(x, torch.full((x.shape[0],), c))
            x = x + step_size * grad + np.sqrt(step_size * 2) * noise.normal((NUM_CLASSES - 1 - c) * N_STEPS_EACH + s)
    return x


def test_the_paper_profile_runs_ncsn_as_its_anneal_runner_sets_it():
    sampler = PAPER["samplers"]["ncsn_langevin"]
    model = PAPER["models"]["ncsn_cifar10"]
    assert sampler["fn"] == "langevin" and sampler["grid"] == "ve"
    # Levels on [-1, 1] data are twice NCSN's; a Langevin step's variance four times (eps = 2 step_lr there).
    assert sampler["grid_options"] == {"sigma_min": 2 * SIGMA_END, "sigma_max": 2 * SIGMA_BEGIN}
    assert sampler["options"] == {"n_steps_each": N_STEPS_EACH, "eps": pytest.approx(4 * 2 * STEP_LR, rel=1e-12),
                                  "denoise": False}
    assert model["network"] == {"type": "ncsnv1", "ngf": NGF, "num_classes": NUM_CLASSES,
                                "sigma_begin": SIGMA_BEGIN, "sigma_end": SIGMA_END}
    assert model["schedule"] == {"name": "ve", "sigma_min": 2 * SIGMA_END, "sigma_max": 2 * SIGMA_BEGIN}
    assert {"model": "ncsn_cifar10", "samplers": ["ncsn_langevin"], "K": [NUM_CLASSES]} in PAPER["experiments"]
    entry = get_checkpoint(model["checkpoint"])
    assert entry.layout == "ncsn_run_zip" and entry.member == MEMBER and entry.hash_type == "none"
    assert entry.url == "https://drive.google.com/file/d/1BF2mwFv5IRCGaQbEWTbLlAOWEkNzMe5O/view?usp=sharing"
    assert langevin.SPEC.nfe(NUM_CLASSES, sampler["options"]) == 1000


def test_the_level_grid_at_k_10_is_the_networks_own_table():
    net = CondRefineNetDilated(ngf=4, num_classes=NUM_CLASSES).double().eval()
    model = PAPER["models"]["ncsn_cifar10"]
    denoiser = make_denoiser("ncsn", net, VESchedule(model["schedule"]["sigma_min"], model["schedule"]["sigma_max"]))
    view, grid = sampler_view(denoiser, PAPER["samplers"]["ncsn_langevin"], NUM_CLASSES)
    assert torch.equal(grid, torch.arange(NUM_CLASSES))
    torch.testing.assert_close(view.sigmas, 2 * torch.flip(ncsn_v1_sigmas(SIGMA_BEGIN, SIGMA_END, NUM_CLASSES), [0]),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="is not one of the network's 10 levels .* K = 10 levels"):
        sampler_view(denoiser, PAPER["samplers"]["ncsn_langevin"], 7)


def test_the_denoising_score_at_a_level_is_the_network_output_not_divided_by_sigma():
    """score(x, 2 sigma_y) on [-1, 1] data = net((x + 1) / 2, y) / 2: the data scale's factor, no 1 / sigma (NCSN's
    DSM target is the score itself, losses/dsm.py L29-38), unlike the same adapter on NCSNv2."""
    torch.manual_seed(0)
    net = CondRefineNetDilated(ngf=4, num_classes=NUM_CLASSES).double().eval()
    score = make_denoiser("ncsn", net, VESchedule(2 * SIGMA_END, 2 * SIGMA_BEGIN))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
    table = net.sigmas
    with torch.no_grad():
        for y in (0, 4, NUM_CLASSES - 1):
            want = net((x + 1) / 2, torch.full((2,), y)) / 2
            torch.testing.assert_close(score(x, 2 * float(table[y])), want, rtol=0, atol=0)
    assert score.nfe == 3


def test_a_config_whose_schedule_is_not_the_networks_table_is_refused_before_any_job():
    model = {**PAPER["models"]["ncsn_cifar10"], "schedule": {"name": "ve", "sigma_min": 0.01, "sigma_max": 2.0}}
    with pytest.raises(ValueError, match=r"'models.m.schedule.sigma_min': value 0.01 is not the network's own level "
                                         r"0.02 \(2 x network.sigma_end on \[-1, 1\] data\); allowed: 0.02"):
        check_model("m", model)
    check_model("m", PAPER["models"]["ncsn_cifar10"])
    net = CondRefineNetDilated(ngf=4, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"schedule sigma_max=1.0 is not the network's own 2.0"):
        make_denoiser("ncsn", net, VESchedule(0.02, 1.0))


class _NoNoise:
    """A noise source whose every Langevin draw is zero, so that a chain's moves are its drift alone."""

    def normal(self, step: int) -> torch.Tensor:
        return torch.zeros(1, dtype=torch.float64)


def test_each_langevin_step_is_anneal_runners_step_size():
    """With a constant unit score on [0, 1] data and no noise, each move of the bench chain (mapped to [0, 1]) is
    anneal_runner.py L210's step_size = step_lr (sigma_c / sigma_L)^2, N_STEPS_EACH times per level."""
    net_sigmas = ncsn_v1_sigmas(SIGMA_BEGIN, SIGMA_END, NUM_CLASSES)
    calls: list[tuple[float, torch.Tensor]] = []

    class UnitScore(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            calls.append((int(y[0]), x.clone()))
            return torch.ones_like(x)

    net = UnitScore()
    net.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)
    score = NoiseConditionalScore(net, net_sigmas, data_range=(0.0, 1.0))
    view = score.with_levels(score.sigmas)
    x_T = torch.zeros(1, dtype=torch.float64)
    out = langevin.sample(view, x_T, torch.arange(NUM_CLASSES), noise=_NoNoise(), n_steps_each=N_STEPS_EACH,
                          eps=4 * 2 * STEP_LR, denoise=False)
    assert len(calls) == NUM_CLASSES * N_STEPS_EACH  # no final denoising call
    official = np.exp(np.linspace(np.log(SIGMA_BEGIN), np.log(SIGMA_END), NUM_CLASSES))
    moves = [calls[i + 1][1] - calls[i][1] for i in range(len(calls) - 1)] + [(out + 1) / 2 - calls[-1][1]]
    for i, (y, _) in enumerate(calls):
        c = i // N_STEPS_EACH
        assert y == c  # levels visited from the largest, as enumerate(sigmas) does
        step_size = STEP_LR * (official[c] / official[-1]) ** 2
        assert math.isclose(float(moves[i]), step_size, rel_tol=1e-9), (i, float(moves[i]), step_size)


def test_bench_langevin_on_the_adapter_is_anneal_runners_chain_on_its_own_data_scale():
    """The same draws through both: bench's chain on [-1, 1] data is 2 x - 1 of NCSN's chain on [0, 1] data."""
    net = GaussianScoreNet(torch.tensor([0.6, 0.35], dtype=torch.float64), 0.02,
                           ncsn_v1_sigmas(SIGMA_BEGIN, SIGMA_END, NUM_CLASSES))
    score = make_denoiser("ncsn", net, VESchedule(2 * SIGMA_END, 2 * SIGMA_BEGIN))
    view = score.with_levels(score.sigmas)
    noise = NoiseSource(torch.arange(64), (2,), torch.float64, "cpu")
    grid = torch.arange(NUM_CLASSES)
    x_T = view.prior(noise, grid)  # torch.rand on [0, 1] images (L260): 2 U - 1 here
    assert x_T.min() > -1 and x_T.max() < 1
    ours = langevin.sample(view, x_T, grid, noise=noise, n_steps_each=N_STEPS_EACH, eps=4 * 2 * STEP_LR,
                           denoise=False)
    theirs = official_chain(net, (x_T + 1) / 2, noise)
    torch.testing.assert_close(ours, 2 * theirs - 1, rtol=1e-9, atol=1e-9)
    assert score.nfe == NUM_CLASSES * N_STEPS_EACH


def test_the_row_shows_its_cell_at_its_own_10_levels_in_the_k_column():
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_ddpm_t1_fid.yaml").read_text())
    assert ("ncsn_cifar10", "ncsn_langevin", NUM_CLASSES) in table_cells(spec, "paper_ddpm_t1_fid.yaml")
    loaded = load_table_spec(ROOT / "workflows/config/tables/paper_ddpm_t1_fid.yaml")
    row = next(r for r in loaded.rows if r.selectors.get("model") == "ncsn_cifar10")
    assert row.label == "NCSN (baseline)" and row.paper == {1000: 25.32}
    assert loaded.cell_selectors(row, 1000) == {"dataset": "cifar10", "model": "ncsn_cifar10",
                                                "sampler": "ncsn_langevin", "K": NUM_CLASSES}


# The release: run.zip -----------------------------------------------------------------------------------------------


def random_state(net: nn.Module, seed: int) -> OrderedDict:
    """Small random weights (the forward pass stays finite through the 30-odd layers), embeddings near 1."""
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, (1.0 if "embed" in k else 0.0) + 0.05 * torch.randn(v.shape, generator=gen))
                       for k, v in net.state_dict().items())


def write_run_zip(path: Path, runs: dict[str, OrderedDict]) -> None:
    """run.zip as the README ships it: run/logs/<doc>/checkpoint.pth, the list [DataParallel state_dict, optimizer]
    that anneal_runner.py L179-184 saves, beside each run's config.yml (main.py L50-51); in torch's legacy format,
    the only one the 2019 PyTorch releases wrote (the zip format came with 1.6)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for doc, state in runs.items():
            states = [OrderedDict((f"module.{k}", v) for k, v in state.items()), {"state": {}, "param_groups": []}]
            body = path.parent / f"{doc}.pth"
            torch.save(states, body, _use_new_zipfile_serialization=False)
            archive.write(body, f"run/logs/{doc}/checkpoint.pth")
            archive.writestr(f"run/logs/{doc}/config.yml", "data: {}\n")
            body.unlink()


def test_run_zip_in_its_official_layout_is_fetched_converted_and_loaded_strictly(served, tmp_path):
    torch.set_num_threads(1)
    folder, _ = served
    network = {"type": "ncsnv1", "ngf": 8, "num_classes": NUM_CLASSES, "sigma_begin": SIGMA_BEGIN,
               "sigma_end": SIGMA_END}
    net = CondRefineNetDilated(ngf=8, num_classes=NUM_CLASSES)
    assert list(net.state_dict()) == [key for key, _, _ in MANIFEST["state_dict"]]  # the official key order
    state, celeba = random_state(net, 0), random_state(net, 1)
    write_run_zip(folder / "run.zip", {"celeba": celeba, "cifar10": state})
    _, out = fetch_and_convert(served, tmp_path, "ncsn_cifar10", "run.zip",
                               {**PAPER["models"]["ncsn_cifar10"], "network": network},
                               {"kind": "cifar10", "root": "unused"})

    loaded, schedule, saved = load_model(out)
    assert saved["info"]["layout"] == "ncsn_run_zip" and saved["info"]["member"] == MEMBER
    assert saved["data_shape"] == [3, 32, 32]
    got = loaded.state_dict()
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)  # states[0] of the CIFAR-10 run, not CelebA's
    score = make_denoiser("ncsn", loaded, schedule)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = loaded((x + 1) / 2, torch.full((2,), NUM_CLASSES - 1)) / 2
        got_score = score(x, 2 * SIGMA_END)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got_score, want, rtol=0, atol=0)


def test_a_run_zip_without_the_member_names_the_runs_it_holds(tmp_path):
    net = CondRefineNetDilated(ngf=4, num_classes=NUM_CLASSES)
    write_run_zip(tmp_path / "run.zip", {"celeba": random_state(net, 0), "cifar10_0": random_state(net, 1)})
    with pytest.raises(CheckpointLoadError, match=r"has no member 'run/logs/cifar10/checkpoint.pth'; its checkpoint.pth "
                                                  r"members: run/logs/celeba/checkpoint.pth, "
                                                  r"run/logs/cifar10_0/checkpoint.pth \(set the checkpoint's 'member'"):
        load_ncsn_run_zip(tmp_path / "run.zip", MEMBER)
    assert list(load_ncsn_run_zip(tmp_path / "run.zip", "run/logs/cifar10_0/checkpoint.pth")) == list(net.state_dict())
    (tmp_path / "not.zip").write_bytes(b"a Drive share page, saved as HTML")
    with pytest.raises(CheckpointLoadError, match="is not a readable zip archive"):
        load_ncsn_run_zip(tmp_path / "not.zip", MEMBER)
    entry = {**dataclasses.asdict(get_checkpoint("ncsn_cifar10")), "member": "run/logs/cifar10_0/checkpoint.pth"}
    model_cfg = {**PAPER["models"]["ncsn_cifar10"], "network": {**PAPER["models"]["ncsn_cifar10"]["network"],
                                                                "ngf": 4}}
    convert_checkpoint(entry, tmp_path / "run.zip", model_cfg, (3, 32, 32), 255, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt")[2]["info"]["member"] == "run/logs/cifar10_0/checkpoint.pth"


def test_the_registry_requires_a_member_exactly_for_an_archive():
    entry = dataclasses.asdict(get_checkpoint("ncsn_cifar10"))
    with pytest.raises(RegistryError, match=r"\('ncsn_cifar10'\), key 'member': required for layout 'ncsn_run_zip'"):
        validate_registry({"schema_version": 1, "checkpoints": [{**entry, "member": None}]})
    other = {**dataclasses.asdict(get_checkpoint("ncsnv2_cifar10")), "member": MEMBER}
    with pytest.raises(RegistryError, match=r"key 'member': only an archive layout \['ncsn_run_zip'\] has one"):
        validate_registry({"schema_version": 1, "checkpoints": [other]})
