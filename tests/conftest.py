"""Fixtures shared by test files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dag import run_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of tests/configs/tiny.yaml (results/ and reports/), made once per session."""
    return run_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def fast_distributions():
    """One thread and no argument validation in torch.distributions, which dominates the oracles' cost (exact anyway)."""
    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)
    yield
    torch.distributions.Distribution.set_default_validate_args(True)
