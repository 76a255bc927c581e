"""The warm worker: a job forked from it behaves as the same job in a fresh process, and nothing outlives its owner."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench.checkpoints.model_file import save_model
from bench.nets.factory import build_network
from bench.runtime.io import load_npz
from bench.runtime.warm_worker import DECLINED, ENV_VAR, SUPPORTED, remove_stale_workers, start_worker, thread_counts

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="the warm worker runs on Linux only")
CLIENT = "import sys; from bench.runtime.warm_worker import run_in_worker; print(repr(run_in_worker(sys.argv[1], sys.argv[2:])))"


@pytest.fixture
def probe_worker():
    worker = start_worker(cwd=TESTS, entry="worker_probe:main")
    assert Path(worker.socket_path).exists(), "the server did not start listening"
    yield worker
    worker.stop()


@pytest.fixture
def bench_worker():
    worker = start_worker(cwd=ROOT)
    yield worker
    worker.stop()


def client(worker, *argv: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """``run_in_worker`` in a process of its own; its stdout ends with the return value's repr."""
    return subprocess.run([sys.executable, "-c", CLIENT, worker.socket_path, *argv], capture_output=True, text=True,
                          timeout=120, env=env if env is not None else dict(os.environ), **kw)


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize(
    ("env", "start_env", "expected"),
    [
        ({}, {}, {}),
        ({"OMP_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "2"}, {}),
        ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, {}, {"torch": 1, "blas": 1}),
        ({"OPENBLAS_NUM_THREADS": "3"}, {}, {"blas": 3}),
        ({}, {"OMP_NUM_THREADS": "4"}, None),  # a fresh process would not see the server's 4
        ({"OMP_NUM_THREADS": "0"}, {}, None),
        ({"OMP_NUM_THREADS": "two"}, {}, None),
        ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "2"}, {}, None),  # one torch setting cannot give both
    ],
)
def test_thread_counts_a_child_applies_or_none_when_it_cannot_match(env, start_env, expected):
    assert thread_counts(env, start_env) == expected


def test_job_takes_on_its_clients_directory_environment_umask_limits_and_threads(probe_worker, tmp_path):
    out = tmp_path / "state.json"
    env = dict(os.environ, PROBE="from-the-client", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")

    def limits():
        os.umask(0o027)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))

    r = client(probe_worker, "report", str(out), env=env, cwd=tmp_path, preexec_fn=limits)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "0", r.stderr
    state = json.loads(out.read_text())
    assert state["cwd"] == str(tmp_path)
    assert state["probe"] == "from-the-client"
    assert state["umask"] == 0o027
    assert state["fsize"] == 1 << 20
    assert state["torch_threads"] == 1
    assert state["blas_threads"] == [1]
    assert state["argv0"] == "python -m bench"


def test_job_writes_to_its_clients_streams(probe_worker):
    r = client(probe_worker, "echo", "hello")
    assert r.stdout.splitlines() == ["out: hello", "0"]
    assert r.stderr == "err: hello\n"


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        (["exit", "3"], 3, ""),
        (["exit", "256"], 0, ""),  # as a process's exit status: modulo 256
        (["sysexit", "no such model"], 1, "no such model\n"),
        (["raise"], 1, "RuntimeError: probe failed on purpose\n"),
    ],
)
def test_exit_status_is_that_of_a_fresh_process(probe_worker, argv, code, stderr):
    r = client(probe_worker, *argv)
    assert r.stdout.splitlines()[-1] == str(code)
    assert r.stderr.endswith(stderr)
    if argv == ["raise"]:
        assert r.stderr.startswith("Traceback (most recent call last):")


def test_job_killed_by_a_signal_kills_its_client_with_it(probe_worker):
    r = client(probe_worker, "kill", "SIGKILL")
    assert r.returncode == -signal.SIGKILL
    assert r.stdout == ""


def test_killing_the_client_stops_its_job(probe_worker, tmp_path):
    pidfile = tmp_path / "pid"
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, probe_worker.socket_path, "sleep", str(pidfile)])
    assert wait_for(pidfile.exists)
    job = int(pidfile.read_text())
    assert alive(job)
    proc.kill()
    proc.wait()
    assert wait_for(lambda: not alive(job)), "the job outlived its client"


def test_two_jobs_at_once_both_finish(probe_worker, tmp_path):
    outs = [tmp_path / f"state{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, probe_worker.socket_path, "report", str(o)],
                              stdout=subprocess.PIPE, text=True) for o in outs]
    assert [p.communicate(timeout=120)[0].splitlines()[-1] for p in procs] == ["0", "0"]
    assert len({json.loads(o.read_text())["pid"] for o in outs}) == 2


