"""The SLURM profile: its keys, a run of the tiny config through sbatch on a local single-node SLURM
that gives the local run's results, and results that do not depend on the number of shards."""

import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import yte
from snakemake.profiles import ProfileConfigFileParser

from bench.config import cells, read_yaml, shard_ranges
from bench.steps.shared_cells import shared_cells

pytest_plugins = ["slurm_cluster"]

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "slurm/config.yaml"
TINY = ROOT / "tests/configs/tiny.yaml"
GPU_RULES = ("train_model", "sample_shard", "features", "fd_is", "nll")
SITE_ENV = ("DPM_SLURM_PARTITION", "DPM_SLURM_GPU_PARTITION", "DPM_SLURM_ACCOUNT", "DPM_SLURM_GPU_MODEL")


def snakemake_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]


def planned_group_jobs(cfg: dict) -> dict[str, int]:
    """Group jobs the profile makes of a config's shards and metric jobs (its group-components)."""
    per_group = yaml.safe_load(PROFILE.read_text())["group-components"]
    shared = shared_cells(cfg)
    cs = [c for c in cells(cfg) if c not in shared]  # a shared cell's jobs are its computing cell's
    nll_jobs = {(c.model, cfg["samplers"][c.sampler]["grid"], c.K) for c in cs if "nll" in cfg["samplers"][c.sampler]}
    return {
        "sample": math.ceil(len(cs) * len(shard_ranges(cfg)) / per_group["sample"]),
        # group-components counts connected components: a cell's features jobs with its fd_is job
        # are one, each nll job (one per model, grid and K) another.
        "metrics": math.ceil((len(cs) + len(nll_jobs)) / per_group["metrics"]),
    }


def parsed_profile(monkeypatch, **site) -> dict:
    """slurm/config.yaml as Snakemake reads it (CLI-style values) with the given DPM_SLURM_* set."""
    for name in SITE_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in site.items():
        monkeypatch.setenv(name, value)
    with open(PROFILE) as f:
        return ProfileConfigFileParser().parse(f)


def test_profile_without_site_keys_asks_one_gpu_per_gpu_job_and_groups_small_jobs(monkeypatch):
    p = parsed_profile(monkeypatch)
    assert p["executor"] == "slurm"
    assert (ROOT / p["configfile"]).is_file()
    assert not any("slurm_partition" in v or "slurm_account" in v or "gpu_model" in v
                   for v in p["default-resources"] + p["set-resources"])
    assert {f"{rule}:gpu=1" for rule in GPU_RULES} <= set(p["set-resources"])
    assert "train_model=8" in p["set-threads"]
    assert set(p["groups"]) >= {"sample_shard=sample", "fd_is=metrics", "nll=metrics"}
    assert set(p["group-components"]) == {"sample=4", "metrics=8"}
    assert p["resources"] == ["gpu=1"] and p["set-resource-scopes"] == ["gpu=local"]
    assert p["slurm-logdir"].startswith("results/")


def test_profile_takes_partition_account_and_gpu_model_from_the_environment(monkeypatch):
    p = parsed_profile(monkeypatch, DPM_SLURM_PARTITION="cpuq", DPM_SLURM_GPU_PARTITION="gpuq",
                       DPM_SLURM_ACCOUNT="proj42", DPM_SLURM_GPU_MODEL="a100")
    assert {"slurm_partition=cpuq", "slurm_account=proj42"} <= set(p["default-resources"])
    for rule in GPU_RULES:
        assert {f"{rule}:slurm_partition=gpuq", f"{rule}:gpu_model=a100"} <= set(p["set-resources"])
    # Without a GPU partition of their own, GPU jobs go to the one partition.
    p = parsed_profile(monkeypatch, DPM_SLURM_PARTITION="shared")
    assert "sample_shard:slurm_partition=shared" in p["set-resources"]
    assert not any("gpu_model" in v for v in p["set-resources"])


