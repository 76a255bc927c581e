"""SVG figures of a table's metric against measured NFE: ours solid, the paper's dashed."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from bench.report.tables import TableData, format_nfe

# Stable SVG ids and no timestamp, so an unchanged table gives a byte-identical file.
_SVG_RC = {"svg.hashsalt": "dpm-bench", "svg.fonttype": "path"}
# On the log axis, a tick closer than this factor to the last labelled one stays unlabelled.
_MIN_LABEL_RATIO = 1.15


def _tick_labels(ticks: list[float]) -> list[str]:
    labels, last = [], None
    for tick in ticks:
        crowded = last is not None and tick / last < _MIN_LABEL_RATIO
        labels.append("" if crowded else format_nfe([tick]))
        last = last if crowded else tick
    return labels


def write_metric_figure(table: TableData, path: Path) -> Path:
    """Plot each spec row as metric vs measured NFE (log x); error bars are the replicate sd.

    Paper points sit at the NFE we measured for the same cell, so a paper value whose cell has
    no finished run of ours is listed in the table only.
    """
    spec = table.spec
    # A bare Figure draws off-screen (Agg for raster, the SVG renderer here) with no pyplot state.
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    xs: set[float] = set()
    handles = []
    for i, (row, cells) in enumerate(zip(spec.rows, table.cells, strict=True)):
        color = colors[i % len(colors)]
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
        paper = sorted((c.nfe_mean, c.paper) for c in cells
                       if c.paper is not None and c.nfe_mean is not None)
        if paper:
            x, y = zip(*paper, strict=True)
            (line,) = ax.plot(x, y, linestyle="--", marker="x", color=color,
                              label=f"{row.label} ({spec.paper_label})")
            line.set_gid(f"paper-{i}")
            handles.append(line)
            xs.update(x)
    ax.set_title(spec.title)
    ax.set_ylabel(f"{spec.metric_label} ({spec.better} is better)")
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
