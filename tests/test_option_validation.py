"""Every option of a sampler, sigma grid, network and loss is checked against what its function takes, before any job."""

import copy
import inspect
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import yaml
from dag import snakemake

from bench.config import ConfigError, read_yaml, sampler_inputs, validate_config
from bench.core.options import OptionError, Range, check_options, option_parameters, value_error
from bench.core.sigma_grids import SIGMA_GRID_FUNCTIONS
from bench.core.time_grids import GRID_OPTION_FUNCTIONS
from bench.core.vp_schedule import VPSDE
from bench.nets.factory import NETWORK_TYPES, network_constructor, shape_keywords
from bench.samplers import SAMPLERS

ROOT = Path(__file__).resolve().parents[1]
DDGM_SAMPLERS = ("ddgm_beta", "ddgm_beta_tilde", "ddgm_ddim_eta0")
DELETE = object()
DDIM_OPTIONS = ("samplers", "ddim_eta0", "options")


@pytest.fixture
def cfg():
    return read_yaml(ROOT / "workflows/config/default.yaml")


def changed(cfg, path, value):
    c = copy.deepcopy(cfg)
    node = c
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return c


CASES = [
    # A sampler option the sampler does not take.
    ((*DDIM_OPTIONS, "etaa"), 0, r"'samplers\.ddim_eta0\.options\.etaa': unknown option 'etaa' of sampler function "
     r"'ddim'; allowed: \['clip_x0', 'eps_from_clipped_x0', 'eta'\]$"),
    ((*DDIM_OPTIONS, "theta_0"), 0.001, r"'samplers\.ddim_eta0\.options\.theta_0': unknown option 'theta_0' of sampler "
     r"function 'ddim'; allowed: \['clip_x0', 'eps_from_clipped_x0', 'eta'\]$"),
    (("samplers", "ddgm_ddim_eta0", "options", "theta_0"), 0.001, r"'samplers\.ddgm_ddim_eta0\.options\.theta_0': "
     r"unknown option 'theta_0' of sampler function 'ddgm_ddim'; allowed: \['clip_x0', 'eta'\]$"),
    # The DAG passes gamma from `inputs`: it is no option.
    (("samplers", "analytic_ddpm", "options", "gamma"), 1.0, r"'samplers\.analytic_ddpm\.options\.gamma': unknown "
     r"option 'gamma' of sampler function 'analytic_ddpm'; allowed: \['clip', 'clip_x0', 'pixel_quantum', "
     r"'sigma2_clip_pixel'\]$"),
    # Wrong type.
    ((*DDIM_OPTIONS, "eta"), "zero", r"'samplers\.ddim_eta0\.options\.eta': value 'zero' is not of type float$"),
    ((*DDIM_OPTIONS, "eta"), True, r"'samplers\.ddim_eta0\.options\.eta': value True is not of type float$"),
    ((*DDIM_OPTIONS, "clip_x0"), "yes", r"'samplers\.ddim_eta0\.options\.clip_x0': value 'yes' is not of type bool$"),
    (("samplers", "langevin", "options", "n_steps_each"), 2.5,
     r"'samplers\.langevin\.options\.n_steps_each': value 2\.5 is not of type int$"),
    (("samplers", "analytic_ddpm", "options", "sigma2_clip_pixel"), "one",
     r"'samplers\.analytic_ddpm\.options\.sigma2_clip_pixel': value 'one' is not of type float or None$"),
    # Out of range.
    ((*DDIM_OPTIONS, "eta"), -1.0, r"'samplers\.ddim_eta0\.options\.eta': value -1\.0 must be >= 0$"),
    (("samplers", "edm_stochastic", "options", "S_churn"), -10.0,
     r"'samplers\.edm_stochastic\.options\.S_churn': value -10\.0 must be >= 0$"),
    (("samplers", "langevin", "options", "n_steps_each"), 0,
     r"'samplers\.langevin\.options\.n_steps_each': value 0 must be >= 1$"),
    (("samplers", "pc", "options", "snr"), 0.0, r"'samplers\.pc\.options\.snr': value 0\.0 must be > 0$"),
    (("samplers", "analytic_ddpm", "options", "sigma2_clip_pixel"), -1,
     r"'samplers\.analytic_ddpm\.options\.sigma2_clip_pixel': value -1 must be > 0$"),
    # Off the list.
    (("samplers", "ddpm_beta", "options", "variance"), "beta_tlide", r"'samplers\.ddpm_beta\.options\.variance': value "
     r"'beta_tlide' is not allowed; allowed: \['beta', 'beta_tilde'\]$"),
    (("samplers", "ddgm_alg4", "options", "variance"), "beta_tlide", r"'samplers\.ddgm_alg4\.options\.variance': value "
     r"'beta_tlide' is not allowed; allowed: \['beta', 'beta_tilde'\]$"),
    (("samplers", "pc", "options", "corrector"), "annealed",
     r"'samplers\.pc\.options\.corrector': value 'annealed' is not allowed; allowed: \['langevin', 'ald'\]$"),
    # Inputs the function does not take, or lacks.
    (("samplers", "ddim_eta0", "inputs"), {"gamma": "moments"},
     r"'samplers\.ddim_eta0\.inputs\.gamma': sampler function 'ddim' takes no input 'gamma'; allowed: \[\]$"),
    (("samplers", "analytic_ddim", "inputs"), DELETE,
     r"'samplers\.analytic_ddim\.inputs': sampler function 'analytic_ddim' needs input 'gamma'; give inputs: "
     r"\{gamma: moments\}$"),
    # Sigma grids' grid_options.
    (("samplers", "edm_heun", "grid_options"), {"rhoo": 7}, r"'samplers\.edm_heun\.grid_options\.rhoo': unknown option "
     r"'rhoo' of sigma grid 'edm'; allowed: \['rho', 'sigma_max', 'sigma_min'\]$"),
    (("samplers", "edm_heun", "grid_options"), {"rho": -7},
     r"'samplers\.edm_heun\.grid_options\.rho': value -7 must be > 0$"),
    (("samplers", "edm_heun", "grid_options"), {"sigma_max": "80"},
     r"'samplers\.edm_heun\.grid_options\.sigma_max': value '80' is not of type float$"),
    # Time grids' and the VP SDE grid's grid_options.
    (("samplers", "iddpm_learned", "grid_options"), {"section_counts": 10}, r"'samplers\.iddpm_learned\.grid_options\."
     r"section_counts': value 10 is not of type str or Sequence\[int\] or None$"),
    (("samplers", "ddim_eta0", "grid_options"), {"rho": 7}, r"'samplers\.ddim_eta0\.grid_options\.rho': unknown option "
     r"'rho' of time grid 'uniform'; allowed: \[\]$"),
    (("samplers", "ddim_eta0"), {"fn": "vp_euler_maruyama", "grid": "vp_sde", "grid_options": {"beta_min": "0.1"}},
     r"'samplers\.ddim_eta0\.grid_options\.beta_min': value '0\.1' is not of type float$"),
    (("samplers", "ddim_eta0"), {"fn": "vp_euler_maruyama", "grid": "vp_sde", "grid_options": {"eps": 1.0}},
     r"'samplers\.ddim_eta0\.grid_options\.eps': value 1\.0 must be < 1$"),
    # Network options.
    (("models", "mlp", "network", "widht"), 64, r"'models\.mlp\.network\.widht': unknown option 'widht' of network "
     r"type 'mlp'; allowed: \['depth', 'emb_dim', 'out_channels', 'width'\]$"),
    (("models", "mlp", "network", "channels"), 3, r"'models\.mlp\.network\.channels': unknown option 'channels' of "
     r"network type 'mlp'; allowed: \['depth', 'emb_dim', 'out_channels', 'width'\]$"),
    (("models", "mlp", "network", "width"), "wide",
     r"'models\.mlp\.network\.width': value 'wide' is not of type int$"),
    (("models", "mlp", "network", "type"), "unet", r"'models\.mlp\.network\.type': value 'unet' is not allowed; "
     r"allowed: \['mlp', 'ddpm_unet', 'adm_unet', 'ncsnv2', 'ncsnv1', 'edm_precond', 'edm_adm_backbone', 'score_sde_ncsnpp', "
     r"'score_sde_ddpm'\]$"),
    (("models", "mlp", "network"), {"type": "adm_unet", "model_channels": 64, "out_channels": 1, "num_res_blocks": 1},
     r"'models\.mlp\.network': network type 'adm_unet' needs option 'attention_resolutions'$"),
    (("models", "mlp", "network"), {"type": "ddpm_unet", "ch_mult": [1, "2"]},
     r"'models\.mlp\.network\.ch_mult': value \[1, '2'\] is not of type Sequence\[int\] \(item '2'\)$"),
    (("models", "mlp", "network"), {"type": "edm_precond", "sigma_data": 0.5}, r"'models\.mlp\.network\.sigma_data': "
     r"network type 'edm_precond' takes its constructor from the checkpoint's pickle; allowed: \[\]$"),
    # Loss options belong to their loss.
    (("models", "iddpm", "loss"), {"name": "hybrid", "P_mean": -1.2}, r"'models\.iddpm\.loss': Additional properties "
     r"are not allowed \('P_mean' was unexpected\); allowed keys: \['lambda', 'name'\]$"),
    (("models", "edm", "loss"), {"name": "edm", "lambda": 0.001}, r"'models\.edm\.loss': Additional properties are not "
     r"allowed \('lambda' was unexpected\); allowed keys: \['P_mean', 'P_std', 'name'\]$"),
    (("models", "ncsn", "loss"), {"name": "dsm", "lambda": 0.001}, r"'models\.ncsn\.loss': Additional properties are "
     r"not allowed \('lambda' was unexpected\); allowed keys: \['name'\]$"),
]


