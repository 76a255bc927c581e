"""Table specs: YAML files saying which results cells a report table shows and how."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bench.report.derived import DERIVED_RULES
from bench.runtime.strict_yaml import load_yaml

# Fields of results/metrics.csv that identify a cell: rows select on them, columns vary one.
SELECTOR_FIELDS = ("dataset", "model", "family", "sampler", "grid", "K")

# Output names a table id would overwrite.
RESERVED_IDS = {"all": "tables/all.tex", "index": "index.html"}

LATEX_INTERVALS = ("none", "pm", "interval")

ALL_ROWS = "all"

_TEXT = {"type": "string", "minLength": 1}

TABLE_SPEC_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dpm-bench report table spec",
    "type": "object",
    "required": [
        "id", "title", "metric", "metric_label", "better", "decimals", "dataset", "columns", "rows",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]*$"},
        "title": _TEXT,
        "caption": {"type": "string"},
        "metric": _TEXT,
        "metric_label": _TEXT,
        "better": {"enum": ["lower", "higher"]},
        "decimals": {"type": "integer", "minimum": 0, "maximum": 6},
        "dataset": _TEXT,
        "paper_label": _TEXT,
        # FD against this split's statistics (the same samples as the other tables; bench/config/tables.py).
        "reference_split": {"enum": ["train", "test"]},
        # How a one-replicate cell's bootstrap interval appears in the LaTeX table: not at all,
        # as +- its half-width, or as [low, high] (HTML always shows it on hover).
        "latex_interval": {"enum": list(LATEX_INTERVALS)},
        # A value read off other cells' rows of metrics.csv (bench.report.derived), not measured: the metric it
        # reads, the rule and the rule's threshold.
        "derived": {
            "type": "object",
            "required": ["metric", "rule", "threshold"],
            "additionalProperties": False,
            "properties": {"metric": _TEXT, "rule": {"enum": list(DERIVED_RULES)}, "threshold": {"type": "number"}},
        },
        # How the paper measured its numbers (sample count, reference split, step spacing, clipping...).
        "protocol": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "source": _TEXT,
                "samples": {"type": ["integer", "string"]},
                "reference": _TEXT,
                "spacing": _TEXT,
                "clipping": _TEXT,
                "implementation": _TEXT,
                "note": _TEXT,
            },
        },
        "columns": {
            "type": "object",
            "required": ["field", "values", "label"],
            "additionalProperties": False,
            "properties": {
                "field": {"enum": list(SELECTOR_FIELDS)},
                "values": {
                    "type": "array",
                    "minItems": 1,
                    "uniqueItems": True,
                    "items": {"type": ["integer", "string"]},
                },
                "label": _TEXT,
            },
        },
        # "all": one row per (model, sampler) of metrics.csv on the spec's dataset (the cross product a config's
        # `samplers: all` runs), labelled "<model> | <sampler label>".
        "rows": {"oneOf": [{"const": ALL_ROWS}, {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["label"],
                "additionalProperties": False,
                "properties": {
                    "label": _TEXT,
                    "latex": _TEXT,
                    **{field: _TEXT for field in SELECTOR_FIELDS if field != "K"},
                    "K": {"type": "integer", "minimum": 1},
                    # YAML gives integer keys for K columns, so key names are checked in Python.
                    "paper": {"type": "object", "additionalProperties": {"type": "number"}},
                    # The paper's entry as printed, where it is not a plain number ("3.01*", "7.28±0.10").
                    "paper_text": {"type": "object", "additionalProperties": {"type": "string"}},
                    # Selectors of one column only (column value -> {model, sampler, ...}), for a row whose
                    # cells differ per column (a dataset column's model). K there is the cell's own K where
                    # it is not the column's (a baseline run at its own sampler's K, in a paper's blank-K column).
                    "at": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                **{field: _TEXT for field in SELECTOR_FIELDS if field not in ("dataset", "K")},
                                "K": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                    # A planned row the product cannot produce (no checkpoint, no method): shown as missing.
                    "unavailable": _TEXT,
                    # Columns of an otherwise producible row that are not (column value -> reason).
                    "unavailable_at": {"type": "object", "additionalProperties": _TEXT},
                    # The source row ("<model> | <sampler>") of a generated spec, for tracing it back.
                    "csv": {"type": "string"},
                    # How this row departs from the paper's own setup (e.g. converted weights).
                    "note": _TEXT,
                },
            },
        }]},
    },
}


class TableSpecError(ValueError):
    """A table spec file that cannot be used, with the file, key and value at fault."""


@dataclass(frozen=True)
class RowSpec:
    """One table row: its labels, the results fields it selects, and the paper's numbers."""

    label: str
    latex: str | None
    selectors: dict[str, str | int]
    paper: dict[int | str, float]
    unavailable: str | None = None
    unavailable_at: dict[int | str, str] | None = None
    at: dict[int | str, dict[str, str]] | None = None

    def unavailable_reason(self, column: int | str) -> str | None:
        """Why this row has no result at ``column`` by design (None: it is planned to run)."""
        return self.unavailable or (self.unavailable_at or {}).get(column)


