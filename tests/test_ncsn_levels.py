"""NCSNv2's released CIFAR-10 model on annealed Langevin: its level-indexed score, its sampler settings, its checkpoint."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import yaml
from served_checkpoint import fetch_and_convert
from torch import nn

from bench.checkpoints.model_file import load_model
from bench.checkpoints.registry import get_checkpoint
from bench.core.noise import NoiseSource
from bench.families import check_model, make_denoiser
from bench.methods.ncsn import VESchedule
from bench.methods.ncsn_levels import NoiseConditionalScore
from bench.nets.ncsnv2 import NCSNv2, ncsn_sigmas
from bench.report.specs import load_table_spec
from bench.samplers import langevin
from bench.steps.plan import table_cells
from bench.steps.sample import generate, sampler_view

ROOT = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((ROOT / "workflows/config/paper.yaml").read_text())
MANIFEST = json.loads((Path(__file__).parent / "manifests" / "ncsnv2_cifar10.json").read_text())

# ermongroup/ncsnv2 configs/cifar10.yml @1bcea03b: model and sampling keys, on [0, 1] data (rescaled: false).
SIGMA_BEGIN, SIGMA_END, NUM_CLASSES = 50.0, 0.01, 232
N_STEPS_EACH, STEP_LR, DENOISE = 5, 6.2e-6, True

pytestmark = pytest.mark.usefixtures("fast_distributions")


class GaussianLevelNet(nn.Module):
    """An exact NCSNv2-like network for data N(m, c I) on [0, 1]: s(x, sigmas[y]) = -(x - m) / (c + sigmas[y]^2)."""

    def __init__(self, m: torch.Tensor, c: float, sigmas: torch.Tensor):
        super().__init__()
        self.register_buffer("m", m)
        self.register_buffer("sigmas", sigmas)
        self.c = c
        # A float64 parameter: the adapter casts its input to the network's parameter dtype.
        self.dtype_anchor = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert y.dtype == torch.int64 and torch.all(y == y[0])
        return -(x - self.m) / (self.c + self.sigmas[y[0]].double() ** 2)


def official_chain(net: GaussianLevelNet, x: torch.Tensor, noise: NoiseSource) -> torch.Tensor:
    """NCSNv2 models/__init__.py L25-50 written out on [0, 1] data, its randn replaced by the bench sampler's draws.

    step_size = step_lr (sigma_c / sigma_L)^2; x <- x + step_size s(x, c) + sqrt(2 step_size) z; then
    x + sigma_L^2 s(x, L - 1). Level c (descending) is the bench grid's position L - 1 - c.
    """
    sigmas = net.sigmas.double()
    L = len(sigmas)
    for c, sigma in enumerate(sigmas.tolist()):
        step = STEP_LR * (sigma / sigmas[-1].item()) ** 2
        for s in range(N_STEPS_EACH):
            grad = net(x, torch.full((x.shape[0],), c))
            x = x + step * grad + math.sqrt(2 * step) * noise.normal((L - 1 - c) * N_STEPS_EACH + s)
    return x + sigmas[-1].item() ** 2 * net(x, torch.full((x.shape[0],), L - 1))


def test_the_paper_profile_runs_ncsnv2_as_its_cifar10_config_sets_it():
    sampler = PAPER["samplers"]["ncsnv2_langevin"]
    model = PAPER["models"]["ncsnv2_cifar10"]
    assert sampler["fn"] == "langevin" and sampler["grid"] == "ve"
    # Levels on [-1, 1] data are twice NCSNv2's; a Langevin step's variance four times (eps = 2 step_lr there).
    assert sampler["grid_options"] == {"sigma_min": 2 * SIGMA_END, "sigma_max": 2 * SIGMA_BEGIN}
    options = sampler["options"]
    assert options["n_steps_each"] == N_STEPS_EACH and options["denoise"] is DENOISE
    assert math.isclose(options["eps"], 4 * 2 * STEP_LR, rel_tol=1e-12)
    assert model["network"] == {"type": "ncsnv2", "ngf": 128, "num_classes": NUM_CLASSES,
                                "sigma_begin": SIGMA_BEGIN, "sigma_end": SIGMA_END}
    assert model["schedule"] == {"name": "ve", "sigma_min": 2 * SIGMA_END, "sigma_max": 2 * SIGMA_BEGIN}
    assert {"model": "ncsnv2_cifar10", "samplers": ["ncsnv2_langevin"], "K": [NUM_CLASSES]} in PAPER["experiments"]
    assert get_checkpoint(model["checkpoint"]).layout == "ddim_list"


def test_the_level_grid_at_k_232_is_the_networks_own_table():
    net = NCSNv2(ngf=4, num_classes=NUM_CLASSES, sigma_begin=SIGMA_BEGIN, sigma_end=SIGMA_END).double().eval()
    model = PAPER["models"]["ncsnv2_cifar10"]
    denoiser = make_denoiser("ncsn", net, VESchedule(model["schedule"]["sigma_min"], model["schedule"]["sigma_max"]))
    view, grid = sampler_view(denoiser, PAPER["samplers"]["ncsnv2_langevin"], NUM_CLASSES)
    assert torch.equal(grid, torch.arange(NUM_CLASSES))
    assert torch.equal(view.sigmas, 2 * torch.flip(ncsn_sigmas(SIGMA_BEGIN, SIGMA_END, NUM_CLASSES), [0]).double())
    with pytest.raises(ValueError, match="is not one of the network's 232 levels .* K = 232 levels"):
        sampler_view(denoiser, PAPER["samplers"]["ncsnv2_langevin"], 100)


def test_a_config_whose_schedule_is_not_the_networks_table_is_refused_before_any_job():
    model = {**PAPER["models"]["ncsnv2_cifar10"], "schedule": {"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}}
    with pytest.raises(ValueError, match=r"'models.m.schedule.sigma_min': value 0.01 is not the network's own level "
                                         r"0.02 \(2 x network.sigma_end on \[-1, 1\] data\); allowed: 0.02"):
        check_model("m", model)
    rescaled = {**model, "network": {**model["network"], "rescaled": True}}
    check_model("m", rescaled)  # NCSNv2 on [-1, 1] data: its levels are the schedule's as they stand
    check_model("m", PAPER["models"]["ncsnv2_cifar10"])


def test_a_schedule_off_the_networks_table_is_refused():
    net = NCSNv2(ngf=4, num_classes=10, sigma_begin=1.0, sigma_end=0.01)
    with pytest.raises(ValueError, match=r"schedule sigma_max=1.0 is not the network's own 2.0"):
        make_denoiser("ncsn", net, VESchedule(0.02, 1.0))


def test_bench_langevin_on_the_adapter_is_ncsnv2s_chain_on_its_own_data_scale():
    """The same draws through both: bench's chain on [-1, 1] data is 2 x - 1 of NCSNv2's chain on [0, 1] data."""
    table = ncsn_sigmas(SIGMA_BEGIN, SIGMA_END, NUM_CLASSES)
    net = GaussianLevelNet(torch.tensor([0.6, 0.35], dtype=torch.float64), 0.02, table)
    score = NoiseConditionalScore(net, net.sigmas, data_range=(0.0, 1.0))
    view = score.with_levels(score.sigmas)
    noise = NoiseSource(torch.arange(64), (2,), torch.float64, "cpu")
    grid = torch.arange(NUM_CLASSES)
    x_T = view.prior(noise, grid)
    ours = langevin.sample(view, x_T, grid, noise=noise, n_steps_each=N_STEPS_EACH, eps=4 * 2 * STEP_LR, denoise=True)
    theirs = official_chain(net, (x_T + 1) / 2, noise)
    torch.testing.assert_close(ours, 2 * theirs - 1, rtol=1e-9, atol=1e-9)
    assert score.nfe == NUM_CLASSES * N_STEPS_EACH + 1


def test_the_uniform_start_is_per_sample_and_covers_the_data_range():
    """NCSN's chains start from U[0, 1] images: 2 U - 1 on bench data, each sample's own draw whatever the batch."""
    score = NoiseConditionalScore(GaussianLevelNet(torch.zeros(3), 0.1, ncsn_sigmas(1.0, 0.1, 3)), ncsn_sigmas(1.0, 0.1, 3))
    view = score.with_levels(score.sigmas)
    grid = torch.arange(3)
    both = view.prior(NoiseSource(torch.tensor([5, 9]), (4000,), torch.float64, "cpu"), grid)
    alone = view.prior(NoiseSource(torch.tensor([9]), (4000,), torch.float64, "cpu"), grid)
    assert torch.equal(both[1:], alone)
    assert both.min() > -1 and both.max() < 1
    assert abs(both.mean().item()) < 0.03 and abs(both.var().item() - 1 / 3) < 0.03


def chain_moments(sigmas: list[float], m: float, c: float) -> tuple[float, float]:
    """Mean and variance of one coordinate of NCSNv2's chain with the exact score of N(m, c), started from U[0, 1].

    Each step is linear: x <- (1 - a) x + a m + sqrt(2 step) z with a = step / (c + sigma^2), so the mean goes to
    (1 - a) mu + a m and the variance to (1 - a)^2 v + 2 step; the denoising step scales x - m by c / (c + sigma_L^2).
    """
    mu, v = 0.5, 1.0 / 12.0
    for sigma in sigmas:
        step = STEP_LR * (sigma / sigmas[-1]) ** 2
        a = step / (c + sigma**2)
        for _ in range(N_STEPS_EACH):
            mu, v = (1 - a) * mu + a * m, (1 - a) ** 2 * v + 2 * step
    shrink = c / (c + sigmas[-1] ** 2)
    return m + shrink * (mu - m), shrink**2 * v


def test_annealed_langevin_at_ncsnv2s_settings_reaches_a_gaussian():
    """With the exact score of N(m, c I), NCSNv2's CIFAR-10 chain (232 levels, 5 steps, denoised) has the moments
    of its closed form, which land near the law: its 5 steps a level leave the variance about 20% above c."""
    m, c = torch.tensor([0.2, 0.45, 0.7], dtype=torch.float64), 0.01
    net = GaussianLevelNet(m, c, ncsn_sigmas(SIGMA_BEGIN, SIGMA_END, NUM_CLASSES))
    score = NoiseConditionalScore(net, net.sigmas, data_range=(0.0, 1.0))
    view = score.with_levels(score.sigmas)
    n = 4000
    noise = NoiseSource(torch.arange(n), (3,), torch.float64, "cpu")
    grid = torch.arange(NUM_CLASSES)
    x = langevin.sample(view, view.prior(noise, grid), grid, noise=noise, n_steps_each=N_STEPS_EACH,
                        eps=4 * 2 * STEP_LR, denoise=True)
    x_net = (x + 1) / 2
    table = net.sigmas.double().tolist()
    for i in range(3):
        mean, var = chain_moments(table, float(m[i]), c)
        assert abs(mean - m[i].item()) < 1e-3 and 1.0 < var / c < 1.3
        assert abs(x_net[:, i].mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(x_net[:, i].var().item() / var - 1) < 5 * math.sqrt(2 / n)


def test_generate_runs_the_chain_from_the_uniform_start():
    """The sample step's generate() calls the view's prior: the same chain as starting it by hand."""
    net = GaussianLevelNet(torch.zeros(2, dtype=torch.float64), 0.05, ncsn_sigmas(2.0, 0.05, 4))
    score = NoiseConditionalScore(net, net.sigmas)
    sampler = {"fn": "langevin", "grid": "ve", "grid_options": {"sigma_min": 0.1, "sigma_max": 4.0},
               "options": {"n_steps_each": 2, "eps": 1e-3, "denoise": True}}
    got, realised = generate(score, sampler, 4, torch.arange(6), (2,), batch_size=4, state_dtype=torch.float64)
    noise = NoiseSource(torch.arange(6), (2,), torch.float64, "cpu")
    view = score.with_levels(score.sigmas)
    want = langevin.sample(view, 2 * noise.latent_uniform() - 1, torch.arange(4), noise=noise, n_steps_each=2,
                           eps=1e-3, denoise=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(realised, torch.flip(score.sigmas, [0]))


def test_a_row_may_show_a_cell_of_its_own_k_in_a_k_column(tmp_path):
    """DDPM Table 1's NCSNv2 row sits in the blank-K column 1000 but runs at its own 232 levels."""
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_ddpm_t1_fid.yaml").read_text())
    assert ("ncsnv2_cifar10", "ncsnv2_langevin", 232) in table_cells(spec, "paper_ddpm_t1_fid.yaml")
    loaded = load_table_spec(ROOT / "workflows/config/tables/paper_ddpm_t1_fid.yaml")
    row = next(r for r in loaded.rows if r.selectors.get("model") == "ncsnv2_cifar10")
    assert loaded.cell_selectors(row, 1000) == {"dataset": "cifar10", "model": "ncsnv2_cifar10",
                                                "sampler": "ncsnv2_langevin", "K": 232}


