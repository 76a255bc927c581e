# Helper functions and tables the rules share: job settings, input choices and the records collect reads.
# Paths of a cell come from bench/steps/paths.py, the one definition of the results layout.

import json
import os
import re
from dataclasses import asdict

from bench import samplers
from bench.checkpoints.references import default_weights
from bench.checkpoints.registry import get_checkpoint
from bench.config import (
    PF_ODE,
    checkpoint_registry,
    config_hash,
    nll_decoder,
    nll_grid_options,
    nll_variances,
    ode_nll_models,
    precision_recall_cells,
    precision_recall_settings,
    profile_reference_split,
    recon_cells,
    reference_split_cells,
    sampling_speed,
    state_dtype_name,
)
from bench.core.time_grids import MOMENT_GRIDS
from bench.runtime.warm_worker import ENV_VAR as WORKER_VAR
from bench.runtime.warm_worker import start_worker
from bench.steps.paths import (
    CELL_DIR,
    NLL_CELL,
    NLL_CELL_OF_SIZE,
    cell_dir,
    fd_is_record,
    nll_cell,
    precision_recall_record,
    recon_record,
)
from bench.steps.shared_cells import shared_cells


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


def moments_file(model: str, M: int | None) -> dict:
    """The input of a job that reads the model's Gamma_n: its one file, or that of Monte-Carlo size M (moments_M),
    shared by every job that names that M."""
    return {"moments": f"{RESULTS}/moments/{model}.npz" if M is None else f"{RESULTS}/moments/{model}.M{M}.npz"}


def sample_moments_arg(model: str, sampler: str) -> dict:
    """The Gamma_n a sample shard reads, when its sampler needs one: that of the sampler's own M, if it has one."""
    if not needs_moments(sampler):
        return {}
    return moments_file(model, samplers.own_moments_size(config["samplers"][sampler], config["moments"]))


def nll_moments_arg(w) -> dict:
    """The Gamma_n an nll job reads, when it evaluates the analytic bound or visits a moment grid: the model's one
    file, or that of the job's own M."""
    if not ("analytic" in nll_job_variances(w) or w.grid in MOMENT_GRIDS):
        return {}
    return moments_file(w.model, nll_job_size(w))


# Local jobs fork from one process that imported torch once (bench/runtime/warm_worker.py).
WARM_WORKER = []


def start_warm_worker() -> None:
    WARM_WORKER.append(start_worker())
    os.environ[WORKER_VAR] = WARM_WORKER[0].socket_path


def stop_warm_worker() -> None:
    while WARM_WORKER:
        WARM_WORKER.pop().stop()
    os.environ.pop(WORKER_VAR, None)


# Models: trained here (`train:`) or converted from an official checkpoint (`checkpoint:`).

TRAINED = [m for m, spec in config["models"].items() if "train" in spec]
CONVERTED = [m for m, spec in config["models"].items() if "checkpoint" in spec]
CHECKPOINTS = "resources/checkpoints"
CHECKPOINT_REGISTRY = checkpoint_registry(config)


def one_of(names: list[str]) -> str:
    """A wildcard regex matching exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def registry_entry(name: str) -> dict:
    entry = asdict(get_checkpoint(name, CHECKPOINT_REGISTRY))
    # Only an archive names a member: the other entries' specs (and the jobs' parameters) stay as they were.
    return {k: v for k, v in entry.items() if not (k == "member" and v is None)}


# Sampling.


def sample_spec(w) -> str:
    start, stop = SHARDS[int(w.shard)]
    return J(
        {
            "sampler": config["samplers"][w.sampler],
            "K": int(w.K),
            "start": start,
            "stop": stop,
            "seed": config["sampling"]["seed"],
            "batch_size": config["sampling"]["batch_size"],
            "state_dtype": state_dtype_name(config),
            "speed": sampling_speed(config),
            "context": f"model {w.model}, sampler {w.sampler}, K={w.K}",
        }
    )


# Metrics.

FD_IS = config["metrics"].get("fd_is", {})


def fd_extractor() -> dict:
    return config["extractors"][FD_IS["extractor"]]


def extractor_weights(name: str) -> str:
    """The file an extractor loads: a trained digits classifier, a local Inception file, or the registry's."""
    ext = config["extractors"][name]
    if ext["kind"] == "digits_cnn":
        return f"{RESULTS}/extractors/{name}.npz"
    if "weights_path" in ext:
        return ext["weights_path"]
    entry = default_weights(ext.get("backend", "torch-fidelity"))
    return f"resources/inception/{entry.name}/{entry.file}"


def reference_stats_file(dataset: str, split: str | None = None) -> str:
    """Reference statistics of the fd_is metric: published (by registry name) or computed once per
    (dataset, split, extractor), for metrics.fd_is's split or the ``split`` a table names."""
    if split is None and "reference_stats" in FD_IS:
        return f"{RESULTS}/refs/published/{FD_IS['reference_stats']}-{FD_IS['extractor']}.npz"
    return f"{RESULTS}/refs/{dataset}-{split or FD_IS['reference_split']}-{FD_IS['extractor']}.npz"


