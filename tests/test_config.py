"""A configuration is rejected before any job, with the key, the value and what is allowed."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from bench.config import (
    ConfigError,
    cells,
    load_config,
    read_yaml,
    sampling_speed,
    shard_ranges,
    validate_config,
)
from bench.config.schema import config_schema
from bench.runtime.speed import AUTOCAST_DTYPES, COMPILE_MODES, SpeedOptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return read_yaml(ROOT / "workflows/config/default.yaml")


def test_default_config_is_valid(cfg):
    validate_config(cfg, root=ROOT)
    # DDPM model: five samplers and its two OT samplers; iDDPM: two; EDM's three at four K; two DDGM models: two
    # samplers each; VE model: PC at five K, Langevin and EDM Heun at four; EDM-trained model: three samplers at four K
    assert len(cells(cfg)) == 5 * 5 + 2 * 5 + 2 * 5 + 3 * 4 + 2 * 2 * 5 + 5 + 2 * 4 + 3 * 4
    assert shard_ranges(cfg) == [(0, 2000)]
    assert shard_ranges(mutate(cfg, ("sampling", "shard_size"), 700)) == [(0, 700), (700, 1400), (1400, 2000)]


def mutate(cfg, path, value):
    c = copy.deepcopy(cfg)
    node = c
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return c


CASES = [
    (("experiments", 0, "samplers", 0), "ddpm_fast", r"experiments\[0\]\.samplers\[0\]': unknown sampler 'ddpm_fast'; defined: \['analytic_ddim', 'analytic_ddim_ot', 'analytic_ddpm', 'analytic_ddpm_ot', 'ddgm_alg4', 'ddgm_ddim_eta0', 'ddim_eta0', 'ddpm_beta', 'ddpm_beta_tilde', 'edm_euler', 'edm_heun', 'edm_stochastic', 'iddpm_ddim', 'iddpm_learned', 'langevin', 'pc'\]"),
    (("models", "mlp", "dataset"), "cifar11", r"models\.mlp\.dataset': unknown dataset 'cifar11'; defined: \['digits'\]"),
    (("experiments", 0, "model"), "unet", r"experiments\[0\]\.model': unknown model 'unet'; defined: \['ddgm', 'ddgm_gmm', 'edm', 'iddpm', 'mlp', 'ncsn'\]"),
    (("experiments", 0, "K"), [10, 1001], r"experiments\[0\]\.K\[1\]': value 1001 is not allowed; K must be an integer in \[1, T=1000\]"),
    (("experiments", 0, "K"), [0], r"experiments\.0\.K\.0|experiments\[0\]\.K\[0\]': value 0 must be >= 1"),
    (("experiments", 0, "K"), [2.5], r"experiments\[0\]\.K\[0\]': value 2.5 is not of type integer"),
    (("sampling", "n_samples"), -5, r"sampling\.n_samples': value -5 must be >= 1"),
    (("samplers", "ddim_eta0", "fn"), "plms", r"samplers\.ddim_eta0\.fn': value 'plms' is not allowed; allowed: \['analytic_ddim', 'analytic_ddpm', 'ddgm', 'ddgm_ddim', 'ddim', 'ddpm', 'edm_euler', 'edm_general', 'edm_heun', 'edm_stochastic', 'iddpm', 'langevin', 'pc', 'vp_ancestral', 'vp_euler_maruyama', 'vp_probability_flow'\]"),
    (("samplers", "ddim_eta0", "grid"), "log", r"samplers\.ddim_eta0\.grid': value 'log' is not allowed; allowed: \['uniform', 'quad', 'even', 'respace', 'optimal', 'edm', 'vp', 've', 'iddpm', 'vp_sde'\]"),
    (("datasets", "digits", "kind"), "mnist", r"datasets\.digits\.kind': value 'mnist' is not allowed; allowed: \['digits', 'cifar10', 'celeba64', 'imagenet64', 'lsun', 'ffhq64', 'afhqv2_64'\]"),
    (("models", "mlp", "family"), "gan", r"models\.mlp\.family': value 'gan' is not allowed; allowed: \['ddgm', 'ddpm', 'edm', 'iddpm', 'ncsn', 'score_sde_subvp', 'score_sde_ve', 'score_sde_vp', 'score_sde_vp_discrete', 've'\]"),
    (("models", "mlp", "schedule", "T"), 20, r"models\.mlp\.schedule\.T': linear schedule with T=20 has beta_T = 1 >= 1 \(betas rescaled by 1000/T\); T must be above 20"),
    (("models", "mlp", "schedule", "name"), "sigmoid", r"schedule\.name': value 'sigmoid' is not allowed; allowed: \['linear', 'cosine', 've', 'edm', 'vp_sde', 'subvp_sde'\]"),
    (("metrics", "fd_is", "extractor"), "inception", r"metrics\.fd_is\.extractor': unknown extractor 'inception'; defined: \['digits_cnn'\]"),
    (("metrics", "fid"), {"extractor": "digits_cnn"}, r"config key 'metrics': Additional properties are not allowed \('fid' was unexpected\); allowed keys: \['fd_is', 'nll', 'ode_nll', 'precision_recall', 'recon'\]"),
    (("samplers", "ddim_eta0", "fn"), "iddpm", r"experiments\[0\]\.samplers\[2\]': sampler 'ddim_eta0' \(iddpm\) does not apply to model 'mlp' of family 'ddpm'; that family allows \['analytic_ddim', 'analytic_ddpm', 'ddim', 'ddpm'"),
    (("datasets", "digits", "root"), "no/such/dir", r"datasets\.digits\.root': path 'no/such/dir' \(.*no/such/dir\) is not an existing directory; allowed: the directory that holds the 'digits' files"),
    (("sampling", "seeds"), 3, r"sampling': Additional properties are not allowed \('seeds' was unexpected\); allowed keys: \['batch_size', 'n_samples', 'seed', 'shard_size', 'speed', 'state_dtype'\]"),
    (("sampling", "state_dtype"), "float16", r"sampling\.state_dtype': value 'float16' is not allowed; allowed: \['float32', 'float64'\]"),
    (("sampling", "speed", "autocast"), "fp8", r"sampling\.speed\.autocast': value 'fp8' is not allowed; allowed: \[None, 'bf16', 'fp16'\]"),
    (("sampling", "speed", "compile_mode"), "fast", r"sampling\.speed\.compile_mode': value 'fast' is not allowed; allowed: \[None, 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'\]"),
    (("sampling", "speed", "tf32"), "yes", r"sampling\.speed\.tf32': value 'yes' is not of type boolean"),
    (("sampling", "speed", "fuse"), True, r"sampling\.speed': Additional properties are not allowed \('fuse' was unexpected\)"),
]


@pytest.mark.parametrize("path,value,message", CASES, ids=[str(c[1]) for c in CASES])
def test_bad_values_name_key_value_and_allowed(cfg, path, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(mutate(cfg, path, value), root=ROOT)


def test_table_referring_to_undefined_cell(cfg):
    bad = mutate(cfg, ("experiments", 0, "K"), [10, 25, 50, 100])
    with pytest.raises(ConfigError, match=r"embedded_fd_digits\.yaml: rows\[0\] .* at K=1000 refers to cell model='mlp', sampler='ddpm_beta', K=1000, which no experiment defines"):
        validate_config(bad, root=ROOT)


def test_a_sampler_applies_to_the_families_that_offer_its_space(cfg, monkeypatch):
    import dataclasses

    from bench.families import FAMILY_SPECS

    ddpm = FAMILY_SPECS["ddpm"]
    monkeypatch.setitem(FAMILY_SPECS, "ddpm", dataclasses.replace(ddpm, spaces=("sigma",)))
    with pytest.raises(ConfigError, match=r"does not apply to model 'mlp' of family 'ddpm'; that family allows "
                       r"\['edm_euler', 'edm_general', 'edm_heun', 'edm_stochastic'\]"):
        validate_config(cfg, root=ROOT)


@pytest.mark.parametrize(
    "model,sampler,fn,family,allowed",
    [
        ("ddgm", "ddpm_beta", "ddpm", "ddgm", r"\['ddgm', 'ddgm_ddim'\]"),
        ("ddgm_gmm", "ddim_eta0", "ddim", "ddgm", r"\['ddgm', 'ddgm_ddim'\]"),
        ("mlp", "ddgm_alg4", "ddgm", "ddpm", r"\['analytic_ddim', 'analytic_ddpm', 'ddim', 'ddpm'"),
    ],
)
def test_gaussian_and_ddgm_samplers_do_not_cross_families(cfg, model, sampler, fn, family, allowed):
    bad = copy.deepcopy(cfg)
    bad["experiments"].append({"model": model, "samplers": [sampler], "K": [10]})
    i = len(bad["experiments"]) - 1
    with pytest.raises(
        ConfigError,
        match=rf"experiments\[{i}\]\.samplers\[0\]': sampler '{sampler}' \({fn}\) does not apply to model '{model}' "
        rf"of family '{family}'; that family allows {allowed}",
    ):
        validate_config(bad, root=ROOT)


NOISE_CASES = [
    (("models", "ddgm", "noise"), None, r"models\.ddgm\.noise': missing; family 'ddgm' needs a noise law"),
    (("models", "mlp", "noise"), {"kind": "gamma"}, r"models\.mlp\.noise': only family 'ddgm' takes a noise law, not family 'ddpm'"),
    (("models", "ddgm", "loss"), {"name": "simple"}, r"models\.ddgm\.loss\.name': value 'simple' does not apply to family 'ddgm'; allowed: \['l1'\]"),
    (("models", "mlp", "loss"), {"name": "l1"}, r"models\.mlp\.loss\.name': value 'l1' does not apply to family 'ddpm'; allowed: \['simple', 'hybrid'\]"),
    (("models", "ddgm", "noise"), {"kind": "laplace"}, r"models\.ddgm\.noise\.kind': value 'laplace' is not allowed; allowed: \['gamma', 'gaussian_mixture'\]"),
    (("models", "ddgm", "noise"), {"kind": "gamma", "k_t": "alpha"}, r"noise\.k_t': value 'alpha' is not allowed; allowed: \['code', 'paper'\]"),
    (("models", "ddgm", "noise"), {"kind": "gamma", "phi2": 0.5}, r"models\.ddgm\.noise': DDGM noise of kind 'gamma' takes keys \['kind', 'k_t'\], not \['phi2'\]"),
    (("models", "ddgm_gmm", "noise"), {"kind": "gaussian_mixture"}, r"models\.ddgm_gmm\.noise': DDGM noise of kind 'gaussian_mixture' needs phi2"),
    (("models", "ddgm_gmm", "noise", "phi2"), 1.5, r"models\.ddgm_gmm\.noise\.phi2': value 1\.5 must be <= 1"),
    (("models", "ddgm_gmm", "noise", "phi2_end"), 0, r"models\.ddgm_gmm\.noise\.phi2_end': value 0 must be > 0"),
    (("models", "ddgm", "noise"), {"kind": "gamma", "phi2_end": 0.5}, r"models\.ddgm\.noise': DDGM noise of kind 'gamma' takes keys \['kind', 'k_t'\], not \['phi2_end'\]"),
]


@pytest.mark.parametrize("path,value,message", NOISE_CASES, ids=[c[2][:40] for c in NOISE_CASES])
def test_ddgm_noise_law_and_loss_are_checked(cfg, path, value, message):
    bad = mutate(cfg, path, value)
    if value is None:
        del bad["models"][path[1]][path[2]]
    with pytest.raises(ConfigError, match=message):
        validate_config(bad, root=ROOT)


IDDPM_TRAINING_CASES = [
    (("models", "mlp", "loss"), {"name": "vlb"}, r"models\.mlp\.loss\.name': value 'vlb' does not apply to family 'ddpm'; allowed: \['simple', 'hybrid'\]"),
    (("models", "iddpm", "loss"), {"name": "vlb", "lambda": 0.001}, r"models\.iddpm\.loss': Additional properties are not allowed \('lambda' was unexpected\)"),
    (("models", "iddpm", "train", "t_sampler"), "importance", r"models\.iddpm\.train\.t_sampler': value 'importance' is not allowed; allowed: \['uniform', 'loss_aware'\]"),
    (("models", "mlp", "train", "t_sampler"), "loss_aware", r"models\.mlp\.train\.t_sampler': 'loss_aware' weights each sample's loss, which the loss 'simple' does not; allowed with loss\.name in \['hybrid', 'vlb'\]"),
]


@pytest.mark.parametrize("path,value,message", IDDPM_TRAINING_CASES, ids=[c[2][:40] for c in IDDPM_TRAINING_CASES])
def test_iddpm_objective_and_t_sampler_are_checked(cfg, path, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(mutate(cfg, path, value), root=ROOT)


@pytest.mark.parametrize("loss", [{"name": "hybrid", "lambda": 0.001}, {"name": "vlb"}])
def test_iddpm_trains_either_objective_with_loss_aware_t(cfg, loss):
    good = mutate(mutate(cfg, ("models", "iddpm", "loss"), loss), ("models", "iddpm", "train", "t_sampler"), "loss_aware")
    validate_config(good, root=ROOT)


def test_ddgm_mixture_takes_a_t_varying_component_variance(cfg):
    validate_config(mutate(cfg, ("models", "ddgm_gmm", "noise", "phi2_end"), 0.8), root=ROOT)


FAMILY_SAMPLER_CASES = [
    ("ncsn", "ddpm_beta", "ddpm", "ve", "['edm_euler', 'edm_general', 'edm_heun', 'edm_stochastic', 'langevin', 'pc']"),
    ("edm", "ddpm_beta", "ddpm", "edm", "['edm_euler', 'edm_general', 'edm_heun', 'edm_stochastic', 'langevin', 'pc', 'vp_euler_maruyama', 'vp_probability_flow']"),
    ("mlp", "pc", "pc", "ddpm", "['analytic_ddim', 'analytic_ddpm', 'ddim', 'ddpm', 'edm_euler', 'edm_general', 'edm_heun', 'edm_stochastic']"),
]


@pytest.mark.parametrize("model,sampler,fn,family,allowed", FAMILY_SAMPLER_CASES, ids=[c[0] for c in FAMILY_SAMPLER_CASES])
def test_invalid_family_sampler_pair_names_both(cfg, model, sampler, fn, family, allowed):
    bad = copy.deepcopy(cfg)
    bad["experiments"].append({"model": model, "samplers": [sampler], "K": [10]})
    i = len(bad["experiments"]) - 1
    message = (f"experiments[{i}].samplers[0]': sampler '{sampler}' ({fn}) does not apply to model '{model}' of "
               f"family '{family}'; that family allows {allowed}")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(bad, root=ROOT)


MODEL_CASES = [
    (("models", "ncsn", "schedule"), {"name": "linear", "T": 1000}, r"models\.ncsn\.schedule\.name': value 'linear' does not apply to family 've'; allowed: \['ve'\]"),
    (("models", "mlp", "schedule"), {"name": "edm", "sigma_min": 0.002, "sigma_max": 80.0}, r"models\.mlp\.schedule\.name': value 'edm' does not apply to family 'ddpm'; allowed: \['linear', 'cosine'\]"),
    (("models", "ncsn", "loss"), {"name": "simple"}, r"models\.ncsn\.loss\.name': value 'simple' does not apply to family 've'; allowed: \['dsm', 'ssm'\]"),
    (("models", "ncsn", "schedule"), {"name": "ve", "sigma_min": 0.01}, r"models\.ncsn\.schedule': 'sigma_max' is a required property"),
    (("models", "ncsn", "schedule"), {"name": "ve", "sigma_min": 0.01, "sigma_max": 10.0, "T": 5}, r"models\.ncsn\.schedule': Additional properties are not allowed \('T' was unexpected\)"),
    (("models", "edm", "schedule", "sigma_min"), 20.0, r"models\.edm\.schedule': sigma_min=20\.0 must be below sigma_max=10\.0"),
    (("samplers", "pc", "grid"), "even", r"samplers\.pc\.grid': value 'even' is not a sigma grid, which sampler function 'pc' needs; allowed: \['edm', 'vp', 've', 'iddpm'\]"),
    # A sampler's grid is one of its space's (bench.core.spaces): DDIM on a sigma grid, VP-SDE samplers off theirs.
    (("samplers", "ddim_eta0", "grid"), "edm", r"samplers\.ddim_eta0\.grid': value 'edm' is not a time grid, which sampler function 'ddim' needs; allowed: \['uniform', 'quad', 'even', 'respace', 'optimal'\]"),
    (("samplers", "pc"), {"fn": "vp_euler_maruyama", "grid": "ve"}, r"samplers\.pc\.grid': value 've' is not a VP SDE grid, which sampler function 'vp_euler_maruyama' needs; allowed: \['vp_sde'\]"),
    (("metrics", "ode_nll", "rtol"), 0, r"metrics\.ode_nll\.rtol': value 0 must be > 0"),
]


@pytest.mark.parametrize("path,value,message", MODEL_CASES, ids=[str(c[1]) for c in MODEL_CASES])
def test_continuous_family_settings_are_checked(cfg, path, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(mutate(cfg, path, value), root=ROOT)


def test_shards_must_hold_whole_pc_norm_blocks(cfg):
    bad = mutate(cfg, ("sampling", "shard_size"), 1000)
    message = ("config key 'sampling.shard_size': value 1000 splits the blocks of 1024 samples over which sampler 'pc' "
               "(pc) averages its corrector's norms (options.norm_block); use a multiple of 1024, or at least "
               "sampling.n_samples = 2000")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(bad, root=ROOT)
    validate_config(mutate(bad, ("samplers", "pc", "options", "norm_block"), 500), root=ROOT)
    validate_config(mutate(bad, ("samplers", "pc", "options", "corrector"), "ald"), root=ROOT)
    with pytest.raises(ConfigError, match=r"samplers\.pc\.options\.norm_block': value 0 must be >= 1"):
        validate_config(mutate(cfg, ("samplers", "pc", "options", "norm_block"), 0), root=ROOT)


def test_ode_nll_table_needs_a_continuous_model_and_the_metric(cfg):
    bad = mutate(cfg, ("models", "edm"), copy.deepcopy(cfg["models"]["mlp"]))  # edm becomes a discrete model
    bad["experiments"] = [e for e in bad["experiments"] if e["model"] != "edm"]
    bad["tables"] = [t for t in bad["tables"] if "edm_fd" not in t]
    with pytest.raises(ConfigError, match=r"embedded_ode_nll\.yaml: rows\[0\] .* at model=edm selects model='edm', sampler='pf_ode'; PF-ODE likelihoods exist for sampler 'pf_ode' of models \['ncsn'\]"):
        validate_config(bad, root=ROOT)
    no_metric = copy.deepcopy(cfg)
    del no_metric["metrics"]["ode_nll"]
    with pytest.raises(ConfigError, match=r"of models \[\] \(continuous-time models, with metrics\.ode_nll\)"):
        validate_config(no_metric, root=ROOT)


def test_analytic_sampler_without_moments(cfg):
    bad = copy.deepcopy(cfg)
    del bad["moments"]
    with pytest.raises(ConfigError, match=r"samplers\.analytic_ddpm': needs the Analytic-DPM moments, but the config has no 'moments' key"):
        validate_config(bad, root=ROOT)


def test_malformed_yaml_names_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("profile: embedded\nmodels:\n  mlp: {dataset: digits\n  x: 1\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad\.yaml at line \d+, column \d+"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_hash_changes_with_content(cfg):
    from bench.config import config_hash

    assert config_hash(cfg) == config_hash(yaml.safe_load(yaml.safe_dump(cfg)))
    assert config_hash(cfg) != config_hash(mutate(cfg, ("seed",), 1))


def test_table_with_unknown_metric(cfg, tmp_path):
    spec = read_yaml(ROOT / cfg["tables"][0]) | {"metric": "kid"}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    bad = mutate(cfg, ("tables",), [str(tmp_path / "t.yaml")])
    with pytest.raises(ConfigError, match=r"table spec .*t\.yaml: metric 'kid' is not allowed; allowed: \['fd_digits', 'is_digits', 'nll_bpd', 'ode_nll_bpd', 'fid', 'is', 'recon_mse', 'precision', 'recall', 'oracle_energy'\]"):
        validate_config(bad, root=ROOT)


def test_non_utf8_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("profile: embedded\nlabel: \"σ\"\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml is not UTF-8 text: byte 0 is 0xff"):
        load_config(p)


def test_grid_needing_the_moments_without_them(cfg):
    bad = copy.deepcopy(cfg)
    del bad["moments"]
    bad["samplers"] = {"ddpm_ot": {"fn": "ddpm", "grid": "optimal", "options": {"variance": "beta"}}}
    bad["experiments"] = [{"model": "mlp", "samplers": ["ddpm_ot"], "K": [10]}]
    bad["tables"] = []
    with pytest.raises(ConfigError, match=r"samplers\.ddpm_ot': needs the Analytic-DPM moments"):
        validate_config(bad, root=ROOT)


@pytest.mark.parametrize(
    "grid,options,K,message",
    [
        ("optimal", {}, 1, r"experiments\[1\]\.K\[0\]' with sampler 'analytic_ddpm_ot': time grid 'optimal' needs K >= 2"),
        ("respace", {"section_counts": "ddim300"}, 300, r"'ddim300': no integer stride takes exactly 300 of T=1000"),
        ("respace", {"section_counts": "10,15"}, 10, r"section_counts '10,15' take 25 steps, but the cell has K=10"),
        ("even", {"section_counts": "10"}, 10, r"samplers\.analytic_ddpm_ot\.grid_options\.section_counts': unknown option "
                                               r"'section_counts' of time grid 'even'; allowed: \[\]"),
    ],
)
def test_bad_time_grid_of_a_cell_is_refused(cfg, grid, options, K, message):
    bad = mutate(cfg, ("samplers", "analytic_ddpm_ot"), {**cfg["samplers"]["analytic_ddpm_ot"], "grid": grid,
                                                         "grid_options": options})
    bad = mutate(bad, ("experiments", 1, "K"), [K])
    bad["tables"] = []
    with pytest.raises(ConfigError, match=message):
        validate_config(bad, root=ROOT)


def test_samplers_sharing_an_nll_job_must_share_its_grid(cfg):
    bad = mutate(cfg, ("samplers", "ddpm_beta", "grid"), "respace")
    bad = mutate(bad, ("samplers", "ddpm_beta", "grid_options"), {"section_counts": "ddim10"})
    bad = mutate(bad, ("samplers", "ddpm_beta_tilde", "grid"), "respace")
    bad = mutate(bad, ("experiments", 0, "K"), [10])
    bad["tables"] = []
    with pytest.raises(ConfigError, match=r"samplers\.ddpm_beta_tilde\.grid_options': \{\} differ from \{'section_counts': "
                                          r"'ddim10'\} of sampler 'ddpm_beta', which shares the NLL job of model 'mlp'"):
        validate_config(bad, root=ROOT)


def test_samplers_sharing_an_nll_job_must_name_one_decoder_variance(cfg):
    from bench.config import nll_decoder

    both = mutate(cfg, ("samplers", "ddpm_beta", "nll_decoder"), "chain")
    both = mutate(both, ("samplers", "ddpm_beta_tilde", "nll_decoder"), "chain")
    assert nll_decoder(validate_config(both, root=ROOT), "mlp", "even") == "chain"
    assert nll_decoder(validate_config(copy.deepcopy(cfg), root=ROOT), "mlp", "even") == "trajectory"
    one = mutate(cfg, ("samplers", "ddpm_beta_tilde", "nll_decoder"), "chain")
    with pytest.raises(ConfigError, match=r"samplers\.ddpm_beta_tilde\.nll_decoder': 'chain' differs from 'trajectory' "
                                          r"of sampler 'ddpm_beta', which shares the NLL job of model 'mlp' on grid 'even'"):
        validate_config(one, root=ROOT)
    analytic = mutate(cfg, ("samplers", "analytic_ddpm", "nll_decoder"), "chain")
    with pytest.raises(ConfigError, match=r"samplers\.analytic_ddpm\.nll_decoder': only a sampler with nll one of "
                                          r"\['beta', 'beta_tilde'\] chooses the decoder variance, not nll 'analytic'"):
        validate_config(analytic, root=ROOT)
    with pytest.raises(ConfigError, match=r"nll_decoder"):
        validate_config(mutate(cfg, ("samplers", "ddpm_beta", "nll_decoder"), "first"), root=ROOT)


def test_optimal_grid_needs_a_sampler_with_a_trajectory_variance_and_its_own_bound(cfg):
    ddim = mutate(cfg, ("samplers", "analytic_ddim_ot"), {"fn": "ddim", "label": "DDIM, OT", "grid": "optimal"})
    with pytest.raises(ConfigError, match=r"samplers\.analytic_ddim_ot\.fn' on grid 'optimal': sampler function 'ddim' "
                                          r"has no optimal trajectory; \['analytic_ddim', 'analytic_ddpm', 'ddpm'\] have"):
        validate_config(ddim, root=ROOT)
    beta = mutate(cfg, ("samplers", "analytic_ddpm_ot", "nll"), "beta")
    with pytest.raises(ConfigError, match=r"samplers\.analytic_ddpm_ot\.nll': value 'beta' on grid 'optimal', whose "
                                          r"trajectory is the 'analytic' variance's"):
        validate_config(beta, root=ROOT)
    ddpm = mutate(cfg, ("samplers", "analytic_ddpm_ot"), {"fn": "ddpm", "grid": "optimal", "nll": "beta_tilde",
                                                          "options": {"variance": "beta_tilde"}})
    validate_config(ddpm, root=ROOT)


def test_ode_nll_models_narrow_the_pf_ode_likelihoods(cfg):
    from bench.config import ode_nll_models

    assert ode_nll_models(validate_config(copy.deepcopy(cfg), root=ROOT)) == ["ncsn", "edm"]
    both = mutate(cfg, ("metrics", "ode_nll", "models"), ["edm", "ncsn"])
    assert ode_nll_models(validate_config(both, root=ROOT)) == ["ncsn", "edm"]
    # A table that shows a model's PF-ODE likelihood needs that model in the list.
    with pytest.raises(ConfigError, match=re.escape("of models ['edm'] (continuous-time models, with metrics.ode_nll)")):
        validate_config(mutate(cfg, ("metrics", "ode_nll", "models"), ["edm"]), root=ROOT)
    with pytest.raises(ConfigError, match=re.escape("'metrics.ode_nll.models[0]': model 'mlp' of family 'ddpm' has no")):
        validate_config(mutate(cfg, ("metrics", "ode_nll", "models"), ["mlp"]), root=ROOT)
    with pytest.raises(ConfigError, match=re.escape("'metrics.ode_nll.models[0]': unknown model 'unet'")):
        validate_config(mutate(cfg, ("metrics", "ode_nll", "models"), ["unet"]), root=ROOT)


def test_speed_options_the_schema_cannot_combine_name_the_key(cfg):
    bad = mutate(cfg, ("sampling", "speed"), {"cuda_graphs": True, "compile_mode": "reduce-overhead"})
    with pytest.raises(ConfigError, match=r"config key 'sampling\.speed': cuda_graphs=True with compile mode "
                                          r"'reduce-overhead': that mode already captures CUDA graphs"):
        validate_config(bad, root=ROOT)


def test_sampling_speed_fills_every_option_and_defaults_to_all_off(cfg):
    assert sampling_speed(cfg) == {
        "channels_last": False, "tf32": False, "compile_mode": None, "cuda_graphs": False, "autocast": None,
        "keep_freed_memory": True,
    }
    plain = copy.deepcopy(cfg)
    del plain["sampling"]["speed"]
    assert sampling_speed(plain) == SpeedOptions().as_dict()
    assert not any(SpeedOptions().as_dict().values())


def test_speed_schema_enums_are_the_codes_choices():
    options = config_schema()["properties"]["sampling"]["properties"]["speed"]["properties"]
    assert options["compile_mode"]["enum"] == [None, *COMPILE_MODES]
    assert options["autocast"]["enum"] == [None, *sorted(AUTOCAST_DTYPES)]
    assert set(options) == set(SpeedOptions().as_dict())
