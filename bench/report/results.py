"""Read the results folder's metrics.csv and provenance.json as the metrics stage wrote them."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS_COLUMNS = (
    "dataset", "model", "family", "sampler", "sampler_label", "grid", "K", "nfe", "metric",
    "value", "n_samples", "seed", "replicate", "wall_seconds", "status",
    "device", "device_seconds", "reference_stats_sha256", "ci_low", "ci_high",
)
# The header before the bootstrap interval columns; such files read with no interval.
LEGACY_METRICS_COLUMNS = METRICS_COLUMNS[:-2]
# Fields that identify one cell of the benchmark; seed replicates of a cell share them.
CELL_FIELDS = ("dataset", "model", "family", "sampler", "grid", "K")
STATUSES = ("ok", "failed")


class ResultsError(ValueError):
    """A results file that does not follow the contract, naming the file, line and column."""


@dataclass(frozen=True)
class MetricRecord:
    """One row of metrics.csv: one metric of one seed replicate of one cell."""

    line: int
    dataset: str
    model: str
    family: str
    sampler: str
    sampler_label: str
    grid: str
    K: int
    nfe: float | None
    metric: str
    value: float | None
    n_samples: int | None
    seed: int | None
    replicate: int
    wall_seconds: float | None
    status: str
    device: str | None
    device_seconds: float | None
    reference_stats_sha256: str | None
    ci_low: float | None = None
    ci_high: float | None = None

    @property
    def cell_key(self) -> tuple[str | int, ...]:
        """The values of CELL_FIELDS, which together name the cell."""
        return tuple(getattr(self, f) for f in CELL_FIELDS)


def _parser(kind: type, required: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text == "":
            if required:
                raise ValueError("is empty")
            return None
        try:
            number = kind(text)
        except ValueError:
            kind_name = "an integer" if kind is int else "a number"
            raise ValueError(f"{text!r} is not {kind_name}") from None
        if kind is float and not math.isfinite(number):
            raise ValueError(f"{text!r} is not a finite number")
        return number

    return parse


def _text(text: str) -> str:
    if text == "":
        raise ValueError("is empty")
    return text


def _optional_text(text: str) -> str | None:
    return text or None


_PARSERS: dict[str, Callable[[str], Any]] = {
    **{
        name: _text
        for name in ("dataset", "model", "family", "sampler", "sampler_label", "grid", "metric")
    },
    "K": _parser(int, required=True),
    "nfe": _parser(float, required=False),
    "value": _parser(float, required=False),
    "n_samples": _parser(int, required=False),
    "seed": _parser(int, required=False),
    "replicate": _parser(int, required=True),
    "wall_seconds": _parser(float, required=False),
    "device": _optional_text,
    "device_seconds": _parser(float, required=False),
    "reference_stats_sha256": _optional_text,
    "ci_low": _parser(float, required=False),
    "ci_high": _parser(float, required=False),
}


def _parse_status(path: Path, line: int, text: str) -> str:
    if text not in STATUSES:
        raise ResultsError(
            f"{path} line {line}: column 'status': {text!r} is not one of {STATUSES}"
        )
    return text


def read_metrics(path: Path) -> list[MetricRecord]:
    """Parse metrics.csv, refusing a wrong header, unparsable fields or duplicated replicates."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(
            f"{path} not found: the report reads metrics.csv from the results folder "
            "(a header-only file means nothing has finished yet)"
        )
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, ()))
        if header not in (METRICS_COLUMNS, LEGACY_METRICS_COLUMNS):
            raise ResultsError(
                f"{path}: header {list(header)} differs from the contract {list(METRICS_COLUMNS)}"
            )
        records: list[MetricRecord] = []
        first_line: dict[tuple[Any, ...], int] = {}
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ResultsError(
                    f"{path} line {line}: {len(row)} fields, expected {len(header)}"
                )
            fields: dict[str, Any] = {}
            for name, text in zip(header, row, strict=True):
                if name == "status":
                    fields[name] = _parse_status(path, line, text)
                    continue
                try:
                    fields[name] = _PARSERS[name](text)
                except ValueError as err:
                    raise ResultsError(f"{path} line {line}: column {name!r} {err}") from None
            if fields["status"] == "ok" and fields["value"] is None:
                raise ResultsError(f"{path} line {line}: status 'ok' needs a value")
            if fields["status"] == "failed" and fields["value"] is not None:
                raise ResultsError(
                    f"{path} line {line}: status 'failed' must leave value empty, "
                    f"got {row[METRICS_COLUMNS.index('value')]!r}"
                )
            low, high = fields.get("ci_low"), fields.get("ci_high")
            if (low is None) != (high is None) or (low is not None and not low <= high):
                raise ResultsError(
                    f"{path} line {line}: columns 'ci_low', 'ci_high' must both be empty or "
                    f"low <= high, got {low!r}, {high!r}"
                )
            record = MetricRecord(line=line, **fields)
            identity = (record.cell_key, record.metric, record.replicate)
            if identity in first_line:
                cell = dict(zip(CELL_FIELDS, record.cell_key, strict=True))
                raise ResultsError(
                    f"{path} line {line}: replicate {record.replicate} of metric "
                    f"{record.metric!r} for cell {cell} "
                    f"repeats line {first_line[identity]}"
                )
            first_line[identity] = line
            records.append(record)
    return records


def read_provenance(path: Path) -> dict[str, Any]:
    """Load provenance.json, which must hold one JSON object (rendered key by key)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path} not found: the report needs the run's provenance") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: holds a JSON {type(data).__name__}, expected an object")
    return data
