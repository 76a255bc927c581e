"""`samplers: all` (bench.config.all_samplers) and the cross-product table spec (`rows: all`) on the tiny config."""

from __future__ import annotations

import copy

import pytest
import yaml
from dag import ROOT, TINY_CONFIG

from bench.config import ConfigError, validate_config
from bench.config.all_samplers import expand_all_samplers
from bench.report.results import MetricRecord
from bench.report.specs import load_table_spec
from bench.report.tables import build_table
from bench.steps.plan import format_skipped, plan
from bench.steps.plan import run as plan_run

CROSS = "tests/configs/tables/tiny_cross_product.yaml"


def tiny_all() -> dict:
    """The tiny config with its mlp (DDPM family) and ncsn (VE family) experiments on `samplers: all`."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    for exp in cfg["experiments"]:
        if exp["model"] in ("mlp", "ncsn"):
            exp["samplers"] = "all"
    cfg["tables"].append(CROSS)
    return cfg


def test_all_expands_to_the_samplers_each_family_allows_and_names_the_others():
    cfg = validate_config(tiny_all(), root=ROOT)
    by_model = {exp["model"]: exp["samplers"] for exp in cfg["experiments"]}
    # The DDPM family takes ddpm, ddim, analytic_ddpm (both grids) and edm_heun; not iDDPM's, DDGM's or PC.
    assert by_model["mlp"] == ["ddpm_beta", "analytic_ddpm", "analytic_ddpm_ot", "ddim_eta0", "edm_heun"]
    assert by_model["ncsn"] == ["edm_heun", "pc"]
    left_out = expand_all_samplers(tiny_all())
    assert {(model, sampler) for _, model, sampler, _ in left_out} == {
        ("mlp", "iddpm_learned"), ("mlp", "ddgm_alg4"), ("mlp", "pc"),
        ("ncsn", "ddpm_beta"), ("ncsn", "analytic_ddpm"), ("ncsn", "analytic_ddpm_ot"), ("ncsn", "ddim_eta0"),
        ("ncsn", "iddpm_learned"), ("ncsn", "ddgm_alg4"),
    }
    text = format_skipped(left_out)
    assert "experiments[0] (model mlp, samplers: all) skips pc: family 'ddpm' does not take sampler function 'pc'" in text


def test_all_skips_analytic_samplers_without_the_moments():
    cfg = tiny_all()
    del cfg["moments"]
    reasons = {s: r for _, m, s, r in expand_all_samplers(cfg) if m == "mlp"}
    wanted = "it needs the Analytic-DPM moments and the config has no 'moments' key"
    assert reasons["analytic_ddpm"] == reasons["analytic_ddpm_ot"] == wanted
    assert cfg["experiments"][0]["samplers"] == ["ddpm_beta", "ddim_eta0", "edm_heun"]


def test_all_that_leaves_nothing_is_refused():
    cfg = tiny_all()
    cfg["samplers"] = {k: v for k, v in cfg["samplers"].items() if k in ("pc", "iddpm_learned", "ddgm_alg4")}
    cfg["experiments"] = [{"model": "mlp", "samplers": "all", "K": [2]}, {"model": "ncsn", "samplers": ["pc"], "K": [2]}]
    cfg["tables"] = [CROSS]
    with pytest.raises(ConfigError, match=r"experiments\[0\]\.samplers': 'all' leaves no sampler for model 'mlp': "
                                          r"iddpm_learned: family 'ddpm' does not take sampler function 'iddpm'"):
        validate_config(cfg, root=ROOT)


def test_the_plan_counts_the_cross_product_and_prints_what_all_skipped(tmp_path, capsys, monkeypatch):
    cfg = tiny_all()
    path = tmp_path / "tiny_all.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    rows = {r["table"]: r for r in plan(validate_config(copy.deepcopy(cfg), root=ROOT), root=ROOT)}
    # mlp: 5 samplers, ncsn: 2, the other three models one each; each at K = 2 and 5.
    assert rows["tiny_cross_product"]["cells"] == (5 + 2 + 3) * 2
    monkeypatch.chdir(ROOT)
    plan_run(path)
    out = capsys.readouterr().out
    assert "tiny_cross_product" in out and "experiments[3] (model ncsn, samplers: all) skips ddgm_alg4" in out


def record(model: str, sampler: str, K: int, value: float) -> MetricRecord:
    return MetricRecord(
        line=0, dataset="digits", model=model, family="ddpm", sampler=sampler, sampler_label=sampler.upper(),
        grid="even", K=K, nfe=float(K), metric="fd_digits", value=value, n_samples=40, seed=0, replicate=0,
        wall_seconds=1.0, status="ok", device=None, device_seconds=None, reference_stats_sha256=None,
    )


def test_a_cross_product_table_has_one_row_per_model_and_sampler_that_ran():
    spec = load_table_spec(ROOT / CROSS)
    records = [record("mlp", "ddim", 2, 1.0), record("mlp", "ddim", 5, 0.5), record("edm", "heun", 5, 0.25),
               record("mlp", "ddpm", 2, 2.0)]
    table = build_table(spec, records)
    assert [row.label for row in table.spec.rows] == ["edm | HEUN (heun)", "mlp | DDIM (ddim)", "mlp | DDPM (ddpm)"]
    assert [[cell.mean for cell in row] for row in table.cells] == [[None, 0.25], [1.0, 0.5], [2.0, None]]
