"""Random-weight Inception files in the formats torch-fidelity and clean-fid load, for offline tests.

torch-fidelity loads a state_dict of FeatureExtractorInceptionV3 with torch.load; clean-fid loads the
StyleGAN2-ADA TorchScript `inception-2015-12-05.pt` and calls `base.layers(x)` (features) and
`base(img, return_features=..., use_fp16=..., no_output_bias=...)` (features, or softmax
probabilities over 1008 classes). Both files here are seeded, so every test sees the same network.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.nn import functional as F

from bench.metrics.inception import FEATURE_DIM

CLASSES = 1008


def write_torch_fidelity_weights(path: Path, seed: int = 0) -> Path:
    """A seeded random state_dict with every key and shape FeatureExtractorInceptionV3 expects."""
    from bench.runtime.torchvision_compat import import_torchvision

    import_torchvision()  # torch-fidelity imports torchvision, which on CPU-only torch needs the nms shim first
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = path.with_suffix(".empty")
    torch.save({}, empty)
    torch.manual_seed(seed)
    # Build the module without loading anything; its BatchNorms stay the identity.
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("conv.weight"):
            # He initialisation keeps the activations' scale through 94 layers, so that the pool
            # features of different images differ by more than the fixed-point quantum of the sums.
            fan_in = value[0].numel()
            value = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        state[key] = value.clone()
    torch.save(state, path)
    return path


class _TinyInceptionScript(nn.Module):
    """Same call signature and output shapes as StyleGAN2-ADA's TorchScript Inception, tiny inside."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, FEATURE_DIM, 3, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.output = nn.Linear(FEATURE_DIM, CLASSES)

    def forward(
        self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False
    ) -> torch.Tensor:
        x = img.to(torch.float32)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        features = torch.reshape(self.layers((x - 128.0) / 128.0), [-1, 2048])
        if return_features:
            return features
        bias = None if no_output_bias else self.output.bias
        return F.softmax(F.linear(features, self.output.weight, bias), dim=1)


def write_cleanfid_torchscript(folder: Path, seed: int = 0) -> Path:
    """A seeded TorchScript file named as clean-fid expects, inside `folder`; returns the folder."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    # The feature width is a literal in forward: TorchScript cannot read module-level constants.
    torch.jit.script(_TinyInceptionScript().eval()).save(str(folder / "inception-2015-12-05.pt"))
    return folder
