"""The latest run of ``python -m bench perf`` in results/perf.csv, as the report's sampler-cost table.

perf appends every run's rows to the CSV (bench.perf.rows, whose docstring defines the columns); the
report shows the rows of the newest run_id, formatted for reading. It reads the CSV only, without
importing torch, so that the report job stays light; a column an older perf did not write reads '-'.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MISSING = "-"


def _number(spec: str) -> Callable[[str], str]:
    def fmt(text: str) -> str:
        return format(float(text), spec) if text else MISSING

    return fmt


def _text(text: str) -> str:
    return text or MISSING


# (CSV column, table heading, formatter), in the order of perf's printed table.
SHOWN: tuple[tuple[str, str, Callable[[str], str]], ...] = (
    ("network", "network", _text),
    ("batch", "batch", _text),
    ("loop", "loop", _text),
    ("sampler", "sampler", _text),
    ("nfe", "NFE", _text),
    ("ms_per_nfe", "ms / NFE", _number(".3g")),
    ("overhead_pct", "overhead %", _number("+.1f")),
    ("ours_over_peer", "ours / peer", _number(".2f")),
    ("images_per_s", "images / s", _number(".4g")),
    ("tflops", "TFLOP/s", _number(".3g")),
    ("peak_pct", "% of peak", _number(".1f")),
    ("net_pct", "network %", _number(".1f")),
    ("noise_pct", "noise %", _number(".1f")),
    ("arith_pct", "rest %", _number(".1f")),
    ("note", "note", lambda text: text),
)
TEXT_COLUMNS = ("network", "loop", "sampler", "note")
# Run-wide columns, said once above the table.
CONTEXT = ("device_name", "torch", "diffusers", "threads", "clock", "repeats", "warmup", "state_dtype", "precision")


@dataclass(frozen=True)
class PerfRun:
    """The newest run of a perf CSV: its id, how many runs the file holds, its context and its formatted rows."""

    run_id: str
    runs_in_file: int
    context: tuple[tuple[str, str], ...]
    headings: tuple[str, ...]
    numeric: tuple[bool, ...]  # per column: right-aligned numbers (else names and notes)
    rows: tuple[tuple[str, ...], ...]


def latest_perf_run(path: Path) -> PerfRun | None:
    """The newest run (greatest run_id: ISO 8601 times sort as text) of the perf CSV at ``path``; None without one."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    if not records:
        return None
    if "run_id" not in records[0]:
        raise ValueError(f"{path} has no run_id column: it is not a file of python -m bench perf")
    run_ids = {r["run_id"] for r in records}
    newest = max(run_ids)
    rows = [r for r in records if r["run_id"] == newest]
    first = rows[0]
    return PerfRun(
        run_id=newest,
        runs_in_file=len(run_ids),
        context=tuple((key, first[key]) for key in CONTEXT if first.get(key)),
        headings=tuple(heading for _, heading, _ in SHOWN),
        numeric=tuple(column not in TEXT_COLUMNS for column, _, _ in SHOWN),
        rows=tuple(tuple(fmt(r.get(column) or "") for column, _, fmt in SHOWN) for r in rows),
    )
