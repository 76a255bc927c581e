"""What a configuration costs before it runs: per table, its cells, jobs, samples, network
evaluations (NFE) and estimated device hours.

- jobs: the sampling, metric and moments jobs of the table's cells (model training, extractor,
  collect, report and reference-statistics jobs are shared by every table and counted in ``total``). A FD / IS
  cell is ``n_shards`` sample_shard and features jobs and one fd_is job; an NLL cell is one nll job per
  (dataset, model, grid, K), shared by the samplers of that grid; a table with its own ``reference_split``
  counts the fd_is job against that split's statistics instead (and ``total`` one reference-statistics job per
  (dataset, split)); a cell whose sampler needs Analytic-DPM's Gamma_n adds the model's one moments job (one per
  (model, M) for samplers with their own M).
- NFE: network evaluations summed over the jobs: ``nfe(K)`` per sample of a shard; ``K`` per
  test image and pass for an nll job (one pass for the beta / beta-tilde bounds, one more each for
  the learned and the analytic bound); ``M * T`` for the moments of a model with T steps from M
  images.
- precision / recall: a cell's sample_shard and features jobs (those of its FD / IS) and one precision_recall job,
  which computes both; ``total`` adds one reference-features job per (dataset, split) (no network evaluations).
- ode_nll (metric ode_nll_bpd): one job per continuous-time model, ``ODE_NLL_NFE`` per image.
- recon (metric recon_mse): one job per (model, sampler, K) of metrics.recon, over its split: per image, the
  sampler's ``nfe(K)`` to decode and K more to encode (bench.methods.ddim_inversion.encode).
- hours: NFE times the model's seconds per NFE per sample: ``plan.seconds_per_nfe.<model>`` in
  the configuration, else ``SECONDS_PER_NFE`` by network type, else ``DEFAULT_SECONDS_PER_NFE``.
The last row, ``total``, is the whole run: every cell of the experiments (tables may show fewer)
with its FD / IS and NLL jobs as the workflow makes them, each job and NFE counted once, a cell that
another computes (bench/steps/shared_cells.py) counted as a cell but not again in jobs, and the run-wide
jobs added: its job count is what ``snakemake -n`` plans for a fresh run.
"""

from __future__ import annotations

from pathlib import Path

from bench import samplers
from bench.config import (
    ORACLE_METRIC,
    PR_METRICS,
    ConfigError,
    load_config,
    nll_variances,
    ode_nll_models,
    precision_recall_cells,
    profile_reference_split,
    read_yaml,
    recon_cells,
    reference_split_cells,
    shard_ranges,
)
from bench.config import cells as all_cells
from bench.config.all_samplers import expand_all_samplers
from bench.core.time_grids import MOMENT_GRIDS
from bench.steps.shared_cells import shared_cells
from bench.steps.validate import project_root

# Seconds per network evaluation per sample, by network type.
# mlp: the embedded default's MLP (width 192, depth 3) sampling 1000 digits per batch on one CPU
# thread, sampler included: the sample stage's seconds over its 41.8M NFE x samples in a full run on a
# 2-core Xeon (AVX-512), two jobs side by side (9.5e-6 s); an AVX2 EPYC took about three times as long.
SECONDS_PER_NFE: dict[str, float] = {"mlp": 1e-5}
# DDIM (Song et al. 2021, Sec. 1): sampling 50k 32x32 images from a DDPM (1000 steps) takes about
# 20 hours on an Nvidia 2080 Ti, i.e. 20 * 3600 / (50_000 * 1000) s per NFE per sample.
DEFAULT_SECONDS_PER_NFE = 20 * 3600 / (50_000 * 1000)

# Network evaluations of one adaptive PF-ODE likelihood solve (each with one backward pass for the
# Hutchinson trace); measured on the embedded ncsn and edm models with dopri5 at rtol = atol = 1e-3.
ODE_NLL_NFE = 55

# Images per split of the datasets that are not loaded to count them.
# Published split sizes; lsun counts its `max_images` (the scene training sets have millions).
SPLIT_SIZES: dict[str, dict[str, int]] = {
    "cifar10": {"train": 50_000, "test": 10_000},
    "celeba64": {"train": 162_770, "valid": 19_867, "test": 19_962},
    "imagenet64": {"train": 1_281_167, "test": 50_000},
    # EDM trains and evaluates on every image (bench/data/edm_faces.py): n_images of its statistics in references.yaml.
    "ffhq64": {"train": 70_000},
    "afhqv2_64": {"train": 15_220},
}

