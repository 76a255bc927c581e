"""The report step: the HTML and LaTeX tables and the figures, rendered from results/metrics.csv."""

from __future__ import annotations

from pathlib import Path

from bench.report.render import render_report


def run(out: Path, results: Path, tables: list[Path]) -> None:
    """Render the table specs ``tables`` from the results folder ``results`` into the report folder ``out``."""
    render_report(results, tables, out)