def fd_is_spec(w) -> str:
    """The fd_is job's settings (the same for every reference of the cell)."""
    return J(
        {
            "extractor": fd_extractor(),
            "n_samples": config["sampling"]["n_samples"],
            "is_splits": FD_IS.get("is_splits", 10),
            "bootstrap": FD_IS.get("bootstrap", {}),
            "context": f"model {w.model}, sampler {w.sampler}, K={w.K}",
            # recorded in fd_is.json with the sampler function's defaults (bench.samplers.resolved_options)
            "sampler": {k: v for k, v in config["samplers"][w.sampler].items() if k in ("fn", "options", "moments_M")},
            # a class-conditional model's class count, for the record's label protocol
            **({"label_dim": config["models"][w.model]["label_dim"]} if "label_dim" in config["models"][w.model] else {}),
        }
    )


# The splits some table scores a cell's samples against (its `reference_split`): one fd_is job each, except
# metrics.fd_is's own split, whose record is the cell's fd_is.json.
REFERENCE_SPLITS = reference_split_cells(config, Path(workflow.basedir)) if FD_IS else {}


def split_fd_is_record(dataset: str, c, split: str) -> str:
    own = split == profile_reference_split(config)
    return f"cells/{fd_is_record(dataset, c.model, c.sampler, c.K, None if own else split)}"


# The cells a precision or recall table shows: one precision_recall job each, on the features of the cell that
# computes its samples.
PR_CELLS = set(precision_recall_cells(config, Path(workflow.basedir))) if FD_IS else set()


def reference_features_file(dataset: str) -> str:
    """The reference images' features that precision / recall score a cell of ``dataset`` against."""
    split = config["metrics"]["precision_recall"]["reference_split"]
    return f"{RESULTS}/refs/features/{dataset}-{split}-{FD_IS['extractor']}.npz"


def reference_features_spec(dataset: str, split: str, extractor: str) -> dict:
    """The reference-features job's settings: the dataset, split, extractor and the seeded subset's size."""
    pr = config["metrics"]["precision_recall"]
    return {"dataset": config["datasets"][dataset], "split": split, "extractor": config["extractors"][extractor],
            "n": pr["reference_n"], "seed": pr["reference_seed"]}


def precision_recall_spec(w) -> str:
    """The precision_recall job's settings: k and the block sizes, the extractor and the cell's sample count."""
    settings = precision_recall_settings(config)
    return J(
        {
            **{k: settings[k] for k in ("k", "row_batch_size", "col_batch_size")},
            "extractor": fd_extractor(),
            "n_samples": config["sampling"]["n_samples"],
            "context": f"model {w.model}, sampler {w.sampler}, K={w.K}",
        }
    )


def cell_features(w) -> list[str]:
    return [
        f"{RESULTS}/features/{cell_dir(w.dataset, w.model, w.sampler, w.K)}/shard{i:04d}.npz"
        for i in range(len(SHARDS))
    ]


def nll_job_size(w) -> int | None:
    """The Monte-Carlo size M of an nll job's own Gamma_n (rule nll_of_size), None for the config's moments.M."""
    return int(w.M) if "M" in w.keys() else None


def nll_job_variances(w) -> list[str]:
    """Every reverse variance whose VLB some sampler on the job's model, grid and M reports."""
    return nll_variances(config, w.model, w.grid, nll_job_size(w))


def ode_nll_record(model: str) -> dict:
    """A PF-ODE likelihood row of metrics.csv: sampler `pf_ode`, grid `adaptive`, K = the solve's measured NFE."""
    o = config["metrics"]["ode_nll"]
    return {
        "dataset": dataset_of(model),
        "model": model,
        "family": config["models"][model]["family"],
        "sampler": PF_ODE,
        "sampler_label": f"PF-ODE, rtol={o['rtol']}, atol={o['atol']}",
        "grid": "adaptive",
        "seed": config["seed"],
        "ode_nll": f"cells/{dataset_of(model)}/{model}/ode_nll.json",
    }


SHARED_CELLS = shared_cells(config)


