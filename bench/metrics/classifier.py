"""A small CNN trained on the 8x8 digits: the feature extractor for FD and IS on that data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bench.data.digits import ImageSplit, levels_to_unit
from bench.metrics.digits_cnn import load_weights, save_weights
from bench.runtime.io import CorruptFileError


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of DigitsClassifier; stored next to the weights."""

    in_channels: int = 1
    image_size: int = 8
    width: int = 32
    feature_dim: int = 64
    num_classes: int = 10


class DigitsClassifier(nn.Module):
    """Three 3x3 SiLU conv layers, global average pooling to `feature_dim` features, linear logits.

    SiLU rather than ReLU: ReLU left about a third of the pooled features dead (always zero),
    which makes the feature covariance singular and its matrix square root ill-posed.
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClassifierConfig()
        c = self.config
        self.conv1 = nn.Conv2d(c.in_channels, c.width, 3, padding=1)
        self.conv2 = nn.Conv2d(c.width, c.feature_dim, 3, padding=1)
        self.conv3 = nn.Conv2d(c.feature_dim, c.feature_dim, 3, padding=1)
        self.head = nn.Linear(c.feature_dim, c.num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"classifier input must have shape [N, {', '.join(map(str, expected))}], got {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"classifier input must be float in [-1, 1], got dtype {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations [N, feature_dim] (pooled like Inception's pool3)."""
        self._check_input(x)
        h = F.silu(self.conv1(x))
        h = F.max_pool2d(F.silu(self.conv2(h)), 2)
        h = F.silu(self.conv3(h))
        return h.mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, num_classes]."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)


def _as_unit_tensor(images: np.ndarray, max_level: int) -> torch.Tensor:
    return torch.from_numpy(levels_to_unit(images, max_level))


def train_classifier(
    train: ImageSplit,
    *,
    seed: int,
    epochs: int = 12,
    batch_size: int = 32,
    learning_rate: float = 4e-3,
    config: ClassifierConfig | None = None,
) -> DigitsClassifier:
    """Adam on cross-entropy with cosine step-size decay; same seed, same weights on CPU."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    x = _as_unit_tensor(train.images, train.max_level)
    y = torch.from_numpy(np.asarray(train.labels, dtype=np.int64))
    # Seed a private RNG stream so training leaves the caller's global torch RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(config)
    if int(y.max()) >= model.config.num_classes or int(y.min()) < 0:
        raise ValueError(f"labels must lie in 0..{model.config.num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    steps_per_epoch = -(-len(x) // batch_size)
    # Cosine decay to zero: without it the last noisy steps decide the test accuracy.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model.logits(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: DigitsClassifier, split: ImageSplit) -> float:
    """Fraction of `split` whose arg-max logit equals the label."""
    predicted = model.logits(_as_unit_tensor(split.images, split.max_level)).argmax(dim=1)
    return float((predicted.numpy() == split.labels).mean())


def save_classifier(model: DigitsClassifier, path: Path) -> Path:
    """Write weights and config atomically as the .npz that numpy's features jobs read (bench.metrics.digits_cnn)."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return save_weights(asdict(model.config), state, Path(path))


def load_classifier(path: Path) -> DigitsClassifier:
    """Load a file written by save_classifier (an .npz without pickles: no code runs on load)."""
    weights = load_weights(Path(path))
    model = DigitsClassifier(ClassifierConfig(**weights.config))
    try:
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.arrays.items()})
    except RuntimeError as err:  # mis-shaped tensors: torch lists each one
        reason = " ".join(str(err).split())
        raise CorruptFileError(f"{path}: state dict does not match the digits classifier: {reason}") from None
    model.eval()
    model.requires_grad_(False)
    return model
