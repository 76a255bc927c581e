"""Fixtures shared by test files."""

from __future__ import annotations

from pathlib import Path

import pytest
from dag import run_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of tests/configs/tiny.yaml (results/ and reports/), made once per session."""
    return run_tiny(tmp_path_factory.mktemp("tiny"))
