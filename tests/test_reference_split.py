"""A table's reference_split: its cells' samples scored against that split's statistics, made once per
(dataset, split, extractor) and shared, beside the profile's own reference, without sampling again."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from dag import TINY_CONFIG, snakemake

from bench.config import ConfigError, validate_config
from bench.report.results import read_metrics
from bench.report.specs import load_table_spec
from bench.report.tables import build_table
from bench.steps.collect import metric_rows
from bench.steps.plan import plan

ROOT = Path(__file__).resolve().parents[1]
CELLS = [("ddpm_beta", "DDPM"), ("ddim_eta0", "DDIM")]


def table(metric: str, split: str | None) -> dict:
    spec = {"id": f"fd_{split or 'profile'}", "title": f"FD vs {split}", "metric": metric, "metric_label": "FD",
            "better": "higher" if metric.startswith("is") else "lower", "decimals": 2, "dataset": "digits",
            "columns": {"field": "K", "values": [3], "label": "K"},
            "rows": [{"label": label, "model": "mlp", "sampler": sampler} for sampler, label in CELLS]}
    return spec | ({"reference_split": split} if split else {})


def tiny_with_tables(tmp_path: Path, tables: list[dict]) -> dict:
    """tests/configs/tiny.yaml cut to two cells of one model at K = 3, showing ``tables``."""
    cfg = yaml.safe_load(TINY_CONFIG.read_text(encoding="utf-8"))
    cfg["models"] = {"mlp": cfg["models"]["mlp"]}
    cfg["experiments"] = [{"model": "mlp", "samplers": [s for s, _ in CELLS], "K": [3]}]
    cfg["samplers"] = {s: cfg["samplers"][s] for s, _ in CELLS}
    cfg["metrics"] = {"fd_is": cfg["metrics"]["fd_is"]}
    cfg.pop("moments")
    cfg["tables"] = []
    for spec in tables:
        path = tmp_path / f"{spec['id']}.yaml"
        path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
        cfg["tables"].append(str(path))
    return cfg


def test_a_reference_split_on_a_metric_without_reference_is_refused(tmp_path):
    cfg = tiny_with_tables(tmp_path, [table("is_digits", "test")])
    with pytest.raises(ConfigError, match=r"reference_split 'test' needs an FD metric; metric 'is_digits' has no "
                                          r"reference; allowed: \['fd_digits', 'fid'\]"):
        validate_config(cfg, root=ROOT)


def test_collect_writes_the_split_fd_row_and_the_table_reads_it(tmp_path):
    base = {"dataset": "digits", "model": "mlp", "family": "ddpm", "sampler": "ddpm_beta", "sampler_label": "DDPM",
            "grid": "even", "K": 3, "seed": 0}
    record = {"status": "ok", "fd": 1.5, "is_mean": 2.0, "fd_ci": None, "is_ci": None, "n": 40, "nfe": 3,
              "extractor": "digits_cnn/x", "reference_stats_sha256": "a" * 64, "devices": ["cpu"],
              "device_seconds": 0.1, "wall_seconds": 0.2}
    test_record = record | {"fd": 4.25, "reference_stats_sha256": "b" * 64}
    cell = base | {"fd_is": "cells/x/fd_is.json", "fd_is_splits": {"test": "cells/x/fd_is-test.json"}}
    rows = metric_rows(cell, {"fd_is": record, "fd_is_test": test_record})
    assert [(r["metric"], r["value"], r["reference_stats_sha256"]) for r in rows] == [
        ("fd_digits", 1.5, "a" * 64), ("is_digits", 2.0, "a" * 64), ("fd_digits_test", 4.25, "b" * 64)]
    metrics = tmp_path / "metrics.csv"
    with open(metrics, "w", newline="") as handle:
        from bench.steps.collect import COLUMNS

        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    records = read_metrics(metrics)
    for split, value in ((None, 1.5), ("test", 4.25)):
        path = tmp_path / f"{split}.yaml"
        spec = table("fd_digits", split)
        spec["rows"] = spec["rows"][:1]
        path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
        assert build_table(load_table_spec(path), records).cells[0][0].mean == value


def _planned(out: str) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


@pytest.mark.slow
def test_test_split_statistics_are_made_once_and_score_the_same_samples(tmp_path):
    """Two tables of the same two cells, one against the test split: one more reference-statistics job and
    one fd_is job per cell, no more sampling; the FD rows differ only by their reference."""
    cfg = tiny_with_tables(tmp_path, [table("fd_digits", None), table("fd_digits", "test")])
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg), encoding="utf-8")
    work = tmp_path / "run"
    r = snakemake("-n", "--cores", "1", "--configfile", str(config), "--directory", str(work), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = _planned(r.stdout + r.stderr)
    assert (counts["sample_shard"], counts["features"], counts["fd_is"]) == (4, 4, 2)
    assert (counts["fd_is_split"], counts["reference_stats"]) == (2, 2)
    assert plan(validate_config(cfg, root=ROOT), root=ROOT)[-1]["jobs"] == counts["total"]

    r = snakemake("--cores", "2", "--configfile", str(config), "--directory", str(work), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(work / "results/metrics.csv", newline="") as handle:
        rows = {(row["sampler"], row["metric"]): row for row in csv.DictReader(handle)}
    test_ref = json.loads((work / "results/refs/digits-test-digits_cnn.json").read_text())
    train_ref = json.loads((work / "results/refs/digits-train-digits_cnn.json").read_text())
    assert test_ref["reference_stats_sha256"] != train_ref["reference_stats_sha256"]
    for sampler, _ in CELLS:
        train, test = rows[(sampler, "fd_digits")], rows[(sampler, "fd_digits_test")]
        assert (train["status"], test["status"]) == ("ok", "ok") and train["value"] != test["value"]
        assert train["reference_stats_sha256"] == train_ref["reference_stats_sha256"]
        assert test["reference_stats_sha256"] == test_ref["reference_stats_sha256"]
        record = json.loads((work / f"results/cells/digits/mlp/{sampler}/K3/fd_is-test.json").read_text())
        assert record["reference"] == "test" and str(record["n"]) == train["n_samples"] == test["n_samples"]
    # Each table shows its own reference's value (2 decimals).
    for spec_id, metric in (("fd_profile", "fd_digits"), ("fd_test", "fd_digits_test")):
        latex = (work / f"reports/tables/{spec_id}.tex").read_text(encoding="utf-8")
        assert f"{float(rows[('ddpm_beta', metric)]['value']):.2f}" in latex


def test_a_table_naming_the_profiles_own_split_reads_the_cells_fd_is_record(tmp_path):
    """No second job when the table's split is metrics.fd_is's: the same record, reported as both metrics."""
    cfg = tiny_with_tables(tmp_path, [table("fd_digits", "test")])
    cfg["metrics"]["fd_is"]["reference_split"] = "test"
    profile_only = tiny_with_tables(tmp_path, [table("fd_digits", None)])
    profile_only["metrics"]["fd_is"]["reference_split"] = "test"
    assert plan(validate_config(cfg, root=ROOT), root=ROOT)[-1]["jobs"] == plan(
        validate_config(profile_only, root=ROOT), root=ROOT)[-1]["jobs"]
    cfg["metrics"]["fd_is"]["reference_split"] = "train"
    assert plan(validate_config(cfg, root=ROOT), root=ROOT)[-1]["jobs"] == plan(
        validate_config(profile_only, root=ROOT), root=ROOT)[-1]["jobs"] + 3
