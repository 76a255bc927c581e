"""bench.plan: cells, jobs, samples, NFE and hours per table, against a hand count of the embedded default."""

import copy
from pathlib import Path

import pytest
import yaml

from bench.config import ConfigError, load_config
from bench.plan import DEFAULT_SECONDS_PER_NFE, ODE_NLL_NFE, SECONDS_PER_NFE, format_plan, plan

ROOT = Path(__file__).resolve().parents[1]
# The embedded default: 2000 samples per cell in one shard; models mlp and iddpm, both T = 1000.
#   mlp   x {ddpm_beta, ddpm_beta_tilde, ddim_eta0, analytic_ddpm, analytic_ddim} x K in {10, 25, 50, 100, 1000}
#   mlp   x {analytic_ddpm_ot, analytic_ddim_ot} x the same K
#   iddpm x {iddpm_learned, iddpm_ddim} x the same K
#   mlp   x {ddim_eta0, edm_euler, edm_heun, edm_stochastic} x K in {10, 25, 50, 100} (ddim_eta0 already above)
#   ncsn (ve) x pc x the five K; ncsn x {langevin (5 steps per level + denoising), edm_heun} x the four K
#   edm   x {edm_euler, edm_heun, edm_stochastic} x the four K; a PF-ODE NLL job for ncsn and edm (300 images)
SUM_K = 10 + 25 + 50 + 100 + 1000
SUM_K4 = 10 + 25 + 50 + 100
HEUN_K4 = sum(2 * K - 1 for K in (10, 25, 50, 100))  # EDM Heun and stochastic: 2N - 1 NFE
N_TEST = 359  # digits test split: round(0.2 * n) of each class
N_TRAIN = 1797 - N_TEST
MOMENTS_NFE = N_TRAIN * 1000  # mlp's Gamma_n from the whole train split at all T = 1000 steps
MAIN_NFE = 2000 * (5 + 2 + 2) * SUM_K  # the three 5-K experiments, K NFE per sample
EDM_NFE = 2000 * (SUM_K4 + SUM_K4 + 2 * HEUN_K4)  # ddim_eta0, edm_euler, edm_heun, edm_stochastic
# nll jobs per K: mlp on the even grid (beta and beta-tilde in one pass, analytic in another) and
# iddpm on the even grid (learned).
NLL_NFE = N_TEST * SUM_K * (2 + 1)
DISCRETE_NFE = MAIN_NFE + (EDM_NFE - 2000 * SUM_K4) + NLL_NFE + MOMENTS_NFE
PC_NFE = 2000 * 2 * SUM_K  # predictor + corrector per level
LANGEVIN_NFE = 2000 * (5 * SUM_K4 + 4)  # 5 steps per level and the final denoising step, at four K
NCSN_HEUN_NFE = 2000 * HEUN_K4
EDM_MODEL_NFE = 2000 * (SUM_K4 + 2 * HEUN_K4)
ODE_NFE = 2 * 300 * ODE_NLL_NFE
CONTINUOUS_NFE = PC_NFE + LANGEVIN_NFE + NCSN_HEUN_NFE + EDM_MODEL_NFE + ODE_NFE
TOTAL_NFE = DISCRETE_NFE + CONTINUOUS_NFE


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "workflows/config/default.yaml", root=ROOT)


def counts(row):
    return {k: row[k] for k in ("cells", "jobs", "samples", "nfe")}


def test_embedded_default_against_a_hand_count(cfg):
    rows = {r["table"]: r for r in plan(cfg, root=ROOT)}
    assert list(rows) == ["embedded_fd_digits", "embedded_is_digits", "embedded_nll", "embedded_edm_fd_digits",
                          "embedded_ve_fd_digits", "embedded_ode_nll", "total"]
    # FD: 8 rows x 5 K (IS: 7, without PC); per cell one sample_shard and one fd_is job; mlp's moments job.
    assert counts(rows["embedded_fd_digits"]) == {
        "cells": 40, "jobs": 81, "samples": 80_000, "nfe": MAIN_NFE + PC_NFE + MOMENTS_NFE}
    assert counts(rows["embedded_is_digits"]) == {"cells": 35, "jobs": 71, "samples": 70_000, "nfe": MAIN_NFE + MOMENTS_NFE}
    # NLL: 4 rows x 5 K; one nll job per model and K (the samplers of a grid share it), and the moments.
    assert counts(rows["embedded_nll"]) == {"cells": 20, "jobs": 11, "samples": 0, "nfe": NLL_NFE + MOMENTS_NFE}
    assert counts(rows["embedded_edm_fd_digits"]) == {
        "cells": 32, "jobs": 64, "samples": 64_000, "nfe": EDM_NFE + NCSN_HEUN_NFE + EDM_MODEL_NFE}
    assert counts(rows["embedded_ve_fd_digits"]) == {
        "cells": 12, "jobs": 24, "samples": 24_000, "nfe": LANGEVIN_NFE + 2000 * 2 * SUM_K4 + NCSN_HEUN_NFE}
    assert counts(rows["embedded_ode_nll"]) == {"cells": 2, "jobs": 2, "samples": 0, "nfe": ODE_NFE}
    # The whole run: 25 + 10 + 12 + 5 + 8 + 12 distinct cells and 2 PF-ODE NLLs, every job and NFE once.
    assert counts(rows["total"]) == {"cells": 74, "jobs": 72 * 2 + 10 + 1 + 2, "samples": 144_000, "nfe": TOTAL_NFE}
    assert rows["total"]["hours"] == pytest.approx(TOTAL_NFE * SECONDS_PER_NFE["mlp"] / 3600)


