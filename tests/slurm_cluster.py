"""A single-node SLURM cluster on loopback for tests: munged, slurmctld and slurmd, run as root.

The session fixture ``slurm_cluster`` writes a slurm.conf into a temporary directory (no
accounting, no cgroups: ``proctrack/linuxproc``, ``task/none``; two stand-in GPUs of type
``fake``), starts the daemons, waits until the node is idle, and at the end cancels what is left
of its jobs and stops every daemon it started, by PID. It skips with the reason when the Debian
packages ``slurm-wlm slurmctld slurmd slurm-client munge`` are missing or the tests do not run as
root. Client commands find the cluster through ``SLURM_CONF`` (and an ``srun`` shim on ``PATH``)
in ``SlurmCluster.env``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = (
    "munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun", "scontrol", "scancel"
)
APT_PACKAGES = "slurm-wlm slurmctld slurmd slurm-client munge"
MUNGE_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
PARTITION = "debug"
CPUS = 2
# Stand-in GPUs: device files that exist everywhere, so that `--gpus=fake:1` allocates and SLURM sets
# CUDA_VISIBLE_DEVICES as it does on a GPU node.
GPU_TYPE = "fake"
GPU_FILES = ("/dev/null", "/dev/zero")
READY_SECONDS = 60.0


@dataclass(frozen=True)
class SlurmCluster:
    """A running cluster: its directory, config file, the client environment and the node's size."""

    root: Path
    conf: Path
    env: dict[str, str]
    cpus: int
    memory_mb: int
    partition: str
    gpu_type: str

    def log_tail(self, n: int = 40) -> str:
        """The last lines of the daemons' logs, for failure messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / name
            lines = path.read_text(errors="replace").splitlines()[-n:] if path.exists() else ["(no log)"]
            parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here, or None if it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM/munge binaries not found: {missing} (Debian: apt-get install {APT_PACKAGES})"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (SlurmUser=root, munged started as the munge user)"
    return None


def node_memory_mb() -> int:
    """Physical memory in MiB, as slurmd reports it (RealMemory may not exceed it)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_conf(root: Path, *, cpus: int, memory_mb: int) -> Path:
    """slurm.conf (and gres.conf beside it) for one node, localhost, with every path under ``root``."""
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [
        "ClusterName=dpmbench",
        "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # Fresh ports: a cluster left behind by someone else on the default ports is not ours.
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "ReturnToService=2",
        # Finished jobs stay visible to squeue (the executor's status check without sacct) and to the
        # tests' scontrol for an hour.
        "MinJobAge=3600",
        # A scheduling pass every second (default 60 s): queued test jobs start without waiting.
        "SchedulerParameters=sched_interval=1",
        "GresTypes=gpu",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} "
        f"Gres=gpu:{GPU_TYPE}:{len(GPU_FILES)} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
    ]
    (root / "gres.conf").write_text(
        "".join(f"NodeName=localhost Name=gpu Type={GPU_TYPE} File={f}\n" for f in GPU_FILES)
    )
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def write_srun_shim(root: Path, conf: Path) -> Path:
    """A ``bin/srun`` under ``root`` that runs the real srun with this cluster's SLURM_CONF.

    The slurm-jobstep executor removes every SLURM_* variable, SLURM_CONF included, before its
    nested ``srun``; a real node finds its config in /etc/slurm or through slurmd, ours lives in a
    temporary directory. Jobs inherit PATH (sbatch --export=ALL), so they find this shim first.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "srun"
    shim.write_text(f'#!/bin/sh\nSLURM_CONF={shlex.quote(str(conf))} exec {shlex.quote(shutil.which("srun"))} "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        back = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return cred.returncode == 0 and back.returncode == 0


def _wait(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {seconds:.0f} s")
        time.sleep(0.2)


def _kill_pid(pid: int, seconds: float = 10.0) -> None:
    """SIGTERM one process we started, SIGKILL if it is still there after ``seconds``."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        _wait(gone, seconds, f"exit of PID {pid}")
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)


def _stop_process(proc: subprocess.Popen, seconds: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_munged() -> int | None:
    """Start munged as the munge user unless one already answers; return its PID if we started it."""
    if _munge_works():
        return None
    if not MUNGE_KEY.exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create", "--keyfile", str(MUNGE_KEY)],
                       check=True, capture_output=True)
    MUNGE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_DIR, "munge", "munge")
    MUNGE_DIR.chmod(0o755)
    pidfile = MUNGE_DIR / "munged.pid"
    subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--pid-file={pidfile}"], check=True,
                   capture_output=True, timeout=30)
    _wait(_munge_works, 15, "a working munged")
    return int(pidfile.read_text().split()[0])


def node_state(env: dict[str, str]) -> str:
    """The node's state as sinfo prints it ('' while the controller does not answer)."""
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else ""


def _cancel_jobs(env: dict[str, str]) -> None:
    """Cancel the jobs still queued or running on this cluster (a test that failed half-way)."""
    r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env, timeout=30)
    jobs = r.stdout.split()
    if r.returncode == 0 and jobs:
        subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=30)


@contextmanager
def running_cluster(root: Path, *, cpus: int = CPUS) -> Iterator[SlurmCluster]:
    """A started cluster under ``root``; on exit every daemon started here is stopped by its PID."""
    memory_mb = node_memory_mb()
    conf = write_conf(root, cpus=cpus, memory_mb=memory_mb)
    bin_dir = write_srun_shim(root, conf)
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    cluster = SlurmCluster(root, conf, env, cpus, memory_mb, PARTITION, GPU_TYPE)
    with ExitStack() as stack:
        munged = start_munged()
        if munged is not None:
            stack.callback(_kill_pid, munged)
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", "localhost"]):
            log = stack.enter_context(open(root / f"{daemon[0]}.stderr", "w"))
            proc = subprocess.Popen([*daemon, "-f", str(conf)], env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop_process, proc)
        stack.callback(_cancel_jobs, env)
        try:
            _wait(lambda: node_state(env) == "idle", READY_SECONDS, "node 'localhost' idle")
        except TimeoutError as err:
            raise RuntimeError(f"local SLURM did not start: {err}\n{cluster.log_tail()}") from None
        yield cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A running single-node SLURM for the test session (skipped where it cannot run)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with running_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
