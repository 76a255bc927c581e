"""bench.steps.plan: cells, jobs, samples, NFE and hours per table, against a hand count of a frozen config
(tests/configs/plan_default.yaml), and invariants of the embedded default."""

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.config import ConfigError, load_config, ode_nll_models, shard_ranges
from bench.config import cells as all_cells
from bench.steps.plan import DEFAULT_SECONDS_PER_NFE, ODE_NLL_NFE, SECONDS_PER_NFE, format_plan, plan
from bench.steps.shared_cells import shared_cells

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests/configs/plan_default.yaml"


def _spec(name: str, metric: str, field: str, values: list, rows: list[dict]) -> dict:
    return {"id": name, "title": name, "metric": metric, "dataset": "digits",
            "columns": {"field": field, "values": values, "label": field}, "rows": rows}


def _row(model: str, sampler: str, **extra) -> dict:
    return {"label": f"{model} {sampler}", "model": model, "sampler": sampler, **extra}


# The frozen config's table specs. Cells not in any table: mlp ddpm_beta_tilde at K 10 and 100 (it is in
# no FD table, and NLL cells are not told apart by sampler below), ddim_eta0 at K 25 and ncsn pc at K 100.
TABLES = {
    "plan_fd_digits.yaml": _spec("plan_fd_digits", "fd_digits", "K", [10, 100], [
        _row("mlp", "ddpm_beta"),
        _row("mlp", "ddim_eta0"),
        _row("mlp", "analytic_ddpm"),
        _row("mlp", "analytic_ddpm_ot"),
        _row("ncsn", "pc", unavailable_at={100: "shown as missing by design"}),
        {"label": "no checkpoint", "unavailable": "no checkpoint"},
    ]),
    "plan_edm_fd_digits.yaml": _spec("plan_edm_fd_digits", "fd_digits", "K", [10, 25], [
        _row("mlp", "ddim_eta0"),
        _row("mlp", "edm_heun"),
    ]),
    "plan_nll.yaml": _spec("plan_nll", "nll_bpd", "K", [10, 100], [
        _row("mlp", "ddpm_beta"),
        _row("mlp", "analytic_ddpm"),
        _row("mlp", "analytic_ddpm_ot"),
    ]),
    "plan_ode_nll.yaml": _spec("plan_ode_nll", "ode_nll_bpd", "model", ["ncsn"], [
        {"label": "PF-ODE", "sampler": "pf_ode"},
    ]),
}

# The hand count, from the rules of the workflow (Snakefile, workflows/rules/*.smk):
# - FD / IS: per cell and shard one sample_shard and one features job, per cell one fd_is job. 1000 samples
#   in one shard of 1000: 3 jobs per cell. The one reference_stats job (digits, train, digits_cnn), like
#   model and extractor training, is shared by every table and counted in the total only.
# - moments: one job for mlp (its analytic_ddpm samplers read Gamma_n); the whole train split, M = 1438
#   images, at all T = 1000 steps.
# - nll: one job per (model, grid, K), shared by the samplers of that grid; K NFE per test image and pass.
# - ode_nll: one job per continuous-time model (ncsn): ODE_NLL_NFE per image, 300 images.
N_SAMPLES = 1000
N_TEST = 359  # digits test split: round(0.2 * n) of each class of 1797 images
N_TRAIN = 1797 - N_TEST
MOMENTS_NFE = N_TRAIN * 1000
ODE_NFE = 300 * ODE_NLL_NFE

