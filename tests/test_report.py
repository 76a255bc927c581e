"""Report stage: synthetic results folder -> HTML, LaTeX, figures and grids that agree with it."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from bench.report.html import provenance_entries, run_summary
from bench.report.image_grids import grid_image
from bench.report.render import render_report
from bench.report.results import ResultsError, read_metrics
from bench.report.specs import TableSpecError, load_table_spec, load_table_specs

HEADER = (
    "dataset,model,family,sampler,sampler_label,grid,K,nfe,metric,value,n_samples,seed,"
    "replicate,wall_seconds,status,device,device_seconds,reference_stats_sha256"
).split(",")
REF_SHA = "5" * 64
DEVICE = "cuda:0 (NVIDIA H100 80GB HBM3); cpu"

# Synthetic results: (sampler, grid, family, K, nfe, metric, [value per replicate or None=failed]).
CELLS = [
    ("ddpm_beta", "uniform", "ddpm", 10, 10, "fd_digits", [20.0, 22.5, 21.1]),
    ("ddpm_beta", "uniform", "ddpm", 25, 25, "fd_digits", [9.87]),
    ("ddpm_beta", "uniform", "ddpm", 50, 50, "fd_digits", [7.123]),
    ("ddpm_beta", "uniform", "ddpm", 100, 100, "fd_digits", [6.999]),
    ("ddpm_beta_tilde", "uniform", "ddpm", 10, 10, "fd_digits", [15.55]),
    ("ddpm_beta_tilde", "uniform", "ddpm", 25, 25, "fd_digits", [9.87]),
    ("ddpm_beta_tilde", "uniform", "ddpm", 50, 50, "fd_digits", [7.5]),
    ("ddpm_beta_tilde", "uniform", "ddpm", 100, 100, "fd_digits", [None]),
    ("ddim", "uniform", "ddim", 10, 10, "fd_digits", [8.4]),
    ("ddim", "uniform", "ddim", 25, 25, "fd_digits", [6.504]),
    ("ddim", "quadratic", "ddim", 10, 10, "fd_digits", [5.0]),
    ("heun", "edm", "edm", 10, 19, "fd_digits", [9.1]),
    ("heun", "edm", "edm", 25, 49, "fd_digits", [6.5, None]),
    ("heun", "edm", "edm", 50, 99, "fd_digits", [6.0]),
    ("ddpm_beta", "uniform", "ddpm", 10, 10, "is_digits", [7.0, 7.4, 7.2]),
    ("ddpm_beta", "uniform", "ddpm", 25, 25, "is_digits", [8.1]),
    ("ddim", "uniform", "ddim", 10, 10, "is_digits", [9.0]),
    ("ddpm_beta", "uniform", "ddpm", 1000, 1000, "nll_bpd", [1.93]),
]

SPEC_FD = r"""
id: embedded_fd_digits
title: "Digits: FD of samples (fd_digits)"
caption: "FD of 2000 samples per cell against the digits test split; features of a small CNN."
metric: fd_digits
metric_label: "FD (digits classifier)"
better: lower
decimals: 2
dataset: digits
columns: {field: K, values: [10, 25, 50, 100], label: "K"}
rows:
  - {label: "DDPM, σ²=β", latex: "DDPM, $\\sigma^2=\\beta$", model: mlp, sampler: ddpm_beta,
     paper: {10: 122.7, 25: 64.7}}
  - {label: "DDPM, σ²=β̃", latex: "DDPM, $\\sigma^2=\\tilde\\beta$", model: mlp,
     sampler: ddpm_beta_tilde, paper: {10: 78.3}}
  - {label: "DDIM, η=0", latex: "DDIM, $\\eta=0$", model: mlp, sampler: ddim, grid: uniform}
  - {label: "Heun 2nd order (EDM) & friends_1", model: mlp, sampler: heun}
"""

SPEC_IS = """
id: embedded_is_digits
title: "Digits: IS of samples (is_digits)"
metric: is_digits
metric_label: "IS (digits classifier)"
better: higher
decimals: 1
dataset: digits
paper_label: "DDIM Tab. 1"
columns: {field: K, values: [10, 25], label: "K"}
rows:
  - {label: "DDPM", model: mlp, sampler: ddpm_beta, paper: {10: 8.0}}
  - {label: "DDIM", model: mlp, sampler: ddim, grid: uniform}
"""

SPEC_BY_SAMPLER = """
id: samplers_by_k
title: "Digits: FD by sampler (rows are K)"
metric: fd_digits
metric_label: "FD"
better: lower
decimals: 1
dataset: digits
columns: {field: sampler, values: [ddpm_beta, heun], label: "Sampler"}
rows:
  - {label: "K = 10", K: 10, model: mlp, paper: {ddpm_beta: 122.7}}
  - {label: "K = 50", K: 50, model: mlp}
