"""A warm worker for local runs: one process imports torch and dpm-bench once and forks every job from it.

A job of the embedded default spends about as long importing torch (1-2.5 CPU-s, by machine) as
sampling a K = 10 cell. Started by the Snakefile for local execution, the server holds those imports;
``python -m bench`` (the client, which imports only the standard library) hands it its argv, working
directory, environment, limits and standard streams, and the server forks a child that runs the step
exactly as ``bench.cli.main`` would in a fresh process. The client returns the child's exit status (or
dies of its signal). Without a server, or when it cannot be reached, the client runs the step itself,
so a cluster job (no server on its node) is unaffected.

Forking is safe because the server never runs an operation of torch or a BLAS: their thread pools do
not exist yet when a child starts, and each child sets the thread counts its job's environment asks for
(libgomp and OpenBLAS read those variables only when they load); a job whose environment the child
could not reproduce that way is declined and runs in its own process. A child dies with the
server (PR_SET_PDEATHSIG); it is sent SIGTERM when its client goes away (Snakemake cancelling a job),
and the server exits when the process that started it does.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# pidfd_open, PR_SET_PDEATHSIG and SOCK_SEQPACKET on AF_UNIX are Linux's; elsewhere every job imports torch itself.
SUPPORTED = sys.platform.startswith("linux")
ENV_VAR = "DPM_BENCH_WORKER"
DISABLE_ENV_VAR = "DPM_BENCH_NO_WORKER"
SOCKET_NAME = "worker.sock"
MAX_REQUEST = 1 << 20
STARTUP_WAIT_S = 30.0
ENTRY = "bench.cli:main"
# The modules of the steps that a DAG runs many times (sample, nll, moments, features, fd-is, train).
PRELOAD = (
    "numpy",
    "scipy.linalg",
    "threadpoolctl",
    "torch",
    "bench.cli",
    "bench.methods.analytic",
    "bench.data",
    "bench.core.time_grids",
    "bench.families",
    "bench.steps.sample",
    "bench.core.noise_kernel",
    "bench.steps.train",
    "bench.metrics.digits_cnn",
    "bench.metrics.extractors",
    "bench.metrics.feature_stats",
    "bench.metrics.nll",
    "bench.metrics.ode_nll",
    "bench.metrics.precision_recall",
    "bench.metrics.recon",
    "bench.metrics.shard_features",
)
# A job's limits as its shell set them (ulimit -f for a disk budget, say) apply to the forked child too.
LIMITS = tuple(
    getattr(resource, name)
    for name in ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_NOFILE")
)
_PR_SET_PDEATHSIG = 1
# Read by libgomp and OpenBLAS once, when they load, which for a forked child was in the server: the
# child applies a job's values (Snakemake sets them to the rule's threads) through the libraries' calls.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DECLINED = b"declined"


def run_in_worker(path: str, argv: list[str]) -> int | None:
    """Run ``python -m bench argv`` in the worker at ``path``: the exit code, or None if no worker took it."""
    request = json.dumps(
        {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": _umask(),
            "limits": [[lim, *resource.getrlimit(lim)] for lim in LIMITS],
            "affinity": sorted(os.sched_getaffinity(0)),
        }
    ).encode()
    if len(request) > MAX_REQUEST:
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(path)
        socket.send_fds(conn, [request], [0, 1, 2])
    except OSError:
        return None
    with conn:
        try:
            reply = conn.recv(64)
        except OSError:
            reply = b""
    if reply == DECLINED:
        return None
    if not reply:
        # The server died before the job ended; its child died with it (PR_SET_PDEATHSIG) and outputs are
        # written atomically, so the step is run here from the start.
        print(f"dpm-bench: the warm worker at {path} went away; running the step in this process", file=sys.stderr)
        return None
    status = int(reply)
    if status < 0:
        # Die of the job's signal, as Snakemake would have seen the job do; 128 + N where that cannot be.
        if -status not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class _Job:
    conn: socket.socket
    pid: int
    pidfd: int
    client_gone: bool = False


@dataclass
class _Server:
    listener: socket.socket
    parent_pid: int
    entry: Callable[[list[str]], int | None]
    start_env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    jobs: dict[int, _Job] = field(default_factory=dict)

    def loop(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        while os.getppid() == self.parent_pid:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self.accept()
                elif key.data[0] == "exit":
                    self.reap(key.data[1])
                else:
                    self.client_gone(key.data[1])

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            message, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
            request = json.loads(message)
        except (OSError, ValueError):
            conn.close()
            return
        threads = thread_counts(request["env"], self.start_env) if len(fds) == 3 else None
        if threads is None:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.send(DECLINED)
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            self.listener.close()
            for job in self.jobs.values():
                job.conn.close()
            os._exit(_run_child(conn, fds, request, threads, self.entry))
        for fd in fds:
            os.close(fd)
        job = _Job(conn, pid, os.pidfd_open(pid))
        self.jobs[pid] = job
        self.selector.register(job.pidfd, selectors.EVENT_READ, ("exit", pid))
        self.selector.register(conn, selectors.EVENT_READ, ("conn", pid))

    def reap(self, pid: int) -> None:
        job = self.jobs.pop(pid)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.selector.unregister(job.pidfd)
        if not job.client_gone:
            self.selector.unregister(job.conn)
        os.close(job.pidfd)
        try:
            job.conn.send(str(code).encode())
        except OSError:
            pass
        job.conn.close()

    def client_gone(self, pid: int) -> None:
        """The client's end is readable before its job ended: the client went away, so the job stops."""
        job = self.jobs[pid]
        job.client_gone = True
        self.selector.unregister(job.conn)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def thread_counts(env: dict[str, str], start_env: dict[str, str]) -> dict[str, int] | None:
    """The thread counts a job's ``env`` asks of torch and OpenBLAS beyond the server's ``start_env``.

    None when the child could not match a fresh process: a variable the server started with that the job
    lacks, a value that is not a positive integer, or OMP and MKL counts that torch cannot set apart.
    """
    asked = {}
    for var in THREAD_VARS:
        value = env.get(var)
        if value == start_env.get(var):
            continue
        if value is None or not value.isdigit() or int(value) < 1:
            return None
        asked[var] = int(value)
    torch_counts = {asked[var] for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if var in asked}
    if len(torch_counts) > 1:
        return None
    counts = {"torch": torch_counts.pop()} if torch_counts else {}
    if "OPENBLAS_NUM_THREADS" in asked:
        counts["blas"] = asked["OPENBLAS_NUM_THREADS"]
    return counts


