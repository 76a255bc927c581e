"""Figures people read: one colour per sampler across a report's figures, a log y axis for far-apart values."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_report import render_synthetic

from bench.report.figures import use_log_y

NS = "{http://www.w3.org/2000/svg}"


def line_colours(svg: Path) -> dict[str, str]:
    """Stroke colour of each 'ours-<row>' line of a figure."""
    root = ET.parse(svg).getroot()
    colours = {}
    for group in root.iter(f"{NS}g"):
        gid = group.get("id", "")
        if gid.startswith("ours-"):
            styles = " ".join(p.get("style", "") for p in group.iter(f"{NS}path"))
            colours[gid] = re.search(r"stroke: (#[0-9a-f]{6})", styles).group(1)
    return colours


def test_a_sampler_has_one_colour_in_every_figure(tmp_path: Path) -> None:
    figures = render_synthetic(tmp_path).parent / "figures"
    fd = line_colours(figures / "embedded_fd_digits.svg")
    is_ = line_colours(figures / "embedded_is_digits.svg")
    # ddpm_beta is row 0 of both tables; ddim is row 2 of the FD table and row 1 of the IS table.
    assert fd["ours-0"] == is_["ours-0"]
    assert fd["ours-2"] == is_["ours-1"]
    assert len(set(fd.values())) == len(fd)


@pytest.mark.parametrize(
    ("values", "log"),
    [
        ([242.0, 6.1, 4.9, 4.1, 3.8], True),  # the NLL table: sigma^2 = beta-tilde at K = 10 against the rest
        ([39.5, 37.9, 12.0, 6.5], False),
        ([-1.0, 300.0, 2.0], False),
        ([], False),
    ],
)
def test_log_y_axis_when_values_span_a_wide_range(values: list[float], log: bool) -> None:
    assert use_log_y(values) is log