def test_profile_is_found_as_slurm_from_the_repository_root(tmp_path):
    # `--profile slurm` resolves ./slurm/config.yaml, whose configfile is the paper profile.
    r = subprocess.run(snakemake_cmd("-n", "--cores", "2", "--profile", "slurm", "--directory", str(tmp_path)),
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    planned = planned_group_jobs(read_yaml(ROOT / "workflows/config/paper.yaml"))
    assert out.count("Group job sample") == planned["sample"]
    assert out.count("Group job metrics") == planned["metrics"]


def test_local_profile_is_found_as_local_from_the_repository_root_and_gives_gpu_rules_one_gpu(tmp_path):
    # `--profile local` resolves ./local/config.yaml, beside ./slurm: the two profiles live side by side.
    r = subprocess.run(snakemake_cmd("-n", "--cores", "2", "--profile", "local", "--resources", "gpu=1",
                                     "--configfile", str(TINY), "--directory", str(tmp_path)),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    gpu_rules = set(yaml.safe_load((ROOT / "local/config.yaml").read_text())["set-resources"])
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(.*?)(?=^\[|\Z)", r.stdout + r.stderr, flags=re.M | re.S)
    planned = {rule for rule, _ in jobs}
    assert {"train_model", "sample_shard", "features", "fd_is", "nll"} <= planned & gpu_rules
    for rule, block in jobs:
        assert ("gpu=1" in block) == (rule in gpu_rules), (rule, block)


def test_profile_keys_are_options_of_snakemake_or_the_slurm_plugin():
    r = subprocess.run(snakemake_cmd("--help"), capture_output=True, text=True, timeout=120)
    options = set(re.findall(r"--([a-z][a-z0-9-]+)", r.stdout))
    keys = {k for k in yaml.safe_load(PROFILE.read_text()) if not k.startswith("__")}
    assert keys <= options, sorted(keys - options)


def tiny_subset(path: Path, samplers: list[str], K: list[int], **sampling) -> Path:
    """tests/configs/tiny.yaml cut to its mlp model, ``samplers`` and ``K``, without tables (the
    runs stop at results/), so that these runs stay as small as they are when the tiny config grows."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["models"] = {"mlp": cfg["models"]["mlp"]}
    cfg["samplers"] = {name: cfg["samplers"][name] for name in samplers}
    cfg["experiments"] = [{"model": "mlp", "samplers": samplers, "K": K}]
    cfg["sampling"].update(sampling)
    cfg["tables"] = []
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def cluster_profile(cluster, tmp: Path, configfile: Path) -> dict:
    """Our profile rendered for the test cluster: squeue status (no accounting), fast polling, logs kept."""
    saved = dict(os.environ)
    os.environ.update(DPM_SLURM_PARTITION=cluster.partition, DPM_SLURM_GPU_MODEL=cluster.gpu_type)
    try:
        with open(PROFILE) as f:
            profile = yte.process_yaml(f, require_use_yte=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for resources in profile["set-resources"].values():
        resources["mem_mb"] = min(resources["mem_mb"], cluster.memory_mb // 2)
    profile.update({
        "configfile": str(configfile),
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 1,
        "seconds-between-status-checks": 1,
        "latency-wait": 5,
        "slurm-logdir": str(tmp / "slurm-logs"),
        "slurm-keep-successful-logs": True,
    })
    (tmp / "profile").mkdir()
    (tmp / "profile/config.yaml").write_text(yaml.safe_dump(profile, allow_unicode=True))
    return profile


@pytest.fixture(scope="module")
def slurm_and_local(slurm_cluster, tmp_path_factory):
    """results/ of the tiny config (DDPM, DDIM, Analytic-DDPM at K = 2) through SLURM and locally,
    run side by side, and the wall time of both.

    The local run takes the profile's thread counts: torch's results change in the last bits with
    the number of threads.
    """
    tmp = tmp_path_factory.mktemp("slurm-run")
    config = tiny_subset(tmp / "tiny.yaml", ["ddpm_beta", "ddim_eta0", "analytic_ddpm"], [2])
    threads = [f"{rule}={n}" for rule, n in cluster_profile(slurm_cluster, tmp, config)["set-threads"].items()]
    runs = {}
    t0 = time.monotonic()
    for name, args in (
        ("slurm", ["--cores", "2", "--profile", str(tmp / "profile")]),
        ("local", ["--cores", "2", "--configfile", str(config), "--set-threads", *threads]),
    ):
        (tmp / name).mkdir()
        log = open(tmp / f"{name}.log", "w")
        cmd = snakemake_cmd(*args, "--directory", str(tmp / name), "results/metrics.csv")
        env = dict(slurm_cluster.env, PYTHONUNBUFFERED="1")
        runs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in runs.items():
        rc = proc.wait(timeout=3600)
        log.close()
        assert rc == 0, f"{name} run failed:\n{(tmp / f'{name}.log').read_text()[-4000:]}\n{slurm_cluster.log_tail()}"
    return tmp, config, time.monotonic() - t0


def read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        # Timing and device columns say where and how fast a cell ran, not what it measured.
        skip = ("wall_seconds", "device_seconds", "device")
        return [{k: v for k, v in row.items() if k not in skip} for row in csv.DictReader(f)]


def slurm_jobs(env: dict[str, str], name: str) -> dict[str, dict[str, str]]:
    """Fields of every job called ``name`` that slurmctld still knows (MinJobAge), by job id."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True, text=True, check=True).stdout
    jobs = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]
    return {j["JobId"]: j for j in jobs if j.get("JobName") == name}


@pytest.mark.slow
def test_tiny_config_runs_through_sbatch(slurm_and_local, slurm_cluster):
    tmp, _, _ = slurm_and_local
    log = (tmp / "slurm.log").read_text()
    assert "localrule" not in log  # nothing ran on the submitting machine
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", log))
    kinds = {job: Path(path).relative_to(tmp / "slurm-logs").parts[0] for job, path in submitted.items()}
    single = [k for k in kinds.values() if not k.startswith("group_")]
    assert sorted(single) == sorted(
        ["rule_check_data", "rule_train_extractor", "rule_train_model", "rule_moments", "rule_reference_stats",
         "rule_collect"]
    ), log[-3000:]
    assert [k for k in kinds.values() if k.startswith("group_sample")] == ["group_sample_sample_shard"] * 2, log[-3000:]
    # 3 cells (each cell's 2 features jobs and its fd_is job are one connected component) and 1 nll
    # job: 4 components, up to 8 per group job
    assert len([k for k in kinds.values() if k.startswith("group_metrics_")]) == 1, log[-3000:]
    assert all(Path(path).is_file() for path in submitted.values())
    jobs = slurm_jobs(slurm_cluster.env, re.search(r"SLURM run ID: (\S+)", log).group(1))
    assert set(jobs) == set(submitted)
    for job, fields in jobs.items():
        assert (fields["JobState"], fields["Partition"]) == ("COMPLETED", slurm_cluster.partition)
        gpu = kinds[job] not in ("rule_check_data", "rule_train_extractor", "rule_reference_stats", "rule_collect")
        assert (fields.get("TresPerJob") == f"gres:gpu:{slurm_cluster.gpu_type}:1") == gpu, (kinds[job], fields)


@pytest.mark.slow
def test_tiny_config_through_slurm_equals_the_local_run(slurm_and_local):
    tmp, config, seconds = slurm_and_local
    slurm, local = tmp / "slurm/results", tmp / "local/results"
    assert read_metrics(slurm / "metrics.csv") == read_metrics(local / "metrics.csv")
    # FD and IS of 3 cells, NLL of the 2 whose sampler has a bound (DDPM, Analytic-DDPM).
    assert len(read_metrics(slurm / "metrics.csv")) == 3 * 2 + 2
    # Provenance too, but for its time stamp, the code version (read when each run's collect ran) and
    # the seconds its cells took.
    slurm_provenance, local_provenance = (
        {k: v for k, v in json.loads((d / "provenance.json").read_text()).items()
         if k not in ("created", "git_commit", "git_dirty", "cells_wall_seconds", "cells_device_seconds")}
        for d in (slurm, local)
    )
    assert slurm_provenance == local_provenance
    shards = sorted(p.relative_to(local) for p in local.glob("samples/**/*.npz"))
    assert len(shards) == 6
    for rel in shards:
        assert np.array_equal(np.load(slurm / rel)["images"], np.load(local / rel)["images"])
    print(f"\nSLURM and local runs of {config.name} side by side: {seconds:.0f} s")


@pytest.mark.slow
def test_samples_and_metrics_do_not_depend_on_the_number_of_shards(tmp_path):
    # One working directory: the model and extractor train once; sampling and FD / IS rerun per variant.
    work = tmp_path / "work"
    cells_dir = work / "results/cells/digits/mlp"
    names = ("ddpm_beta/K5", "ddim_eta0/K5")
    targets = [f"results/cells/digits/mlp/{c}/fd_is.json" for c in names] + ["results/cells/digits/mlp/nll-even/K5.json"]
    seen = {}
    for shard_size, n_shards in ((42, 1), (14, 3), (6, 7)):
        config = tiny_subset(tmp_path / f"tiny-{shard_size}.yaml", ["ddpm_beta", "ddim_eta0"], [5],
                             n_samples=42, shard_size=shard_size)
        r = subprocess.run(snakemake_cmd("--cores", "2", "--configfile", str(config), "--directory", str(work),
                                         *targets),
                           cwd=ROOT, capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
        # The new shard ranges change every shard's spec, so all shards and both FD / IS jobs rerun.
        stats = dict(re.findall(r"^(sample_shard|features|fd_is)\s+(\d+)$", r.stdout + r.stderr, re.MULTILINE))
        assert stats == {"sample_shard": str(2 * n_shards), "features": str(2 * n_shards), "fd_is": "2"}, r.stderr[-3000:]
        images = {}
        for c in names:
            files = [work / f"results/samples/digits/mlp/{c}/shard{i:04d}.npz" for i in range(n_shards)]
            images[c] = np.concatenate([np.load(f)["images"] for f in files])
            assert images[c].shape == (42, 1, 8, 8)
        fd_is = {c: json.loads((cells_dir / c / "fd_is.json").read_text()) for c in names}
        values = {c: (fd_is[c]["fd"], fd_is[c]["is_mean"], fd_is[c]["is_std"]) for c in names}
        values["nll"] = json.loads((cells_dir / "nll-even/K5.json").read_text())["bpd"]
        seen[n_shards] = (images, values)
    images_1, values_1 = seen[1]
    for n_shards in (3, 7):
        images, values = seen[n_shards]
        assert values == values_1, n_shards
        for c in names:
            assert np.array_equal(images[c], images_1[c]), (n_shards, c)