def _apply_thread_counts(counts: dict[str, int]) -> None:
    if "torch" in counts:
        import torch

        torch.set_num_threads(counts["torch"])
    if "blas" in counts:
        from threadpoolctl import threadpool_limits

        threadpool_limits(counts["blas"], user_api="blas")


def _run_child(conn: socket.socket, fds: list[int], request: dict, threads: dict[str, int], entry: Callable) -> int:
    """In the forked child: take on the client's streams, directory, environment and limits; run the step."""
    conn.close()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own stream, for the rest of its life
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.umask(request["umask"])
        for lim, soft, hard in request["limits"]:
            resource.setrlimit(lim, (soft, hard))
        os.sched_setaffinity(0, request["affinity"])
        _apply_thread_counts(threads)
        sys.argv = ["python -m bench", *request["argv"]]
        code = _exit_code(entry(request["argv"]))
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _exit_code(code: object) -> int:
    """The status ``sys.exit(code)`` gives a Python process: None is 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def serve(directory: Path, parent_pid: int, preload: tuple[str, ...] = PRELOAD, entry: str = ENTRY) -> None:
    """Import ``preload``; for each request, fork a child that calls ``entry`` (module:function) on its argv."""
    for name in preload:
        importlib.import_module(name)
    module, _, function = entry.partition(":")
    run = getattr(importlib.import_module(module), function)
    path = directory / SOCKET_NAME
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        # Bound and listening under another name first: the socket's path appears only once it accepts.
        listener.bind(str(path) + ".new")
        listener.listen(64)
        os.rename(str(path) + ".new", path)
        _Server(listener, parent_pid, run).loop()
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class WarmWorker:
    """A started server: the socket its clients use, and the means to stop it."""

    process: subprocess.Popen
    socket_path: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        shutil.rmtree(Path(self.socket_path).parent, ignore_errors=True)


WORKER_DIR_PREFIX = "dpm-bench-worker-"
# A folder with no socket is a server still importing, unless it is older than this.
STALE_AFTER_S = 600.0


def _is_stale(directory: Path) -> bool:
    path = directory / SOCKET_NAME
    if not path.exists():
        try:
            return time.time() - directory.stat().st_mtime > STALE_AFTER_S
        except FileNotFoundError:
            return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(path))  # a live server reads an empty request and closes it
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def remove_stale_workers(tmp: Path | None = None) -> list[Path]:
    """Remove the folders of servers that died without cleaning up (a SIGKILLed run); return them."""
    removed = []
    for directory in Path(tmp or tempfile.gettempdir()).glob(WORKER_DIR_PREFIX + "*"):
        if directory.is_dir() and _is_stale(directory):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def start_worker(cwd: Path | None = None, entry: str = ENTRY) -> WarmWorker:
    """Start a server as a child of this process; its clients find it through the environment variable ENV_VAR."""
    remove_stale_workers()
    directory = Path(tempfile.mkdtemp(prefix=WORKER_DIR_PREFIX))
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.runtime.warm_worker", "--directory", str(directory), "--parent", str(os.getpid()),
         "--entry", entry],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    path = directory / SOCKET_NAME
    # Jobs that start before the socket exists import torch themselves; waiting for it (the server's
    # imports, a second or two) lets the first wave of jobs use the worker too.
    deadline = time.monotonic() + STARTUP_WAIT_S
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return WarmWorker(process, str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.runtime.warm_worker", description=__doc__.splitlines()[0])
    p.add_argument("--directory", type=Path, required=True, help="where the socket goes (removed on exit)")
    p.add_argument("--parent", type=int, required=True, help="the server exits when this process has")
    p.add_argument("--entry", default=ENTRY, help="module:function each job calls with its argv (default %(default)s)")
    args = p.parse_args(argv)
    serve(args.directory, args.parent, entry=args.entry)


if __name__ == "__main__":
    main()