def is_nll_metric(metric: str) -> bool:
    """NLL metrics evaluate the variational bound on data; every other metric needs samples."""
    return metric.startswith("nll")


def nfe_per_sample(sampler: dict, K: int) -> int:
    """Network evaluations one sample of ``sampler`` costs with K steps (its SamplerSpec's count)."""
    try:
        return samplers.nfe_per_sample(sampler, K)
    except ValueError as err:
        raise ConfigError(f"plan: {err}") from None


def split_size(dataset: dict, split: str) -> int:
    """Number of images in ``split`` of a ``datasets`` entry."""
    if dataset["kind"] == "digits":
        from bench.data import load_dataset

        return len(load_dataset(dataset, split).images)
    if dataset["kind"] == "lsun" and "max_images" in dataset:
        return dataset["max_images"]
    try:
        return min(SPLIT_SIZES[dataset["kind"]][split], dataset.get("max_images", float("inf")))
    except KeyError:
        raise ConfigError(
            f"plan: no size known for split {split!r} of dataset kind {dataset['kind']!r}; "
            f"known: digits, {sorted(SPLIT_SIZES)}"
        ) from None


def seconds_per_nfe(cfg: dict, model: str) -> float:
    """Estimated seconds per NFE per sample of ``model``: the config's estimate, else a default."""
    given = cfg.get("plan", {}).get("seconds_per_nfe", {})
    if model in given:
        return float(given[model])
    return SECONDS_PER_NFE.get(cfg["models"][model]["network"]["type"], DEFAULT_SECONDS_PER_NFE)


def is_unavailable(row: dict, value: int | str) -> bool:
    """Whether a table spec marks this row (or this row at this column) as planned but not producible."""
    return "unavailable" in row or str(value) in {str(k) for k in row.get("unavailable_at", {})}


def unavailable_cells(spec: dict) -> int:
    """Cells of a table spec shown as missing by design (no checkpoint, no method)."""
    return sum(is_unavailable(row, v) for row in spec["rows"] for v in spec["columns"]["values"])


def table_cells(
    spec: dict, source: str, grids: dict[tuple[str, str], list[int]] | None = None
) -> list[tuple[str, str, int]]:
    """(model, sampler, K) of every producible row x column of a table spec; for a derived table (``grids``: the
    configured K of each (model, sampler)), every cell of the curve each row x column reads."""
    field = spec["columns"]["field"]
    out = []
    for r, row in enumerate(spec["rows"]):
        at = {str(k): v for k, v in row.get("at", {}).items()}
        for value in spec["columns"]["values"]:
            if is_unavailable(row, value):
                continue
            cell = {**row, field: value, **at.get(str(value), {})}
            if grids is not None:
                out.extend((cell["model"], cell["sampler"], K) for K in grids[(cell["model"], cell["sampler"])])
                continue
            missing = [k for k in ("model", "sampler", "K") if k not in cell]
            if missing:
                raise ConfigError(f"plan: table spec {source}: rows[{r}] at {field}={value!r} does not name {missing}")
            out.append((cell["model"], cell["sampler"], int(cell["K"])))
    return out


