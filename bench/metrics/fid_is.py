"""FD and IS of level images with digits-CNN features through torch-fidelity's custom-extractor API.

Two routes give the same numbers: torch-fidelity's `calculate_metrics` with the classifier
registered as a feature extractor (here), and our own loop that produces mergeable `FeatureStats`
(bench.metrics.feature_stats), so statistics of sharded sampling combine exactly before the distance
is taken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.metrics.classifier import load_classifier
from bench.metrics.feature_stats import IS_SHUFFLE_SEED, check_level_images
from bench.runtime.torchvision_compat import import_torchvision

import_torchvision()  # torch-fidelity imports torchvision, which on CPU-only torch needs this shim first

import torch_fidelity  # noqa: E402
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY  # noqa: E402

FEATURE_EXTRACTOR_NAME = "digits-cnn"
FEATURES_LAYER = "digits_features"
LOGITS_LAYER = "digits_logits_unbiased"


# ---------------------------------------------------------------------------------------------
# torch-fidelity plumbing


class DigitsFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity extractor around DigitsClassifier; inputs are uint8 level images.

    calculate_metrics forwards its keyword arguments here: `feature_extractor_weights_path`
    names a save_classifier checkpoint and `feature_extractor_max_level` the top level of the
    uint8 inputs (they are not 0..255 pixels). Outputs are float64 so that torch-fidelity's
    statistics match our own float64 accumulation.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        feature_extractor_max_level: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"feature extractor {name!r} needs feature_extractor_weights_path (a classifier "
                "checkpoint written by save_classifier)"
            )
        if feature_extractor_max_level is None or not 1 <= feature_extractor_max_level <= 255:
            raise ValueError(
                f"feature extractor {name!r} needs feature_extractor_max_level in 1..255, "
                f"got {feature_extractor_max_level!r}"
            )
        self.classifier = load_classifier(Path(feature_extractor_weights_path))
        self.max_level = int(feature_extractor_max_level)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8:
            raise ValueError(f"{self.name} expects uint8 level images, got dtype {x.dtype}")
        # Same float32 operations as levels_to_unit, so both routes see identical inputs.
        unit = (x.to(torch.float32) / self.max_level) * 2.0 - 1.0
        h = self.classifier.features(unit)
        outputs = {FEATURES_LAYER: h.double(), LOGITS_LAYER: self.classifier.head(h).double()}
        return tuple(outputs[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, str]:
        return FEATURES_LAYER, LOGITS_LAYER

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {
            "isc": LOGITS_LAYER,
            "fid": FEATURES_LAYER,
            "kid": FEATURES_LAYER,
            "prc": FEATURES_LAYER,
        }[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


def register_digits_extractor() -> None:
    """Register DigitsFeatureExtractor under FEATURE_EXTRACTOR_NAME (once per process)."""
    registered = FEATURE_EXTRACTORS_REGISTRY.get(FEATURE_EXTRACTOR_NAME)
    if registered is None:
        torch_fidelity.register_feature_extractor(FEATURE_EXTRACTOR_NAME, DigitsFeatureExtractor)
    elif registered is not DigitsFeatureExtractor:
        raise RuntimeError(
            f"torch-fidelity feature extractor {FEATURE_EXTRACTOR_NAME!r} is already taken by "
            f"{registered.__module__}.{registered.__qualname__}"
        )


class LevelImageDataset(Dataset):
    """Dataset of uint8 C x H x W level images, the input torch-fidelity expects."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = np.ascontiguousarray(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index].copy())


def compute_fd_is(
    images: np.ndarray,
    max_level: int,
    reference_images: np.ndarray,
    classifier_path: Path,
    *,
    batch_size: int = 256,
    is_splits: int = 10,
    cuda: bool = False,
) -> dict:
    """FD of `images` against `reference_images` and IS of `images`, via torch-fidelity."""
    check_level_images(images, max_level, "images")
    check_level_images(reference_images, max_level, "reference_images")
    if images.shape[1:] != reference_images.shape[1:]:
        raise ValueError(
            f"images {images.shape[1:]} and reference_images {reference_images.shape[1:]} differ in C x H x W"
        )
    if not 1 <= is_splits <= len(images):
        raise ValueError(f"is_splits must lie in 1..{len(images)}, got {is_splits}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    classifier_path = Path(classifier_path)
    if not classifier_path.is_file():
        raise FileNotFoundError(f"classifier checkpoint {classifier_path} does not exist")
    register_digits_extractor()
    metrics = torch_fidelity.calculate_metrics(
        input1=LevelImageDataset(images),
        input2=LevelImageDataset(reference_images),
        feature_extractor=FEATURE_EXTRACTOR_NAME,
        feature_extractor_weights_path=str(classifier_path),
        feature_extractor_max_level=int(max_level),
        fid=True,
        isc=True,
        isc_splits=is_splits,
        rng_seed=IS_SHUFFLE_SEED,
        batch_size=batch_size,
        cuda=cuda,
        cache=False,
        save_cpu_ram=True,  # DataLoader without worker processes
        verbose=False,
    )
    return {
        "fd": float(metrics[torch_fidelity.KEY_METRIC_FID]),
        "is_mean": float(metrics[torch_fidelity.KEY_METRIC_ISC_MEAN]),
        "is_std": float(metrics[torch_fidelity.KEY_METRIC_ISC_STD]),
        "n": int(len(images)),
        "backend": "torch-fidelity",
        "backend_version": torch_fidelity.__version__,
    }
