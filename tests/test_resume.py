"""A DAG killed mid-shard resumes with only the unfinished work, and samples and metrics are bitwise the same
whatever the sharding, batching and job parallelism."""

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from fault_dag import ENV, ROOT, metric_values, small_config, snakemake, snakemake_command

from bench.runtime.io import load_npz

pytestmark = pytest.mark.slow

# 60 samples in 2 shards of 30, one sample per batch, 100 steps: each shard samples for seconds.
N_SAMPLES = 60
SLOW = {"n_samples": N_SAMPLES, "shard_size": 30, "batch_size": 1, "seed": 0}
CELL = "results/samples/digits/mlp/ddpm_beta/K100"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def slow_config(workspace):
    return small_config(workspace, samplers=("ddpm_beta",), K=(100,), sampling=SLOW, name="slow")


@pytest.fixture(scope="module")
def reference(workspace, slow_config):
    """An uninterrupted run, one job at a time."""
    work = workspace / "reference"
    r = snakemake(slow_config, work, cores=1)
    assert r.returncode == 0, r.stderr[-3000:]
    return work


def cell_samples(work: Path) -> dict[str, np.ndarray]:
    """The cell's shards concatenated in seed order."""
    shards = [load_npz(p, ("images", "seeds")) for p in sorted((work / CELL).glob("shard*.npz"))]
    return {k: np.concatenate([s[k] for s in shards]) for k in ("images", "seeds")}


def sample_jobs(root: psutil.Process, work: Path) -> list[tuple[psutil.Process, dict, Path]]:
    """(process, spec, output) of each `bench sample` job among the descendants of ``root`` only.

    Jobs run in ``work``, so their output paths are relative to it.
    """
    jobs = []
    for proc in root.children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "bench" in cmd and "sample" in cmd and "--spec" in cmd:
            jobs.append((proc, json.loads(cmd[cmd.index("--spec") + 1]), work / cmd[cmd.index("--out") + 1]))
    return jobs


def test_sigkill_mid_shard_then_rerun_redoes_only_the_unfinished_work(workspace, slow_config, reference):
    work = workspace / "killed"
    snake = subprocess.Popen(snakemake_command(slow_config, work, cores=1), cwd=ROOT, env=ENV, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(snake.stdout), daemon=True)
    reader.start()
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and snake.poll() is None and time.monotonic() < deadline:
        done = list((work / CELL).glob("shard*.npz"))
        for proc, spec, out in sample_jobs(psutil.Process(snake.pid), work) if done else []:
            started = f"sampling indices [{spec['start']}, {spec['stop']})"
            # Mid-work: its own log line says sampling began, and its output is not there yet.
            if not out.exists() and any(started in line for line in list(log)):
                proc.send_signal(signal.SIGKILL)
                victim = (proc, out)
        time.sleep(0.05)
    assert victim is not None, "no sampling job was caught mid-shard:\n" + "".join(log[-40:])
    assert snake.wait(timeout=300) != 0
    reader.join(timeout=10)
    proc, out = victim
    assert not proc.is_running()
    assert "Error in rule sample_shard" in "".join(log)
    # The kill left nothing that a later step could take as complete: no shard, no temporary file.
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))
    assert not (work / "results/cells").exists() and not (work / "results/metrics.csv").exists()

    before = {p: p.stat().st_mtime_ns for p in (work / "results").rglob("*") if p.is_file()}
    finished_shards = [p for p in before if p.suffix == ".npz" and "samples" in p.parts]
    assert len(finished_shards) == 1 and work / "results/models/mlp.pt" in before

    rerun = snakemake(slow_config, work, cores=1)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "finished outputs were rewritten"
    ran = {line.split()[-1].rstrip(":") for line in rerun.stdout.splitlines() + rerun.stderr.splitlines()
           if line.startswith(("rule ", "localrule "))}
    # The extractor and the reference statistics reran only if the kill came before they were made
    # (unfinished work too): with one core, Snakemake may schedule them before or after the shards.
    unfinished = {rule for rule, folder in (("train_extractor", "extractors"), ("reference_stats", "refs"))
                  if not any(folder in p.parts for p in before)}
    assert ran == {"sample_shard", "features", "fd_is", "collect", "report", "all"} | unfinished
    assert out.exists()
    assert not [p for p in (work / "results").rglob("*.tmp")]

    assert metric_values(work / "results/metrics.csv") == metric_values(reference / "results/metrics.csv")
    resumed, uninterrupted = cell_samples(work), cell_samples(reference)
    assert np.array_equal(resumed["seeds"], np.arange(N_SAMPLES))
    assert np.array_equal(resumed["images"], uninterrupted["images"])


def test_samples_and_metrics_do_not_depend_on_shards_batches_or_cores(workspace, slow_config, reference):
    other = small_config(workspace, samplers=("ddpm_beta",), K=(100,), name="resharded",
                         sampling={"n_samples": N_SAMPLES, "shard_size": 25, "batch_size": 7, "seed": 0})
    work = workspace / "resharded"
    r = snakemake(other, work, cores=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((work / CELL).glob("shard*.npz"))) == 3
    a, b = cell_samples(reference), cell_samples(work)
    assert np.array_equal(a["seeds"], b["seeds"]) and np.array_equal(a["images"], b["images"])
    assert len(np.unique(a["images"].reshape(N_SAMPLES, -1), axis=0)) == N_SAMPLES  # not trivially equal
    rows = metric_values(reference / "results/metrics.csv")
    assert rows == metric_values(work / "results/metrics.csv")
    assert {r[8] for r in rows} == {"fd_digits", "is_digits"} and all(np.isfinite(float(r[9])) for r in rows)