def test_request_it_cannot_reproduce_is_declined(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    worker = start_worker(cwd=TESTS, entry="worker_probe:main")
    try:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        r = client(worker, "exit", "5", env=env)
        assert r.stdout.splitlines()[-1] == "None"  # declined: the caller runs the step itself
        assert DECLINED.decode() not in r.stderr and r.stderr == ""
        r = client(worker, "exit", "5", env=dict(env, OMP_NUM_THREADS="1"))
        assert r.stdout.splitlines()[-1] == "5"
    finally:
        worker.stop()


def test_no_server_means_the_step_runs_in_the_clients_process(tmp_path):
    args = [sys.executable, "-m", "bench", "validate", "--config", str(TESTS / "configs/tiny.yaml")]
    direct = subprocess.run(args, capture_output=True, text=True, timeout=120)
    absent = subprocess.run(args, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, **{ENV_VAR: str(tmp_path / "no.sock")}))
    assert direct.returncode == absent.returncode == 0
    assert absent.stdout == direct.stdout and direct.stdout.endswith("valid; 18 cells\n")
    assert absent.stderr == ""


def test_server_exits_and_removes_its_socket_when_its_parent_dies(tmp_path):
    starter = ("import sys, time; sys.path.insert(0, sys.argv[1]); from bench.runtime.warm_worker import start_worker; "
               "w = start_worker(entry='worker_probe:main'); print(w.process.pid, w.socket_path, flush=True); "
               "time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", starter, str(TESTS)], cwd=TESTS, stdout=subprocess.PIPE, text=True)
    pid, path = parent.stdout.readline().split()
    assert alive(int(pid)) and Path(path).exists()
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not Path(path).parent.exists()), "the server outlived the process that started it"


def test_a_killed_servers_folder_is_removed_and_a_live_ones_kept(probe_worker, tmp_path):
    killed = start_worker(cwd=TESTS, entry="worker_probe:main")
    assert Path(killed.socket_path).exists()
    killed.process.kill()  # SIGKILL: no finally clause runs, the folder and its socket stay behind
    killed.process.wait()
    stale = Path(killed.socket_path).parent
    assert stale.exists()
    assert stale in remove_stale_workers()
    assert not stale.exists() and Path(probe_worker.socket_path).exists()
    assert client(probe_worker, "exit", "0").returncode == 0  # the probe did not disturb the live server


def _mlp(tmp_path: Path) -> Path:
    network = {"type": "mlp", "width": 16, "depth": 2, "emb_dim": 8}
    cfg = {"network": network, "family": "ddpm", "schedule": {"name": "linear", "T": 100}}
    return save_model(tmp_path / "mlp.pt", build_network(network, channels=1, image_size=8), cfg, (1, 8, 8), 16, {})


def _sample_args(model: Path, out: Path) -> list[str]:
    spec = {"sampler": {"fn": "ddpm", "grid": "uniform", "options": {"variance": "beta"}}, "K": 10, "start": 0,
            "stop": 300, "seed": 7, "batch_size": 128, "context": "model mlp, sampler ddpm, K=10"}
    return ["sample", "--spec", json.dumps(spec), "--model", str(model), "--out", str(out)]


def test_sample_shard_through_the_worker_is_bitwise_the_fresh_processes(bench_worker, tmp_path):
    model = _mlp(tmp_path)
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    fresh = subprocess.run([sys.executable, "-m", "bench", *_sample_args(model, tmp_path / "fresh.npz")],
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, **threads))
    assert fresh.returncode == 0, fresh.stderr
    warm = client(bench_worker, *_sample_args(model, tmp_path / "warm.npz"), env=dict(os.environ, **threads))
    assert warm.stdout.splitlines()[-1] == "0", warm.stderr  # run by the worker, not by the client itself
    a, b = (load_npz(tmp_path / f"{n}.npz", ("images", "seeds")) for n in ("fresh", "warm"))
    assert a["images"].shape == (300, 1, 8, 8)
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["seeds"], b["seeds"])


def test_file_size_limit_of_the_job_applies_in_the_worker(bench_worker, tmp_path):
    model = _mlp(tmp_path)
    out = tmp_path / "samples" / "shard0000.npz"
    r = client(bench_worker, *_sample_args(model, out),
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8 * 1024, 8 * 1024)))
    assert r.stdout.splitlines()[-1] == "1"
    assert f"error: [Errno 27] cannot write {out}: File too large" in r.stderr
    assert list(out.parent.iterdir()) == []
