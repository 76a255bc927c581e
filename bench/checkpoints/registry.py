"""The checkpoint registry (registry.yaml): schema validation and lookup by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bench.runtime.strict_yaml import load_yaml

REGISTRY_PATH = Path(__file__).with_name("registry.yaml")

HASH_TYPES = ("md5", "sha256", "none")
LAYOUTS = (
    "plain_state_dict", "ddim_list", "edm_pickle", "analytic_dpm_ckpt", "score_sde_dict", "ncsn_run_zip", "unverified"
)
# Layouts whose file is an archive of several checkpoints: the entry's ``member`` names the one it reads.
ARCHIVE_LAYOUTS = ("ncsn_run_zip",)
_HEX_LENGTH = {"md5": 32, "sha256": 64}

_NON_EMPTY = {"type": "string", "minLength": 1}
ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "name", "family", "dataset", "url", "hash_type", "hash",
        "layout", "architecture", "source", "note",
    ],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_]*$"},
        "family": _NON_EMPTY,
        "dataset": _NON_EMPTY,
        "url": {"type": "string", "pattern": "^https?://[^\\s]+$"},
        "hash_type": {"enum": list(HASH_TYPES)},
        "hash": {"type": ["string", "null"], "pattern": "^[0-9a-f]+$"},
        "layout": {"enum": list(LAYOUTS)},
        "architecture": {"type": ["string", "null"], "pattern": "^[a-z0-9_]+$"},
        "source": _NON_EMPTY,
        "note": {"type": "string"},
        "member": {"type": ["string", "null"], "minLength": 1},
    },
}
REGISTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "checkpoints"],
    "properties": {
        "schema_version": {"const": 1},
        "checkpoints": {"type": "array", "minItems": 1, "items": ENTRY_SCHEMA},
    },
}


class RegistryError(ValueError):
    """The registry file breaks the schema or a cross-field rule."""


class UnknownCheckpoint(KeyError):
    """A checkpoint name that the registry does not list."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class CheckpointEntry:
    """One official checkpoint: where it lives, how to verify it, and how its file is laid out."""

    name: str
    family: str
    dataset: str
    url: str
    hash_type: str
    hash: str | None
    layout: str
    architecture: str | None
    source: str
    note: str
    member: str | None = None


def _describe_location(data: Any, path: list[Any]) -> str:
    """Name the entry (by its name where it has one) and the key that an error points at."""
    if len(path) < 2 or path[0] != "checkpoints":
        return "key " + (".".join(str(p) for p in path) or "<top level>")
    index = path[1]
    entry = data["checkpoints"][index]
    name = entry.get("name") if isinstance(entry, dict) else None
    where = f"entry #{index}" + (f" ({name!r})" if name else "")
    if len(path) > 2:
        where += f", key {path[2]!r}"
    return where


def _schema_errors(data: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(REGISTRY_SCHEMA)
    messages = []
    for error in validator.iter_errors(data):
        path = list(error.path)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [k for k in error.validator_value if k not in error.instance]
            path = path + missing[:1]
        messages.append(f"{_describe_location(data, path)}: {error.message}")
    return messages


def _rule_errors(entries: list[dict[str, Any]]) -> list[str]:
    """Rules the schema cannot say: hash agrees with hash_type, names are unique, an archive names its member."""
    messages = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"entry #{index} ({entry['name']!r})"
        if entry["name"] in seen:
            messages.append(f"{where}, key 'name': duplicate name")
        seen.add(entry["name"])
        archive = entry["layout"] in ARCHIVE_LAYOUTS
        if archive != (entry.get("member") is not None):
            messages.append(
                f"{where}, key 'member': " + (f"required for layout {entry['layout']!r} (the file inside its archive)"
                                             if archive else f"only an archive layout {list(ARCHIVE_LAYOUTS)} has one")
            )
        hash_type, digest = entry["hash_type"], entry["hash"]
        if hash_type == "none" and digest is not None:
            messages.append(f"{where}, key 'hash': must be null when hash_type is 'none'")
        elif hash_type != "none":
            if digest is None:
                messages.append(f"{where}, key 'hash': null, but hash_type is {hash_type!r}")
            elif len(digest) != _HEX_LENGTH[hash_type]:
                messages.append(
                    f"{where}, key 'hash': {len(digest)} hex digits, a {hash_type} has "
                    f"{_HEX_LENGTH[hash_type]}"
                )
    return messages


def validate_registry(data: Any, *, origin: str = "registry") -> list[CheckpointEntry]:
    """Check parsed registry data and return its entries; RegistryError lists every fault."""
    messages = _schema_errors(data)
    if not messages:
        messages = _rule_errors(data["checkpoints"])
    if messages:
        raise RegistryError(f"{origin} is invalid:\n  " + "\n  ".join(messages))
    return [CheckpointEntry(**entry) for entry in data["checkpoints"]]


def load_registry(path: Path = REGISTRY_PATH) -> dict[str, CheckpointEntry]:
    """Read and validate a registry YAML file; return its entries keyed by name, in file order."""
    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path} is not valid YAML: {exc}") from None
    return {entry.name: entry for entry in validate_registry(data, origin=str(path))}


def get_checkpoint(
    name: str, registry: dict[str, CheckpointEntry] | None = None
) -> CheckpointEntry:
    """Look up one checkpoint by name; the error for an unknown name lists the known ones."""
    entries = load_registry() if registry is None else registry
    if name not in entries:
        raise UnknownCheckpoint(
            f"unknown checkpoint {name!r}; known checkpoints: {', '.join(sorted(entries))}"
        )
    return entries[name]


def with_overrides(
    overrides: Mapping[str, Mapping[str, Any]], registry: dict[str, CheckpointEntry] | None = None
) -> dict[str, CheckpointEntry]:
    """The registry with a config's ``checkpoints:`` applied: each name's keys replace those of the registry's
    entry (a mirror's url and hash, say), or make a new entry, which then gives every key; all are validated."""
    entries = load_registry() if registry is None else registry
    if not overrides:
        return entries
    added = {}
    for name, keys in overrides.items():
        entry = {**(asdict(entries[name]) if name in entries else {}), **dict(keys), "name": name}
        data = {"schema_version": 1, "checkpoints": [entry]}
        added[name] = validate_registry(data, origin=f"config key 'checkpoints.{name}'")[0]
    return entries | added
