"""Where a run's time goes: Snakemake's per-job benchmark files summed by stage.

Every rule writes ``results/benchmarks/<rule>/<wildcards>.tsv`` (its ``benchmark:`` directive; the
``s`` column is the job's wall seconds, start-up included; with the warm worker of a local run, the
other columns measure only the job's client process). A stage's seconds are the sum over its
jobs; its share is of the sum over all jobs, which exceeds the run's wall time when jobs run side
by side. The Snakefile's ``onsuccess`` handler writes results/stage_times.csv and prints it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from bench.runtime.io import atomic_text

# Snakemake rule -> stage; the stages in the order a run passes through them.
RULE_STAGES = {
    "train_extractor": "train",
    "train_model": "train",
    "moments": "moments",
    "sample_shard": "sample",
    "reference_stats": "metrics",
    "features": "metrics",
    "fd_is": "metrics",
    "reference_features": "metrics",
    "precision_recall": "metrics",
    "nll": "metrics",
    "ode_nll": "metrics",
    "recon": "metrics",
    "oracle": "metrics",
    "collect": "report",
    "report": "report",
}
STAGES = ("train", "moments", "sample", "metrics", "report")
COLUMNS = ("stage", "jobs", "seconds", "share")


@dataclass(frozen=True)
class StageTime:
    """One stage: its job count, summed job wall seconds and share (0..1) of all jobs' seconds."""

    stage: str
    jobs: int
    seconds: float
    share: float


def job_seconds(path: Path) -> float:
    """The wall seconds (column ``s``) of one Snakemake benchmark file (the mean, if it holds repeats)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path} is not a Snakemake benchmark file (no 's' column)")
    return sum(float(r["s"]) for r in rows) / len(rows)


def stage_times(benchmarks: Path) -> list[StageTime]:
    """Every stage of STAGES (zero jobs where none ran), from the benchmark files under ``benchmarks``."""
    jobs = dict.fromkeys(STAGES, 0)
    seconds = dict.fromkeys(STAGES, 0.0)
    for path in sorted(Path(benchmarks).glob("*/**/*.tsv")):
        rule = path.relative_to(benchmarks).parts[0]
        if rule not in RULE_STAGES:
            raise ValueError(f"benchmark file {path}: rule {rule!r} is not one of {sorted(RULE_STAGES)}")
        stage = RULE_STAGES[rule]
        jobs[stage] += 1
        seconds[stage] += job_seconds(path)
    total = sum(seconds.values())
    return [StageTime(s, jobs[s], seconds[s], seconds[s] / total if total else 0.0) for s in STAGES]


def write_stage_times(rows: list[StageTime], path: Path) -> Path:
    """results/stage_times.csv: one row per stage, then a ``total`` row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow((r.stage, r.jobs, f"{r.seconds:.3f}", f"{r.share:.4f}"))
    total = sum(r.seconds for r in rows)
    writer.writerow(("total", sum(r.jobs for r in rows), f"{total:.3f}", "1.0000" if total else "0.0000"))
    return atomic_text(buffer.getvalue(), path)


def format_stage_times(rows: list[StageTime]) -> str:
    """An aligned text table of the stages and their total."""
    total = sum(r.seconds for r in rows)
    lines = [f"{'stage':<8} {'jobs':>5} {'seconds':>9} {'share':>6}"]
    lines += [f"{r.stage:<8} {r.jobs:>5} {r.seconds:>9.1f} {100 * r.share:>5.1f}%" for r in rows]
    lines.append(f"{'total':<8} {sum(r.jobs for r in rows):>5} {total:>9.1f} {'100.0%' if total else '-':>6}")
    return "\n".join(lines)
