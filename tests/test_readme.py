"""Every command the README gives runs: steps of ``python -m bench`` as written, Snakemake's as dry runs.

The install line and ``pytest`` are what CI itself runs from the README, so they are not run again here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_BY_CI = ("python3 -m venv", "pytest")


def readme_commands() -> list[str]:
    """Shell lines of the README's bash blocks (comments cut) and its inline snakemake / python -m bench spans."""
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    commands += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(("snakemake ", "python -m bench "))]
    return list(dict.fromkeys(commands))


def test_the_readme_gives_the_three_commands_first_and_stays_short():
    text = README.read_text(encoding="utf-8")
    first_block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1).splitlines()
    assert first_block[0].startswith("python3 -m venv") and "-c constraints.txt" in first_block[0]
    assert first_block[1:] == ["snakemake --cores all", "pytest"]
    assert len(text.splitlines()) <= 150
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def _as_run(command: str, work: Path) -> list[str]:
    argv = shlex.split(command.replace("gpu=N", "gpu=1"))
    if argv[0] == "snakemake":
        # A dry run plans the same DAG, from the repository root as the README says, outputs kept out of it.
        extra = [] if "--unlock" in argv else ["-n"]
        return [sys.executable, "-m", "snakemake", *argv[1:], *extra, "--directory", str(work)]
    assert argv[:3] == ["python", "-m", "bench"], f"README command {command!r} is neither snakemake nor a bench step"
    return [sys.executable, *argv[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in readme_commands() if not c.startswith(RUN_BY_CI)])
def test_readme_command_runs(command, tmp_path):
    r = subprocess.run(_as_run(command, tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert r.returncode == 0, f"{command}\n{r.stderr[-3000:]}"


def test_the_commands_ci_runs_are_the_readmes():
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    install = next(c for c in readme_commands() if c.startswith("python3 -m venv"))
    assert "pip install -q -c constraints.txt -e '.[dev]'" in ci and "-c constraints.txt -e '.[dev]'" in install
    assert re.search(r"^pytest$", ci, flags=re.MULTILINE)