# NFE per sample, K steps: ddpm / ddim / analytic_ddpm K; edm_heun 2K - 1 (Heun's correction on all but
# the last step); pc with one corrector step 2K.
# FD table: mlp x {ddpm_beta, ddim_eta0, analytic_ddpm, analytic_ddpm_ot} x K {10, 100}, ncsn pc at K 10
# (K 100 unavailable), one unavailable row: 9 cells, 3 unavailable; 9 x 3 jobs + the moments job.
FD_SAMPLING_NFE = N_SAMPLES * (4 * (10 + 100) + 2 * 10)
FD = {"cells": 9, "jobs": 9 * 3 + 1, "samples": 9 * N_SAMPLES, "nfe": FD_SAMPLING_NFE + MOMENTS_NFE}
# EDM table: mlp x {ddim_eta0, edm_heun} x K {10, 25}: 4 cells, 12 jobs, no moments.
EDM = {"cells": 4, "jobs": 4 * 3, "samples": 4 * N_SAMPLES, "nfe": N_SAMPLES * ((10 + 25) + (19 + 49))}
# NLL table: mlp x {ddpm_beta, analytic_ddpm, analytic_ddpm_ot} x K {10, 100}: 6 cells. nll jobs: grid even
# and grid optimal at each K (4), and the moments. The even job evaluates every variance of the even-grid
# samplers, ddpm_beta_tilde's included although no table row shows it: beta and beta-tilde in one pass,
# analytic in another (2 passes); the optimal job evaluates analytic only (1 pass).
NLL_NFE = N_TEST * (10 + 100) * (2 + 1)
NLL = {"cells": 6, "jobs": 4 + 1, "samples": 0, "nfe": NLL_NFE + MOMENTS_NFE}
ODE = {"cells": 1, "jobs": 1, "samples": 0, "nfe": ODE_NFE}
# The whole run: 5 samplers x 2 K + ddim_eta0 at K 25 + edm_heun x 2 K + pc x 2 K = 15 cells and ncsn's
# PF-ODE NLL; 15 x 3 FD / IS jobs, 4 nll jobs, the moments and the ode_nll job, and the 8 run-wide jobs: the
# digits check, the training of mlp and ncsn, the extractor, its reference statistics, collect, report and all.
TOTAL_SAMPLING_NFE = N_SAMPLES * (5 * (10 + 100) + 25 + (19 + 49) + (20 + 200))
TOTAL_NFE = TOTAL_SAMPLING_NFE + NLL_NFE + MOMENTS_NFE + ODE_NFE
TOTAL = {"cells": 15 + 1, "jobs": 15 * 3 + 4 + 1 + 1 + 8, "samples": 15 * N_SAMPLES, "nfe": TOTAL_NFE}
NCSN_NFE = N_SAMPLES * (20 + 200) + ODE_NFE


@pytest.fixture(scope="module")
def frozen_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    shutil.copy(CONFIG, d / CONFIG.name)
    for name, spec in TABLES.items():
        (d / name).write_text(yaml.safe_dump(spec, allow_unicode=True))
    return d


@pytest.fixture(scope="module")
def frozen(frozen_dir):
    return load_config(frozen_dir / CONFIG.name, root=frozen_dir)


@pytest.fixture
def cfg(frozen):
    return copy.deepcopy(frozen)


def counts(row):
    return {k: row[k] for k in ("cells", "jobs", "samples", "nfe")}


def test_frozen_config_against_a_hand_count(cfg, frozen_dir):
    rows = {r["table"]: r for r in plan(cfg, root=frozen_dir)}
    assert list(rows) == ["plan_fd_digits", "plan_edm_fd_digits", "plan_nll", "plan_ode_nll", "total"]
    assert counts(rows["plan_fd_digits"]) == FD
    assert counts(rows["plan_edm_fd_digits"]) == EDM
    assert counts(rows["plan_nll"]) == NLL
    assert counts(rows["plan_ode_nll"]) == ODE
    assert counts(rows["total"]) == TOTAL
    assert [r["unavailable"] for r in rows.values()] == [3, 0, 0, 0, 3]
    assert rows["total"]["hours"] == pytest.approx(TOTAL_NFE * SECONDS_PER_NFE["mlp"] / 3600)


def test_hours_use_the_configured_seconds_per_nfe(cfg, frozen_dir):
    cfg["plan"] = {"seconds_per_nfe": {"mlp": 3.6e-3}}  # 1e-6 hours per NFE
    total = plan(cfg, root=frozen_dir)[-1]
    # ncsn keeps the estimate of its network type
    expected = (TOTAL_NFE - NCSN_NFE) * 1e-6 + NCSN_NFE * SECONDS_PER_NFE["mlp"] / 3600
    assert total["hours"] == pytest.approx(expected)


def test_unknown_network_type_takes_the_ddim_paper_estimate(cfg, frozen_dir):
    for model in cfg["models"].values():
        model["network"]["type"] = "ddpm_unet"
    total = plan(cfg, root=frozen_dir)[-1]
    assert DEFAULT_SECONDS_PER_NFE == pytest.approx(1.44e-3)
    assert total["hours"] == pytest.approx(TOTAL_NFE * 1.44e-3 / 3600)


def test_shards_change_jobs_not_samples_or_nfe(cfg, frozen_dir):
    cfg["sampling"]["shard_size"] = 300  # 1000 samples: shards of 300, 300, 300 and 100
    rows = plan(cfg, root=frozen_dir)
    # per FD / IS cell 4 sample_shard, 4 features and 1 fd_is job
    assert counts(rows[0]) == FD | {"jobs": 9 * (4 + 4 + 1) + 1}
    assert counts(rows[2]) == NLL
    assert counts(rows[-1]) == TOTAL | {"jobs": 15 * (4 + 4 + 1) + 4 + 1 + 1 + 8}


def test_moments_from_m_images(cfg, frozen_dir):
    cfg["moments"]["M"] = 200
    rows = plan(cfg, root=frozen_dir)
    assert rows[0]["nfe"] == FD_SAMPLING_NFE + 200 * 1000
    assert rows[-1]["nfe"] == TOTAL_NFE - MOMENTS_NFE + 200 * 1000


