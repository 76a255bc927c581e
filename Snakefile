# dpm-bench: model family x sampler x K -> samples -> FD / IS / NLL -> HTML and LaTeX report.
# `snakemake --cores all` runs the embedded default (workflows/config/default.yaml);
# `--configfile FILE` runs another profile instead (its keys replace the default's entirely).

import json
import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from bench import samplers
from bench.checkpoints.references import default_weights
from bench.config import (
    PF_ODE,
    ConfigError,
    cells,
    check_dataset_paths,
    checkpoint_registry,
    config_hash,
    nll_decoder,
    nll_grid_options,
    ode_nll_models,
    read_yaml,
    sampling_speed,
    shard_ranges,
    state_dtype_name,
    validate_config,
)
from bench.core.time_grids import MOMENT_GRIDS
from bench.steps.shared_cells import shared_cells
from bench.runtime.warm_worker import DISABLE_ENV_VAR as DISABLE_WORKER_VAR
from bench.runtime.warm_worker import ENV_VAR as WORKER_VAR
from bench.runtime.warm_worker import SUPPORTED as WORKER_SUPPORTED
from bench.runtime.warm_worker import start_worker

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


WARM_WORKER = []


onstart:
    try:
        check_dataset_paths(config, Path(workflow.basedir))
    except ConfigError as err:
        raise WorkflowError(f"invalid dpm-bench configuration: {err}") from None
    # Local jobs fork from one process that imported torch once (bench/runtime/warm_worker.py); a cluster job
    # (no local executor) or a Snakemake started inside a job imports it as before.
    if WORKER_SUPPORTED and workflow.local_exec and workflow.is_main_process and not os.environ.get(DISABLE_WORKER_VAR):
        WARM_WORKER.append(start_worker())
        os.environ[WORKER_VAR] = WARM_WORKER[0].socket_path


def stop_warm_worker() -> None:
    while WARM_WORKER:
        WARM_WORKER.pop().stop()
    os.environ.pop(WORKER_VAR, None)


# glibc hands each freed tensor of the small networks (a few hundred KiB to a few MiB) back to the kernel
# and faults it in again at the next step: in a full embedded run that was 77M page faults and 15% of
# the CPU time in the kernel. These thresholds keep freed memory in the heap; every job inherits them.
# Measured on one sample job (mlp, DDIM, K = 100): minor faults 143k-611k -> 46k, system time
# 0.7-2.7 s -> 0.4 s.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(2**32))
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2**36))

PY = sys.executable
RESULTS = "results"
REPORTS = "reports"
CELLS = cells(config)
SHARDS = shard_ranges(config)
TABLES = [str(Path(workflow.basedir) / t) for t in config["tables"]]


def J(obj) -> str:
    """Compact, key-sorted JSON: the job's settings, so Snakemake reruns it only when they change."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataset_of(model: str) -> str:
    return config["models"][model]["dataset"]


def data_check(dataset: str) -> str:
    """The layout check of a dataset: an input of every job that reads it, so a bad path fails first."""
    return f"{RESULTS}/data/{dataset}.json"


def has_nll(sampler: str) -> bool:
    """A sampler names the reverse variance of its variational bound (``nll:``); DDIM-type samplers have none."""
    return "nll" in config["metrics"] and "nll" in config["samplers"][sampler]


def needs_moments(sampler: str) -> bool:
    return samplers.needs_moments(config["samplers"][sampler])


def moments_arg(model: str, wanted: bool) -> dict:
    """Input and command-line flag of the model's Gamma_n artifact, when a job needs it."""
    return {"moments": f"{RESULTS}/moments/{model}.npz"} if wanted else {}


wildcard_constraints:
    K=r"\d+",
    shard=r"\d{4}",


include: "workflows/rules/data.smk"
include: "workflows/rules/extractor.smk"
include: "workflows/rules/models.smk"
include: "workflows/rules/moments.smk"
include: "workflows/rules/sample.smk"
include: "workflows/rules/metrics.smk"
include: "workflows/rules/report.smk"


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