def _official_list(state: OrderedDict, shadow: OrderedDict) -> list:
    """What ncsn_runner.py L166-175 saves: [DataParallel state_dict, optimizer, epoch, step, EMAHelper shadow]."""
    return [OrderedDict((f"module.{k}", v) for k, v in state.items()), {"state": {}, "param_groups": []}, 0, 300000,
            shadow]


def test_the_checkpoint_in_its_official_layout_is_fetched_converted_and_loaded_strictly(served, tmp_path):
    torch.set_num_threads(1)
    folder, _ = served
    network = {"type": "ncsnv2", "ngf": 8, "num_classes": NUM_CLASSES, "sigma_begin": SIGMA_BEGIN, "sigma_end": SIGMA_END}
    net = NCSNv2(ngf=8, num_classes=NUM_CLASSES, sigma_begin=SIGMA_BEGIN, sigma_end=SIGMA_END)
    assert list(net.state_dict()) == [key for key, _, _ in MANIFEST["state_dict"]]  # the official key order
    gen = torch.Generator().manual_seed(0)
    # Small random weights, so that the forward pass below stays finite through the 30-odd layers.
    state = OrderedDict((k, 0.05 * torch.randn(v.shape, generator=gen)) for k, v in net.state_dict().items())
    state["sigmas"] = net.sigmas.clone()
    shadow = OrderedDict((k, 0.05 * torch.randn(p.shape, generator=gen)) for k, p in net.named_parameters())
    torch.save(_official_list(state, shadow), folder / "checkpoint_300000.pth")
    _, out = fetch_and_convert(served, tmp_path, "ncsnv2_cifar10", "checkpoint_300000.pth",
                               {**PAPER["models"]["ncsnv2_cifar10"], "network": network},
                               {"kind": "cifar10", "root": "unused"})

    loaded, schedule, saved = load_model(out)
    assert saved["info"]["layout"] == "ddim_list" and saved["data_shape"] == [3, 32, 32]
    got = loaded.state_dict()
    assert list(got) == list(state)
    assert all(torch.equal(got[k], shadow[k]) for k in shadow)  # the EMA weights, as ncsn_runner.py L225-229
    assert torch.equal(got["sigmas"], state["sigmas"])
    score = make_denoiser("ncsn", loaded, schedule)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = loaded((x + 1) / 2, torch.full((2,), NUM_CLASSES - 1)) / 2
        got_score = score(x, 2 * SIGMA_END)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got_score, want, rtol=0, atol=0)
