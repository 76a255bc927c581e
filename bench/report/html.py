"""Self-contained HTML pages (inline CSS, relative links only) from jinja2 templates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

from bench.report.image_grids import SampleGrid
from bench.report.perf_runs import PerfRun
from bench.report.specs import TableSpec
from bench.report.tables import SPREAD_CI, SPREAD_SD, Cell, SampleKey, TableData, format_delta, format_nfe, format_value
from bench.runtime.stage_times import StageTime

# Provenance keys summarised at the top of every page when present with a scalar value; the
# index lists every key in full.
HEADLINE_KEYS = ("created", "git_commit", "git_dirty", "config_hash", "device")
# The index's "run at a glance" table: (label, provenance.json keys shown together).
SUMMARY_ROWS = (
    ("Code", ("git_commit", "git_dirty")),
    ("Config hash", ("config_hash",)),
    ("Packages", ("packages",)),
    ("Devices", ("device", "device_clock")),
    ("Speed options of sampling", ("speed",)),
    ("Seeds", ("seeds",)),
    ("Sample counts", ("sample_counts",)),
    ("Metric backend and mode", ("metric_backend",)),
    ("Reference statistics sha256", ("reference_stats_sha256",)),
    ("Compute of all cells", ("cells_wall_seconds", "cells_device_seconds")),
)
NOT_RECORDED = "not recorded"

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(value=format_value, delta=format_delta, nfe=format_nfe, urlpath=quote)


@dataclass(frozen=True)
class ReportInputs:
    """What the report was rendered from, shown on the index page."""

    metrics_path: str
    metrics_sha256: str
    metrics_rows: int
    spec_paths: tuple[str, ...]
    stage_times: tuple[StageTime, ...] = ()
    perf: PerfRun | None = None  # the newest run of python -m bench perf in results/perf.csv


@dataclass(frozen=True)
class ProvenanceEntry:
    """One key of provenance.json: scalars and scalar lists as text, objects as children."""

    key: str
    text: str | None
    children: tuple[ProvenanceEntry, ...]


def table_page_name(spec: TableSpec) -> str:
    """File name of a table's HTML page inside the report folder."""
    return f"table_{spec.id}.html"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def provenance_entries(data: Mapping[str, Any]) -> tuple[ProvenanceEntry, ...]:
    """Turn any JSON object into entries for a nested definition list, in file order."""
    def entry(key: str, value: Any) -> ProvenanceEntry:
        if isinstance(value, Mapping):
            return ProvenanceEntry(key, None if value else "{}", provenance_entries(value))
        if isinstance(value, list) and any(isinstance(v, (list, Mapping)) for v in value):
            items = tuple(entry(f"[{i}]", v) for i, v in enumerate(value))
            return ProvenanceEntry(key, None, items)
        if isinstance(value, list):
            return ProvenanceEntry(key, ", ".join(map(_scalar, value)) or "[]", ())
        return ProvenanceEntry(key, _scalar(value), ())

    return tuple(entry(str(k), v) for k, v in data.items())


def summary_text(value: Any) -> str:
    """Any provenance value as one line: objects as 'key: value; ...', lists comma-separated."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {summary_text(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, list):
        return ", ".join(summary_text(v) for v in value) or "[]"
    return _scalar(value)


def speed_text(record: Mapping[str, Any]) -> str:
    """A speed-options record (bench.runtime.speed) in one line: the options enabled, with their mode or dtype,
    and those asked for but skipped, with why; 'none' when the network ran as it is."""
    parts = []
    for name, entry in record.items():
        if entry.get("enabled"):
            detail = entry.get("mode") or entry.get("dtype")
            parts.append(f"{name} ({detail})" if detail else name)
        elif entry.get("skipped"):
            parts.append(f"{name} skipped ({entry['skipped']})")
    return ", ".join(parts) or "none"


def run_summary(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, text) rows of the index's run-at-a-glance table; absent keys read 'not recorded'."""
    rows = []
    for label, keys in SUMMARY_ROWS:
        parts = []
        for key in keys:
            if key not in provenance:
                continue
            value = provenance[key]
            if key == "git_dirty":
                parts.append({True: "dirty (uncommitted changes)", False: "clean"}.get(value, f"dirty: {value}"))
            elif key == "speed":
                parts.append("; ".join(speed_text(record) for record in value) or NOT_RECORDED)
            elif key in ("device_clock", "cells_wall_seconds", "cells_device_seconds"):
                parts.append(f"{key} {summary_text(value)}")
            else:
                parts.append(summary_text(value))
        rows.append((label, ", ".join(parts) if parts else NOT_RECORDED))
    return rows