class _Sizes:
    """Split sizes, looked up once each."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.known: dict[tuple[str, str], int] = {}

    def __call__(self, dataset: str, split: str) -> int:
        if (dataset, split) not in self.known:
            self.known[(dataset, split)] = split_size(self.cfg["datasets"][dataset], split)
        return self.known[(dataset, split)]


def _nll_passes(variances: set[str], grid: str) -> int:
    """Passes over the test split of an nll job: one for the fixed-variance bounds (beta, beta-tilde
    share their network evaluations, except on a moment grid, where each bound has its own trajectory),
    one each for the learned and analytic bounds."""
    own_pass = {"learned", "analytic"}
    if grid in MOMENT_GRIDS:
        return len(variances)
    return int(bool(variances - own_pass)) + len(variances & own_pass)


def _cell_work(
    cfg: dict, nll: bool, model: str, sampler_name: str, K: int, sizes: _Sizes, split: str | None = None,
    pr: bool = False,
) -> tuple[dict, dict]:
    """The jobs of one cell for its NLL or its sample metrics ({job key: (model, NFE)}), its samples ({cell: n});
    ``split``: its FD against that split's statistics (a table's reference_split), an fd_is job of its own;
    ``pr``: its precision and recall, a precision_recall job instead of the fd_is one."""
    dataset = cfg["models"][model]["dataset"]
    sampler = cfg["samplers"][sampler_name]
    grid = sampler["grid"]
    own = samplers.own_moments_size(sampler, cfg.get("moments", {}))
    variances = set(nll_variances(cfg, model, grid, own)) if nll else set()
    # An nll job reads Gamma_n when any bound it evaluates is the analytic one, whichever sampler asks for it.
    wants_moments = ("analytic" in variances or grid in MOMENT_GRIDS) if nll else samplers.needs_moments(sampler)
    jobs = {}
    if wants_moments:
        m = cfg["moments"]
        M = own or m.get("M") or sizes(dataset, m["split"])
        jobs[("moments", model, own)] = (model, M * cfg["models"][model]["schedule"]["T"])
    if nll:
        n_eval = sizes(dataset, cfg["metrics"]["nll"]["split"])
        jobs[("nll", dataset, model, grid, K, own)] = (model, n_eval * K * _nll_passes(variances, grid))
        return jobs, {}
    per_sample = nfe_per_sample(sampler, K)
    for i, (start, stop) in enumerate(shard_ranges(cfg)):
        jobs[("sample_shard", model, sampler_name, K, i)] = (model, (stop - start) * per_sample)
        jobs[("features", model, sampler_name, K, i)] = (model, 0)
    if pr:
        jobs[("precision_recall", model, sampler_name, K)] = (model, 0)
    else:
        jobs[("fd_is", model, sampler_name, K, *([split] if split else []))] = (model, 0)
    return jobs, {(model, sampler_name, K): cfg["sampling"]["n_samples"]}


def _ode_nll_jobs(cfg: dict, models: set[str], sizes: _Sizes) -> dict:
    """One PF-ODE likelihood job per model: ODE_NLL_NFE evaluations for each of its images."""
    o = cfg["metrics"]["ode_nll"]
    jobs = {}
    for model in sorted(models):
        n = o.get("n_images") or sizes(cfg["models"][model]["dataset"], o["split"])
        jobs[("ode_nll", model)] = (model, n * ODE_NLL_NFE)
    return jobs


def _recon_jobs(cfg: dict, cells: set[tuple[str, str, int]], sizes: _Sizes) -> dict:
    """One reconstruction job per (model, sampler, K): an encoding (K evaluations) and a decoding per image."""
    split = cfg["metrics"].get("recon", {}).get("split")
    per_image = {(m, s, K): K + nfe_per_sample(cfg["samplers"][s], K) for m, s, K in cells}
    return {("recon", *c): (c[0], sizes(cfg["models"][c[0]]["dataset"], split) * n) for c, n in per_image.items()}


def _row(
    name: str,
    metric: str,
    cfg: dict,
    work: list[tuple[bool, str, str, int]],
    sizes: _Sizes,
    ode_nll_models: set[str] = frozenset(),
    split: str | None = None,
    recon: set[tuple[str, str, int]] = frozenset(),
    pr: bool = False,
) -> dict:
    """The plan row of ``work``: (NLL or not, model, sampler, K) of each cell, jobs shared once, the
    PF-ODE likelihood jobs of ``ode_nll_models`` and the reconstruction jobs of the (model, sampler, K) ``recon``;
    ``pr``: the cells' precision / recall jobs instead of their FD / IS ones."""
    jobs: dict = _ode_nll_jobs(cfg, ode_nll_models, sizes) if ode_nll_models else {}
    jobs |= _recon_jobs(cfg, recon, sizes)
    samples: dict = {}
    for nll, model, sampler, K in work:
        cell_jobs, cell_samples = _cell_work(cfg, nll, model, sampler, K, sizes, split, pr)
        jobs.update(cell_jobs)
        samples.update(cell_samples)
    seconds = sum(nfe * seconds_per_nfe(cfg, model) for model, nfe in jobs.values())
    return {
        "table": name,
        "metric": metric,
        "cells": len({(model, sampler, K) for _, model, sampler, K in work}) + len(ode_nll_models) + len(recon),
        "jobs": len(jobs),
        "samples": sum(samples.values()),
        "nfe": sum(nfe for _, nfe in jobs.values()),
        "hours": seconds / 3600,
    }


