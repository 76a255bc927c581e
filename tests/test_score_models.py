"""The ve (NCSN / score-SDE) and edm families in the pipeline: config, training losses, views, priors, PF-ODE NLL."""

import json
import math
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from bench.checkpoints.model_file import save_model
from bench.cli import main
from bench.core.denoiser import ScoreAsSigmaDenoiser
from bench.core.noise import NoiseSource
from bench.core.sigma_grids import ve_sigma_grid
from bench.data.digits import levels_to_unit, load_digits_split
from bench.data.gaussian_mixture import GaussianMixture
from bench.families import build_schedule, make_denoiser, training_loss
from bench.methods.edm import EDMNetworkDenoiser, EDMSchedule
from bench.methods.ncsn import VENetworkScore, VESchedule
from bench.nets.factory import build_network
from bench.runtime.speed import SpeedOptions, apply_speed_options, unwrap_network
from bench.steps.sample import generate, sampler_view
from bench.steps.train import TrainConfig, train_eps_model

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "bench/schema/results.schema.yaml").read_text())
SHAPE = (1, 8, 8)
VE = {"name": "ve", "sigma_min": 0.01, "sigma_max": 10.0}
EDM = {"name": "edm", "sigma_min": 0.002, "sigma_max": 10.0, "sigma_data": 0.75}
PC = {"fn": "pc", "grid": "ve", "options": {"n_steps_each": 1}}
LANGEVIN = {"fn": "langevin", "grid": "ve", "options": {"n_steps_each": 2, "eps": 1e-3, "denoise": True}}
HEUN = {"fn": "edm_heun", "grid": "edm"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    torch.set_num_threads(1)


def mlp(seed: int = 0, head_std: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network({"type": "mlp", "width": 32, "depth": 1, "emb_dim": 16}, channels=1, image_size=8)
    if head_std:
        for p in net.out.parameters():
            torch.nn.init.normal_(p, std=head_std)  # a zero head would make every view trivially equal
    return net


def digits(n: int = 256) -> torch.Tensor:
    split = load_digits_split("train")
    return torch.from_numpy(levels_to_unit(split.images[:n], split.max_level))


@pytest.mark.parametrize(
    "model_cfg",
    [
        {"family": "ve", "schedule": VE},
        {"family": "ve", "schedule": VE, "loss": {"name": "ssm"}},
        {"family": "edm", "schedule": EDM, "loss": {"name": "edm", "P_mean": -1.2, "P_std": 1.2}},
    ],
    ids=["dsm", "ssm", "edm"],
)
def test_each_new_loss_decreases_over_a_few_steps(model_cfg):
    data = digits()
    loss_fn = training_loss(model_cfg, 16)
    schedule = build_schedule(model_cfg["schedule"])

    def held_out(net):  # the same sigmas, noise and images before and after training
        with torch.no_grad():
            return loss_fn(net, schedule, data, torch.Generator().manual_seed(123)).item()

    net = mlp()
    before = held_out(net)
    cfg = TrainConfig(100, 64, 3e-3, 0.0, seed=0)
    trained, _ = train_eps_model(net, data, schedule, cfg, progress=False, loss_fn=loss_fn)
    # measured: DSM 32.2 -> 27.3, EDM 1.08 -> 0.85; both losses keep a large irreducible part
    assert held_out(trained) < 0.9 * before


def test_families_get_their_losses_by_default():
    from bench.methods.ncsn import dsm_loss

    assert training_loss({"family": "ve", "schedule": VE}, 16) is dsm_loss
    assert training_loss({"family": "edm", "schedule": EDM}, 16).func.__name__ == "edm_family_loss"


def test_ve_sigma_view_is_tweedie_on_an_exact_gaussian_score():
    """D(x; sigma) = x + sigma^2 score = m + C (C + sigma^2 I)^-1 (x - m) for Gaussian data N(m, C)."""
    g = GaussianMixture(
        torch.ones(1, dtype=torch.float64),
        torch.tensor([[0.3, -0.2]], dtype=torch.float64),
        torch.tensor([[[0.06, 0.03], [0.03, 0.05]]], dtype=torch.float64),
    )

    class Exact:
        sigmas = torch.tensor([0.1, 5.0], dtype=torch.float64)
        nfe = 0

        def __call__(self, x, sigma):
            return g.noised(1.0, torch.as_tensor(sigma) ** 2).score(x)

    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    view = ScoreAsSigmaDenoiser(Exact(), 0.1, 5.0)
    for sigma in (0.1, 0.7, 5.0):
        gain = g.covs[0] @ torch.linalg.inv(g.covs[0] + sigma**2 * torch.eye(2, dtype=torch.float64))
        torch.testing.assert_close(view(x, sigma), g.means[0] + (x - g.means[0]) @ gain.T)


def test_level_samplers_see_k_geometric_levels_of_the_model_range_and_count_nfe():
    score = VENetworkScore(mlp(head_std=0.05).eval(), VESchedule(0.01, 10.0))
    view, grid = sampler_view(score, PC, 7)
    torch.testing.assert_close(view.sigmas, ve_sigma_grid(7, 0.01, 10.0)[:-1].flip(0))
    assert grid.tolist() == list(range(7))
    with torch.inference_mode():
        generate(score, PC, 7, torch.arange(3), SHAPE, batch_size=3)
        assert score.nfe == 2 * 7  # predictor + one corrector step per level, counted on the family's adapter
        generate(score, HEUN, 4, torch.arange(3), SHAPE, batch_size=3)
    assert score.nfe == 14 + 2 * 4 - 1


@pytest.mark.parametrize("family,sampler", [("ve", PC), ("ve", LANGEVIN), ("ve", HEUN), ("edm", HEUN)])
def test_prior_and_samples_do_not_depend_on_the_batch_split(family, sampler):
    schedule = build_schedule(VE if family == "ve" else EDM)
    den = make_denoiser(family, mlp(head_std=0.05).eval(), schedule, SHAPE)
    view, grid = sampler_view(den, sampler, 5)
    seeds = torch.arange(10, 16)
    whole = view.prior(NoiseSource(seeds, SHAPE, torch.float64, "cpu"), grid)
    parts = torch.cat([view.prior(NoiseSource(s, SHAPE, torch.float64, "cpu"), grid) for s in (seeds[:2], seeds[2:])])
    assert torch.equal(whole, parts)
    # x_T ~ N(0, s^2 I) with s the largest level / first sigma of the grid: s z with the seed's own latent
    top = view.sigmas[-1] if hasattr(view, "sigmas") else grid[0]
    assert float(top) == pytest.approx(10.0)
    torch.testing.assert_close(whole, top * NoiseSource(seeds, SHAPE, torch.float64, "cpu").latent())
    with torch.inference_mode():
        a, _ = generate(den, sampler, 5, seeds, SHAPE, batch_size=6)
        b, _ = generate(den, sampler, 5, seeds, SHAPE, batch_size=4)
    # float32 matmuls may round differently for another batch size; the noise itself is identical
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_edm_adapter_is_the_preconditioned_mlp():
    """D = c_skip x + c_out F(c_in x, ln(sigma)/4) with EDM Table 1's coefficients, sigma_data from the schedule."""
    net = mlp(head_std=0.05).eval()
    den = EDMNetworkDenoiser(EDMSchedule(0.002, 10.0, 0.75).precond(net, SHAPE))
    x = torch.randn(4, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma, sd = 0.8, 0.75
    F = net((x / math.sqrt(sigma**2 + sd**2)).float(), torch.full((4,), math.log(sigma) / 4)).double()
    expected = sd**2 / (sigma**2 + sd**2) * x + sigma * sd / math.sqrt(sigma**2 + sd**2) * F
    with torch.no_grad():
        torch.testing.assert_close(den(x, sigma), expected, rtol=1e-5, atol=1e-6)
    assert (den.sigma_min, den.sigma_max, den.nfe) == (0.002, 10.0, 1)


@pytest.mark.parametrize("family", ["ve", "edm"])
def test_ode_nll_step_writes_a_record_that_matches_the_schema(family, tmp_path):
    model_cfg = {
        "dataset": "digits",
        "family": family,
        "network": {"type": "mlp", "width": 32, "depth": 1, "emb_dim": 16},
        "schedule": VE if family == "ve" else EDM,
        "train": {"steps": 1, "batch_size": 8, "lr": 1e-3, "ema": 0.9, "seed": 0},
    }
    path = save_model(tmp_path / "m.pt", mlp(head_std=0.05), model_cfg, SHAPE, 16, {})
    spec = {"dataset": {"kind": "digits"}, "split": "test", "n_images": 6, "batch_size": 4, "seed": 0,
            "rtol": 1e-2, "atol": 1e-2, "dequantization": "uniform"}
    out = tmp_path / "ode_nll.json"
    main(["ode-nll", "--spec", json.dumps(spec), "--model", str(path), "--out", str(out)])
    record = json.loads(out.read_text())
    jsonschema.validate(record, {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": "#/$defs/ode_nll"})
    assert record["n_images"] == 6 and len(record["nfe_per_batch"]) == 2  # batches of 4 and 2
    assert record["nfe"] == round((4 * record["nfe_per_batch"][0] + 2 * record["nfe_per_batch"][1]) / 6)
    assert record["offset_bits"] == pytest.approx(math.log2(17 / 2))
    assert (record["sigma_min"], record["sigma_max"]) == (model_cfg["schedule"]["sigma_min"], 10.0)
    assert record["dequantization"] == "uniform" and math.isfinite(record["bpd"])


@pytest.mark.parametrize("family,sampler,official", [("ve", PC, False), ("edm", HEUN, False), ("edm", HEUN, True)])
def test_families_sample_the_same_through_speed_option_wrappers(family, sampler, official):
    # The adapters read the network's attributes (NCSN's levels, EDM's sigma range) and EDM's tells an
    # official preconditioned network from a bare backbone: through the wrappers, as without them.
    schedule = build_schedule(VE if family == "ve" else EDM)
    net = mlp(head_std=0.05).eval()
    if official:  # an EDMPrecond, as a converted official pickle gives
        net = schedule.precond(net, SHAPE)
    # channels_last on 1-channel images keeps every stride that matters: the same values, bit for bit.
    wrapped, record = apply_speed_options(net, SpeedOptions(channels_last=True, autocast="bf16"))
    assert record["channels_last"]["enabled"] and record["autocast"]["enabled"]
    assert unwrap_network(wrapped) is net
    plain, _ = apply_speed_options(net, SpeedOptions())
    seeds = torch.arange(5)
    with torch.inference_mode():
        want, _ = generate(make_denoiser(family, plain, schedule, SHAPE), sampler, 4, seeds, SHAPE, batch_size=5)
        autocast_only, _ = apply_speed_options(net, SpeedOptions(autocast="bf16"))
        bf16, _ = generate(make_denoiser(family, autocast_only, schedule, SHAPE), sampler, 4, seeds, SHAPE, batch_size=5)
        got, _ = generate(make_denoiser(family, wrapped, schedule, SHAPE), sampler, 4, seeds, SHAPE, batch_size=5)
    assert torch.equal(got, bf16)
    # Preconditioning twice (or not at all) would move the samples by far more than bf16 matmuls do.
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))


def test_speed_wrappers_answer_for_the_wrapped_networks_attributes():
    net = mlp()
    wrapped, _ = apply_speed_options(net, SpeedOptions(channels_last=True, autocast="bf16"))
    assert wrapped.emb_dim == net.emb_dim and wrapped.out is net.out
    assert sum(p.numel() for p in wrapped.parameters()) == sum(p.numel() for p in net.parameters())
    with pytest.raises(AttributeError, match="no_such_attribute"):
        _ = wrapped.no_such_attribute
    assert unwrap_network(torch.compile(wrapped)) is net  # compiles lazily: building it costs nothing
