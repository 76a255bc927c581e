"""Lay metrics.csv records out as a table spec asks: one summarised cell per (row, column)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bench.report.derived import derived_records
from bench.report.results import CELL_FIELDS, MetricRecord
from bench.report.specs import RowSpec, TableSpec, TableSpecError

# Cell states: every replicate ok, some failed, all failed, nothing in metrics.csv.
OK, PARTIAL, FAILED, MISSING = "ok", "partial", "failed", "missing"

SPREAD_SD, SPREAD_CI = "sd", "ci"

SampleKey = tuple[str, str, str, int]  # dataset, model, sampler, K: the samples/ folder of a cell


@dataclass(frozen=True)
class Cell:
    """Our result for one (row, column) of a table, summarised over its seed replicates."""

    status: str
    mean: float | None
    sd: float | None
    n_ok: int
    n_failed: int
    nfe_values: tuple[float, ...]
    paper: float | None
    best: bool
    identity: dict[str, str | int] | None
    seeds: tuple[int, ...]
    n_samples: tuple[int, ...]
    wall_seconds: float | None
    sample_key: SampleKey | None
    devices: tuple[str, ...] = ()
    device_seconds: float | None = None
    reference_hashes: tuple[str, ...] = ()
    # The spread the cell shows: SPREAD_SD over seed replicates, or SPREAD_CI, the one replicate's
    # bootstrap interval from metrics.csv; interval is mean -/+ sd for the former.
    spread: str | None = None
    interval: tuple[float, float] | None = None
    tie: bool = False

    @property
    def delta(self) -> float | None:
        """Ours minus the paper's value, when both exist."""
        if self.mean is None or self.paper is None:
            return None
        return self.mean - self.paper

    @property
    def nfe_mean(self) -> float | None:
        """Mean measured NFE over the replicates that report one."""
        return statistics.fmean(self.nfe_values) if self.nfe_values else None


@dataclass(frozen=True)
class TableData:
    """A spec with its cells, cells[row][column] in the spec's order."""

    spec: TableSpec
    cells: tuple[tuple[Cell, ...], ...]

    def counts(self) -> dict[str, int]:
        """Cells planned (rows x columns), done (a value, possibly partial), failed and missing."""
        flat = [cell for row in self.cells for cell in row]
        by_status = {s: sum(cell.status == s for cell in flat) for s in (OK, PARTIAL, FAILED)}
        return {
            "planned": len(flat),
            "done": by_status[OK] + by_status[PARTIAL],
            "partial": by_status[PARTIAL],
            "failed": by_status[FAILED],
            "missing": sum(cell.status == MISSING for cell in flat),
        }


