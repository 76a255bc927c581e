"""The digits CNN's file and its forward pass in numpy: the features jobs of fd_digits import no torch.

The classifier is trained in torch (bench.metrics.classifier.DigitsClassifier) and saved here as an
.npz of its state dict with its config, which numpy and torch both read without running code.
``features_and_logits`` computes DigitsClassifier.features / .logits in float64 (tests pin the two
together); importing torch would cost a short per-shard job more than its work on a CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.special

from bench.data.digits import levels_to_unit
from bench.metrics.feature_stats import check_level_images
from bench.runtime.io import CorruptFileError, atomic_npz, load_npz

CHECKPOINT_FORMAT = "dpm-bench-digits-classifier-v2"
LAYERS = ("conv1", "conv2", "conv3", "head")
CONFIG_FIELDS = ("in_channels", "image_size", "width", "feature_dim", "num_classes")


@dataclass(frozen=True)
class CNNWeights:
    """The state dict (float64 arrays by torch's names) and config of a saved digits CNN."""

    config: dict
    arrays: dict[str, np.ndarray]


def save_weights(config: dict, state: dict[str, np.ndarray], path: Path) -> Path:
    """Write config and state-dict arrays atomically as one .npz (no pickles)."""
    return atomic_npz(
        Path(path),
        format=np.array(CHECKPOINT_FORMAT),
        config=np.array(json.dumps(config, sort_keys=True)),
        **{f"state/{k}": np.asarray(v, dtype=np.float32) for k, v in state.items()},
    )


def load_weights(path: Path) -> CNNWeights:
    """Read a file of save_weights; CorruptFileError names the file when it is not one."""
    raw = load_npz(Path(path))
    found = str(raw["format"]) if "format" in raw else None
    if found != CHECKPOINT_FORMAT or "config" not in raw:
        raise CorruptFileError(
            f"{path} is not a digits classifier checkpoint: format {found!r}, expected {CHECKPOINT_FORMAT!r}"
        )
    config = json.loads(str(raw["config"]))
    if sorted(config) != sorted(CONFIG_FIELDS):
        raise CorruptFileError(
            f"{path}: classifier config has fields {sorted(config)}, expected {sorted(CONFIG_FIELDS)}"
        )
    arrays = {k.removeprefix("state/"): v for k, v in raw.items() if k.startswith("state/")}
    expected = {f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")}
    if set(arrays) != expected:
        raise CorruptFileError(
            f"{path}: state dict does not match the digits classifier: missing {sorted(expected - set(arrays))}, "
            f"unexpected {sorted(set(arrays) - expected)}"
        )
    return CNNWeights(config, arrays)


def _silu(x: np.ndarray) -> np.ndarray:
    return x * scipy.special.expit(x)


def _conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """3x3 convolution with zero padding 1 of NHWC ``x`` by a torch [out, in, 3, 3] weight: NHWC out."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # windows [N, H, W, C, 3, 3] in the order of torch's weight layout [out, C, 3, 3]
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    # One product per image (a stacked matmul), not one over the batch: BLAS picks its kernel, and so its
    # rounding, by the matrix shape, so an image's features would otherwise depend on its batch's size.
    columns = windows.reshape(n, h * w, c * 9)
    out = columns @ weight.reshape(weight.shape[0], c * 9).astype(np.float64).T + bias
    return out.reshape(n, h, w, weight.shape[0])


def _forward(weights: CNNWeights, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = weights.arrays
    h = _silu(_conv3x3(x, a["conv1.weight"], a["conv1.bias"]))
    h = _silu(_conv3x3(h, a["conv2.weight"], a["conv2.bias"]))
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))  # max_pool2d(2)
    h = _silu(_conv3x3(h, a["conv3.weight"], a["conv3.bias"]))
    features = h.mean(axis=(1, 2))
    logits = (features[:, None, :] @ a["head.weight"].astype(np.float64).T)[:, 0] + a["head.bias"]
    return features, logits


def features_and_logits(
    images: np.ndarray, max_level: int, weights: CNNWeights, *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and logits (DigitsClassifier.features / .logits) of level images, float64."""
    check_level_images(images, max_level)
    c = weights.config
    expected = (c["in_channels"], c["image_size"], c["image_size"])
    if tuple(images.shape[1:]) != expected:
        shape = ", ".join(map(str, expected))
        raise ValueError(f"classifier input must have shape [N, {shape}], got {list(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    features, logits = [], []
    for start in range(0, len(images), batch_size):
        x = levels_to_unit(images[start : start + batch_size], max_level).astype(np.float64)
        f, z = _forward(weights, x.transpose(0, 2, 3, 1))
        features.append(f)
        logits.append(z)
    return np.concatenate(features), np.concatenate(logits)
