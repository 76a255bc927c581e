"""The rendered report opened from disk in headless Chromium: tables, images, errors, screenshot."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from matplotlib import image as mpimg
from test_report import SPECS, parse_html, render_synthetic, table_grid

from bench.report.specs import load_table_spec

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # Console messages go to stderr, so errors the page script cannot see are caught too.
    "--enable-logging=stderr", "--v=0",
)


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium binary ({' / '.join(CHROMIUM_NAMES)}); Debian package: chromium")


def run_chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, check=True,
    )


def open_page(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the load event (with the page self-check filled in) and console lines."""
    run = run_chromium(page, profile, "--dump-dom")
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return run.stdout, console


def page_check(dom: str) -> dict[str, object]:
    check = parse_html(dom).find("output", id="page-check")
    assert check is not None and check.attrs.get("data-checked") == "true", "load never finished"
    return {
        "images": int(check.attrs["data-images"]),
        "broken": json.loads(check.attrs["data-broken"]),
        "errors": json.loads(check.attrs["data-errors"]),
    }


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chromium()
    root = tmp_path_factory.mktemp("browser")
    render_synthetic(root)
    return root


def test_index_loads_cleanly_with_every_table_listed(report: Path, tmp_path: Path) -> None:
    dom, console = open_page(report / "reports" / "index.html", tmp_path / "profile")
    check = page_check(dom)
    assert check["images"] == len(SPECS)
    assert check["broken"] == [] and check["errors"] == []
    assert console == []
    doc = parse_html(dom)
    rows = doc.find("table", id="summary").find("tbody").find_all("tr")
    assert [r.attrs["id"] for r in rows] == [f"status-{name}" for name in SPECS]
    assert doc.find(id="page-problems").attrs.get("hidden") is not None


def test_table_page_shows_spec_shaped_tables_and_loaded_images(report: Path,
                                                               tmp_path: Path) -> None:
    name = "embedded_fd_digits"
    spec = load_table_spec(report / "specs" / f"{name}.yaml")
    dom, console = open_page(report / "reports" / f"table_{name}.html", tmp_path / "profile")
    check = page_check(dom)
    # The figure plus the two cells of this table that have sample shards.
    assert check["images"] == 3
    assert check["broken"] == [] and check["errors"] == []
    assert console == []
    doc = parse_html(dom)
    for table_id in (f"results-{name}", f"samples-{name}"):
        columns, labels, cells = table_grid(doc, table_id)
        assert len(columns) == len(spec.column_values)
        assert labels == [row.label for row in spec.rows]
        assert [len(r) for r in cells] == [len(spec.column_values)] * len(spec.rows)


def test_self_check_reports_a_lost_image_and_a_console_error(report: Path,
                                                             tmp_path: Path) -> None:
    broken = shutil.copytree(report / "reports", tmp_path / "reports")
    (broken / "figures" / "embedded_is_digits.svg").unlink()
    index = broken / "index.html"
    index.write_text(index.read_text().replace(
        "</body>", "<script>console.error('boom')</script></body>"))
    dom, console = open_page(index, tmp_path / "profile")
    check = page_check(dom)
    assert check["broken"] == ["figures/embedded_is_digits.svg"]
    assert "boom" in check["errors"]
    assert "failed to load figures/embedded_is_digits.svg" in check["errors"]
    assert any('"boom"' in line for line in console)
    banner = parse_html(dom).find(id="page-problems")
    assert banner.attrs.get("hidden") is None and "1 image(s) did not load" in banner.text


@pytest.mark.parametrize("page", ["index.html", "table_embedded_fd_digits.html"])
def test_screenshot_is_a_full_rendered_page(report: Path, tmp_path: Path, page: str) -> None:
    shot = tmp_path / "shot.png"
    run_chromium(report / "reports" / page, tmp_path / "profile", f"--screenshot={shot}",
                 "--window-size=1280,2000", "--hide-scrollbars")
    assert png_size(shot) == (1280, 2000)
    pixels = mpimg.imread(shot)[..., :3]
    # A blank or error page is (almost) one colour; the report has text, tables and plots.
    assert pixels.std() > 0.05
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.01
