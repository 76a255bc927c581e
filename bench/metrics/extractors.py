"""One entry point over the configured feature extractors (digits_cnn, inception_v3) for FD and IS."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.metrics.feature_stats import OWN_BACKEND

# FD and IS formulas of the digits CNN are our own (equal to torch-fidelity's: bench.metrics.feature_stats);
# its inputs are level images, not resized.
DIGITS_BACKEND, DIGITS_MODE = OWN_BACKEND, "native"


def backend_and_mode(extractor: dict) -> tuple[str, str]:
    """(backend, mode) an extractor config stands for; ValueError names a bad kind, backend or mode."""
    kind = extractor.get("kind")
    if kind == "digits_cnn":
        return DIGITS_BACKEND, DIGITS_MODE
    if kind == "inception_v3":
        from bench.metrics.inception import resolve_mode

        backend = extractor.get("backend", "torch-fidelity")
        return backend, resolve_mode(backend, extractor.get("mode"))
    raise ValueError(f"extractor kind {kind!r} is not allowed; allowed: ['digits_cnn', 'inception_v3']")


def runs_on_host(extractor: dict) -> bool:
    """Whether the extractor computes in numpy on the CPU (the digits CNN), so its jobs import no torch."""
    return extractor.get("kind") == "digits_cnn"


def signature(extractor: dict) -> str:
    """kind/backend/mode: features from extractors of different signatures are never merged."""
    return "/".join((extractor["kind"], *backend_and_mode(extractor)))


def extract_outputs(
    extractor: dict, weights: Path, images: np.ndarray, max_level: int
) -> tuple[np.ndarray, str, np.ndarray]:
    """Pool features [N, F], the IS input kind ('logits' or 'probs') and its values [N, C], all float64."""
    backend, mode = backend_and_mode(extractor)
    if extractor["kind"] == "digits_cnn":
        from bench.metrics.digits_cnn import features_and_logits, load_weights

        features, logits = features_and_logits(images, max_level, load_weights(Path(weights)))
        return features, "logits", logits
    if max_level != 255:
        raise ValueError(f"Inception features need 8-bit images (max_level 255), got max_level {max_level}")
    from bench.metrics.inception import load_inception

    outputs = load_inception(backend, mode, Path(weights))(images)
    return outputs.features, outputs.is_kind, outputs.is_values