def test_total_covers_cells_no_table_shows(cfg, frozen_dir, tmp_path):
    spec = copy.deepcopy(TABLES["plan_fd_digits.yaml"])
    spec["rows"] = spec["rows"][:1]  # DDPM beta only
    (tmp_path / "one_row.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    cfg["tables"] = [str(tmp_path / "one_row.yaml")]
    table, total = plan(cfg, root=frozen_dir)
    assert counts(table) == {"cells": 2, "jobs": 2 * 3, "samples": 2 * N_SAMPLES, "nfe": N_SAMPLES * (10 + 100)}
    assert counts(total) == TOTAL


def test_nll_job_reads_the_moments_when_any_bound_of_its_grid_is_analytic(cfg, frozen_dir, tmp_path):
    # The even-grid nll job also evaluates analytic_ddpm's bound (2 passes), so it needs mlp's moments
    # (the nll rule's input) although the table shows DDPM beta only.
    spec = _spec("beta_only", "nll_bpd", "K", [10], [_row("mlp", "ddpm_beta")])
    (tmp_path / "beta_only.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    cfg["tables"] = [str(tmp_path / "beta_only.yaml")]
    table = plan(cfg, root=frozen_dir)[0]
    assert counts(table) == {"cells": 1, "jobs": 2, "samples": 0, "nfe": N_TEST * 10 * 2 + MOMENTS_NFE}
    # without analytic_ddpm the job evaluates beta and beta-tilde in one pass and reads no moments
    cfg["experiments"][0]["samplers"].remove("analytic_ddpm")
    table = plan(cfg, root=frozen_dir)[0]
    assert counts(table) == {"cells": 1, "jobs": 1, "samples": 0, "nfe": N_TEST * 10}


def test_an_unregistered_sampler_is_named(cfg, frozen_dir):
    cfg["samplers"]["ddim_eta0"]["fn"] = "dpm_solver"
    with pytest.raises(ConfigError, match=r"plan: sampler function 'dpm_solver' is not one of \[.*'ddim'"):
        plan(cfg, root=frozen_dir)


def test_format_plan_aligns_columns(cfg, frozen_dir):
    lines = format_plan(plan(cfg, root=frozen_dir)).splitlines()
    assert lines[0].split() == ["table", "metric", "cells", "unavailable", "jobs", "samples", "NFE", "hours"]
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split()[:2] == ["plan_fd_digits", "fd_digits"]
    hours = f"{TOTAL_NFE * SECONDS_PER_NFE['mlp'] / 3600:.3g}"
    assert lines[-1].split() == ["total", "16", "3", "59", "15,000", f"{TOTAL_NFE:,}", hours]


def test_embedded_default_plans_every_cell_once():
    """Invariants only: the embedded default keeps growing, its exact counts are the frozen config's job."""
    cfg = load_config(ROOT / "workflows/config/default.yaml", root=ROOT)
    rows = plan(cfg, root=ROOT)
    total = rows[-1]
    n_cells, n_ode = len(all_cells(cfg)), len(ode_nll_models(cfg))
    assert [r["table"] for r in rows[:-1]] == [yaml.safe_load((ROOT / t).read_text())["id"] for t in cfg["tables"]]
    assert total["table"] == "total"
    assert total["cells"] == n_cells + n_ode
    assert total["jobs"] >= total["cells"]
    # every cell that no other computes samples n_samples in shards, each shard sampled and featurised, then
    # one fd_is job
    computed = n_cells - len(shared_cells(cfg))
    assert total["samples"] == computed * cfg["sampling"]["n_samples"]
    assert total["jobs"] >= computed * (2 * len(shard_ranges(cfg)) + 1) + n_ode
    assert all(0 < r["cells"] <= total["cells"] and r["jobs"] <= total["jobs"] for r in rows)
    assert all(r["nfe"] <= total["nfe"] and r["hours"] <= total["hours"] for r in rows)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["workflows/config/default.yaml", "workflows/config/paper.yaml"])
def test_total_jobs_are_what_snakemake_plans_for_a_fresh_run(config, tmp_path, request):
    if config.endswith("paper.yaml"):
        r, _ = request.getfixturevalue("paper_dry_run")
    else:
        r = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "1", "--configfile",
             str(ROOT / config), "--directory", str(tmp_path)],
            cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    assert r.returncode == 0, r.stderr[-3000:]
    planned = int(re.search(r"^total\s+(\d+)$", r.stdout + r.stderr, flags=re.MULTILINE).group(1))
    total = plan(load_config(ROOT / config, root=ROOT, check_paths=False), root=ROOT)[-1]
    assert total["jobs"] == planned
