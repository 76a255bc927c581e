"""The fetch-weights step: the Inception weights downloaded and verified."""

from __future__ import annotations

from pathlib import Path

from bench.checkpoints.references import fetch_weights, weights_entry


def run(spec: dict, out: Path, cache: Path, lock: Path) -> None:
    """Fetch ``spec["weights"]`` into ``cache``; refused unless that is where ``out`` names."""
    entry = weights_entry(spec["weights"])
    fetched = fetch_weights(entry, cache, lock)
    if fetched.resolve() != out.resolve():
        raise SystemExit(f"weights {entry.name!r} were fetched to {fetched}, not to --out {out}")