def cell_title(cell: Cell, decimals: int = 2) -> str:
    """Hover text of a result cell: which run it is and how it was measured."""
    if cell.identity is None:
        return "no row of metrics.csv matches this cell yet"
    parts = [", ".join(f"{k}={v}" for k, v in cell.identity.items())]
    runs = cell.n_ok + cell.n_failed
    seeds = ", ".join(map(str, cell.seeds))
    parts.append(f"{runs} seed replicate{'s' if runs != 1 else ''}"
                 + (f" (seeds {seeds})" if seeds else ""))
    if cell.n_samples:
        parts.append(f"samples per replicate: {', '.join(map(str, sorted(set(cell.n_samples))))}")
    if cell.wall_seconds is not None:
        parts.append(f"mean wall time {cell.wall_seconds:.1f} s")
    if cell.device_seconds is not None:
        parts.append(f"mean device time {cell.device_seconds:.1f} s")
    if cell.devices:
        parts.append(f"device {', '.join(cell.devices)}")
    if cell.reference_hashes:
        parts.append(f"reference statistics sha256 {', '.join(cell.reference_hashes)}")
    if cell.spread is not None:
        parts.append(spread_text(cell, decimals))
    if cell.tie:
        parts.append("tied for best: its interval overlaps the best value's")
    if cell.n_failed:
        parts.append(f"{cell.n_failed} replicate{'s' if cell.n_failed != 1 else ''} failed")
    return "; ".join(parts)


def spread_text(cell: Cell, decimals: int) -> str:
    """The spread a cell shows, named: sd over seed replicates, or the bootstrap interval of one replicate."""
    if cell.spread == SPREAD_SD:
        return f"sd {format_value(cell.sd, decimals)} over {cell.n_ok} seed replicates"
    if cell.spread == SPREAD_CI:
        low, high = (format_value(v, decimals) for v in cell.interval)
        return f"bootstrap interval [{low}, {high}] over the cell's samples"
    return "–"


def _spec_cells(table: TableData) -> list[tuple[str, Any, Cell]]:
    """(row label, column value, cell) for every cell of a table, row by row."""
    return [
        (row.label, value, cell)
        for row, cells in zip(table.spec.rows, table.cells, strict=True)
        for value, cell in zip(table.spec.column_values, cells, strict=True)
    ]


def _headline(provenance: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        (k, _scalar(provenance[k])) for k in HEADLINE_KEYS
        if k in provenance and not isinstance(provenance[k], (Mapping, list))
    ]


def write_html_report(tables: Sequence[TableData], provenance: Mapping[str, Any],
                      grids: Mapping[SampleKey, SampleGrid], figures: Mapping[str, str],
                      latex: Mapping[str, str], inputs: ReportInputs, out_dir: Path) -> Path:
    """Write index.html and one page per table; figures/latex map table id to relative paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "headline": _headline(provenance),
        "dirty": provenance.get("git_dirty") is True,
        "page_name": table_page_name,
        "cell_title": cell_title,
        "spread_text": spread_text,
        "spec_cells": _spec_cells,
        "figures": figures,
        "latex": latex,
    }
    for table in tables:
        samples = [[grids.get(c.sample_key) if c.sample_key else None for c in row]
                   for row in table.cells]
        page = _ENV.get_template("table.html.j2").render(
            table=table, samples=samples, has_samples=any(any(r) for r in samples), **common
        )
        (out_dir / table_page_name(table.spec)).write_text(page, encoding="utf-8")
    index = out_dir / "index.html"
    index.write_text(
        _ENV.get_template("index.html.j2").render(
            tables=tables, provenance=provenance_entries(provenance), inputs=inputs,
            summary=run_summary(provenance),
            n_grids=len(grids), **common,
        ),
        encoding="utf-8",
    )
    return index
