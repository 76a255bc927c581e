"""The family specs dispatch to the same schedules, losses and denoisers as the if chains they replaced."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from bench.core.denoiser import DiscreteEpsDenoiser
from bench.core.schedules import DiscreteSchedule
from bench.families import (
    FAMILY_SPECS,
    build_schedule,
    compatible_samplers,
    continuous_families,
    get_family,
    make_denoiser,
    training_loss,
)
from bench.families.ddgm import DDGMDenoiser, ddgm_loss, mixture_loss
from bench.families.ddpm import simple_loss
from bench.methods.edm import P_MEAN, P_STD, EDMNetworkDenoiser, EDMSchedule, edm_family_loss
from bench.methods.iddpm import HYBRID_LAMBDA, LearnedVarianceDenoiser, hybrid_loss, vlb_loss
from bench.methods.ncsn import VENetworkScore, VESchedule, dsm_loss, ssm_loss
from bench.nets.factory import build_network, shape_keywords
from bench.nets.mlp import MLPDenoiser

GAMMA = {"kind": "gamma", "k_t": "code"}


def model(family: str, loss: dict | None = None, noise: dict | None = None) -> dict:
    cfg = {"family": family}
    if loss is not None:
        cfg["loss"] = loss
    if noise is not None:
        cfg["noise"] = noise
    return cfg


def same_call(built, fn, **keywords) -> bool:
    if not keywords:
        return built is fn
    return isinstance(built, partial) and built.func is fn and built.keywords == keywords and not built.args


@pytest.mark.parametrize(
    "cfg,fn,keywords",
    [
        (model("ddpm"), simple_loss, {}),
        (model("iddpm", {"name": "simple"}), simple_loss, {}),
        (model("ddpm", {"name": "hybrid"}), hybrid_loss, {"max_level": 255, "lam": HYBRID_LAMBDA}),
        (model("iddpm", {"name": "hybrid", "lambda": 0.01}), hybrid_loss, {"max_level": 255, "lam": 0.01}),
        (model("iddpm", {"name": "vlb"}), vlb_loss, {"max_level": 255}),
        (model("ve"), dsm_loss, {}),
        (model("ve", {"name": "ssm"}), ssm_loss, {}),
        (model("edm"), edm_family_loss, {"P_mean": P_MEAN, "P_std": P_STD}),
        (model("edm", {"name": "edm", "P_mean": -1.0}), edm_family_loss, {"P_mean": -1.0, "P_std": P_STD}),
        (model("ddgm", noise=GAMMA), ddgm_loss, {"theta_0": 0.001, "k_convention": "code"}),
        (
            model("ddgm", {"name": "l1"}, {"kind": "gaussian_mixture", "phi2": 0.5}),
            mixture_loss,
            {"phi2": 0.5, "p": 0.5, "phi2_end": None},
        ),
    ],
    ids=lambda v: f"{v['family']}-{v.get('loss', {}).get('name', 'default')}" if isinstance(v, dict) and "family" in v
    else "",
)
def test_each_loss_builds_the_function_and_keywords_of_its_family(cfg, fn, keywords):
    assert same_call(training_loss(cfg, 255), fn, **keywords)


def test_a_loss_of_another_family_is_refused():
    with pytest.raises(ValueError, match=r"loss 'l1' does not apply to family 'ddpm'; allowed: \['simple', 'hybrid'\]"):
        training_loss(model("ddpm", {"name": "l1"}), 255)


def test_schedules_are_built_from_their_config_entries():
    linear = build_schedule({"name": "linear", "T": 100})
    assert torch.equal(linear.betas, DiscreteSchedule.named("linear", 100).betas)
    assert torch.equal(build_schedule({"name": "cosine", "T": 50}).betas, DiscreteSchedule.named("cosine", 50).betas)
    assert build_schedule({"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}) == VESchedule(0.01, 50.0)
    assert build_schedule({"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0}) == EDMSchedule(0.002, 80.0, 0.5)
    assert build_schedule({"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.7}).sigma_data == 0.7
    with pytest.raises(ValueError, match=r"schedule 'quadratic' is not one of \['cosine', 'edm', 'linear', 'subvp_sde', 've', 'vp_sde'\]"):
        build_schedule({"name": "quadratic", "T": 10})


def test_each_family_adapts_its_network_with_its_denoiser():
    net = MLPDenoiser(channels=1, image_size=4, width=8, depth=1, emb_dim=4)
    discrete = DiscreteSchedule.named("linear", 100)
    assert type(make_denoiser("ddpm", net, discrete)) is DiscreteEpsDenoiser
    assert type(make_denoiser("iddpm", net, discrete)) is LearnedVarianceDenoiser
    ddgm = make_denoiser("ddgm", net, discrete, noise=GAMMA)
    assert type(ddgm) is DDGMDenoiser and ddgm.noise_law.kind == "gamma"
    assert type(make_denoiser("ve", net, VESchedule(0.01, 10.0))) is VENetworkScore
    edm = make_denoiser("edm", net, EDMSchedule(0.002, 80.0), (1, 4, 4))
    assert type(edm) is EDMNetworkDenoiser and edm.sigma_max == 80.0
    with pytest.raises(ValueError, match="the edm family's denoiser needs the data shape"):
        make_denoiser("edm", net, EDMSchedule(0.002, 80.0))


def test_a_family_takes_the_samplers_of_the_spaces_it_offers():
    # The family <-> sampler table as bench/schema/compatibility.yaml had it, with langevin on edm: the
    # VE view of an EDM denoiser is a score on any levels.
    edm_family = ["edm_euler", "edm_general", "edm_heun", "edm_stochastic"]
    discrete = ["analytic_ddim", "analytic_ddpm", "ddim", "ddpm"]
    assert {name: compatible_samplers(name) for name in FAMILY_SPECS} == {
        "ddpm": sorted(discrete + edm_family),
        "iddpm": sorted([*discrete, "iddpm", *edm_family]),
        "ve": sorted([*edm_family, "langevin", "pc"]),
        "edm": sorted([*edm_family, "langevin", "pc", "vp_euler_maruyama", "vp_probability_flow"]),
        "ddgm": ["ddgm", "ddgm_ddim"],
        "score_sde_ve": sorted([*edm_family, "langevin", "pc"]),
        "score_sde_vp": sorted([*edm_family, "langevin", "pc", "vp_euler_maruyama", "vp_probability_flow"]),
        "score_sde_subvp": sorted([*edm_family, "langevin", "pc", "vp_euler_maruyama", "vp_probability_flow"]),
        "score_sde_vp_discrete": ["vp_ancestral"],
        # NCSN's networks know their own table's levels only.
        "ncsn": ["langevin", "pc"],
    }
    assert continuous_families() == ["edm", "score_sde_subvp", "score_sde_ve", "score_sde_vp", "ve"]
    with pytest.raises(ValueError, match=r"model family 'vp' is not one of \['ddgm', 'ddpm', 'edm', 'iddpm', 'ncsn', "
                                         r"'score_sde_subvp', 'score_sde_ve', 'score_sde_vp', "
                                         r"'score_sde_vp_discrete', 've'\]"):
        get_family("vp")


def test_the_factory_builds_a_network_with_the_data_shape_filled_in():
    assert shape_keywords("ddpm_unet", channels=3, image_size=32) == {"in_channels": 3, "out_ch": 3, "image_size": 32}
    assert shape_keywords("adm_unet", channels=3, image_size=32) == {"in_channels": 3}
    assert shape_keywords("edm_precond", channels=3, image_size=32) == {}
    for kind in ("ncsnv2", "ncsnv1"):
        assert shape_keywords(kind, channels=3, image_size=32) == {"channels": 3, "image_size": 32}
    for kind in ("score_sde_ncsnpp", "score_sde_ddpm"):
        assert shape_keywords(kind, channels=1, image_size=28) == {"num_channels": 1, "image_size": 28}
    torch.manual_seed(0)
    built = build_network({"type": "mlp", "width": 8, "depth": 1, "emb_dim": 4}, channels=3, image_size=4)
    torch.manual_seed(0)
    direct = MLPDenoiser(channels=3, image_size=4, width=8, depth=1, emb_dim=4)
    assert built.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match=r"network type 'vit' is not one of \['mlp', 'ddpm_unet', 'adm_unet', "
                                         r"'ncsnv2', 'ncsnv1', 'edm_precond', 'edm_adm_backbone', 'score_sde_ncsnpp', "
                                         r"'score_sde_ddpm'\]"):
        build_network({"type": "vit"}, channels=3, image_size=4)
