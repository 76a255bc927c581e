"""Class labels of conditional sampling: one label per seed, drawn from that seed's own noise stream.

The official generators draw labels uniformly at random, never class-balanced:

- EDM ``generate.py`` L281-285 (NVlabs/edm @008a4e5): per seed, from the seed's own generator right after its
  latents, ``torch.eye(label_dim)[rnd.randint(label_dim, size=[N])]`` (one-hot rows, what the network takes);
- iDDPM ``scripts/image_sample.py`` L44-48 (openai/improved-diffusion @1bc7bbb): ``th.randint(0, NUM_CLASSES,
  (batch_size,))`` from the global RNG per batch, passed as ``model_kwargs["y"]`` (class indices);
- ADM ``scripts/image_sample.py`` L46-50 (openai/guided-diffusion @22e0df8): the same as iDDPM.

Here the label of a sample is floor(label_dim u), u the seed's uniform on ``LABEL_STREAM`` (EDM's protocol, a
label per seed): it never depends on the batch, the shard or the device, so shards and resumes stay bitwise
identical. (u = (bits + 0.5) 2^-32, so a class's probability differs from 1 / label_dim by under 2^-32.)
"""

from __future__ import annotations

import torch

from bench.core.noise import uniform

# A stream no sampler step draws: NoiseSource's streams are step + 1 < 2^32, or (extra + 1) 2^32 + ... with
# extra >= 1, i.e. at least 2^33.
LABEL_STREAM = 1 << 32
# What the cell's record states about its labels.
LABEL_PROTOCOL = "random: one uniform class per seed from its own stream (EDM generate.py L281-285)"


def draw_labels(seeds: torch.Tensor, label_dim: int) -> torch.Tensor:
    """The class index in [0, label_dim) of each seed, int64 [N] on the seeds' device."""
    if label_dim < 1:
        raise ValueError(f"label_dim={label_dim!r} must be a positive number of classes")
    u = uniform(seeds.to(torch.int64), LABEL_STREAM, (1,), torch.float64)[:, 0]
    return torch.floor(u * label_dim).to(torch.int64).clamp_(max=label_dim - 1)


def one_hot(labels: torch.Tensor, label_dim: int) -> torch.Tensor:
    """One-hot float32 rows [N, label_dim] of class indices, EDM's ``torch.eye(label_dim)[labels]`` (L285)."""
    return torch.eye(label_dim, device=labels.device)[labels]


def network_label_dim(net: torch.nn.Module) -> int:
    """How many classes a network is conditioned on: EDM's ``label_dim``, ADM's ``num_classes`` (0: none)."""
    return int(getattr(net, "label_dim", 0) or getattr(net, "num_classes", 0) or 0)


def check_label_dim(configured: int, network: int, context: str) -> None:
    """A model config's ``label_dim`` (0: absent) must be the class count its network is conditioned on."""
    if configured != network:
        fix = f"set it to {network}" if network else "remove it: the network is unconditional"
        raise ValueError(
            f"{context}: config key label_dim is {configured} but the network is conditioned on {network} "
            f"classes; {fix}"
        )
