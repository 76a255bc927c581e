"""The paper profile's table specs: generated from paper_tables.csv, equal to it, and loadable by the report."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from bench.config import cells, load_config
from bench.plan import plan
from bench.report.specs import load_table_spec
from bench.report.tables import MISSING, build_table

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflows/scripts"
SPEC_FILES = sorted((ROOT / "workflows/config/tables").glob("paper_*.yaml"))


def _generator():
    spec = importlib.util.spec_from_file_location("make_paper_specs", SCRIPTS / "make_paper_specs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def csv_rows():
    with open(SCRIPTS / "paper_tables.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)


def test_spec_files_are_what_the_generator_writes():
    generator = _generator()
    built = generator.build_all()
    assert sorted(built) == [p.name for p in SPEC_FILES]
    for path in SPEC_FILES:
        assert path.read_text(encoding="utf-8") == generator.render(built[path.name]), path.name


def test_paper_profile_lists_every_paper_spec(cfg):
    assert sorted(cfg["tables"]) == [f"workflows/config/tables/{p.name}" for p in SPEC_FILES]


def _entries() -> list[tuple[str, str, int | str, str | None, float | None]]:
    """(source row, column field, column, printed text, number) of every paper value in the spec files."""
    out = []
    for path in SPEC_FILES:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        for row in spec["rows"]:
            for column in spec["columns"]["values"]:
                printed, number = row.get("paper_text", {}).get(column), row.get("paper", {}).get(column)
                if printed is not None or number is not None:
                    out.append((row["csv"], spec["columns"]["field"], column, printed, number))
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_every_csv_value_is_in_a_spec_cell_as_printed(csv_rows):
    entries = _entries()
    assert len(entries) == len(csv_rows)
    unmatched = []
    for line in csv_rows:
        value, key, K = line["value"].strip(), f"{line['model']} | {line['sampler']}", line["K"].strip()
        found = [
            e for e in entries
            if e[0] == key and (e[1] != "K" or not K or e[2] == int(K))
            and (e[3] == value if e[3] is not None else _is_float(value) and e[4] == float(value))
        ]
        if not found:
            unmatched.append((line["paper"], line["table"], key, K, value))
    assert not unmatched


def test_numbers_are_read_off_the_printed_entries():
    number = _generator().paper_number
    assert number("3.01*") == 3.01 and number("<= 3.75 (3.72)") == 3.75 and number("7.28±0.10") == 7.28
    assert number("> 200") is None and number("– (unstable)") is None and number("Missing model") is None


def test_specs_load_and_unavailable_cells_show_as_missing():
    for path in SPEC_FILES:
        spec = load_table_spec(path)
        table = build_table(spec, [])
        assert all(cell.status == MISSING for row in table.cells for cell in row)
        for row in spec.rows:
            assert row.unavailable is None or row.unavailable.strip()
            assert row.unavailable is not None or {"model", "sampler"} <= set(row.selectors), (path.name, row.label)


def test_plan_counts_every_producible_cell_once(cfg):
    rows = plan(cfg, root=ROOT)
    total = rows[-1]
    assert total["cells"] == len(cells(cfg))
    assert total["samples"] == len(cells(cfg)) * cfg["sampling"]["n_samples"]
    assert total["unavailable"] == sum(r["unavailable"] for r in rows[:-1]) > 0
    edm = next(r for r in rows if r["table"] == "paper_edm_t2_cifar10_uncond")
    # Four models x N = 18 Heun steps (2N - 1 = 35 NFE) x 50k samples; configs B-E (8 cells) unavailable.
    assert (edm["cells"], edm["unavailable"], edm["nfe"]) == (4, 8, 4 * 35 * 50_000)
