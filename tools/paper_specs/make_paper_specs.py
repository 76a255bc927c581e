"""Write the paper profile's table specs (workflows/config/tables/paper_*.yaml) from paper_tables.csv.

The CSV holds the papers' numbers; paper_layout.yaml says how each table maps onto our cells.
Run from the repository root: ``python tools/paper_specs/make_paper_specs.py`` (prints the `tables:` list
for workflows/config/paper.yaml).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import yaml

from bench.report.derived import DERIVED_RULES
from bench.runtime.strict_yaml import load_yaml

HERE = Path(__file__).resolve().parent
CSV_PATH = HERE / "paper_tables.csv"
LAYOUT_PATH = HERE / "paper_layout.yaml"
OUT_DIR = HERE.parents[1] / "workflows/config/tables"

METRIC_LABELS = {"fid": "FID", "is": "IS", "nll_bpd": "NLL (bits/dim)"}
# Metrics whose larger values are better: IS, and improved precision and recall (fractions of points on the other
# set's manifold); every other metric is a distance, a loss or a likelihood bound.
HIGHER_IS_BETTER = ("is", "precision", "recall")
# A printed entry's number: optional "<=", then digits ("3.01*" -> 3.01; "> 200" and "–" have none).
NUMBER = re.compile(r"^(?:<=\s*)?(\d+(?:\.\d+)?)")


def read_csv(path: Path = CSV_PATH) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def paper_number(text: str) -> float | None:
    """The number a printed table entry states, or None when it states none."""
    match = NUMBER.match(text.strip())
    return float(match.group(1)) if match else None


def _selected(row: dict[str, str], select: dict) -> bool:
    return all(row[key] in (wanted if isinstance(wanted, list) else [wanted]) for key, wanted in select.items())


def _column(row: dict[str, str], entry: dict) -> int | str:
    if entry.get("columns", "K") == "dataset":
        return entry["datasets"][row["dataset"]]
    if row["K"].strip():
        return int(row["K"])
    if "blank_K" not in entry:
        raise ValueError(f"spec {entry['id']}: CSV row {row['model']!r} / {row['sampler']!r} has no K; give blank_K")
    return entry["blank_K"]


def _mapping(row: dict[str, str], entry: dict) -> dict:
    """The layout's mapping of a CSV row, keyed by "<model> | <sampler>", the sampler or the model ({}: none)."""
    rows = entry.get("rows", {})
    return rows.get(f"{row['model']} | {row['sampler']}") or rows.get(row["sampler"]) or rows.get(row["model"]) or {}


def build_spec(entry: dict, csv_rows: list[dict[str, str]]) -> dict:
    """The table spec of one layout entry, from the CSV rows it selects (rows and columns in CSV order)."""
    chosen = [r for r in csv_rows if _selected(r, entry["select"])]
    if not chosen:
        raise ValueError(f"spec {entry['id']}: select {entry['select']} matches no row of {CSV_PATH.name}")
    columns: list[int | str] = []
    rows: dict[str, dict] = {}
    sources: list[str] = []
    for r in chosen:
        column = _column(r, entry)
        if column not in columns:
            columns.append(column)
        if r["source"] not in sources:
            sources.append(r["source"])
        key = f"{r['model']} | {r['sampler']}"
        if key not in rows:
            mapped = _mapping(r, entry)
            row = {"label": mapped.get("label", key.strip(" |"))}
            if "model" in mapped or "at" in mapped:
                row.update({k: mapped[k] for k in ("model", "sampler", "at") if k in mapped})
                # A table whose columns are datasets takes each row's K from the layout.
                if "K" in mapped:
                    row["K"] = mapped["K"]
                if "unavailable_at" in mapped:
                    row["unavailable_at"] = mapped["unavailable_at"]
            else:
                row["unavailable"] = mapped.get("unavailable") or entry["unavailable"]
            if "note" in mapped:
                row["note"] = mapped["note"]
            row["csv"] = key
            rows[key] = row
        number = paper_number(r["value"])
        if number is not None:
            rows[key].setdefault("paper", {})[column] = number
        if number is None or _is_annotated(r["value"], number):
            rows[key].setdefault("paper_text", {})[column] = r["value"].strip()
    if entry.get("columns", "K") == "K":
        columns.sort()
    field = entry.get("columns", "K")
    return _spec(entry, f"Paper values from {'; '.join(sources)}.", field, columns, list(rows.values()))


