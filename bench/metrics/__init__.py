"""Sample-quality metrics; torchvision is made importable before the metric libraries load it."""

from bench.compat import import_torchvision

import_torchvision()
