# dpm-bench: model family x sampler x K -> samples -> FD / IS / NLL -> HTML and LaTeX report.
# `snakemake --cores all` runs the embedded default (workflows/config/default.yaml);
# `--configfile FILE` runs another profile instead (its keys replace the default's entirely).
# This file sets the run up; the helpers live in workflows/rules/common.smk, the rules in one file per stage.

import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from bench.config import (
    ConfigError,
    cells,
    check_dataset_paths,
    read_yaml,
    shard_ranges,
    validate_config,
)
from bench.runtime.speed import malloc_environment
from bench.runtime.warm_worker import DISABLE_ENV_VAR as DISABLE_WORKER_VAR
from bench.runtime.warm_worker import SUPPORTED as WORKER_SUPPORTED

if not config:
    config.update(read_yaml(Path(workflow.basedir) / "workflows/config/default.yaml"))
try:
    # Snakemake's own YAML reader keeps the last of two equal keys; ours refuses them (bench/runtime/strict_yaml.py).
    for configfile in workflow.overwrite_configfiles or ():
        read_yaml(Path(configfile))
    # User data directories are checked in onstart, which a dry run (planning without data) skips.
    validate_config(config, root=Path(workflow.basedir), check_paths=False)
except ConfigError as err:
    raise WorkflowError(f"invalid dpm-bench configuration: {err}") from None

# Every job, and the warm worker they fork from, starts with glibc keeping freed memory in its heap.
for name, value in malloc_environment().items():
    os.environ.setdefault(name, value)

PY = sys.executable
RESULTS = "results"
REPORTS = "reports"
CELLS = cells(config)
SHARDS = shard_ranges(config)
TABLES = [str(Path(workflow.basedir) / t) for t in config["tables"]]


wildcard_constraints:
    K=r"\d+",
    shard=r"\d{4}",


include: "workflows/rules/common.smk"
include: "workflows/rules/data.smk"
include: "workflows/rules/extractor.smk"
include: "workflows/rules/models.smk"
include: "workflows/rules/moments.smk"
include: "workflows/rules/sample.smk"
include: "workflows/rules/metrics.smk"
include: "workflows/rules/report.smk"


onstart:
    try:
        check_dataset_paths(config, Path(workflow.basedir))
    except ConfigError as err:
        raise WorkflowError(f"invalid dpm-bench configuration: {err}") from None
    # A cluster job (no local executor) or a Snakemake started inside a job imports torch itself.
    if WORKER_SUPPORTED and workflow.local_exec and workflow.is_main_process and not os.environ.get(DISABLE_WORKER_VAR):
        start_warm_worker()


onerror:
    stop_warm_worker()


onsuccess:
    from bench.runtime.stage_times import format_stage_times, stage_times, write_stage_times

    stop_warm_worker()

    STAGE_ROWS = stage_times(Path(RESULTS) / "benchmarks")
    write_stage_times(STAGE_ROWS, Path(RESULTS) / "stage_times.csv")
    print(f"dpm-bench stage times (summed job wall seconds, {RESULTS}/stage_times.csv):")
    print(format_stage_times(STAGE_ROWS))


rule all:
    default_target: True
    input:
        f"{REPORTS}/index.html",
