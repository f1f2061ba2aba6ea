"""stochdepth: weight-shared layers whose depth is drawn at random on every forward pass."""

import importlib.metadata as _metadata

from ._block import RepeatedBlock as RepeatedBlock
from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import CheckpointError as CheckpointError
from ._checkpoint import load_checkpoint as load_checkpoint
from ._distributed import BroadcastDepth as BroadcastDepth
from ._distributed import DepthMismatchError as DepthMismatchError
from ._distributed import SkippedLayerTie as SkippedLayerTie
from ._distributed import check_depth_agreement as check_depth_agreement
from ._errors import SamplerPluginError as SamplerPluginError
from ._errors import SamplerPluginWarning as SamplerPluginWarning
from ._errors import UnknownSamplerError as UnknownSamplerError
from ._finite import NonFiniteError as NonFiniteError
from ._model import DynamicNet as DynamicNet
from ._protocol import DepthSampler as DepthSampler
from ._registry import available_samplers as available_samplers
from ._registry import get_sampler as get_sampler
from ._registry import refresh_samplers as refresh_samplers
from ._registry import register_sampler as register_sampler
from ._registry import unregister_sampler as unregister_sampler
from ._samplers import BernoulliDepth as BernoulliDepth
from ._samplers import FixedDepth as FixedDepth
from ._samplers import GeometricDepth as GeometricDepth
from ._samplers import ScheduledDepth as ScheduledDepth
from ._samplers import SeededDepth as SeededDepth
from ._samplers import UniformDepth as UniformDepth
from ._trainer import StepRecord as StepRecord
from ._trainer import TrainingHistory as TrainingHistory
from ._trainer import train as train

try:
    __version__ = _metadata.version("stochdepth")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BernoulliDepth",
    "BroadcastDepth",
    "Checkpoint",
    "CheckpointError",
    "DepthMismatchError",
    "DepthSampler",
    "DynamicNet",
    "FixedDepth",
    "GeometricDepth",
    "NonFiniteError",
    "RepeatedBlock",
    "SamplerPluginError",
    "SamplerPluginWarning",
    "ScheduledDepth",
    "SeededDepth",
    "SkippedLayerTie",
    "StepRecord",
    "TrainingHistory",
    "UniformDepth",
    "UnknownSamplerError",
    "__version__",
    "available_samplers",
    "check_depth_agreement",
    "get_sampler",
    "load_checkpoint",
    "refresh_samplers",
    "register_sampler",
    "train",
    "unregister_sampler",
]

# Show the public names as `stochdepth.X`, not the private modules they live in.
for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = __name__
del _name, _obj