def cell_record(c) -> dict:
    """A cell of metrics.csv and the result files it reads: those of the cell that computes it (bench/steps/shared_cells.py)."""
    sampler = config["samplers"][c.sampler]
    dataset = dataset_of(c.model)
    source = SHARED_CELLS.get(c, c)
    rec = {
        "dataset": dataset,
        "model": c.model,
        "family": config["models"][c.model]["family"],
        "sampler": c.sampler,
        "sampler_label": sampler.get("label", c.sampler),
        "grid": sampler["grid"],
        "K": c.K,
        "seed": config["sampling"]["seed"],
    }
    if "fd_is" in config["metrics"]:
        rec["fd_is"] = f"cells/{fd_is_record(dataset, source.model, source.sampler, source.K)}"
    if c in PR_CELLS:
        rec["precision_recall"] = f"cells/{precision_recall_record(dataset, source.model, source.sampler, source.K)}"
    if c in REFERENCE_SPLITS:
        rec["fd_is_splits"] = {split: split_fd_is_record(dataset, source, split) for split in REFERENCE_SPLITS[c]}
    if has_nll(c.sampler):
        M = samplers.own_moments_size(config["samplers"][source.sampler], config["moments"])
        rec["nll"] = f"cells/{nll_cell(dataset, source.model, config['samplers'][source.sampler]['grid'], source.K, M)}.json"
        rec["nll_variance"] = sampler["nll"]
    if source != c:
        rec["computed_as"] = source.key
    return rec


def recon_cell_record(c) -> dict:
    """A reconstruction row of metrics.csv (metric recon_mse): its (model, sampler, K) and its record."""
    dataset = dataset_of(c.model)
    return {
        "dataset": dataset,
        "model": c.model,
        "family": config["models"][c.model]["family"],
        "sampler": c.sampler,
        "sampler_label": config["samplers"][c.sampler].get("label", c.sampler),
        "grid": config["samplers"][c.sampler]["grid"],
        "K": c.K,
        "seed": config["seed"],
        "recon": f"cells/{recon_record(dataset, c.model, c.sampler, c.K)}",
    }


def recon_spec(w) -> str:
    """The recon job's settings: the split, batch, the decoding sampler and K, the state dtype of sampling."""
    recon = config["metrics"]["recon"]
    return J(
        {
            "dataset": config["datasets"][w.dataset],
            "split": recon["split"],
            "batch_size": recon["batch_size"],
            "sampler": config["samplers"][w.sampler],
            "K": int(w.K),
            "state_dtype": state_dtype_name(config),
            "context": f"reconstruction of model {w.model}, sampler {w.sampler}, K={w.K}",
        }
    )


CELL_RECORDS = (
    [cell_record(c) for c in CELLS]
    + [ode_nll_record(m) for m in ode_nll_models(config)]
    + [recon_cell_record(c) for c in recon_cells(config)]
)


def run_seeds() -> dict:
    """Every seed of the run, by what it seeds (shown on the report's index)."""
    seeds = {"sampling (sample i has seed + i)": config["sampling"]["seed"], "nll noise": config["seed"]}
    if "moments" in config:
        seeds["moments"] = config["moments"]["seed"]
    seeds |= {f"train {m}": cfg["train"]["seed"] for m, cfg in config["models"].items() if "train" in cfg}
    seeds |= {f"extractor {e}": cfg.get("seed", 0) for e, cfg in config.get("extractors", {}).items()}
    return seeds


ORACLE = config.get("oracle")


def oracle_spec() -> dict:
    """The oracle job's settings: every (sampler, K) that config's experiments run on oracle.model, once each."""
    model = ORACLE["model"]
    if model not in config["models"]:
        raise ValueError(f"oracle.model: {model!r} is not a model of this config; allowed: {sorted(config['models'])}")
    if config["models"][model]["family"] != "ddpm":
        raise ValueError(f"oracle.model: {model!r} is of family {config['models'][model]['family']!r}; the "
                         "oracle's exact eps is a discrete chain's, so it needs a model of family 'ddpm'")
    pairs = dict.fromkeys((s, K) for e in config["experiments"] if e["model"] == model for s in e["samplers"] for K in e["K"])
    schedule = config["models"][model]["schedule"]
    return {
        **{k: ORACLE[k] for k in ("mixture", "n_samples", "reference_samples", "gamma_samples", "seed")},
        "schedule": schedule["name"],
        "T": schedule["T"],
        "cells": [{"sampler": s, "K": K, "sampler_config": config["samplers"][s]} for s, K in pairs],
    }


def collect_spec() -> dict:
    """The collect job's settings: every cell record, the run's identity and the oracle's labels."""
    return {
        "cells": CELL_RECORDS,
        "config_hash": config_hash(config),
        "profile": config["profile"],
        "seeds": run_seeds(),
        "sampling": config["sampling"],
        "metrics": config["metrics"],
        **({"oracle": {"record": "oracle.json", "labels": {
            c["sampler"]: {"label": config["samplers"][c["sampler"]].get("label", c["sampler"]),
                           "grid": config["samplers"][c["sampler"]]["grid"]}
            for c in oracle_spec()["cells"]}}} if ORACLE else {}),
    }


# Report.


def report_shards() -> list[str]:
    """The first shard of every cell that computes samples: the report shows it as an image grid."""
    return sorted(
        {
            f"{RESULTS}/samples/{cell_dir(dataset_of(s.model), s.model, s.sampler, s.K)}/shard0000.npz"
            for s in (SHARED_CELLS.get(c, c) for c in CELLS)
        }
    )
