"""LaTeX that compiles: every shipped configuration's tables, every spec's text, any Unicode."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.report.latex import document_tex, write_latex_tables
from bench.report.latex_text import escape_latex, kernel_code_points
from bench.report.results import CELL_FIELDS, MetricRecord
from bench.report.specs import load_table_spec, load_table_specs
from bench.report.tables import build_table

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("workflows/config/default.yaml", "workflows/config/paper.yaml")
# What a user pastes a table into: the tables need nothing beyond booktabs.
BARE = "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n%s\n\\end{document}\n"

pytestmark = pytest.mark.skipif(
    shutil.which("pdflatex") is None, reason="pdflatex not installed (Debian: texlive-latex-base)"
)


def pdflatex(folder: Path, name: str) -> None:
    run = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name],
        cwd=folder, capture_output=True, text=True, errors="replace", timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    log = (folder / name.replace(".tex", ".log")).read_text(errors="replace")
    assert "Missing character" not in log


def compile_bare(folder: Path, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bare.tex").write_text(BARE % body, encoding="utf-8")
    pdflatex(folder, "bare.tex")


def placeholder_records(spec) -> list[MetricRecord]:
    """Two ok replicates and one failed one for every producible cell of a spec."""
    records = []
    for i, row in enumerate(spec.rows):
        for j, value in enumerate(spec.column_values):
            if row.unavailable_reason(value) is not None:
                continue
            where = {**spec.row_selectors(row), spec.column_field: value}
            fields = {f: where.get(f, 1 if f == "K" else "x") for f in CELL_FIELDS}
            for rep, number in enumerate((10.0 + i + j, 11.5 + i, None)):
                records.append(MetricRecord(
                    line=0, **fields, sampler_label="x", nfe=float(fields["K"]) + 1, metric=spec.metric,
                    value=number, n_samples=2000, seed=rep, replicate=rep, wall_seconds=1.0,
                    status="ok" if number is not None else "failed", device=None, device_seconds=None,
                    reference_stats_sha256=None,
                ))
    return records


def shipped_specs(config: str):
    return load_table_specs([ROOT / p for p in yaml.safe_load((ROOT / config).read_text())["tables"]])


@pytest.mark.parametrize("config", SHIPPED)
def test_shipped_configuration_tables_compile(config: str, tmp_path: Path) -> None:
    tables = [build_table(spec, placeholder_records(spec)) for spec in shipped_specs(config)]
    written = write_latex_tables(tables, tmp_path)
    pdflatex(tmp_path, "all.tex")
    # Each table alone, \input into a document that loads booktabs and nothing else.
    body = "\n".join(rf"\input{{{path.name}}}\par" for key, path in written.items() if key != "all")
    (tmp_path / "bare.tex").write_text(BARE % body, encoding="utf-8")
    pdflatex(tmp_path, "bare.tex")


def spec_texts(path: Path) -> list[str]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    texts = [raw["title"], raw.get("caption") or "", raw["metric_label"], raw.get("paper_label", ""),
             raw["columns"]["label"], *map(str, raw["columns"]["values"])]
    for row in raw["rows"]:
        texts += [row["label"], row.get("note", ""), row.get("unavailable", "")]
        texts += [str(v) for v in (row.get("paper_text") or {}).values()]
    return [t for t in texts if t]


def test_every_text_of_every_table_spec_compiles(tmp_path: Path) -> None:
    paths = sorted((ROOT / "workflows/config/tables").glob("*.yaml"))
    texts = [text for path in paths for text in spec_texts(path)]
    assert any(not t.isascii() for t in texts)
    converted = [escape_latex(text) for text in texts]
    assert all(t.isascii() for t in converted)
    compile_bare(tmp_path / "bare", "\n".join(rf"{t}\par" for t in converted))
    document = document_tex([build_table(load_table_spec(p), []) for p in paths])
    (tmp_path / "captions").mkdir()
    for path in paths:
        (tmp_path / "captions" / f"{load_table_spec(path).id}.tex").write_text("")
    (tmp_path / "captions" / "all.tex").write_text(document, encoding="utf-8")
    pdflatex(tmp_path / "captions", "all.tex")


@pytest.mark.parametrize(
    ("text", "tex"),
    [
        ("Γ_n", r"\ensuremath{\Gamma}\_n"),
        ("σ²=β̃", r"\ensuremath{\sigma}\ensuremath{^{\mathrm{2}}}=\ensuremath{\tilde{\beta}}"),
        ("ᾱ", r"\ensuremath{\bar{\alpha}}"),
        ("x₀", r"x\ensuremath{_{\mathrm{0}}}"),
        ("εθ", r"\ensuremath{\varepsilon}\ensuremath{\theta}"),
        ("50% & a_b {c}", r"50\% \& a\_b \{c\}"),
        ("ǖ", r"\={\"{u}}"),
        ("中", r"\texttt{[U+4E2D]}"),
    ],
)
def test_symbols_become_math_and_accents(text: str, tex: str) -> None:
    assert escape_latex(text) == tex


def test_every_kernel_code_point_compiles_in_both_preambles(tmp_path: Path) -> None:
    """The generated charset is still true of the installed pylatexenc and LaTeX."""
    points = sorted(kernel_code_points())
    assert {ord(c) for c in "αβγδεζηθικλμνξοπρστυφχψωΓΔΘΛΞΠΣΦΨΩ±×≤≥≈"} <= set(points)
    body = "\n".join(rf"{escape_latex(chr(cp))}\par" for cp in points)
    compile_bare(tmp_path / "bare", body)
    (tmp_path / "t1").mkdir()
    head = document_tex([]).split(r"\begin{document}")[0]
    (tmp_path / "t1" / "t1.tex").write_text(head + "\\begin{document}\n" + body + "\n\\end{document}\n")
    pdflatex(tmp_path / "t1", "t1.tex")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=60))
def test_any_unicode_text_compiles(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    converted = [escape_latex(text) for text in texts]
    assert all(t.isascii() for t in converted)
    folder = tmp_path_factory.mktemp("any")
    compile_bare(folder, "\n".join(rf"\mbox{{{t}}}\par {t}\par" for t in converted))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.characters(categories=["Mn", "Me", "Lm", "No", "Sm", "So", "Cc", "Cf", "Co"]),
                min_size=20, max_size=200))
def test_marks_symbols_and_controls_compile(tmp_path_factory: pytest.TempPathFactory,
                                            chars: list[str]) -> None:
    compile_bare(tmp_path_factory.mktemp("marks"), escape_latex("".join(chars)))