@pytest.mark.parametrize("path,value,message", CASES, ids=[m.split("'")[1].replace("\\", "") for _, _, m in CASES])
def test_bad_option_is_refused_with_key_value_and_allowed(cfg, path, value, message):
    with pytest.raises(ConfigError, match=r"^config key " + message):
        validate_config(changed(cfg, path, value), root=ROOT)


def test_shipped_configs_validate():
    validate_config(read_yaml(ROOT / "workflows/config/default.yaml"), root=ROOT)
    validate_config(read_yaml(ROOT / "workflows/config/paper.yaml"), root=ROOT, check_paths=False)


def test_paper_ddgm_entries_with_theta_0_are_refused():
    """paper.yaml's DDGM samplers once passed theta_0, which ddgm and ddgm_ddim do not take (a TypeError after training)."""
    cfg = read_yaml(ROOT / "workflows/config/paper.yaml")
    for name in DDGM_SAMPLERS:
        bad = copy.deepcopy(cfg)
        bad["samplers"][name]["options"]["theta_0"] = 0.001
        fn = cfg["samplers"][name]["fn"]
        with pytest.raises(ConfigError, match=rf"^config key 'samplers\.{name}\.options\.theta_0': unknown option "
                           rf"'theta_0' of sampler function '{fn}'; allowed: "):
            validate_config(bad, root=ROOT, check_paths=False)


