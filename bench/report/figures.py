"""SVG figures of a table's metric against measured NFE: ours solid, the paper's dashed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from bench.report.specs import RowSpec
from bench.report.tables import TableData, format_nfe

# Stable SVG ids and no timestamp, so an unchanged table gives a byte-identical file.
_SVG_RC = {"svg.hashsalt": "dpm-bench", "svg.fonttype": "path"}
# On the log axis, a tick closer than this factor to the last labelled one stays unlabelled.
_MIN_LABEL_RATIO = 1.15
# Positive values spanning more than this factor get a log y axis, so that one far-off row (the
# sigma^2 = beta-tilde NLL at K = 10) does not flatten every other row against the bottom.
LOG_Y_RATIO = 20.0
# 20 distinct colours; a report's samplers take them in sorted order, so a sampler keeps its
# colour in every figure of the report.
PALETTE = tuple(matplotlib.colormaps["tab20"].colors[::2] + matplotlib.colormaps["tab20"].colors[1::2])


def row_key(row: RowSpec) -> str:
    """What a figure line's colour follows: the row's sampler, else (rows that are not samplers) its label."""
    return str(row.selectors.get("sampler", row.label))


def line_colours(tables: Sequence[TableData]) -> dict[str, str]:
    """One colour per row key over all tables of a report, in sorted key order."""
    keys = sorted({row_key(row) for t in tables for row in t.spec.rows})
    return {key: to_hex(PALETTE[i % len(PALETTE)]) for i, key in enumerate(keys)}


def use_log_y(values: Sequence[float]) -> bool:
    """A log y axis when every value is positive and they span more than LOG_Y_RATIO."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_Y_RATIO


def _tick_labels(ticks: list[float]) -> list[str]:
    labels, last = [], None
    for tick in ticks:
        crowded = last is not None and tick / last < _MIN_LABEL_RATIO
        labels.append("" if crowded else format_nfe([tick]))
        last = last if crowded else tick
    return labels


def write_metric_figure(table: TableData, path: Path, colours: Mapping[str, str] | None = None) -> Path:
    """Plot each spec row as metric vs measured NFE (log x); error bars are the replicate sd.

    colours maps row keys (row_key) to colours, shared by a report's figures; the legend sits
    below the axes, never on the data.

    Paper points sit at the NFE we measured for the same cell, so a paper value whose cell has
    no finished run of ours is listed in the table only.
    """
    spec = table.spec
    # A bare Figure draws off-screen (Agg for raster, the SVG renderer here) with no pyplot state.
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    colours = colours or line_colours([table])
    xs: set[float] = set()
    ys: list[float] = []
    handles = []
    for i, (row, cells) in enumerate(zip(spec.rows, table.cells, strict=True)):
        color = colours[row_key(row)]
        ours = sorted(
            (c.nfe_mean, c.mean, c.sd or 0.0)
            for c in cells if c.mean is not None and c.nfe_mean is not None
        )
        if ours:
            x, y, err = zip(*ours, strict=True)
            bars = ax.errorbar(
                x, y, yerr=err if any(err) else None, fmt="-o", color=color, markersize=4,
                capsize=3, label=row.label,
            )
            bars.lines[0].set_gid(f"ours-{i}")
            handles.append(bars)
            xs.update(x)
            ys.extend(y)
        paper = sorted((c.nfe_mean, c.paper) for c in cells
                       if c.paper is not None and c.nfe_mean is not None)
        if paper:
            x, y = zip(*paper, strict=True)
            (line,) = ax.plot(x, y, linestyle="--", marker="x", color=color,
                              label=f"{row.label} ({spec.paper_label})")
            line.set_gid(f"paper-{i}")
            handles.append(line)
            xs.update(x)
            ys.extend(y)
    ax.set_title(spec.title)
    log_y = use_log_y(ys)
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(f"{spec.metric_label} ({spec.better} is better{', log scale' if log_y else ''})")
    ax.set_xlabel("NFE (measured network evaluations per sample, log scale)")
    ax.grid(True, color="#dddddd", linewidth=0.6)
    if xs:
        ticks = sorted(xs)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FixedFormatter(_tick_labels(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small",
                   frameon=False)
    else:
        ax.text(0.5, 0.5, "no finished cells with a measured NFE yet", transform=ax.transAxes,
                ha="center", va="center", color="#666666")
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(_SVG_RC):
        fig.savefig(path, format="svg", metadata={"Date": None})
    return path