def format_value(value: float, decimals: int) -> str:
    """Round for display, without a '-0.00'."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def format_delta(value: float, decimals: int) -> str:
    """Signed difference for display ('+0.00' for a difference that rounds to zero)."""
    text = f"{value:+.{decimals}f}"
    return "+" + text[1:] if float(text) == 0 else text


def format_nfe(values: Sequence[float]) -> str:
    """Measured NFE: one number when all replicates agree, else the range 'low-high'."""
    def one(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:.1f}"

    low, high = min(values), max(values)
    return one(low) if low == high else f"{one(low)}\u2013{one(high)}"


def _sample_key(spec: TableSpec, selectors: dict[str, str | int]) -> SampleKey | None:
    if not all(f in selectors for f in ("dataset", "model", "sampler", "K")):
        return None
    return (
        str(selectors["dataset"]), str(selectors["model"]), str(selectors["sampler"]),
        int(selectors["K"]),
    )


def _summarise(records: list[MetricRecord], paper: float | None,
               selectors: dict[str, str | int], spec: TableSpec) -> Cell:
    if not records:
        return Cell(
            status=MISSING, mean=None, sd=None, n_ok=0, n_failed=0, nfe_values=(), paper=paper,
            best=False, identity=None, seeds=(), n_samples=(), wall_seconds=None,
            sample_key=_sample_key(spec, selectors),
        )
    records = sorted(records, key=lambda r: r.replicate)
    ok = [r for r in records if r.status == OK]
    values = [r.value for r in ok if r.value is not None]
    n_failed = len(records) - len(ok)
    status = OK if not n_failed else (FAILED if not ok else PARTIAL)
    walls = [r.wall_seconds for r in ok if r.wall_seconds is not None]
    device_times = [r.device_seconds for r in ok if r.device_seconds is not None]
    identity = dict(zip(CELL_FIELDS, records[0].cell_key, strict=True))
    mean = statistics.fmean(values) if values else None
    # Sample standard deviation over seed replicates (n - 1 denominator).
    sd = statistics.stdev(values) if len(values) > 1 else None
    spread, interval = None, None
    if sd is not None:
        spread, interval = SPREAD_SD, (mean - sd, mean + sd)
    elif len(ok) == 1 and ok[0].ci_low is not None:
        spread, interval = SPREAD_CI, (ok[0].ci_low, ok[0].ci_high)
    return Cell(
        status=status,
        mean=mean,
        sd=sd,
        n_ok=len(ok),
        n_failed=n_failed,
        nfe_values=tuple(r.nfe for r in ok if r.nfe is not None),
        paper=paper,
        best=False,
        identity=identity,
        seeds=tuple(r.seed for r in records if r.seed is not None),
        n_samples=tuple(r.n_samples for r in ok if r.n_samples is not None),
        wall_seconds=statistics.fmean(walls) if walls else None,
        sample_key=_sample_key(spec, identity),
        # A record's device field lists every device of the cell's steps, '; '-separated.
        devices=tuple(sorted({d for r in records if r.device for d in r.device.split("; ")})),
        device_seconds=statistics.fmean(device_times) if device_times else None,
        reference_hashes=tuple(sorted({r.reference_stats_sha256 for r in ok if r.reference_stats_sha256})),
        spread=spread,
        interval=interval,
    )


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _mark_best(spec: TableSpec, grid: list[list[Cell]]) -> None:
    """Per column, bold the best of our values, judged on the rounded numbers a reader sees.

    When every valued cell of the column has an interval, the best is bold only if its interval
    overlaps no other's; otherwise it and every cell whose interval overlaps its interval are a tie.
    """
    pick = min if spec.better == "lower" else max
    for j in range(len(spec.column_values)):
        shown = {
            i: float(format_value(row[j].mean, spec.decimals))
            for i, row in enumerate(grid) if row[j].mean is not None
        }
        if not shown:
            continue
        best = pick(shown.values())
        leaders = [i for i, value in shown.items() if value == best]
        if all(grid[i][j].interval is not None for i in shown):
            lead = pick(leaders, key=lambda i: grid[i][j].mean)
            tied = [i for i in shown if _overlap(grid[i][j].interval, grid[lead][j].interval)]
            if len(tied) > 1:
                for i in tied:
                    grid[i][j] = replace(grid[i][j], tie=True)
                continue
            leaders = [lead]
        for i in leaders:
            grid[i][j] = replace(grid[i][j], best=True)


def cross_product_rows(spec: TableSpec, records: Sequence[MetricRecord]) -> tuple[RowSpec, ...]:
    """A `rows: all` spec's rows: each (model, sampler) of ``records`` on the spec's dataset, sorted by name."""
    pairs = sorted({(r.model, r.sampler, r.sampler_label) for r in records if r.dataset == spec.dataset})
    return tuple(
        RowSpec(f"{model} | {label} ({sampler})", None, {"model": model, "sampler": sampler}, {})
        for model, sampler, label in pairs
    )


def build_table(spec: TableSpec, records: Sequence[MetricRecord]) -> TableData:
    """Match each (row, column) of the spec to one results cell; refuse ambiguous matches."""
    if spec.derived is not None:
        records = derived_records(spec.metric, spec.derived, records)
    relevant = [r for r in records if r.metric == spec.results_metric]
    if spec.all_rows:
        spec = replace(spec, rows=cross_product_rows(spec, relevant))
    grid: list[list[Cell]] = []
    for i, row in enumerate(spec.rows):
        cells = []
        for value in spec.column_values:
            if row.unavailable_reason(value) is not None:
                # Planned but not producible here: a missing cell, never matched against results.
                cells.append(_summarise([], row.paper.get(value), {}, spec))
                continue
            selectors = spec.cell_selectors(row, value)
            matched = [
                r for r in relevant if all(getattr(r, f) == v for f, v in selectors.items())
            ]
            keys = sorted({r.cell_key for r in matched}, key=str)
            if len(keys) > 1:
                differing = [
                    f for n, f in enumerate(CELL_FIELDS) if len({k[n] for k in keys}) > 1
                ]
                raise TableSpecError(
                    f"table spec {spec.source}: rows[{i}] ({row.label!r}) at "
                    f"{spec.column_field}={value!r} matches {len(keys)} cells of metrics.csv "
                    f"that differ in {differing} "
                    f"({[dict(zip(CELL_FIELDS, k, strict=True)) for k in keys]}); "
                    f"add {differing} to the row to pick one"
                )
            cells.append(_summarise(matched, row.paper.get(value), selectors, spec))
        grid.append(cells)
    _mark_best(spec, grid)
    return TableData(spec=spec, cells=tuple(tuple(row) for row in grid))
