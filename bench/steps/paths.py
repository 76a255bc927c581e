"""Where a cell's files live under results/: one pattern for the DAG's rules, collect and the report.

``CELL_DIR`` is both a ``str.format`` pattern and, unchanged, the Snakemake wildcard pattern of a
rule's path (``f"{RESULTS}/samples/{CELL_DIR}/shard{{shard}}.npz"``).
"""

from __future__ import annotations

import re

CELL_KEY = "{model}/{sampler}/K{K}"
CELL_DIR = "{dataset}/" + CELL_KEY
# The NLL of a cell is computed once per (model, grid, K), for every sampler whose bound it reports.
NLL_CELL = "{dataset}/{model}/nll-{grid}/K{K}"
# ... and once per (model, grid, K, M) for the bounds of samplers with their own Monte-Carlo size M of Gamma_n.
NLL_CELL_OF_SIZE = "{dataset}/{model}/nll-{grid}.M{M}/K{K}"
# A cell's FD / IS record: against metrics.fd_is's reference, and against a split a table names
# (its `reference_split`, bench/config/tables.py) from the same features.
FD_IS_FILE = "fd_is.json"
FD_IS_SPLIT_FILE = "fd_is-{split}.json"
# A (model, sampler, K)'s reconstruction error (metrics.recon), in the folder of the cell of the same name.
RECON_FILE = "recon.json"
# A cell's improved precision and recall (metrics.precision_recall), from the features of its FD / IS.
PRECISION_RECALL_FILE = "precision_recall.json"
# Every cell folder below a results folder, for Path.glob.
CELL_DIR_GLOB = re.sub(r"\{\w+\}", "*", CELL_DIR)

_CELL_KEY_RE = re.compile(r"(?P<model>[^/]+)/(?P<sampler>[^/]+)/K(?P<K>\d+)")


def cell_key(model: str, sampler: str, K: int | str) -> str:
    """A cell's name across datasets (provenance's shared_cells, ``Cell.key``): model/sampler/K{K}."""
    return CELL_KEY.format(model=model, sampler=sampler, K=K)


def cell_dir(dataset: str, model: str, sampler: str, K: int | str) -> str:
    """A cell's folder below results/samples, results/features and results/cells."""
    return CELL_DIR.format(dataset=dataset, model=model, sampler=sampler, K=K)


def fd_is_record(dataset: str, model: str, sampler: str, K: int | str, split: str | None = None) -> str:
    """A cell's FD / IS record below results/cells: against the profile's reference, or ``split``'s statistics."""
    name = FD_IS_FILE if split is None else FD_IS_SPLIT_FILE.format(split=split)
    return f"{cell_dir(dataset, model, sampler, K)}/{name}"


def recon_record(dataset: str, model: str, sampler: str, K: int | str) -> str:
    """The reconstruction record of a (model, sampler, K) below results/cells."""
    return f"{cell_dir(dataset, model, sampler, K)}/{RECON_FILE}"


def precision_recall_record(dataset: str, model: str, sampler: str, K: int | str) -> str:
    """A cell's precision / recall record below results/cells."""
    return f"{cell_dir(dataset, model, sampler, K)}/{PRECISION_RECALL_FILE}"


def nll_cell(dataset: str, model: str, grid: str, K: int | str, M: int | None = None) -> str:
    """The NLL record of a (model, grid, K) below results/cells, without its .json suffix; ``M``: that of the bounds
    whose Gamma_n is estimated from M images (a sampler's own moments_M)."""
    pattern = NLL_CELL if M is None else NLL_CELL_OF_SIZE
    return pattern.format(dataset=dataset, model=model, grid=grid, K=K, M=M)


def parse_cell_key(key: str) -> tuple[str, str, int] | None:
    """(model, sampler, K) of a cell key, or None for a name outside the pattern."""
    m = _CELL_KEY_RE.fullmatch(key)
    return (m["model"], m["sampler"], int(m["K"])) if m else None
