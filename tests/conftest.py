"""Fixtures shared by test files."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from dag import run_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of tests/configs/tiny.yaml (results/ and reports/), made once per session."""
    return run_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def paper_dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``snakemake -n`` of the paper profile in an empty folder (no data, checkpoints or network), run once per
    session (its plan takes a minute); yields the run and its folder."""
    root, folder = Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("paper_dry_run")
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-n", "--cores", "2", "--configfile",
         str(root / "workflows/config/paper.yaml"), "--directory", str(folder)],
        cwd=root, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    return run, folder


@pytest.fixture(scope="module")
def fast_distributions():
    """One thread and no argument validation in torch.distributions, which dominates the oracles' cost (exact anyway)."""
    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)
    yield
    torch.distributions.Distribution.set_default_validate_args(True)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def served(tmp_path):
    """A folder (tmp_path/www) served over HTTP on 127.0.0.1, as the official hosts serve files; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir(exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
