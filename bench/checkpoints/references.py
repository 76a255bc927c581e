"""Registry of published Inception weights and FID reference statistics (references.yaml); light to import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from bench.checkpoints.download import fetch, file_digest
from bench.runtime.strict_yaml import load_yaml

REFERENCES_PATH = Path(__file__).with_name("references.yaml")
# Inception pipelines: torch-fidelity's TF1-compatible one; clean-fid's PIL-bicubic `clean` and TF-like one.
BACKEND_MODES = {"torch-fidelity": ("legacy_tensorflow",), "clean-fid": ("clean", "legacy_tensorflow")}
DEFAULT_MODE = {"torch-fidelity": "legacy_tensorflow", "clean-fid": "clean"}
# The arrays each publisher's npz holds: EDM fid.py (np.savez), clean-fid (np.savez_compressed) and
# TTUR all name them mu and sigma; guided-diffusion's reference batches add mu_s / sigma_s / arr_0.
FORMAT_KEYS = {"edm": ("mu", "sigma"), "cleanfid": ("mu", "sigma"), "ttur": ("mu", "sigma")}
MODES = sorted({mode for modes in BACKEND_MODES.values() for mode in modes})

_COMMON = {
    "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_]*$"},
    "url": {"type": "string", "pattern": "^https?://[^\\s]+$"},
    "hash_type": {"enum": ["md5", "sha256", "none"]},
    "hash": {"type": ["string", "null"], "pattern": "^[0-9a-f]+$"},
    "source": {"type": "string", "minLength": 1},
    "note": {"type": "string"},
}
_WEIGHTS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "backend", "url", "file", "hash_type", "hash", "sha256_prefix", "source", "note"],
    "properties": _COMMON
    | {
        "backend": {"enum": sorted(BACKEND_MODES)},
        "file": {"type": "string", "pattern": "^[^/]+$"},
        "sha256_prefix": {"type": ["string", "null"], "pattern": "^[0-9a-f]{8,64}$"},
    },
}
_STATISTICS = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "name",
        "dataset",
        "split",
        "resolution",
        "n_images",
        "format",
        "mode",
        "url",
        "hash_type",
        "hash",
        "source",
        "note",
    ],
    "properties": _COMMON
    | {
        "dataset": {"type": "string", "minLength": 1},
        "split": {"type": "string", "minLength": 1},
        "resolution": {"type": "integer", "minimum": 1},
        "n_images": {"type": "integer", "minimum": 2},
        "format": {"enum": sorted(FORMAT_KEYS)},
        "mode": {"enum": MODES},
    },
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "weights", "statistics"],
    "properties": {
        "schema_version": {"const": 1},
        "weights": {"type": "array", "items": _WEIGHTS},
        "statistics": {"type": "array", "items": _STATISTICS},
    },
}


class ReferenceError(ValueError):
    """A bad registry, an unknown entry name, or a downloaded file that is not what the entry says."""


@dataclass(frozen=True)
class WeightsEntry:
    """Published Inception weights of one backend."""

    name: str
    backend: str
    url: str
    file: str
    hash_type: str
    hash: str | None
    sha256_prefix: str | None
    source: str
    note: str


@dataclass(frozen=True)
class StatisticsEntry:
    """Published FID reference statistics (mu, sigma of Inception pool features) of one dataset split."""

    name: str
    dataset: str
    split: str
    resolution: int
    n_images: int
    format: str
    mode: str
    url: str
    hash_type: str
    hash: str | None
    source: str
    note: str


@dataclass(frozen=True)
class References:
    weights: dict[str, WeightsEntry]
    statistics: dict[str, StatisticsEntry]


def load_references(path: Path = REFERENCES_PATH) -> References:
    """Read and validate the registry; errors name the entry and key."""
    data = load_yaml(Path(path).read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(SCHEMA).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "<top level>"
        raise ReferenceError(f"{path}: {where}: {errors[0].message}")
    names = [e["name"] for e in data["weights"] + data["statistics"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ReferenceError(f"{path}: duplicate names {duplicates}")
    for entry in data["weights"] + data["statistics"]:
        if (entry["hash_type"] == "none") != (entry["hash"] is None):
            raise ReferenceError(f"{path}: entry {entry['name']!r}: hash must be null exactly when hash_type is 'none'")
    return References(
        weights={e["name"]: WeightsEntry(**e) for e in data["weights"]},
        statistics={e["name"]: StatisticsEntry(**e) for e in data["statistics"]},
    )


def _lookup(table: dict, name: str, what: str) -> Any:
    if name not in table:
        raise ReferenceError(f"unknown {what} {name!r}; known: {sorted(table)}")
    return table[name]


def statistics_entry(name: str, references: References | None = None) -> StatisticsEntry:
    return _lookup((references or load_references()).statistics, name, "reference statistics")


def weights_entry(name: str, references: References | None = None) -> WeightsEntry:
    return _lookup((references or load_references()).weights, name, "Inception weights")


def default_weights(backend: str, references: References | None = None) -> WeightsEntry:
    """The registry's Inception weights for `backend` (one entry per backend)."""
    table = (references or load_references()).weights
    found = [e for e in table.values() if e.backend == backend]
    if len(found) != 1:
        raise ReferenceError(f"the registry lists {len(found)} Inception weights for backend {backend!r}, expected 1")
    return found[0]


def fetch_weights(entry: WeightsEntry, cache: Path, lock_file: Path) -> Path:
    """Download (or find) the weights under cache/<name>/<file>, verified; check the published sha256 prefix."""
    dest = fetch(
        entry.url,
        Path(cache) / entry.name / entry.file,
        expected_hash=entry.hash,
        hash_type=entry.hash_type,
        lock_file=lock_file,
    )
    if entry.sha256_prefix is not None:
        actual = file_digest(dest, "sha256")
        if not actual.startswith(entry.sha256_prefix):
            raise ReferenceError(
                f"{dest}: sha256 {actual} does not start with the published prefix {entry.sha256_prefix} ({entry.url})"
            )
    return dest
