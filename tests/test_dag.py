"""The Snakemake DAG: dry runs of the shipped configs, bad configs stopped before any job, a tiny real run."""

import csv
import json
import platform
import re

import jsonschema
import numpy as np
import pytest
import yaml
from dag import ROOT, snakemake

SCHEMA = yaml.safe_load((ROOT / "bench/schema/results.schema.yaml").read_text())


def schema(name):
    return {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"}


def test_dry_run_of_the_default_config_plans_every_job(tmp_path):
    r = snakemake("-n", "--cores", "2", "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    # 102 cells x 1 shard of 2000 samples, less the two OT cells at K = T = 1000, which are the even ones
    assert counts["sample_shard"] == 100
    assert counts["fd_is"] == 100 and counts["train_model"] == 6 and counts["moments"] == 1
    assert counts["ode_nll"] == 2  # the continuous-time models ncsn (ve) and edm
    # one per model, grid and K: beta, beta-tilde and analytic share the DDPM model's even grid; the OT
    # bound has its own grid but at K = 1000; iDDPM's learned bound is on the respaced grid
    assert counts["nll"] == 3 * 5 - 1
    out_paths = re.findall(r"^\s*output: (.+)$", out, flags=re.MULTILINE)
    assert not [p for p in out_paths if "_ot/K1000/" in p or "nll-optimal/K1000" in p]
    assert counts["report"] == 1 and counts["collect"] == 1 and counts["oracle"] == 1


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "workflows/config/default.yaml").read_text())
    cfg["experiments"][0]["K"] = [10, 2000]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = snakemake("--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode != 0
    assert "experiments[0].K[1]': value 2000 is not allowed; K must be an integer in [1, T=1000]" in r.stderr
    assert not (tmp_path / "results").exists()


def test_tiny_run_metrics_match_schema(tiny_run):
    with open(tiny_run / "results/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    ints = ("K", "nfe", "n_samples", "seed", "replicate")
    for row in rows:
        floats = ("value", "wall_seconds", "device_seconds", "ci_low", "ci_high")
        typed = {k: int(v) if k in ints else float(v) if k in floats else v for k, v in row.items()
                 if v != "" or not k.startswith("ci_")}
        jsonschema.validate(typed, schema("metrics_row"))
        assert np.isfinite(typed["value"])
        # Every FD / IS row has its bootstrap interval, none of the likelihood rows.
        fd_or_is = row["metric"] in ("fd_digits", "is_digits")
        assert ("ci_low" in typed and "ci_high" in typed) == fd_or_is, row
    # 9 (model, sampler) x 2 K x (fd, is) + NLL of DDPM, Analytic-DDPM (even, OT) and iDDPM at 2 K (DDIM, EDM,
    # DDGM and PC have no VLB) + the PF-ODE NLL of the ve and edm models.
    assert len(rows) == 9 * 2 * 2 + 4 * 2 + 2
    pf_ode = [r for r in rows if r["sampler"] == "pf_ode"]
    assert {(r["model"], r["family"], r["metric"], r["grid"]) for r in pf_ode} == {
        ("ncsn", "ve", "ode_nll_bpd", "adaptive"), ("edm", "edm", "ode_nll_bpd", "adaptive")}
    assert all(r["K"] == r["nfe"] and int(r["n_samples"]) == 16 for r in pf_ode)  # K of a PF-ODE row = its NFE
    nfe = {(r["sampler"], r["K"], r["nfe"]) for r in rows if r["sampler"] != "pf_ode"}
    discrete = ("ddpm_beta", "ddim_eta0", "analytic_ddpm", "analytic_ddpm_ot", "iddpm_learned", "ddgm_alg4")
    assert nfe == {(s, k, k) for s in discrete for k in ("2", "5")} | {
        ("edm_heun", "2", "3"), ("edm_heun", "5", "9"),  # Heun: 2N - 1
        ("pc", "2", "4"), ("pc", "5", "10")}  # PC: a predictor and a corrector step per level
    cells = tiny_run / "results/cells/digits/mlp"
    for path in cells.glob("*/K*/fd_is.json"):
        jsonschema.validate(json.loads(path.read_text()), schema("fd_is"))
    for path in cells.glob("nll-*/K*.json"):
        jsonschema.validate(json.loads(path.read_text()), schema("nll"))
    for model in ("ncsn", "edm"):
        record = json.loads((tiny_run / f"results/cells/digits/{model}/ode_nll.json").read_text())
        jsonschema.validate(record, schema("ode_nll"))
        assert record["n_images"] == 16 and record["dequantization"] == "uniform"
    for path in (tiny_run / "results/cells/digits").glob("*/*/K*/fd_is.json"):
        jsonschema.validate(json.loads(path.read_text()), schema("fd_is"))
    jsonschema.validate(json.loads((tiny_run / "results/provenance.json").read_text()), schema("provenance"))


def test_tiny_run_ot_cells_visit_the_dp_trajectory_of_the_model_moments(tiny_run):
    from bench.core.schedules import DiscreteSchedule
    from bench.methods.analytic import load_moments
    from bench.methods.analytic_trajectory import optimal_trajectory

    gamma = load_moments(tiny_run / "results/moments/mlp.npz").gamma
    alpha_bars = DiscreteSchedule.named("linear", 100).alpha_bars
    cells = tiny_run / "results/cells/digits/mlp"
    for K in (2, 5):
        dp = optimal_trajectory(alpha_bars, gamma, K).tolist()
        shard = np.load(tiny_run / f"results/samples/digits/mlp/analytic_ddpm_ot/K{K}/shard0000.npz")
        assert shard["grid"].tolist() == dp
        assert json.loads((cells / f"analytic_ddpm_ot/K{K}/fd_is.json").read_text())["grid"] == dp
        assert json.loads((cells / f"nll-optimal/K{K}.json").read_text())["grid"] == dp
    assert dp != json.loads((cells / "nll-even/K5.json").read_text())["grid"]


def test_tiny_run_report_and_rerun_is_a_no_op(tiny_run):
    assert (tiny_run / "reports/index.html").stat().st_size > 0
    assert {p.name for p in (tiny_run / "reports/tables").glob("*.tex")} == {"tiny_fd_digits.tex", "tiny_nll.tex",
                                                                             "tiny_ode_nll.tex", "all.tex"}
    r = snakemake("-n", "--cores", "2", "--configfile", str(ROOT / "tests/configs/tiny.yaml"), "--directory",
                  str(tiny_run), cwd=ROOT)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout + r.stderr


def test_tiny_run_stage_times_sum_the_job_benchmarks(tiny_run):
    from bench.runtime.stage_times import RULE_STAGES, STAGES, job_seconds

    results = tiny_run / "results"
    with open(results / "stage_times.csv", newline="") as f:
        rows = {r["stage"]: r for r in csv.DictReader(f)}
    assert list(rows) == [*STAGES, "total"]
    files = {stage: [] for stage in STAGES}
    for path in (results / "benchmarks").rglob("*.tsv"):
        files[RULE_STAGES[path.relative_to(results / "benchmarks").parts[0]]].append(path)
    # One benchmark file per job: as many as the jobs' outputs.
    n_outputs = {
        "train": len(list((results / "models").glob("*.pt"))) + len(list((results / "extractors").glob("*.npz"))),
        "moments": len(list((results / "moments").glob("*.npz"))),
        "sample": len(list((results / "samples").rglob("shard*.npz"))),
        # every cell metric and model PF-ODE NLL, one features file per sample shard, and the reference statistics
        "metrics": len(list((results / "cells").rglob("*.json"))) + len(list((results / "features").rglob("*.npz")))
        + len(list((results / "refs").rglob("*.npz"))),
        "report": 2,  # collect and report
    }
    for stage in STAGES:
        assert int(rows[stage]["jobs"]) == len(files[stage]) == n_outputs[stage] > 0, stage
        seconds = sum(job_seconds(p) for p in files[stage])
        assert float(rows[stage]["seconds"]) == pytest.approx(seconds, abs=1e-3) and seconds > 0, stage
    total = float(rows["total"]["seconds"])
    assert total == pytest.approx(sum(float(rows[s]["seconds"]) for s in STAGES), abs=5e-3)
    assert sum(float(rows[s]["share"]) for s in STAGES) == pytest.approx(1.0, abs=1e-3)
    assert int(rows["total"]["jobs"]) == sum(n_outputs.values())
    # Printed at the end of the run, and shown in the report (without the report job, still running then).
    log = (tiny_run / "snakemake.log").read_text()
    assert "dpm-bench stage times" in log and f"total    {sum(n_outputs.values()):>5}" in log
    html = (tiny_run / "reports/index.html").read_text()
    assert 'id="stage-times"' in html and "<td>sample</td><td>" + str(n_outputs["sample"]) + "</td>" in html


def test_tiny_run_records_the_speed_options_its_sampling_jobs_applied(tiny_run):
    # tiny.yaml asks for keep_freed_memory and channels_last; every other option is off.
    results = tiny_run / "results"
    records = []
    for model, sampler in (("mlp", "ddim_eta0"), ("edm", "edm_heun"), ("ncsn", "pc")):
        for shard in sorted((results / f"samples/digits/{model}/{sampler}/K5").glob("shard*.npz")):
            records.append(json.loads(str(np.load(shard)["speed"])))
        fd_is = json.loads((results / f"cells/digits/{model}/{sampler}/K5/fd_is.json").read_text())
        assert fd_is["speed"] == [records[-1]]
    record = records[0]
    assert all(r == record for r in records)
    assert record["channels_last"] == {
        "enabled": True, "weights_4d": 0, "note": "the network has no 4-D weights: channels_last changes nothing"
    }
    assert record["keep_freed_memory"]["enabled"] == (platform.libc_ver()[0] == "glibc")
    assert {name: record[name]["enabled"] for name in ("tf32", "autocast", "compile", "cuda_graphs")} == {
        "tf32": False, "autocast": False, "compile": False, "cuda_graphs": False
    }
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["speed"] == [record]
    assert provenance["sampling"]["speed"] == {"keep_freed_memory": True, "channels_last": True}
    index = (tiny_run / "reports/index.html").read_text()
    # The shards keep their record as canonical JSON (sorted keys), so the index lists the options in that order.
    assert "Speed options of sampling</th><td class=\"name\">channels_last, keep_freed_memory" in index


def test_ot_cells_of_each_variance_visit_their_own_dp_trajectory(tmp_path):
    # Analytic-DPM Table 1: the sigma^2 = beta rows' OT is the DP over the beta bound's terms, which the
    # moments job saves beside Gamma_n; the analytic rows' is the DP over Gamma_n.
    from fault_dag import small_config

    from bench.core.schedules import DiscreteSchedule
    from bench.methods.analytic import load_moments
    from bench.methods.analytic_trajectory import bound_trajectory, optimal_trajectory

    tiny = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    path = small_config(tmp_path, samplers=("analytic_ddpm_ot",), K=(5,), name="ot")
    cfg = yaml.safe_load(path.read_text())
    cfg["samplers"]["ddpm_beta_ot"] = {"fn": "ddpm", "label": "DDPM, σ²=β, OT", "grid": "optimal", "nll": "beta",
                                       "nll_decoder": "chain", "options": {"variance": "beta", "clip_sigma_idx": 1,
                                                                           "clip_pixel": 1, "pixel_quantum": 0.125}}
    cfg["experiments"][0]["samplers"].append("ddpm_beta_ot")
    cfg["moments"] = tiny["moments"]
    cfg["metrics"]["nll"] = tiny["metrics"]["nll"]
    cfg["sampling"] = {**cfg["sampling"], "n_samples": 20}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    r = snakemake("--cores", "2", "--configfile", str(path), "--directory", str(tmp_path), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    moments = load_moments(tmp_path / "results/moments/mlp.npz")
    alpha_bars = DiscreteSchedule.named("linear", 100).alpha_bars
    beta = bound_trajectory(alpha_bars, moments.bound_terms, 5, "beta").tolist()
    analytic = optimal_trajectory(alpha_bars, moments.gamma, 5).tolist()
    assert beta != analytic
    cells = tmp_path / "results/cells/digits/mlp"
    for sampler, grid in (("ddpm_beta_ot", beta), ("analytic_ddpm_ot", analytic)):
        assert np.load(tmp_path / f"results/samples/digits/mlp/{sampler}/K5/shard0000.npz")["grid"].tolist() == grid
    nll = json.loads((cells / "nll-optimal/K5.json").read_text())
    jsonschema.validate(nll, schema("nll"))
    assert nll["grids"] == {"beta": beta, "analytic": analytic}
    assert nll["decoder"] == {"beta": "chain", "analytic": "chain"}
    record = json.loads((cells / "ddpm_beta_ot/K5/fd_is.json").read_text())
    jsonschema.validate(record, schema("fd_is"))
    assert record["sampler_options"] == {"variance": "beta", "clip_x0": True, "clip_sigma_idx": 1, "clip_pixel": 1,
                                         "pixel_quantum": 0.125}