def test_snakemake_dry_run_refuses_an_unknown_sampler_option_before_any_job(cfg, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(changed(cfg, (*DDIM_OPTIONS, "etaa"), 0), allow_unicode=True))
    r = snakemake("-n", "--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode != 0
    assert ("config key 'samplers.ddim_eta0.options.etaa': unknown option 'etaa' of sampler function 'ddim'; "
            "allowed: ['clip_x0', 'eps_from_clipped_x0', 'eta']") in r.stdout + r.stderr
    assert not (tmp_path / "results").exists()


def _option_functions():
    """(what, function, the parameters its caller passes itself, keyword-only) of each function a config sets options of."""
    for name, fn in SAMPLERS.items():
        yield pytest.param(fn, ("noise", *sampler_inputs()), True, id=f"sampler {name}")
    for name, fn in SIGMA_GRID_FUNCTIONS.items():
        yield pytest.param(fn, ("N", "denoiser"), False, id=f"sigma grid {name}")
    for name, fn in GRID_OPTION_FUNCTIONS.items():
        yield pytest.param(fn, ("T", "K"), False, id=f"time grid {name}")
    yield pytest.param(VPSDE, (), False, id="grid vp_sde (SDE)")
    yield pytest.param(VPSDE.time_grid, ("self", "K"), False, id="grid vp_sde (times)")
    for kind in NETWORK_TYPES:
        if not NETWORK_TYPES[kind].from_pickle:
            shape = tuple(shape_keywords(kind, channels=1, image_size=1))
            yield pytest.param(network_constructor(kind), shape, False, id=f"network {kind}")


@pytest.mark.parametrize("fn,exclude,keyword_only", list(_option_functions()))
def test_every_option_is_derivable_and_its_default_fits_its_annotation(request, fn, exclude, keyword_only):
    what = request.node.callspec.id
    params = inspect.signature(fn).parameters
    options = option_parameters(fn, exclude=exclude, keyword_only=keyword_only)
    for name, annotation in options.items():
        assert annotation is not Any, f"{what}: option {name!r} has no annotation"
        assert annotation is not str, f"{what}: option {name!r} is a free string: list its values in a Literal"
        default = params[name].default
        assert default is not inspect.Parameter.empty or what.startswith("network"), f"{what}: {name!r} has no default"
        if default is not inspect.Parameter.empty:
            assert value_error(default, annotation) is None, f"{what}: default {name}={default!r} breaks {annotation}"


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_its_options_after_the_protocol(name):
    """sample(denoiser, x_T, grid, *, noise, **options): an option before the * would be invisible to validation."""
    params = list(inspect.signature(SAMPLERS[name]).parameters.values())
    assert [p.kind for p in params[:3]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * 3
    assert params[3].name == "noise" and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[3:])


def test_a_function_with_keyword_catch_all_has_no_derivable_options():
    def sample(denoiser, x_T, grid, *, noise, eta: float = 0.0, **options):
        return x_T

    with pytest.raises(TypeError, match=r"sample takes \*options: its options cannot be derived from its signature"):
        option_parameters(sample)


@pytest.mark.parametrize(
    "annotation,value,why",
    [
        (Annotated[float, Range(ge=0)], 0.0, None),
        (Annotated[float, Range(ge=0)], -0.5, "must be >= 0"),
        (Annotated[float, Range(gt=0, lt=1)], 1, "must be < 1"),
        (Annotated[int, Range(le=3)], 4, "must be <= 3"),
        (Annotated[float, Range(gt=0)] | None, None, None),
        (Annotated[float, Range(gt=0)] | None, 0, "must be > 0"),
        (int, 1.0, "is not of type int"),
        (int, False, "is not of type int"),
        (float, 2, None),
        (Literal["a", "b"], "c", "is not allowed; allowed: ['a', 'b']"),
        (Literal[1, 2], True, "is not allowed; allowed: [1, 2]"),
    ],
)
def test_value_error_reads_the_annotation(annotation, value, why):
    assert value_error(value, annotation) == why


def test_option_error_names_the_option():
    def grid(N, rho: float = 7.0):
        return N

    with pytest.raises(OptionError) as err:
        check_options(grid, {"rho": "7"}, owner="grid", exclude=("N",))
    assert err.value.option == "rho" and re.fullmatch(r"value '7' is not of type float", str(err.value))
