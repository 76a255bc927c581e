"""The DAG's own report (tests/configs/tiny.yaml end to end): pages in headless Chromium, all.tex in
pdflatex, and every number the same in results/metrics.csv, the HTML tables and the LaTeX tables."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dag import ROOT, TINY_CONFIG
from matplotlib import image as mpimg
from test_report import LATEX_CELL, latex_body, parse_html, table_grid
from test_report_browser import chromium, open_page, page_check, png_size, run_chromium

from bench.report.render import render_report
from bench.report.specs import load_table_spec

SPECS = [load_table_spec(ROOT / path) for path in yaml.safe_load(TINY_CONFIG.read_text())["tables"]]
# row, column value, status, seeds, samples, NFE, device, wall s, device s, reference, spread
PROVENANCE_COLUMNS = 11


def csv_rows(results: Path) -> list[dict[str, str]]:
    with (results / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def cell_row(rows: list[dict[str, str]], spec, row, column) -> dict[str, str] | None:
    """The metrics.csv row of one table cell (the tiny run has one replicate per cell)."""
    where = {**spec.row_selectors(row), spec.column_field: column}
    found = [r for r in rows if r["metric"] == spec.metric and all(r[k] == str(v) for k, v in where.items())]
    assert len(found) <= 1, found
    return found[0] if found else None


def assert_spec_shaped(doc, spec) -> None:
    # A PF-ODE likelihood table has no samples of its own, so no sample-grid table.
    tables = ("results",) if spec.metric == "ode_nll_bpd" else ("results", "samples")
    for table_id in (f"{kind}-{spec.id}" for kind in tables):
        columns, labels, cells = table_grid(doc, table_id)
        assert columns == [str(v) for v in spec.column_values], table_id
        assert labels == [row.label for row in spec.rows], table_id
        assert [len(r) for r in cells] == [len(spec.column_values)] * len(spec.rows), table_id
    provenance = doc.find("table", id=f"provenance-{spec.id}")
    assert len(provenance.find("thead").find_all("th")) == PROVENANCE_COLUMNS
    body = provenance.find("tbody").find_all("tr")
    assert len(body) == len(spec.rows) * len(spec.column_values)
    assert {len(tr.find_all("td")) for tr in body} == {PROVENANCE_COLUMNS}


def assert_screenshot(page: Path, shot: Path, profile: Path) -> None:
    run_chromium(page, profile, f"--screenshot={shot}", "--window-size=1280,1800", "--hide-scrollbars")
    assert png_size(shot) == (1280, 1800)
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels.mean(axis=2) < 0.5).mean() > 0.01


def test_every_page_loads_cleanly_with_spec_shaped_tables(tiny_run: Path, tmp_path: Path) -> None:
    chromium()
    reports = tiny_run / "reports"
    dom, console = open_page(reports / "index.html", tmp_path / "profile")
    check = page_check(dom)
    assert check["images"] == len(SPECS) and check["broken"] == [] and check["errors"] == [] and console == []
    doc = parse_html(dom)
    summary = doc.find("table", id="summary").find("tbody").find_all("tr")
    assert [tr.attrs["id"] for tr in summary] == [f"status-{spec.id}" for spec in SPECS]
    glance = {tr.find("th").text: tr.find("td").text for tr in doc.find("table", id="run-summary").find_all("tr")}
    assert "not recorded" not in glance.values(), glance
    assert_screenshot(reports / "index.html", tmp_path / "index.png", tmp_path / "profile")
    for spec in SPECS:
        page = reports / f"table_{spec.id}.html"
        dom, console = open_page(page, tmp_path / "profile")
        check = page_check(dom)
        # The figure plus one sample grid per cell: every cell of the tiny run has samples (a PF-ODE
        # likelihood has none).
        grids = 0 if spec.metric == "ode_nll_bpd" else len(spec.rows) * len(spec.column_values)
        assert check["images"] == 1 + grids
        assert check["broken"] == [] and check["errors"] == [] and console == []
        assert_spec_shaped(parse_html(dom), spec)
        assert_screenshot(page, tmp_path / f"table_{spec.id}.png", tmp_path / "profile")


def test_all_tex_compiles(tiny_run: Path, tmp_path: Path) -> None:
    for binary in ("pdflatex", "pdfinfo"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} not installed (Debian: texlive-latex-base, poppler-utils)")
    tables = shutil.copytree(tiny_run / "reports" / "tables", tmp_path / "tables")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "all.tex"], cwd=tables,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    info = subprocess.run(["pdfinfo", "all.pdf"], cwd=tables, capture_output=True, text=True, check=True).stdout
    pages = next(int(line.split()[1]) for line in info.splitlines() if line.startswith("Pages:"))
    assert pages >= 1


def test_numbers_and_provenance_agree_between_csv_html_and_latex(tiny_run: Path) -> None:
    rows = csv_rows(tiny_run / "results")
    for spec in SPECS:
        doc = parse_html((tiny_run / "reports" / f"table_{spec.id}.html").read_text())
        _, _, cells = table_grid(doc, f"results-{spec.id}")
        tex_rows = latex_body((tiny_run / "reports" / "tables" / f"{spec.id}.tex").read_text())
        provenance = doc.find("table", id=f"provenance-{spec.id}").find("tbody").find_all("tr")
        for i, row in enumerate(spec.rows):
            for j, column in enumerate(spec.column_values):
                record = cell_row(rows, spec, row, column)
                assert record is not None and record["status"] == "ok", (spec.id, row.label, column)
                shown = f"{float(record['value']):.{spec.decimals}f}"
                assert cells[i][j].find(cls="value").text == shown
                parsed = LATEX_CELL.match(tex_rows[i][j + 1])
                assert parsed and (parsed["bold"] or parsed["tie"] or parsed["plain"]) == shown, tex_rows[i][j + 1]
                assert cells[i][j].find(cls="nfe-value").text == record["nfe"]
                prov = {td.attrs["class"].split()[-1]: td for td in provenance[i * len(spec.column_values) + j]
                        .find_all("td")}
                assert prov["device"].text == record["device"]
                assert prov["wall"].text == f"{float(record['wall_seconds']):.1f}"
                assert prov["device-seconds"].text == f"{float(record['device_seconds']):.1f}"
                assert prov["n-samples"].text == record["n_samples"] and prov["seeds"].text == record["seed"]
                sha = record["reference_stats_sha256"]
                if spec.metric in ("nll_bpd", "ode_nll_bpd"):
                    assert sha == "" and prov["ref"].text == "–"
                else:
                    assert len(sha) == 64 and prov["ref"].find("code").attrs["title"] == sha
                    low, high = (f"{float(record[k]):.{spec.decimals}f}" for k in ("ci_low", "ci_high"))
                    assert prov["spread"].text == f"bootstrap interval [{low}, {high}] over the cell's samples"
                    assert f"bootstrap interval [{low}, {high}]" in cells[i][j].attrs["title"]


def test_a_missing_result_renders_as_missing(tiny_run: Path, tmp_path: Path) -> None:
    spec = SPECS[0]
    row, column = spec.rows[-1], spec.column_values[-1]
    results = shutil.copytree(tiny_run / "results", tmp_path / "results", ignore=shutil.ignore_patterns("samples"))
    rows = csv_rows(results)
    gone = cell_row(rows, spec, row, column)
    with (results / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r is not gone)
    out = tmp_path / "reports"
    render_report(results, [s.source for s in SPECS], out)
    doc = parse_html((out / f"table_{spec.id}.html").read_text())
    _, _, cells = table_grid(doc, f"results-{spec.id}")
    words = {(i, j): c.find(cls="word").text for i, r in enumerate(cells) for j, c in enumerate(r) if c.find(cls="word")}
    assert words == {(len(spec.rows) - 1, len(spec.column_values) - 1): "missing"}
    assert latex_body((out / "tables" / f"{spec.id}.tex").read_text())[-1][-1] == "--"
    last = doc.find("table", id=f"provenance-{spec.id}").find("tbody").find_all("tr")[-1]
    assert "status-missing" in last.classes and last.find(cls="status").text == "missing"
    index = parse_html((out / "index.html").read_text())
    assert index.find("tr", id=f"status-{spec.id}").attrs["data-missing"] == "1"