def _spec(entry: dict, caption: str, field: str, columns: list, rows: list[dict]) -> dict:
    """A table spec's keys, in the order the specs are written."""
    metric = entry["metric"]
    if "derived" in entry:
        rule = entry["derived"]
        caption += (
            f" Ours: {rule['rule']} of the {rule['metric']} curve with threshold {rule['threshold']}, "
            f"{DERIVED_RULES[rule['rule']]} (shown as a dash)."
        )
    spec = {
        "id": entry["id"],
        "title": entry["title"],
        "caption": caption,
        "metric": metric,
        "metric_label": entry.get("metric_label", METRIC_LABELS.get(metric, metric)),
        "better": "higher" if metric in HIGHER_IS_BETTER else "lower",
        "decimals": entry.get("decimals", 2),
        "dataset": entry["dataset"],
        **({"reference_split": entry["reference_split"]} if "reference_split" in entry else {}),
        "protocol": entry["protocol"],
        "columns": {"field": field, "values": columns, "label": "dataset" if field == "dataset" else "K"},
        "rows": rows,
    }
    return spec | ({"derived": entry["derived"]} if "derived" in entry else {})


def build_curve_spec(entry: dict) -> dict:
    """The table spec of a figure whose curves the paper plots without printing values: its rows, K columns, no numbers.

    ``curves`` names the figure; ``rows`` maps each curve to a cell (model, sampler) or, mapped to none, to
    the spec's ``unavailable`` reason; ``K`` lists the columns.
    """
    rows = []
    for key, mapped in entry["rows"].items():
        row = {"label": mapped.get("label", key)}
        if "model" in mapped:
            row.update(model=mapped["model"], sampler=mapped["sampler"])
        else:
            row["unavailable"] = mapped.get("unavailable") or entry["unavailable"]
        if "note" in mapped:
            row["note"] = mapped["note"]
        row["csv"] = key
        rows.append(row)
    caption = f"{entry['curves']} plots these curves without printing values: no paper numbers."
    return _spec(entry, caption, "K", sorted(entry["K"]), rows)


def _is_annotated(text: str, number: float) -> bool:
    """Whether the printed entry says more than its number ("3.01*", "7.28±0.10", "<= 3.75 (3.72)")."""
    stripped = text.strip()
    try:
        return float(stripped) != number
    except ValueError:
        return True


def build_all(layout_path: Path = LAYOUT_PATH, csv_path: Path = CSV_PATH) -> dict[str, dict]:
    """Every spec of the layout, by file name."""
    layout = load_yaml(layout_path.read_text(encoding="utf-8"))
    csv_rows = read_csv(csv_path)
    for row in csv_rows:
        owners = [entry["id"] for entry in layout["specs"] if "select" in entry and _selected(row, entry["select"])]
        if len(owners) != 1:
            raise ValueError(
                f"CSV row {row['paper']} / {row['table']} / {row['dataset']} / {row['metric']} / {row['model']} is "
                f"selected by {len(owners)} specs ({owners}); each row belongs to exactly one"
            )
    return {
        f"{entry['id']}.yaml": build_curve_spec(entry) if "curves" in entry else build_spec(entry, csv_rows)
        for entry in layout["specs"]
    }


def render(spec: dict) -> str:
    header = "# Generated by tools/paper_specs/make_paper_specs.py from paper_tables.csv; do not edit by hand.\n"
    return header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=120)


def main() -> int:
    from bench.runtime.io import atomic_text

    specs = build_all()
    for name, spec in specs.items():
        atomic_text(render(spec), OUT_DIR / name)
    for name in specs:
        print(f"  - workflows/config/tables/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
