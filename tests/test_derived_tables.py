"""Derived tables (bench.report.derived): Analytic-DPM Table 3's least K reaching a FID, read off FID-by-K curves."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.config import ConfigError, load_config
from bench.config.tables import check_tables
from bench.report.derived import least_k
from bench.report.render import render_report
from bench.report.results import METRICS_COLUMNS, MetricRecord
from bench.report.specs import TableSpecError, load_table_spec
from bench.report.tables import MISSING, OK, build_table
from bench.steps.plan import plan

ROOT = Path(__file__).resolve().parents[1]


def test_least_k_is_the_first_grid_point_at_or_below_the_threshold():
    assert least_k({100: 4.0, 10: 20.0, 50: 5.9, 25: 7.0}, 6.0) == 50
    assert least_k({10: 20.0, 25: 6.0, 50: 5.0}, 6.0) == 25  # "reaching" includes equality
    assert least_k({10: 20.0, 25: 7.0}, 6.0) is None  # no K of the grid reaches it: no interpolation beyond
    assert least_k({10: 5.0, 25: 7.0, 50: 4.0}, 6.0) == 10  # the least K, not the last crossing


def test_an_unfinished_smaller_k_leaves_the_least_k_open():
    assert least_k({10: None, 25: 5.0}, 6.0) is None
    assert least_k({10: 5.0, 25: None}, 6.0) == 10


def record(dataset: str, model: str, sampler: str, K: int, value: float | None, replicate: int = 0) -> MetricRecord:
    return MetricRecord(
        line=0, dataset=dataset, model=model, family="ddpm", sampler=sampler, sampler_label=sampler, grid="even",
        K=K, nfe=float(K), metric="fid", value=value, n_samples=100, seed=replicate, replicate=replicate,
        wall_seconds=1.0, status="ok" if value is not None else "failed", device=None, device_seconds=None,
        reference_stats_sha256=None,
    )


SPEC = {
    "id": "least_k", "title": "least K", "metric": "least_k", "metric_label": "least K", "better": "lower",
    "decimals": 0, "dataset": "a", "derived": {"metric": "fid", "rule": "least_k", "threshold": 6},
    "columns": {"field": "dataset", "values": ["a", "b"], "label": "dataset"},
    "rows": [
        {"label": "S", "at": {"a": {"model": "ma", "sampler": "s"}, "b": {"model": "mb", "sampler": "s"}}},
        {"label": "T", "at": {"a": {"model": "ma", "sampler": "t"}}, "unavailable_at": {"b": "no curve"}},
    ],
}


def write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "least_k.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_a_derived_table_reads_each_column_s_own_curve(tmp_path):
    records = [
        record("a", "ma", "s", 10, 9.0), record("a", "ma", "s", 25, 5.5), record("a", "ma", "s", 50, 3.0),
        # Model mb also ran sampler s on dataset a: the row's `at` picks ma there.
        record("a", "mb", "s", 10, 1.0),
        # Two replicates at K = 10 average to 6.5 (> 6), so the least K is 25.
        record("b", "mb", "s", 10, 5.0, 0), record("b", "mb", "s", 10, 8.0, 1), record("b", "mb", "s", 25, 4.0),
        record("a", "ma", "t", 10, 7.0), record("a", "ma", "t", 25, 6.5),
    ]
    table = build_table(load_table_spec(write_spec(tmp_path, SPEC)), records)
    (s_a, s_b), (t_a, t_b) = table.cells
    assert (s_a.status, s_a.mean, s_a.identity["K"], s_a.identity["model"]) == (OK, 25.0, 25, "ma")
    assert (s_b.status, s_b.mean, s_b.identity["model"]) == (OK, 25.0, "mb")
    assert t_a.status == MISSING  # no K of its grid reaches FID 6
    assert t_b.status == MISSING


def test_a_row_with_at_must_cover_every_column(tmp_path):
    spec = {**SPEC, "rows": [{"label": "T", "at": {"a": {"model": "ma", "sampler": "t"}}}]}
    with pytest.raises(TableSpecError, match=r"rows\[0\]\.at: row 'T' selects nothing at \['b'\]"):
        load_table_spec(write_spec(tmp_path, spec))


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config(ROOT / "workflows/config/paper.yaml", root=ROOT, check_paths=False)


def test_the_paper_profile_plans_analytic_dpm_table_3_from_its_curves(paper):
    row = next(r for r in plan(paper, root=ROOT) if r["table"] == "paper_adpm_t3_least_k")
    # Every cell with a paper number and a released model; the DDPM row (variance not stated), the CIFAR-10-only
    # quadratic rows, CIFAR-10's plain DDIM and iDDPM's missing CelebA model stay unavailable.
    assert (row["cells"], row["unavailable"]) == (9, 9)
    # Its jobs are those of the curves it reads: Table 2's K grid of 7 values (3 curves), DDIM Table 3's 4, and the
    # curves added for it (DDPM quad 7, DDIM quad 6, iDDPM CIFAR-10 7, iDDPM LSUN 4, Analytic-DDPM LSUN 4).
    assert row["samples"] == (7 * 3 + 4 + 7 + 6 + 7 + 4 + 4) * paper["sampling"]["n_samples"]


def test_each_added_curve_brackets_the_papers_least_k(paper):
    spec = yaml.safe_load((ROOT / "workflows/config/tables/paper_adpm_t3_least_k.yaml").read_text(encoding="utf-8"))
    grids: dict[tuple[str, str], set[int]] = {}
    for exp in paper["experiments"]:
        for sampler in exp["samplers"]:
            grids.setdefault((exp["model"], sampler), set()).update(exp["K"])
    bracketed = {}
    for row in spec["rows"]:
        for column, cell in row.get("at", {}).items():
            K = row.get("paper", {}).get(column)
            grid = sorted(grids[(cell["model"], cell["sampler"])])
            if K is not None and grid[0] > 10:  # the added curves, not Table 2's and DDIM Table 3's grids
                bracketed[(row["label"], column)] = (min(grid) < K <= max(grid), K in grid)
    assert len(bracketed) == 5
    assert all(below_and_above and on_grid for below_and_above, on_grid in bracketed.values())


def test_a_derived_table_names_a_curve_no_experiment_defines(paper, tmp_path):
    spec = {**SPEC, "columns": {**SPEC["columns"], "values": ["cifar10"]},
            "rows": [{"label": "S", "at": {"cifar10": {"model": "adpm_cifar10_ls", "sampler": "ddim_uniform_eta0"}}}]}
    write_spec(tmp_path, spec)
    with pytest.raises(ConfigError, match="reads the fid curve of model='adpm_cifar10_ls', "
                                          "sampler='ddim_uniform_eta0', which no experiment defines"):
        check_tables({**paper, "tables": ["least_k.yaml"]}, tmp_path)
    write_spec(tmp_path, {**spec, "derived": {**SPEC["derived"], "metric": "sfid"}})
    with pytest.raises(ConfigError, match="derived.metric 'sfid' is not allowed"):
        check_tables({**paper, "tables": ["least_k.yaml"]}, tmp_path)


def test_the_report_renders_a_derived_table(tmp_path):
    rows = [record("a", "ma", "s", 10, 9.0), record("a", "ma", "s", 25, 5.5), record("b", "mb", "s", 10, 5.0)]
    lines = [",".join(METRICS_COLUMNS)]
    for r in rows:
        lines.append(",".join("" if getattr(r, c) is None else str(getattr(r, c)) for c in METRICS_COLUMNS))
    results = tmp_path / "results"
    results.mkdir()
    (results / "metrics.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (results / "provenance.json").write_text("{}", encoding="utf-8")
    render_report(results, [write_spec(tmp_path, SPEC)], tmp_path / "report")
    tex = (tmp_path / "report/tables/least_k.tex").read_text(encoding="utf-8")
    body = next(line for line in tex.splitlines() if line.startswith("S "))
    assert [c.strip().removesuffix(r"\\").strip() for c in body.split("&")][1:] == [r"\textbf{25}", r"\textbf{10}"]