def plan(cfg: dict, *, root: Path = Path(".")) -> list[dict]:
    """One row per table spec of ``cfg`` (paths relative to ``root``), then the ``total`` row."""
    sizes = _Sizes(cfg)
    rows = []
    for rel in cfg["tables"]:
        spec = read_yaml(Path(root) / rel)
        if spec["metric"] == "ode_nll_bpd":
            field = spec["columns"]["field"]
            models = {
                {**row, field: v}.get("model")
                for row in spec["rows"] for v in spec["columns"]["values"] if not is_unavailable(row, v)
            }
            row = _row(spec.get("id", rel), spec["metric"], cfg, [], sizes, models)
            rows.append(row | {"unavailable": unavailable_cells(spec)})
            continue
        if spec["metric"] == "recon_mse":
            row = _row(spec.get("id", rel), spec["metric"], cfg, [], sizes, recon=set(table_cells(spec, rel)))
            rows.append(row | {"unavailable": unavailable_cells(spec)})
            continue
        if spec["metric"] == ORACLE_METRIC:
            # One job runs every oracle cell on the mixture's exact eps: no network evaluations, no samples kept.
            n_cells = len(set(table_cells(spec, rel)))
            rows.append({"table": spec.get("id", rel), "metric": spec["metric"], "cells": n_cells, "jobs": 1,
                         "samples": 0, "nfe": 0, "hours": 0.0, "unavailable": unavailable_cells(spec)})
            continue
        if spec["rows"] == "all":
            # A cross-product table: every cell of the experiments on its dataset at its K columns.
            nll = is_nll_metric(spec["metric"])
            work = [
                (nll, c.model, c.sampler, c.K) for c in all_cells(cfg)
                if cfg["models"][c.model]["dataset"] == spec["dataset"] and c.K in spec["columns"]["values"]
                and (not nll or "nll" in cfg["samplers"][c.sampler])
            ]
            rows.append(_row(spec.get("id", rel), spec["metric"], cfg, work, sizes) | {"unavailable": 0})
            continue
        if "derived" in spec:
            # Its cells are read off the curves of other cells: their jobs, one value per row x column.
            grids: dict[tuple[str, str], list[int]] = {}
            for c in all_cells(cfg):
                grids.setdefault((c.model, c.sampler), []).append(c.K)
            nll = is_nll_metric(spec["derived"]["metric"])
            work = [(nll, *cell) for cell in sorted(set(table_cells(spec, rel, grids)))]
            row = _row(spec.get("id", rel), spec["metric"], cfg, work, sizes)
            n_derived = sum(not is_unavailable(r, v) for r in spec["rows"] for v in spec["columns"]["values"])
            rows.append(row | {"cells": n_derived, "unavailable": unavailable_cells(spec)})
            continue
        nll = is_nll_metric(spec["metric"])
        work = [(nll, *cell) for cell in sorted(set(table_cells(spec, rel)))]
        split = spec.get("reference_split")
        own_split = split if split != profile_reference_split(cfg) else None
        pr = spec["metric"] in PR_METRICS
        row = _row(spec.get("id", rel), spec["metric"], cfg, work, sizes, split=own_split, pr=pr)
        rows.append(row | {"unavailable": unavailable_cells(spec)})
    metrics = cfg["metrics"]
    work = []
    shared = shared_cells(cfg)
    for c in all_cells(cfg):
        if c in shared:
            continue  # its samples and bound are another cell's (bench/steps/shared_cells.py)
        if "fd_is" in metrics:
            work.append((False, c.model, c.sampler, c.K))
        if "nll" in metrics and "nll" in cfg["samplers"][c.sampler]:
            work.append((True, c.model, c.sampler, c.K))
    unavailable = sum(r["unavailable"] for r in rows)
    reconstructed = {(c.model, c.sampler, c.K) for c in recon_cells(cfg)}
    total = _row("total", "", cfg, work, sizes, set(ode_nll_models(cfg)), recon=reconstructed)
    total["cells"] += len(shared)
    split_jobs = {
        (shared.get(c, c), split)
        for c, splits in reference_split_cells(cfg, root).items() for split in splits
        if split != profile_reference_split(cfg)
    }
    pr_cells = {shared.get(c, c) for c in precision_recall_cells(cfg, root)}
    pr_references = {
        ("reference_features", cfg["models"][c.model]["dataset"], cfg["metrics"]["precision_recall"]["reference_split"])
        for c in pr_cells
    }
    total["jobs"] += len(split_jobs) + len(pr_cells) + len(pr_references)
    total["jobs"] += len(run_wide_jobs(cfg, work, {(c.model, split) for c, split in split_jobs}))
    rows.append(total | {"unavailable": unavailable})
    return rows


