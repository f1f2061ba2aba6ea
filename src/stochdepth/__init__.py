"""stochdepth: weight-shared layers whose depth is drawn at random on every forward pass."""

import importlib.metadata as _metadata

from ._block import RepeatedBlock as RepeatedBlock
from ._model import DynamicNet as DynamicNet
from ._protocol import DepthSampler as DepthSampler
from ._samplers import FixedDepth as FixedDepth
from ._samplers import SeededDepth as SeededDepth
from ._samplers import UniformDepth as UniformDepth
from ._trainer import StepRecord as StepRecord
from ._trainer import train as train

try:
    __version__ = _metadata.version("stochdepth")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "DepthSampler",
    "DynamicNet",
    "FixedDepth",
    "RepeatedBlock",
    "SeededDepth",
    "StepRecord",
    "UniformDepth",
    "__version__",
    "train",
]

# Show the public names as `stochdepth.X`, not the private modules they live in.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = __name__
del _name, _obj
