"""LaTeX output: one booktabs tabular per table spec plus a standalone all.tex that inputs them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.report.latex_text import escape_latex
from bench.report.tables import FAILED, MISSING, PARTIAL, SPREAD_CI, Cell, TableData, format_nfe, format_value

MISSING_TEXT = "--"
FAILED_TEXT = "fail"
PARTIAL_MARK = r"$^\dagger$"
# Floats are flushed now and then so a long list of tables never hits LaTeX's float limit.
_TABLES_PER_FLUSH = 8

LEGEND = (
    "Cells: mean over seed replicates, with the standard deviation ($\\pm$) when there are "
    "several; a cell of one replicate may show its bootstrap interval over its own samples "
    "(95\\% unless the run's provenance says otherwise), as $\\pm$ half its width or as [low, high]. "
    "Bold: best of our values in the column, judged on the rounded numbers; where the column's "
    "cells have intervals (bootstrap, or mean $\\pm$ sd), only when the best one's interval "
    "overlaps no other. Underlined: tied for best, the intervals overlap. "
    f"A dash ({MISSING_TEXT}): no result yet. {FAILED_TEXT}: every replicate failed. "
    f"{PARTIAL_MARK}: some replicates failed, the mean is over the others. "
    "Italic sub-rows: the value the paper reports, and our measured NFE where it is not K."
)


def _cell_tex(cell: Cell, decimals: int, interval: str = "none") -> str:
    if cell.status == MISSING:
        return MISSING_TEXT
    if cell.status == FAILED:
        return FAILED_TEXT
    value = format_value(cell.mean, decimals)
    text = rf"\textbf{{{value}}}" if cell.best else (rf"\underline{{{value}}}" if cell.tie else value)
    if cell.sd is not None:
        text += rf" $\pm$ {format_value(cell.sd, decimals)}"
    elif cell.spread == SPREAD_CI and interval == "pm":
        text += rf" $\pm$ {format_value((cell.interval[1] - cell.interval[0]) / 2, decimals)}"
    elif cell.spread == SPREAD_CI and interval == "interval":
        low, high = (format_value(v, decimals) for v in cell.interval)
        text += rf" [{low}, {high}]"
    return text + (PARTIAL_MARK if cell.status == PARTIAL else "")


def _nfe_differs(table: TableData, cells: Sequence[Cell]) -> bool:
    spec = table.spec
    return any(
        cell.nfe_values and (spec.column_field != "K" or set(cell.nfe_values) != {float(k)})
        for cell, k in zip(cells, spec.column_values, strict=True)
    )


def table_tex(table: TableData) -> str:
    """A booktabs tabular (no float, no preamble) ready for \\input inside a table."""
    spec = table.spec
    n = len(spec.column_values)
    arrow = r"$\downarrow$" if spec.better == "lower" else r"$\uparrow$"
    lines = [
        f"% dpm-bench table {spec.id}: {' '.join(spec.title.split())}",
        f"% Generated from results/metrics.csv and {spec.source.name}; edits are overwritten.",
        f"% Metric {spec.metric}, {spec.better} is better. " + LEGEND.replace(". ", ".\n% "),
        rf"\begin{{tabular}}{{l{'r' * n}}}",
        r"\toprule",
        rf"{escape_latex(spec.metric_label)} {arrow} & "
        rf"\multicolumn{{{n}}}{{c}}{{{escape_latex(spec.column_label)}}} \\",
        rf"\cmidrule(l){{2-{n + 1}}}",
        " & " + " & ".join(escape_latex(str(v)) for v in spec.column_values) + r" \\",
        r"\midrule",
    ]
    groups = []
    for row, cells in zip(spec.rows, table.cells, strict=True):
        label = row.latex or escape_latex(row.label)
        group = [label + " & " + " & ".join(_cell_tex(c, spec.decimals, spec.latex_interval) for c in cells) + r" \\"]
        if row.paper:
            paper = [format_value(c.paper, spec.decimals) if c.paper is not None else ""
                     for c in cells]
            group.append(rf"\quad\textit{{{escape_latex(spec.paper_label)}}} & "
                         + " & ".join(paper) + r" \\")
        if _nfe_differs(table, cells):
            nfe = [format_nfe(c.nfe_values) if c.nfe_values else "" for c in cells]
            group.append(r"\quad\textit{NFE} & " + " & ".join(nfe) + r" \\")
        groups.append(group)
    spaced = any(len(group) > 1 for group in groups)
    for index, group in enumerate(groups):
        if spaced and index:
            lines.append(r"\addlinespace")
        lines.extend(group)
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def document_tex(tables: Sequence[TableData]) -> str:
    """A standalone article that \\input's every table file from its own folder."""
    lines = [
        "% dpm-bench: all report tables. Compile in this folder: pdflatex all.tex",
        r"\documentclass{article}",
        r"\usepackage[T1]{fontenc}",
        r"\usepackage{lmodern}",
        r"\usepackage{booktabs}",
        r"\usepackage[margin=2cm]{geometry}",
        r"\begin{document}",
        r"\section*{dpm-bench result tables}",
        LEGEND,
    ]
    for index, table in enumerate(tables):
        spec = table.spec
        caption = f"{spec.title}. {spec.caption}" if spec.caption else spec.title
        lines += [
            r"\begin{table}[!htbp]",
            r"\centering\small",
            rf"\caption{{{escape_latex(caption)}}}",
            rf"\label{{tab:{spec.id}}}",
            rf"\input{{{spec.id}.tex}}",
            r"\end{table}",
        ]
        if (index + 1) % _TABLES_PER_FLUSH == 0:
            lines.append(r"\clearpage")
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"


def write_latex_tables(tables: Sequence[TableData], out_dir: Path) -> dict[str, Path]:
    """Write out_dir/{id}.tex for each table and out_dir/all.tex; returns them by id ('all')."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for table in tables:
        path = out_dir / f"{table.spec.id}.tex"
        path.write_text(table_tex(table), encoding="utf-8")
        written[table.spec.id] = path
    written["all"] = out_dir / "all.tex"
    written["all"].write_text(document_tex(tables), encoding="utf-8")
    return written