@dataclass(frozen=True)
class TableSpec:
    """A validated table spec; `source` is the YAML file it came from."""

    source: Path
    id: str
    title: str
    caption: str | None
    metric: str
    metric_label: str
    better: str
    decimals: int
    dataset: str
    paper_label: str
    column_field: str
    column_values: tuple[int | str, ...]
    column_label: str
    rows: tuple[RowSpec, ...]
    latex_interval: str = "none"
    reference_split: str | None = None

    @property
    def results_metric(self) -> str:
        """The metric of its rows in metrics.csv: FD against a named split is `<metric>_<split>` there."""
        return self.metric if self.reference_split is None else f"{self.metric}_{self.reference_split}"
    derived: dict | None = None
    all_rows: bool = False

    def row_selectors(self, row: RowSpec) -> dict[str, str | int]:
        """Fields a results cell must match to belong to `row` (the spec's dataset included)."""
        return {"dataset": self.dataset, **row.selectors}

    def cell_selectors(self, row: RowSpec, column: int | str) -> dict[str, str | int]:
        """Fields a results cell must match to sit at (`row`, `column`)."""
        return {**self.row_selectors(row), self.column_field: column, **(row.at or {}).get(column, {})}


def _key_path(path: Sequence[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _fail(source: Path, key: str, message: str) -> TableSpecError:
    return TableSpecError(f"table spec {source}: {key}: {message}")


def _check_semantics(source: Path, raw: dict[str, Any]) -> None:
    if raw["id"] in RESERVED_IDS:
        raise _fail(
            source, "id", f"{raw['id']!r} is reserved for {RESERVED_IDS[raw['id']]}; choose another"
        )
    field = raw["columns"]["field"]
    values = raw["columns"]["values"]
    wanted = int if field == "K" else str
    for i, value in enumerate(values):
        if type(value) is not wanted:
            raise _fail(
                source, f"columns.values[{i}]",
                f"{value!r} must be {'an integer' if wanted is int else 'a string'} "
                f"for column field {field!r}",
            )
    if raw["metric"].startswith("is_") and raw["better"] != "higher":
        raise _fail(
            source, "better",
            f"{raw['better']!r} contradicts metric {raw['metric']!r}: Inception-score metrics "
            "(is_*) are higher-is-better; allowed here: 'higher'",
        )
    if raw["metric"] in ("precision", "recall") and raw["better"] != "higher":
        raise _fail(
            source, "better",
            f"{raw['better']!r} contradicts metric {raw['metric']!r}: a fraction of points inside the other "
            "set's manifold is higher-is-better; allowed here: 'higher'",
        )
    by_text = {str(v): v for v in values}
    for i, row in enumerate(raw["rows"] if raw["rows"] != ALL_ROWS else []):
        choices = [f for f in SELECTOR_FIELDS if f != "dataset"]
        if "unavailable" not in row and "at" not in row and not any(f in row for f in choices):
            raise _fail(
                source, f"rows[{i}]",
                f"row {row['label']!r} selects nothing; give at least one of {choices} or 'unavailable: <reason>'",
            )
        if "at" in row and not any(f in row for f in choices):
            given = {str(k) for k in [*row["at"], *row.get("unavailable_at", {})]}
            open_columns = [v for v in values if str(v) not in given]
            if open_columns and "unavailable" not in row:
                raise _fail(
                    source, f"rows[{i}].at",
                    f"row {row['label']!r} selects nothing at {open_columns}; give them in 'at' or 'unavailable_at'",
                )
        if field in row:
            raise _fail(
                source, f"rows[{i}].{field}",
                f"{row[field]!r}: rows may not select the column field {field!r}",
            )
        keys = [*row.get("paper", {}), *row.get("paper_text", {}), *row.get("unavailable_at", {}), *row.get("at", {})]
        for key in keys:
            if str(key) not in by_text:
                raise _fail(
                    source, f"rows[{i}].paper",
                    f"key {key!r} is not one of the column values {values}",
                )


def _to_spec(source: Path, raw: dict[str, Any]) -> TableSpec:
    by_text = {str(v): v for v in raw["columns"]["values"]}
    rows = tuple(
        RowSpec(
            label=row["label"],
            latex=row.get("latex"),
            selectors={f: row[f] for f in SELECTOR_FIELDS if f in row},
            paper={by_text[str(k)]: float(v) for k, v in row.get("paper", {}).items()},
            unavailable=row.get("unavailable"),
            unavailable_at={by_text[str(k)]: v for k, v in row.get("unavailable_at", {}).items()},
            at={by_text[str(k)]: v for k, v in row.get("at", {}).items()},
        )
        for row in (raw["rows"] if raw["rows"] != ALL_ROWS else [])
    )
    return TableSpec(
        source=source,
        id=raw["id"],
        title=raw["title"],
        caption=raw.get("caption"),
        metric=raw["metric"],
        metric_label=raw["metric_label"],
        better=raw["better"],
        decimals=raw["decimals"],
        dataset=raw["dataset"],
        paper_label=raw.get("paper_label", "paper"),
        column_field=raw["columns"]["field"],
        column_values=tuple(raw["columns"]["values"]),
        column_label=raw["columns"]["label"],
        rows=rows,
        latex_interval=raw.get("latex_interval", "none"),
        reference_split=raw.get("reference_split"),
        derived=raw.get("derived"),
        all_rows=raw["rows"] == ALL_ROWS,
    )


def load_table_spec(source: Path) -> TableSpec:
    """Read and validate one YAML table spec against TABLE_SPEC_SCHEMA and the results fields."""
    source = Path(source)
    try:
        raw = load_yaml(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TableSpecError(f"table spec {source}: file not found") from None
    except yaml.YAMLError as err:
        raise TableSpecError(f"table spec {source}: not valid YAML: {err}") from err
    validator = jsonschema.Draft202012Validator(TABLE_SPEC_SCHEMA)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise TableSpecError(
            "\n".join(
                f"table spec {source}: {_key_path(e.absolute_path)}: {e.message}" for e in errors
            )
        )
    _check_semantics(source, raw)
    return _to_spec(source, raw)


def load_table_specs(sources: Sequence[Path]) -> list[TableSpec]:
    """Load several specs, refusing two that share an id (their outputs would overwrite)."""
    specs: list[TableSpec] = []
    seen: dict[str, Path] = {}
    for source in sources:
        spec = load_table_spec(source)
        if spec.id in seen:
            raise TableSpecError(
                f"table spec {spec.source}: id: {spec.id!r} is already used by {seen[spec.id]}; "
                "ids name output files and must be unique"
            )
        seen[spec.id] = spec.source
        specs.append(spec)
    return specs
