"""Running the project's Snakefile from tests: the command line and one finished tiny run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
TINY_CONFIG = ROOT / "tests/configs/tiny.yaml"


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)


def run_tiny(work: Path) -> Path:
    """Run tests/configs/tiny.yaml to its report in ``work``; returns ``work``."""
    r = snakemake("--cores", "2", "--configfile", str(TINY_CONFIG), "--directory", str(work), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    (work / "snakemake.log").write_text(r.stdout + r.stderr)
    return work