def test_hours_use_the_configured_seconds_per_nfe(cfg):
    c = copy.deepcopy(cfg)
    c["plan"] = {"seconds_per_nfe": {"mlp": 3.6e-3, "iddpm": 7.2e-3}}  # 1e-6 and 2e-6 hours per NFE
    iddpm_nfe = 2000 * 2 * SUM_K + N_TEST * SUM_K
    total = plan(c, root=ROOT)[-1]
    # ncsn and edm keep the MLP estimate
    expected = (DISCRETE_NFE - iddpm_nfe) * 1e-6 + iddpm_nfe * 2e-6 + CONTINUOUS_NFE * SECONDS_PER_NFE["mlp"] / 3600
    assert total["hours"] == pytest.approx(expected)


def test_unknown_network_type_takes_the_ddim_paper_estimate(cfg):
    c = copy.deepcopy(cfg)
    for model in c["models"].values():
        model["network"]["type"] = "ddpm_unet"
    total = plan(c, root=ROOT)[-1]
    assert DEFAULT_SECONDS_PER_NFE == pytest.approx(1.44e-3)
    assert total["hours"] == pytest.approx(TOTAL_NFE * 1.44e-3 / 3600)


def test_shards_change_jobs_not_samples_or_nfe(cfg):
    c = copy.deepcopy(cfg)
    c["sampling"]["shard_size"] = 300  # 2000 samples: 7 shards
    fd = plan(c, root=ROOT)[0]
    assert counts(fd) == {"cells": 40, "jobs": 40 * 7 + 40 + 1, "samples": 80_000, "nfe": MAIN_NFE + PC_NFE + MOMENTS_NFE}


def test_moments_from_m_images(cfg):
    c = copy.deepcopy(cfg)
    c["moments"]["M"] = 200
    assert plan(c, root=ROOT)[-1]["nfe"] == TOTAL_NFE - MOMENTS_NFE + 200 * 1000


def test_total_covers_cells_no_table_shows(cfg, tmp_path):
    spec = yaml.safe_load((ROOT / "workflows/config/tables/embedded_fd_digits.yaml").read_text())
    spec["rows"] = spec["rows"][:1]  # DDPM beta only
    (tmp_path / "one_row.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    c = copy.deepcopy(cfg)
    c["tables"] = [str(tmp_path / "one_row.yaml")]
    table, total = plan(c, root=ROOT)
    assert counts(table) == {"cells": 5, "jobs": 10, "samples": 10_000, "nfe": 2000 * SUM_K}
    assert counts(total) == {"cells": 74, "jobs": 157, "samples": 144_000, "nfe": TOTAL_NFE}


def test_sampler_without_an_nfe_count_is_named(cfg):
    c = copy.deepcopy(cfg)
    c["samplers"]["ddim_eta0"]["fn"] = "dpm_solver"
    with pytest.raises(ConfigError, match=r"plan: sampler function 'dpm_solver' has no NFE count; known: \[.*'ddim'"):
        plan(c, root=ROOT)


def test_format_plan_aligns_columns(cfg):
    lines = format_plan(plan(cfg, root=ROOT)).splitlines()
    assert lines[0].split() == ["table", "metric", "cells", "unavailable", "jobs", "samples", "NFE", "hours"]
    assert len({len(line) for line in lines}) == 1
    assert lines[-1].split() == ["total", "47", "0", "105", "94,000", f"{TOTAL_NFE:,}", f"{TOTAL_NFE * 7e-5 / 3600:.3g}"]
