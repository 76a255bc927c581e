"""The one entry point that knows every EDM backbone: importing it registers them all.

`build_edm_network` lives in edm_precond, which cannot import DhariwalUNet (that module
registers itself there); import the builder from here so every model_type is buildable.
"""

from bench.nets.dhariwal_unet import DhariwalUNet
from bench.nets.edm_precond import BACKBONES, PRECONDITIONERS, build_edm_network
from bench.nets.song_unet import SongUNet

__all__ = ["BACKBONES", "PRECONDITIONERS", "DhariwalUNet", "SongUNet", "build_edm_network"]
