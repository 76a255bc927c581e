"""Realistic config mistakes are refused before any job, by `python -m bench validate` and by Snakemake alike,
with a message naming the key, the bad value and what is allowed."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "workflows/config/default.yaml"
FD_TABLE = ROOT / "workflows/config/tables/embedded_fd_digits.yaml"


def _set(*path, value) -> Callable[[dict, Path], str]:
    def edit(cfg: dict, tmp: Path) -> str:
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False)

    return edit


def _option(sampler: str, key: str, value) -> Callable[[dict, Path], str]:
    return _set("samplers", sampler, "options", key, value=value)


def _second_block(cfg: dict, tmp: Path) -> str:
    """A second `ddim_eta0:` block pasted below the first: PyYAML alone would keep only this one."""
    text = DEFAULT.read_text(encoding="utf-8")
    block = '  ddim_eta0:\n    fn: ddim\n    label: "DDIM, η=0 (copy)"\n    grid: uniform\n    options: {eta: 0.5}\n'
    return text.replace("samplers:\n", "samplers:\n" + block, 1)


def _table(edit_rows: Callable[[list[dict]], None]) -> Callable[[dict, Path], str]:
    def edit(cfg: dict, tmp: Path) -> str:
        spec = yaml.safe_load(FD_TABLE.read_text(encoding="utf-8"))
        edit_rows(spec["rows"])
        path = tmp / "my_table.yaml"
        path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
        cfg["tables"][0] = str(path)
        return yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False)

    return edit


def _repeat_label(rows: list[dict]) -> None:
    rows[1]["label"] = rows[0]["label"]


def _unknown_model(rows: list[dict]) -> None:
    rows[0]["model"] = "mlp_big"


MISTAKES = [
    ("option name typo", _option("ddim_eta0", "etaa", 0), r"samplers\.ddim_eta0\.options\.etaa'.*'etaa'.*allowed.*'eta'"),
    ("DDGM option on DDIM", _option("ddim_eta0", "theta_0", 0.001), r"samplers\.ddim_eta0\.options\.theta_0'.*allowed"),
    ("option of the wrong type", _option("ddim_eta0", "eta", "zero"), r"samplers\.ddim_eta0\.options\.eta'.*'zero'"),
    ("option out of range", _option("ddim_eta0", "eta", -1.0), r"samplers\.ddim_eta0\.options\.eta'.*-1\.0.*>= 0"),
    ("option value typo", _option("ddpm_beta", "variance", "beta_tlide"), r"samplers\.ddpm_beta\.options\.variance'.*'beta_tlide'.*'beta_tilde'"),
    ("a YAML key given twice", _second_block, r"duplicate key 'ddim_eta0'"),
    ("two table rows with one label", _table(_repeat_label), r"my_table\.yaml: rows\[1\] repeats the label 'DDPM, σ²=β' of rows\[0\]"),
    ("a table naming an unknown model", _table(_unknown_model), r"my_table\.yaml: rows\[0\] .* names unknown model 'mlp_big'; the config defines \['ddgm', 'ddgm_gmm', 'edm', 'iddpm', 'mlp', 'ncsn'\]"),
    ("a billion samples", _set("sampling", "n_samples", value=10**9), r"sampling\.n_samples': value 1000000000 must be <= 1000000"),
    ("shards too small", _set("sampling", "shard_size", value=1), r"sampling\.shard_size': value 1 splits n_samples=2000 into 2000 shards per cell; at most 1000"),
    ("K above T", _set("experiments", 0, "K", value=[10, 2000]), r"experiments\[0\]\.K\[1\]': value 2000 is not allowed; K must be an integer in \[1, T=1000\]"),
    ("K of zero", _set("experiments", 0, "K", value=[0]), r"experiments\[0\]\.K\[0\]': value 0 must be >= 1"),
    ("an undefined sampler", _set("experiments", 0, "samplers", value=["ddpm_bet"]), r"experiments\[0\]\.samplers\[0\]': unknown sampler 'ddpm_bet'"),
    ("an undefined model", _set("experiments", 0, "model", value="mlp2"), r"experiments\[0\]\.model': unknown model 'mlp2'; defined: \["),
    ("a sampler function typo", _set("samplers", "ddim_eta0", "fn", value="ddim2"), r"samplers\.ddim_eta0\.fn': value 'ddim2' is not allowed; allowed: \["),
    ("a grid typo", _set("samplers", "ddim_eta0", "grid", value="unifrom"), r"samplers\.ddim_eta0\.grid': value 'unifrom' is not allowed"),
    ("a sampler of another family", _set("experiments", 0, "samplers", value=["pc"]), r"sampler 'pc' \(pc\) does not apply to model 'mlp' of family 'ddpm'"),
    ("a dataset kind typo", _set("datasets", "digits", "kind", value="digit"), r"datasets\.digits\.kind': value 'digit' is not allowed"),
    ("a missing data folder", _set("datasets", "digits", "root", value="no/such/dir"), r"datasets\.digits\.root': path 'no/such/dir'"),
    ("a metric key typo", _set("metrics", "fid", value={"extractor": "digits_cnn"}), r"'metrics': Additional properties are not allowed \('fid' was unexpected\)"),
    ("a sampling key typo", _set("sampling", "seeds", value=3), r"'sampling': Additional properties are not allowed \('seeds' was unexpected\)"),
    ("half precision state", _set("sampling", "state_dtype", value="float16"), r"sampling\.state_dtype': value 'float16' is not allowed; allowed: \['float32', 'float64'\]"),
    ("a chain too short for its schedule", _set("models", "mlp", "schedule", "T", value=20), r"models\.mlp\.schedule\.T': linear schedule with T=20"),
    ("a table spec that does not exist", _set("tables", 0, value="workflows/config/tables/nope.yaml"), r"tables\[0\]': table spec 'workflows/config/tables/nope\.yaml' does not exist"),
    ("an unknown speed option value", _set("sampling", "speed", "autocast", value="fp8"), r"sampling\.speed\.autocast': value 'fp8' is not allowed"),
]
IDS = [m[0] for m in MISTAKES]


@pytest.fixture
def config_file(request, tmp_path) -> tuple[Path, str]:
    _, edit, message = request.param
    cfg = copy.deepcopy(yaml.safe_load(DEFAULT.read_text(encoding="utf-8")))
    path = tmp_path / "my_config.yaml"
    path.write_text(edit(cfg, tmp_path), encoding="utf-8")
    return path, message


@pytest.mark.parametrize("config_file", MISTAKES, ids=IDS, indirect=True)
def test_validate_refuses_with_a_clean_message(config_file, capsys):
    path, message = config_file
    assert main(["validate", "--configfile", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid configuration:\n  - ") and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.slow
@pytest.mark.parametrize("config_file", MISTAKES, ids=IDS, indirect=True)
def test_snakemake_refuses_before_any_job(config_file, tmp_path):
    path, message = config_file
    work = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "1", "--configfile", str(path),
         "--directory", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert r.returncode != 0
    assert "invalid dpm-bench configuration" in r.stderr and re.search(message, r.stderr), r.stderr[-2000:]
    assert not (work / "results").exists() and not (work / "resources").exists()
