"""A configuration is rejected before any job, with the key, the value and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from bench.config import ConfigError, cells, load_config, read_yaml, shard_ranges, validate_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    return read_yaml(ROOT / "workflows/config/default.yaml")


def test_default_config_is_valid(cfg):
    validate_config(cfg, root=ROOT)
    # DDPM model: five samplers; its two OT samplers; iDDPM: two; EDM's three at four K
    assert len(cells(cfg)) == 5 * 5 + 2 * 5 + 2 * 5 + 3 * 4
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
    (("experiments", 0, "samplers", 0), "ddpm_fast", r"experiments\[0\]\.samplers\[0\]': unknown sampler 'ddpm_fast'; defined: \['analytic_ddim', 'analytic_ddim_ot', 'analytic_ddpm', 'analytic_ddpm_ot', 'ddim_eta0', 'ddpm_beta', 'ddpm_beta_tilde', 'edm_euler', 'edm_heun', 'edm_stochastic', 'iddpm_ddim', 'iddpm_learned'\]"),
    (("models", "mlp", "dataset"), "cifar11", r"models\.mlp\.dataset': unknown dataset 'cifar11'; defined: \['digits'\]"),
    (("experiments", 0, "model"), "unet", r"experiments\[0\]\.model': unknown model 'unet'; defined: \['iddpm', 'mlp'\]"),
    (("experiments", 0, "K"), [10, 1001], r"experiments\[0\]\.K\[1\]': value 1001 is not allowed; K must be an integer in \[1, T=1000\]"),
    (("experiments", 0, "K"), [0], r"experiments\.0\.K\.0|experiments\[0\]\.K\[0\]': value 0 must be minimum 1"),
    (("experiments", 0, "K"), [2.5], r"experiments\[0\]\.K\[0\]': value 2.5 is not of type integer"),
    (("sampling", "n_samples"), -5, r"sampling\.n_samples': value -5 must be minimum 1"),
    (("samplers", "ddim_eta0", "fn"), "plms", r"samplers\.ddim_eta0\.fn': value 'plms' is not allowed; allowed: \['analytic_ddim', 'analytic_ddpm', 'ddim', 'ddpm', 'edm_euler', 'edm_heun', 'edm_stochastic', 'iddpm'\]"),
    (("samplers", "ddim_eta0", "grid"), "log", r"samplers\.ddim_eta0\.grid': value 'log' is not allowed; allowed: \['uniform', 'quad', 'even', 'respace', 'optimal', 'edm', 'vp', 've', 'iddpm'\]"),
    (("datasets", "digits", "kind"), "mnist", r"datasets\.digits\.kind': value 'mnist' is not allowed; allowed: \['digits'\]"),
    (("models", "mlp", "family"), "gan", r"models\.mlp\.family': value 'gan' is not allowed; allowed: \['ddpm', 'iddpm'\]"),
    (("models", "mlp", "schedule", "name"), "sigmoid", r"schedule\.name': value 'sigmoid' is not allowed; allowed: \['linear', 'cosine'\]"),
    (("metrics", "fd_is", "extractor"), "inception", r"metrics\.fd_is\.extractor': unknown extractor 'inception'; defined: \['digits_cnn'\]"),
    (("sampling", "seeds"), 3, r"sampling': Additional properties are not allowed \('seeds' was unexpected\); allowed keys: \['batch_size', 'n_samples', 'seed', 'shard_size'\]"),
]


@pytest.mark.parametrize("path,value,message", CASES, ids=[str(c[1]) for c in CASES])
def test_bad_values_name_key_value_and_allowed(cfg, path, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(mutate(cfg, path, value), root=ROOT)


def test_table_referring_to_undefined_cell(cfg):
    bad = mutate(cfg, ("experiments", 0, "K"), [10, 25, 50, 100])
    with pytest.raises(ConfigError, match=r"embedded_fd_digits\.yaml: rows\[0\] .* at K=1000 refers to cell model='mlp', sampler='ddpm_beta', K=1000, which no experiment defines"):
        validate_config(bad, root=ROOT)


def test_sampler_not_valid_for_family(cfg, monkeypatch):
    import bench.config

    allowed = {"ddpm": ["ddpm", "analytic_ddpm", "analytic_ddim"], "iddpm": ["iddpm", "ddim"]}
    monkeypatch.setattr(bench.config, "compatibility", lambda: allowed)
    with pytest.raises(ConfigError, match=r"sampler 'ddim_eta0' \(ddim\) does not apply to model 'mlp' of family 'ddpm'; that family allows \['ddpm', 'analytic_ddpm', 'analytic_ddim'\]"):
        validate_config(cfg, root=ROOT)


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
        ("even", {"section_counts": "10"}, 10, r"time grid 'even' takes grid_options \[\], not \['section_counts'\]"),
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
