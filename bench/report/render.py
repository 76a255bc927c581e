"""Render the report folder (HTML, LaTeX, figures, sample grids) from a results folder only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from bench.report.figures import line_colours, write_metric_figure
from bench.report.html import ReportInputs, write_html_report
from bench.report.image_grids import shared_sample_grids, write_sample_grids
from bench.report.latex import write_latex_tables
from bench.report.perf_runs import latest_perf_run
from bench.report.results import read_metrics, read_provenance
from bench.report.specs import load_table_specs
from bench.report.tables import build_table
from bench.runtime.stage_times import stage_times


def render_report(results_dir: Path, table_specs: Sequence[Path], out_dir: Path) -> Path:
    """Read results_dir/{metrics.csv, provenance.json, samples/}, write out_dir; return index.html.

    Stage times come from results_dir/benchmarks (the jobs that finished before this one), the sampler
    cost table from the newest run in results_dir/perf.csv when python -m bench perf has written one.
    Outputs: index.html, table_<id>.html, figures/<id>.svg, tables/<id>.tex, tables/all.tex and
    samples/<dataset>/<model>/<sampler>/K<K>.png, all linked by relative paths.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    specs = load_table_specs([Path(p) for p in table_specs])
    metrics_path = results_dir / "metrics.csv"
    records = read_metrics(metrics_path)
    provenance = read_provenance(results_dir / "provenance.json")
    tables = [build_table(spec, records) for spec in specs]

    out_dir.mkdir(parents=True, exist_ok=True)
    grids = write_sample_grids(results_dir / "samples", out_dir)
    grids |= shared_sample_grids(grids, provenance.get("shared_cells", {}))
    figures = {}
    colours = line_colours(tables)
    for table in tables:
        path = write_metric_figure(table, out_dir / "figures" / f"{table.spec.id}.svg", colours)
        figures[table.spec.id] = path.relative_to(out_dir).as_posix()
    latex = {
        key: path.relative_to(out_dir).as_posix()
        for key, path in write_latex_tables(tables, out_dir / "tables").items()
    }
    inputs = ReportInputs(
        metrics_path=str(metrics_path),
        metrics_sha256=hashlib.sha256(metrics_path.read_bytes()).hexdigest(),
        metrics_rows=len(records),
        spec_paths=tuple(str(spec.source) for spec in specs),
        stage_times=tuple(r for r in stage_times(results_dir / "benchmarks") if r.jobs),
        perf=latest_perf_run(results_dir / "perf.csv"),
    )
    return write_html_report(tables, provenance, grids, figures, latex, inputs, out_dir)