def run_wide_jobs(
    cfg: dict, work: list[tuple[bool, str, str, int]], split_references: set[tuple[str, str]] = frozenset()
) -> set[tuple]:
    """The jobs the workflow runs once for the whole run beside the cells' own: data checks, models (trained,
    or fetched and converted), the extractor, its weights and reference statistics, the oracle table, collect,
    report and the target rule `all` (the rules in workflows/rules/); ``split_references``: (model, split) of
    the FDs tables score against a split of their own, one reference-statistics job per (dataset, split)."""
    models = {model for _, model, _, _ in work} | set(ode_nll_models(cfg)) | {c.model for c in recon_cells(cfg)}
    fd_models = {model for nll, model, _, _ in work if not nll}
    jobs: set[tuple] = {("collect",), ("report",), ("all",)} | ({("oracle",)} if "oracle" in cfg else set())
    for name in models:
        m = cfg["models"][name]
        jobs.add(("check_data", m["dataset"]))
        if "train" in m:
            jobs.add(("train_model", name))
        else:
            jobs |= {("fetch_checkpoint", m["checkpoint"]), ("convert_checkpoint", name)}
    if fd_models:
        fd = cfg["metrics"]["fd_is"]
        extractor = cfg["extractors"][fd["extractor"]]
        if extractor["kind"] == "digits_cnn":
            jobs |= {("train_extractor", fd["extractor"]), ("check_data", extractor["dataset"])}
        elif "weights_path" not in extractor:
            jobs.add(("fetch_inception_weights",))
        if "reference_stats" in fd:
            jobs.add(("published_reference_stats", fd["reference_stats"]))
        else:
            jobs |= {("reference_stats", cfg["models"][m]["dataset"], fd["reference_split"]) for m in fd_models}
        jobs |= {("reference_stats", cfg["models"][m]["dataset"], split) for m, split in split_references}
    return jobs


def format_plan(rows: list[dict]) -> str:
    """The plan as an aligned text table (integers with thousands separators, hours to 3 digits)."""
    header = ["table", "metric", "cells", "unavailable", "jobs", "samples", "NFE", "hours"]
    counts = ("cells", "unavailable", "jobs", "samples", "nfe")
    body = [[str(r["table"]), str(r["metric"]), *(f"{r[k]:,}" for k in counts), f"{r['hours']:.3g}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]

    def line(values: list[str]) -> str:
        # Names left-aligned, numbers right-aligned.
        cols = enumerate(zip(values, widths, strict=True))
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in cols)

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]) + "\n"


def format_skipped(skipped: list[tuple[int, str, str, str]]) -> str:
    """The samplers that experiments with ``samplers: all`` leave out, one line each with the reason."""
    return "".join(
        f"experiments[{i}] (model {model}, samplers: all) skips {sampler}: {reason}\n"
        for i, model, sampler, reason in skipped
    )


def run(config: Path) -> None:
    """The plan step: print each table's cells, jobs, samples, NFE and estimated hours for ``config``, then the
    samplers that ``samplers: all`` left out and why."""
    root = project_root()
    cfg = load_config(config, root=root, check_paths=False)
    print(format_plan(plan(cfg, root=root)), end="")
    print(format_skipped(expand_all_samplers(read_yaml(Path(config)))), end="")
