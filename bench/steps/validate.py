"""The validate step: a configuration checked (schema, names, options, data paths) without running it."""

from __future__ import annotations

from pathlib import Path

from bench.config import cells, load_config


def project_root() -> Path:
    """Where relative paths of a config (table specs, data roots) resolve: the checkout holding the Snakefile
    beside this package (the README's editable install), else the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "Snakefile").is_file() else Path.cwd()


def run(config: Path) -> None:
    """Load and check ``config``; print its cell count (ConfigError lists every problem)."""
    cfg = load_config(config, root=project_root())
    print(f"{config}: valid; {len(cells(cfg))} cells")