"""

SPECS = {"embedded_fd_digits": SPEC_FD, "embedded_is_digits": SPEC_IS,
         "samplers_by_k": SPEC_BY_SAMPLER}

# Expected per-table status, counted by hand from CELLS and the specs above.
EXPECTED_COUNTS = {
    "embedded_fd_digits": {"planned": 16, "done": 12, "failed": 1, "missing": 3},
    "embedded_is_digits": {"planned": 4, "done": 3, "failed": 0, "missing": 1},
    "samplers_by_k": {"planned": 4, "done": 4, "failed": 0, "missing": 0},
}

PROVENANCE = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": True,
    "config_hash": "sha256:feedbeef",
    "packages": {"torch": "2.13.0", "numpy": "2.4.6"},
    "device": "cpu; cuda:0 (NVIDIA H100 80GB HBM3)",
    "device_clock": "gpu_held_wall; process_cpu",
    "python": "3.11.7",
    "metric_backend": {"fd_is": "torch-fidelity 0.3.0", "mode": "levels-no-resize"},
    "reference_stats_sha256": {"digits/train": REF_SHA},
    "seeds": {"sampling": 0, "train mlp": 1},
    "sample_counts": {"fd_is": "2000", "nll": "360"},
    # Two records, as two kinds of device make (bench.runtime.speed.apply_speed_options).
    "speed": [
        {
            "tf32": {"enabled": False, "note": "TF32 only affects float32 matmuls/convolutions on CUDA; no effect on cpu"},
            "keep_freed_memory": {"enabled": True, "libc": "glibc 2.36"},
            "channels_last": {"enabled": False},
            "autocast": {"enabled": False},
            "compile": {"enabled": False},
            "cuda_graphs": {"enabled": False, "requested": True, "skipped": "CUDA graphs need CUDA; the network is on cpu"},
        },
        {
            "tf32": {"enabled": True},
            "keep_freed_memory": {"enabled": False},
            "channels_last": {"enabled": False},
            "autocast": {"enabled": True, "dtype": "bfloat16", "device_type": "cuda"},
            "compile": {"enabled": True, "mode": "max-autotune-no-cudagraphs", "backend": "inductor"},
            "cuda_graphs": {"enabled": True, "capture": "on first call per input shape"},
        },
    ],
    "replicate_seeds": [0, 1, 2],
    "created": "2026-11-21T12:00:00Z",
    "source_page": "https://example.org/not-a-link",
    "odd_note": "<script>alert(1)</script>",
}


def write_shard(path: Path, images: np.ndarray, first_seed: int, max_level: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    seeds = np.arange(first_seed, first_seed + len(images), dtype=np.int64)
    np.savez(path, images=images, seeds=seeds, max_level=np.int64(max_level))


def level_images(n: int, max_level: int = 16) -> np.ndarray:
    """Image i is constant at level i mod (max_level + 1): easy to find again in the grid."""
    levels = np.arange(n) % (max_level + 1)
    return np.broadcast_to(levels[:, None, None, None], (n, 1, 8, 8)).astype(np.uint8).copy()


def write_results(root: Path) -> Path:
    results = root / "results"
    results.mkdir(parents=True)
    with (results / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for sampler, grid, family, k, nfe, metric, values in CELLS:
            for rep, value in enumerate(values):
                ok = value is not None
                writer.writerow([
                    "digits", "mlp", family, sampler, sampler.replace("_", " "), grid, k,
                    nfe if ok else "", metric, repr(value) if ok else "", 2000 if ok else "",
                    rep, rep, 12.5 + rep if ok else "", "ok" if ok else "failed",
                    DEVICE, 10.25 + rep if ok else "", REF_SHA if ok and metric != "nll_bpd" else "",
                ])
    (results / "provenance.json").write_text(json.dumps(PROVENANCE, indent=2))
    samples = results / "samples" / "digits" / "mlp"
    write_shard(samples / "ddpm_beta" / "K10" / "shard0000.npz", level_images(70), 0)
    write_shard(samples / "ddpm_beta" / "K10" / "shard0001.npz", np.zeros((64, 1, 8, 8), np.uint8),
                70)
    (samples / "ddpm_beta" / "K10" / "shard0002.npz.part").write_bytes(b"half written")
    write_shard(samples / "heun" / "K10" / "shard0000.npz", level_images(5), 1000)
    return results


def write_specs(root: Path, texts: dict[str, str] = SPECS) -> list[Path]:
    paths = []
    for name, text in texts.items():
        path = root / "specs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def render_synthetic(root: Path) -> Path:
    """Write synthetic results and specs under root and render root/reports; returns index."""
    return render_report(write_results(root), write_specs(root), root / "reports")


@dataclass
class Node:
    """A minimal DOM node, enough to query the generated pages."""

    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)

    @property
    def raw_text(self) -> str:
        return "".join(self.text_parts + [c.raw_text for c in self.children])

    @property
    def text(self) -> str:
        return " ".join(self.raw_text.split())

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n for n in self.iter()
            if (tag is None or n.tag == tag) and (cls is None or cls in n.classes)
            and all(n.attrs.get(k) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node | None:
        found = self.find_all(tag, cls, **attrs)
        return found[0] if found else None


class _TreeBuilder(HTMLParser):
    VOID = {"meta", "img", "br", "link", "input", "hr", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        # Text after a child element is kept in order by attaching it to a text node.
        self.stack[-1].children.append(Node("#text", {}, text_parts=[data]))


def parse_html(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    return builder.root


def table_grid(doc: Node, table_id: str) -> tuple[list[str], list[str], list[list[Node]]]:
    """Column header texts, row label texts and body cells [row][column] of a table."""
    table = doc.find("table", id=table_id)
    assert table is not None, f"no table with id {table_id}"
    head_rows = table.find("thead").find_all("tr")
    columns = [th.text for th in head_rows[-1].find_all("th")]
    body = table.find("tbody").find_all("tr")
    labels = [tr.find("th").text for tr in body]
    cells = [tr.find_all("td") for tr in body]
    return columns, labels, cells


def expected_values(results: Path) -> dict[tuple[str, str, str, int, str], list[float | None]]:
    """Values per (sampler, grid, model, K, metric) straight from metrics.csv."""
    out: dict[tuple[str, str, str, int, str], list[float | None]] = {}
    with (results / "metrics.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["sampler"], row["grid"], row["model"], int(row["K"]), row["metric"])
            out.setdefault(key, []).append(float(row["value"]) if row["status"] == "ok" else None)
    return out


LATEX_CELL = re.compile(
    r"^(?:\\textbf\{(?P<bold>-?\d+\.\d+)\}|\\underline\{(?P<tie>-?\d+\.\d+)\}|(?P<plain>-?\d+\.\d+))"
    r"(?: \$\\pm\$ (?P<sd>\d+\.\d+))?(?P<partial>\$\^\\dagger\$)?$"
)


# Labels without a `latex` key, escaped by hand.
LATEX_LABELS = {
    "Heun 2nd order (EDM) & friends_1": r"Heun 2nd order (EDM) \& friends\_1",
    "DDPM": "DDPM", "DDIM": "DDIM", "K = 10": "K = 10", "K = 50": "K = 50",
}


def latex_body(tex: str) -> list[list[str]]:
    """Main rows of a generated tabular (label first), without the paper/NFE sub-rows."""
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    rows = []
    for line in body.splitlines():
        if not line or line.startswith("\\addlinespace") or line.startswith("\\quad"):
            continue
        assert line.endswith(" \\\\"), line
        rows.append(line[: -len(" \\\\")].split(" & "))
    return rows


def latex_subrows(tex: str, label: str) -> list[list[str]]:
    return [
        line[: -len(" \\\\")].split(" & ")[1:]
        for line in tex.splitlines() if line.startswith(f"\\quad\\textit{{{label}}} & ")
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    index = render_synthetic(root)
    assert index == root / "reports" / "index.html"
    return root


def load_spec(root: Path, name: str):
    return load_table_spec(root / "specs" / f"{name}.yaml")


def test_render_writes_every_output(report: Path) -> None:
    out = report / "reports"
    for name in SPECS:
        assert (out / f"table_{name}.html").is_file()
        assert (out / "figures" / f"{name}.svg").is_file()
        assert (out / "tables" / f"{name}.tex").is_file()
    assert (out / "tables" / "all.tex").is_file()
    pngs = sorted(p.relative_to(out).as_posix() for p in (out / "samples").rglob("*.png"))
    assert pngs == ["samples/digits/mlp/ddpm_beta/K10.png", "samples/digits/mlp/heun/K10.png"]


@pytest.mark.parametrize("name", list(SPECS))
def test_html_table_shape_follows_spec(report: Path, name: str) -> None:
    spec = load_spec(report, name)
    doc = parse_html((report / "reports" / f"table_{name}.html").read_text())
    columns, labels, cells = table_grid(doc, f"results-{name}")
    assert columns == [str(v) for v in spec.column_values]
    assert labels == [row.label for row in spec.rows]
    assert [len(row) for row in cells] == [len(spec.column_values)] * len(spec.rows)


def test_missing_and_failed_cells_are_words_never_blank(report: Path) -> None:
    doc = parse_html((report / "reports" / "table_embedded_fd_digits.html").read_text())
    _, _, cells = table_grid(doc, "results-embedded_fd_digits")
    words = {(i, j): c.find(cls="word").text for i, row in enumerate(cells)
             for j, c in enumerate(row) if c.find(cls="word")}
    assert words == {(1, 3): "failed", (2, 2): "missing", (2, 3): "missing", (3, 3): "missing"}
    for row in cells:
        for cell in row:
            ours = cell.find(cls="ours").text
            assert ours and ours not in {"0", "0.00", "nan"}
    assert "status-partial" in cells[3][1].classes
    assert cells[3][1].find(cls="warn").text == "1 of 2 failed"


@pytest.mark.parametrize("name", list(SPECS))
def test_numbers_agree_between_csv_html_and_latex(report: Path, name: str) -> None:
    spec = load_spec(report, name)
    values = expected_values(report / "results")
    doc = parse_html((report / "reports" / f"table_{name}.html").read_text())
    _, _, cells = table_grid(doc, f"results-{name}")
    tex = (report / "reports" / "tables" / f"{name}.tex").read_text()
    tex_rows = latex_body(tex)
    paper_rows = iter(latex_subrows(tex, spec.paper_label))
    d = spec.decimals
    for i, row in enumerate(spec.rows):
        assert tex_rows[i][0] == (row.latex or LATEX_LABELS[row.label])
        paper_tex = next(paper_rows) if row.paper else None
        for j, column in enumerate(spec.column_values):
            where = {**spec.row_selectors(row), spec.column_field: column}
            matches = [v for (s, g, m, k, metric), v in values.items()
                       if metric == spec.metric and m == where["model"]
                       and s == where.get("sampler", s) and k == where.get("K", k)
                       and g == where.get("grid", g)]
            html_cell, tex_cell = cells[i][j], tex_rows[i][j + 1]
            ok = [v for v in (matches[0] if matches else []) if v is not None]
            if not matches:
                assert tex_cell == "--"
            elif not ok:
                assert tex_cell == "fail"
            else:
                mean = f"{statistics.fmean(ok):.{d}f}"
                parsed = LATEX_CELL.match(tex_cell)
                assert parsed, tex_cell
                assert html_cell.find(cls="value").text == mean
                assert (parsed["bold"] or parsed["tie"] or parsed["plain"]) == mean
                if len(ok) > 1:
                    sd = f"{statistics.stdev(ok):.{d}f}"
                    assert html_cell.find(cls="sd").text == f"± {sd}"
                    assert parsed["sd"] == sd
                else:
                    assert html_cell.find(cls="sd") is None and parsed["sd"] is None
                assert bool(parsed["partial"]) == (len(ok) < len(matches[0]))
            paper = row.paper.get(column)
            if paper is None:
                assert html_cell.find(cls="paper-value") is None
                assert paper_tex is None or paper_tex[j] == ""
                continue
            assert html_cell.find(cls="paper-value").text == f"{paper:.{d}f}"
            assert paper_tex[j] == f"{paper:.{d}f}"
            if ok:
                assert html_cell.find(cls="delta").text == f"{statistics.fmean(ok) - paper:+.{d}f}"


@pytest.mark.parametrize(
    ("name", "bold"),
    [
        # Ties on the rounded value (6.504 and 6.5 at K=25) are both best.
        ("embedded_fd_digits", {(2, 0), (2, 1), (3, 1), (3, 2), (0, 3)}),
        ("embedded_is_digits", {(1, 0), (0, 1)}),
        ("samplers_by_k", {(1, 0), (1, 1)}),
    ],
)
def test_bold_marks_the_best_value_of_each_column(report: Path, name: str, bold: set) -> None:
    doc = parse_html((report / "reports" / f"table_{name}.html").read_text())
    _, _, cells = table_grid(doc, f"results-{name}")
    html_bold = {(i, j) for i, row in enumerate(cells) for j, c in enumerate(row)
                 if "best" in c.classes}
    tex_rows = latex_body((report / "reports" / "tables" / f"{name}.tex").read_text())
    tex_bold = {(i, j) for i, row in enumerate(tex_rows) for j, c in enumerate(row[1:])
                if c.startswith("\\textbf{")}
    assert html_bold == bold
    assert tex_bold == bold


def test_nfe_is_shown_beside_k(report: Path) -> None:
    doc = parse_html((report / "reports" / "table_embedded_fd_digits.html").read_text())
    _, _, cells = table_grid(doc, "results-embedded_fd_digits")
    assert [c.find(cls="nfe-value").text for c in cells[3][:3]] == ["19", "49", "99"]
    assert cells[0][0].find(cls="nfe").text == "NFE 10 · 3 seeds"
    tex = (report / "reports" / "tables" / "embedded_fd_digits.tex").read_text()
    # Only the Heun row measures an NFE other than K, so only it gets an NFE sub-row.
    assert latex_subrows(tex, "NFE") == [["19", "49", "99", ""]]


def test_index_lists_every_table_with_its_status(report: Path) -> None:
    doc = parse_html((report / "reports" / "index.html").read_text())
    for name, counts in EXPECTED_COUNTS.items():
        row = doc.find("tr", id=f"status-{name}")
        assert row is not None
        assert {k: int(row.attrs[f"data-{k}"]) for k in counts} == counts
        assert row.find(cls="done").text == str(counts["done"])
        assert row.find(cls="planned").text == str(counts["planned"])
        assert row.find(cls="failed").text == str(counts["failed"])
        assert row.find(cls="missing").text == str(counts["missing"])
        links = {a.attrs["href"] for a in row.find_all("a")}
        assert {f"table_{name}.html", f"figures/{name}.svg", f"tables/{name}.tex"} <= links


def test_provenance_is_rendered_key_by_key_and_escaped(report: Path) -> None:
    text = (report / "reports" / "index.html").read_text()
    doc = parse_html(text)
    terms = [dt.text for dt in doc.find_all("dt")]
    for key in PROVENANCE:
        assert key in terms
    assert {"torch", "numpy", "fd_is", "mode", "digits/train", "train mlp"} <= set(terms)
    values = [dd.text for dd in doc.find_all("dd")]
    assert "0, 1, 2" in values and "true" in values
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    chips = doc.find(cls="chips").text
    assert "git_commit 0123456789abcdef" in chips and "uncommitted changes" in chips


def test_index_shows_the_run_at_a_glance(report: Path) -> None:
    doc = parse_html((report / "reports" / "index.html").read_text())
    rows = doc.find("table", id="run-summary").find("tbody").find_all("tr")
    summary = {tr.find("th").text: tr.find("td").text for tr in rows}
    assert summary == {
        "Code": "0123456789abcdef0123456789abcdef01234567, dirty (uncommitted changes)",
        "Config hash": "sha256:feedbeef",
        "Packages": "torch: 2.13.0; numpy: 2.4.6",
        "Devices": "cpu; cuda:0 (NVIDIA H100 80GB HBM3), device_clock gpu_held_wall; process_cpu",
        "Speed options of sampling": "keep_freed_memory, cuda_graphs skipped (CUDA graphs need CUDA; the network is "
        "on cpu); tf32, autocast (bfloat16), compile (max-autotune-no-cudagraphs), cuda_graphs",
        "Seeds": "sampling: 0; train mlp: 1",
        "Sample counts": "fd_is: 2000; nll: 360",
        "Metric backend and mode": "fd_is: torch-fidelity 0.3.0; mode: levels-no-resize",
        "Reference statistics sha256": f"digits/train: {REF_SHA}",
        "Compute of all cells": "not recorded",
    }


def test_run_summary_names_what_a_run_did_not_record() -> None:
    rows = dict(run_summary({"git_commit": "abc", "git_dirty": False}))
    assert rows["Code"] == "abc, clean"
    assert rows["Devices"] == rows["Reference statistics sha256"] == "not recorded"
    assert rows["Speed options of sampling"] == "not recorded"
    assert dict(run_summary({"speed": []}))["Speed options of sampling"] == "not recorded"
    plain = {name: {"enabled": False} for name in ("tf32", "keep_freed_memory", "channels_last")}
    assert dict(run_summary({"speed": [plain]}))["Speed options of sampling"] == "none"


def test_cell_provenance_table_lists_every_cell_from_the_csv(report: Path) -> None:
    name = "embedded_fd_digits"
    spec = load_spec(report, name)
    doc = parse_html((report / "reports" / f"table_{name}.html").read_text())
    body = doc.find("table", id=f"provenance-{name}").find("tbody").find_all("tr")
    assert len(body) == len(spec.rows) * len(spec.column_values)
    cells = {(tr.find_all("td")[0].text, tr.find_all("td")[1].text): tr for tr in body}
    # DDPM beta at K=10: three ok replicates, seeds 0-2, wall 12.5-14.5 s, device 10.25-12.25 s.
    row = cells[("DDPM, σ²=β", "10")]
    text = {td.attrs["class"].split()[-1]: td.text for td in row.find_all("td")}
    assert text["status"] == "ok" and text["seeds"] == "0, 1, 2" and text["n-samples"] == "2000"
    assert text["device"] == "cpu; cuda:0 (NVIDIA H100 80GB HBM3)"
    assert (text["wall"], text["device-seconds"], text["nfe"]) == ("13.5", "11.2", "10")
    sha = row.find("code")
    assert sha.text == REF_SHA[:12] and sha.attrs["title"] == REF_SHA
    missing = {td.attrs["class"].split()[-1]: td.text for td in cells[("DDIM, η=0", "50")].find_all("td")}
    assert missing["status"] == "missing"
    assert {missing[k] for k in ("seeds", "device", "wall", "device-seconds", "ref")} == {"–"}
    title = doc.find("table", id=f"results-{name}").find("td").attrs["title"]
    assert "device cpu, cuda:0 (NVIDIA H100 80GB HBM3)" in title and f"sha256 {REF_SHA}" in title


def test_pages_are_self_contained(report: Path) -> None:
    out = report / "reports"
    pages = sorted(out.glob("*.html"))
    assert len(pages) == 1 + len(SPECS)
    for page in pages:
        text = page.read_text()
        doc = parse_html(text)
        assert not doc.find_all("link"), "stylesheets must be inline"
        assert "@import" not in text and "url(" not in text
        refs = [n.attrs[a] for n in doc.iter() for a in ("src", "href") if a in n.attrs]
        assert refs
        for ref in refs:
            # The only http(s) text allowed is provenance shown as plain text, never a link.
            assert not re.match(r"^(https?:|//|data:|file:)", ref), (page.name, ref)
            target = ref.split("#", 1)[0]
            assert not target or (out / target).is_file(), (page.name, ref)
    assert "https://example.org/not-a-link" in (out / "index.html").read_text()


def test_sample_grid_shows_first_shard_levels_with_nearest_upscaling(report: Path) -> None:
    png = mpimg.imread(report / "reports" / "samples/digits/mlp/ddpm_beta/K10.png")
    scale, pad = 4, 2  # 8x8 digits are enlarged to 32x32 and tiled 8 per row, 2 px apart
    assert png.shape[:2] == (8 * (8 * scale + pad) + pad,) * 2
    for index in range(64):
        top = pad + (index // 8) * (8 * scale + pad)
        left = pad + (index % 8) * (8 * scale + pad)
        block = png[top:top + 8 * scale, left:left + 8 * scale, :3]
        expected = round((index % 17) * 255 / 16) / 255
        np.testing.assert_allclose(block, expected, atol=1e-6)
    small = mpimg.imread(report / "reports" / "samples/digits/mlp/heun/K10.png")
    assert small.shape[:2] == (8 * scale + 2 * pad, 5 * (8 * scale + pad) + pad)


def test_grid_image_keeps_rgb_channels() -> None:
    images = np.zeros((2, 3, 4, 4), np.uint8)
    images[0, 0] = 3  # red at full level
    images[1, 2] = 3  # blue at full level
    grid = grid_image(images, 3, columns=2, min_cell_px=4, pad=1)
    assert grid.shape == (6, 11, 3)
    assert grid[1, 1].tolist() == [255, 0, 0]
    assert grid[1, 6].tolist() == [0, 0, 255]
    assert grid[0, 0].tolist() == [220, 220, 220]


def test_figures_draw_ours_solid_and_paper_dashed(report: Path) -> None:
    svg = ET.parse(report / "reports" / "figures" / "embedded_fd_digits.svg").getroot()
    ns = "{http://www.w3.org/2000/svg}"
    groups = {g.get("id"): g for g in svg.iter(f"{ns}g") if g.get("id")}
    ours = {k for k in groups if k.startswith("ours-")}
    paper = {k for k in groups if k.startswith("paper-")}
    assert ours == {"ours-0", "ours-1", "ours-2", "ours-3"}
    # Row 1 has a paper value at K=10 only, drawn at our measured NFE there; row 2, 3: none.
    assert paper == {"paper-0", "paper-1"}
    for name in ours:
        styles = [p.get("style", "") for p in groups[name].iter(f"{ns}path")]
        assert not any("stroke-dasharray" in s for s in styles)
    for name in paper:
        styles = [p.get("style", "") for p in groups[name].iter(f"{ns}path")]
        assert any("stroke-dasharray" in s for s in styles)


def test_rendering_twice_gives_identical_files(report: Path, tmp_path: Path) -> None:
    again = render_report(report / "results", sorted((report / "specs").glob("*.yaml")),
                          tmp_path / "reports")
    first = report / "reports"
    for path in sorted(first.rglob("*")):
        if path.is_file() and path.suffix in {".svg", ".tex", ".png"}:
            assert (again.parent / path.relative_to(first)).read_bytes() == path.read_bytes()


def test_pdflatex_compiles_all_tables(report: Path, tmp_path: Path) -> None:
    for binary in ("pdflatex", "pdfinfo"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} not installed (Debian: texlive-latex-base, poppler-utils)")
    tables = shutil.copytree(report / "reports" / "tables", tmp_path / "tables")
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "all.tex"],
        cwd=tables, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    info = subprocess.run(["pdfinfo", "all.pdf"], cwd=tables, capture_output=True, text=True,
                          check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    assert pages >= 1
    log = (tables / "all.log").read_text(errors="replace")
    assert "LaTeX Warning: Reference" not in log and "Missing character" not in log


def _bad_spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("better: lower", "better: smaller", ["better", "'smaller'", "'lower', 'higher'"]),
        ("decimals: 2", "decimals: 2\ncolour: red", ["(top level)", "'colour' was unexpected"]),
        ("paper: {10: 122.7, 25: 64.7}", "paper: {15: 1.0}", ["rows[0].paper", "key 15",
                                                             "[10, 25, 50, 100]"]),
        ("values: [10, 25, 50, 100]", "values: ['10', 25]", ["columns.values[0]", "'10'",
                                                             "integer"]),
        ("metric: fd_digits", "metric: is_digits", ["better", "'lower'", "is_digits"]),
        ("id: embedded_fd_digits", "id: all", ["id", "'all'", "reserved"]),
        ("sampler: heun}", "K: 10, sampler: heun}", ["rows[3].K", "column field 'K'"]),
        ("model: mlp, sampler: heun}", "}", ["rows[3]", "selects nothing"]),
        ("decimals: 2", "decimals: -1", ["decimals", "-1"]),
    ],
)
def test_bad_specs_name_file_key_and_value(tmp_path: Path, old: str, new: str,
                                           expected: list[str]) -> None:
    assert old in SPEC_FD
    path = _bad_spec(tmp_path, SPEC_FD.replace(old, new, 1))
    with pytest.raises(TableSpecError) as err:
        load_table_spec(path)
    message = str(err.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_duplicate_spec_ids_are_refused(tmp_path: Path) -> None:
    first, second = write_specs(tmp_path, {"a": SPEC_IS, "b": SPEC_IS})
    with pytest.raises(TableSpecError, match="already used by") as err:
        load_table_specs([first, second])
    assert str(first) in str(err.value) and str(second) in str(err.value)


def test_ambiguous_row_names_the_fields_that_differ(tmp_path: Path) -> None:
    results = write_results(tmp_path)
    spec = write_specs(tmp_path, {"x": SPEC_FD.replace(", grid: uniform}", "}")})
    with pytest.raises(TableSpecError, match=r"rows\[2\].*K=10.*differ in \['grid'\]"):
        render_report(results, spec, tmp_path / "reports")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda rows: [rows[0][:-1]] + rows[1:], "differs from the contract"),
        (lambda rows: rows + [rows[1]], "repeats line 2"),
        (lambda rows: rows[:1] + [rows[1][:9] + [""] + rows[1][10:]], "line 2: status 'ok' needs"),
        (lambda rows: rows[:1] + [rows[1][:6] + ["ten"] + rows[1][7:]],
         "line 2: column 'K' 'ten' is not an integer"),
        (lambda rows: rows[:1] + [rows[1][:14] + ["done"] + rows[1][15:]], "'done' is not one of"),
        (lambda rows: rows[:1] + [rows[1][:16] + ["fast"] + rows[1][17:]],
         "line 2: column 'device_seconds' 'fast' is not a number"),
    ],
)
def test_bad_metrics_csv_is_refused_with_line_and_column(tmp_path: Path, edit, expected) -> None:
    results = write_results(tmp_path)
    path = results / "metrics.csv"
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(edit(rows))
    with pytest.raises(ResultsError, match=re.escape(expected)):
        read_metrics(path)


def test_missing_results_files_are_named(tmp_path: Path) -> None:
    results = write_results(tmp_path)
    (results / "provenance.json").unlink()
    with pytest.raises(ResultsError, match="provenance.json not found"):
        render_report(results, write_specs(tmp_path), tmp_path / "reports")
    (results / "metrics.csv").unlink()
    with pytest.raises(ResultsError, match="metrics.csv not found"):
        render_report(results, write_specs(tmp_path), tmp_path / "reports")


def test_header_only_metrics_renders_every_cell_missing(tmp_path: Path) -> None:
    results = write_results(tmp_path)
    (results / "metrics.csv").write_text(",".join(HEADER) + "\n")
    shutil.rmtree(results / "samples")
    out = tmp_path / "reports"
    render_report(results, write_specs(tmp_path), out)
    for name in SPECS:
        spec = load_spec(tmp_path, name)
        doc = parse_html((out / f"table_{name}.html").read_text())
        _, _, cells = table_grid(doc, f"results-{name}")
        assert {c.find(cls="word").text for row in cells for c in row} == {"missing"}
        assert doc.find("table", id=f"samples-{name}") is None
        tex_rows = latex_body((out / "tables" / f"{name}.tex").read_text())
        assert [row[1:] for row in tex_rows] == [["--"] * len(spec.column_values)] * len(spec.rows)
        assert "no finished cells" in (out / "figures" / f"{name}.svg").read_text()
    index = parse_html((out / "index.html").read_text())
    assert index.find("tr", id="status-embedded_fd_digits").attrs["data-missing"] == "16"


def test_provenance_entries_cover_any_json_shape() -> None:
    entries = provenance_entries(
        {"a": None, "b": [], "c": {}, "d": [{"x": 1}, 2], "e": {"f": [1.5, True]}}
    )
    flat = {e.key: (e.text, [(c.key, c.text) for c in e.children]) for e in entries}
    assert flat == {
        "a": ("null", []),
        "b": ("[]", []),
        "c": ("{}", []),
        "d": (None, [("[0]", None), ("[1]", "2")]),
        "e": (None, [("f", "1.5, true")]),
    }
    assert entries[3].children[0].children[0].text == "1"


def perf_row(loop: str, sampler: str, ms: float, run_id: str, **values):
    from bench.perf.rows import PerfRow

    context = {"run_id": run_id, "device": "cpu", "device_name": "Test CPU", "torch": "2.13.0", "threads": 1,
               "clock": "wall", "repeats": 5, "warmup": 1, "state_dtype": "float32", "precision": "fp32"}
    return PerfRow(network="mlp", shape="1x8x8", batch=1000, loop=loop, sampler=sampler, ms_per_nfe=ms,
                   context=context, **values)


def test_index_shows_the_newest_perf_run_as_the_sampler_cost_table(tmp_path: Path) -> None:
    from bench.perf.rows import append_csv

    results = write_results(tmp_path)
    older = [perf_row("network", "", 9.0, "2026-12-01T00:00:00+00:00", nfe=1, overhead_pct=0.0)]
    newer = [
        perf_row("network", "", 5.5, "2026-12-06T08:00:00+00:00", nfe=1, overhead_pct=0.0),
        perf_row("ours", "ddpm", 5.83, "2026-12-06T08:00:00+00:00", nfe=10, overhead_pct=6.04,
                 ours_over_peer=0.951, net_pct=92.44, noise_pct=3.61, arith_pct=3.95, note="a <note>"),
    ]
    for row in (*newer, *older):
        row.set_throughput(495_000_000, peak=None)
    append_csv(newer, results / "perf.csv")
    append_csv(older, results / "perf.csv")  # appended later, but an earlier run: the newest run_id wins
    text = render_report(results, write_specs(tmp_path), tmp_path / "reports").read_text()
    doc = parse_html(text)
    table = doc.find("table", id="perf")
    headings = [th.text for th in table.find("thead").find_all("th")]
    assert headings[:7] == ["network", "batch", "loop", "sampler", "NFE", "ms / NFE", "overhead %"]
    body = [[td.text for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]
    column = dict(zip(headings, zip(*body, strict=True), strict=True))
    assert column["ms / NFE"] == ("5.5", "5.83") and column["overhead %"] == ("+0.0", "+6.0")
    assert column["ours / peer"] == ("-", "0.95") and column["TFLOP/s"] == ("0.09", "0.0849")
    assert column["% of peak"] == ("-", "-") and column["noise %"] == ("-", "3.6")
    assert column["note"] == ("", "a <note>") and "a &lt;note&gt;" in text
    meta = doc.find("h2", id="sampler-cost")
    assert meta is not None and "The newest of 2 runs" in text and "2026-12-06T08:00:00+00:00" in text
    assert "device_name Test CPU; torch 2.13.0" in " ".join(text.split())


def test_index_has_no_sampler_cost_without_a_perf_run(report: Path) -> None:
    assert 'id="sampler-cost"' not in (report / "reports" / "index.html").read_text()


def test_a_csv_without_run_ids_is_not_taken_for_a_perf_table(tmp_path: Path) -> None:
    from bench.report.perf_runs import latest_perf_run

    assert latest_perf_run(tmp_path / "perf.csv") is None
    (tmp_path / "perf.csv").write_text("network,ms\nmlp,5\n")
    with pytest.raises(ValueError, match=r"perf\.csv has no run_id column: it is not a file of python -m bench perf"):
        latest_perf_run(tmp_path / "perf.csv")
