"""Inception-v3 features for FID and IS through torch-fidelity or clean-fid, from local weight files only.

torch-fidelity (mode `legacy_tensorflow`): FeatureExtractorInceptionV3 with its TF1-compatible bilinear
resize inside; FID uses the 2048-d pool features and IS the 1008 logits without the output bias.
clean-fid: the StyleGAN2-ADA TorchScript Inception; mode `clean` resizes with PIL bicubic on float
images outside the network, mode `legacy_tensorflow` lets the network resize. Its IS input is the
network's softmax over 1008 classes without the output bias, as StyleGAN2-ADA and EDM compute IS.
Neither library is allowed to download: a missing weight file is an error naming the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.checkpoints.references import BACKEND_MODES, DEFAULT_MODE

CLEANFID_WEIGHTS_NAME = "inception-2015-12-05.pt"
FEATURE_DIM = 2048


def resolve_mode(backend: str, mode: str | None) -> str:
    """The backend's mode (its default when None); ValueError names a bad backend or mode and the allowed ones."""
    if backend not in BACKEND_MODES:
        raise ValueError(f"Inception backend {backend!r} is not allowed; allowed: {sorted(BACKEND_MODES)}")
    mode = DEFAULT_MODE[backend] if mode is None else mode
    if mode not in BACKEND_MODES[backend]:
        raise ValueError(
            f"mode {mode!r} is not allowed for backend {backend!r}; allowed: {list(BACKEND_MODES[backend])}"
        )
    return mode


def check_rgb_images(images: np.ndarray) -> None:
    """Raise ValueError unless `images` is a uint8 [N, 3, H, W] array with N >= 1."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"Inception inputs must be a uint8 numpy array of 0..255 pixels, got {found}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"Inception inputs must have shape [N, 3, H, W] with N >= 1, got {list(images.shape)}")


@dataclass(frozen=True)
class InceptionOutputs:
    """Pool features [N, 2048] and the IS input [N, 1008]: `logits` or `probs` (float64)."""

    features: np.ndarray
    is_kind: str
    is_values: np.ndarray


class TorchFidelityInception:
    """torch-fidelity's FeatureExtractorInceptionV3 loaded from `weights` (its state_dict format)."""

    backend = "torch-fidelity"

    def __init__(self, weights: Path, mode: str | None = None) -> None:
        from bench.runtime.torchvision_compat import import_torchvision

        import_torchvision()  # torch-fidelity imports torchvision, which on CPU-only torch needs the nms shim first
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.mode = resolve_mode(self.backend, mode)
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"torch-fidelity Inception weights {weights} do not exist (nothing is downloaded)")
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
        )

    @torch.no_grad()
    def __call__(self, images: np.ndarray, *, batch_size: int = 64) -> InceptionOutputs:
        check_rgb_images(images)
        features, logits = [], []
        for start in range(0, len(images), batch_size):
            f, z = self.net(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])))
            features.append(f.double().numpy())
            logits.append(z.double().numpy())
        return InceptionOutputs(np.concatenate(features), "logits", np.concatenate(logits))


class CleanFidInception:
    """clean-fid's InceptionV3W around the TorchScript file `weights` (named inception-2015-12-05.pt)."""

    backend = "clean-fid"

    def __init__(self, weights: Path, mode: str | None = None) -> None:
        from bench.runtime.torchvision_compat import import_torchvision

        import_torchvision()  # clean-fid imports torchvision too
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        self.mode = resolve_mode(self.backend, mode)
        weights = Path(weights)
        if weights.name != CLEANFID_WEIGHTS_NAME:
            raise ValueError(f"clean-fid loads its TorchScript by the name {CLEANFID_WEIGHTS_NAME}, got {weights}")
        if not weights.is_file():
            raise FileNotFoundError(f"clean-fid Inception TorchScript {weights} does not exist (nothing is downloaded)")
        self.net = InceptionV3W(str(weights.parent), download=False, resize_inside=self.mode == "legacy_tensorflow")
        self.net.eval()
        self.resize = build_resizer(self.mode)

    def _network_input(self, images: np.ndarray) -> torch.Tensor:
        """What clean-fid's folder pipeline feeds the network: float 0..255 pixels, [N, 3, H, W].

        Mode `clean` resizes each channel to 299 x 299 with PIL bicubic on float32; mode
        `legacy_tensorflow` passes uint8 through ToTensor and back (x / 255 * 255 in float32).
        """
        if self.mode == "legacy_tensorflow":
            return torch.from_numpy(images).to(torch.float32).div(255) * 255
        resized = [self.resize(image.transpose(1, 2, 0)).transpose(2, 0, 1) for image in images]
        return torch.from_numpy(np.stack(resized).astype(np.float32))

    @torch.no_grad()
    def __call__(self, images: np.ndarray, *, batch_size: int = 64) -> InceptionOutputs:
        check_rgb_images(images)
        features, probs = [], []
        for start in range(0, len(images), batch_size):
            x = self._network_input(images[start : start + batch_size])
            features.append(self.net(x).double().numpy())
            probs.append(self.net.base(x, no_output_bias=True).double().numpy())
        return InceptionOutputs(np.concatenate(features), "probs", np.concatenate(probs))


def load_inception(backend: str, mode: str | None, weights: Path) -> TorchFidelityInception | CleanFidInception:
    """The Inception extractor of `backend` from its local weight file (torch-fidelity .pth, clean-fid TorchScript)."""
    resolve_mode(backend, mode)
    if backend == "torch-fidelity":
        return TorchFidelityInception(weights, mode)
    return CleanFidInception(weights, mode)
