"""stochdepth: weight-shared layers whose depth is drawn at random on every forward pass."""

import sys as _sys
import typing as _typing
import warnings as _warnings
from typing import Any as _Any

from ._block import Mode as Mode
from ._block import RepeatedBlock as RepeatedBlock
from ._depth import EvalDepth as EvalDepth
from ._distributed import BroadcastDepth as BroadcastDepth
from ._distributed import SkippedLayerTie as SkippedLayerTie
from ._distributed import check_depth_agreement as check_depth_agreement
from ._errors import DEPRECATED_ALIASES as _DEPRECATED_ALIASES
from ._errors import CheckpointError as CheckpointError
from ._errors import DepthMismatchError as DepthMismatchError
from ._errors import NonFiniteError as NonFiniteError
from ._errors import PluginError as PluginError
from ._errors import PluginWarning as PluginWarning
from ._errors import UnknownPluginError as UnknownPluginError
from ._halting import halting_depths as halting_depths
from ._halting import halting_distribution as halting_distribution
from ._halting import ponder_loss as ponder_loss
from ._layer_call import Output as Output
from ._model import DynamicNet as DynamicNet
from ._row_draws import RowDraws as RowDraws
from ._version import __version__ as __version__
from .conversion._recursify import recursify as recursify
from .conversion._report import RecursifyReport as RecursifyReport
from .exits._builtin import LatentChange as LatentChange
from .exits._builtin import OutputKL as OutputKL
from .exits._policy import ExitWhenConverged as ExitWhenConverged
from .exits._protocol import ExitCriterion as ExitCriterion
from .exits._registry import available_exit_criteria as available_exit_criteria
from .exits._registry import get_exit_criterion as get_exit_criterion
from .exits._registry import refresh_exit_criteria as refresh_exit_criteria
from .exits._registry import register_exit_criterion as register_exit_criterion
from .exits._registry import unregister_exit_criterion as unregister_exit_criterion
from .layer_drop._add import add_layer_drop as add_layer_drop
from .layer_drop._list import LayerDropList as LayerDropList
from .layer_drop._registry import available_drop_rules as available_drop_rules
from .layer_drop._registry import get_drop_rule as get_drop_rule
from .layer_drop._registry import refresh_drop_rules as refresh_drop_rules
from .layer_drop._registry import register_drop_rule as register_drop_rule
from .layer_drop._registry import unregister_drop_rule as unregister_drop_rule
from .layer_drop._rules import BernoulliDrop as BernoulliDrop
from .layer_drop._rules import DropRule as DropRule
from .layer_drop._rules import NestedDrop as NestedDrop
from .layer_drop._schedule import linear_drop_rates as linear_drop_rates
from .samplers._builtin import BernoulliDepth as BernoulliDepth
from .samplers._builtin import FixedDepth as FixedDepth
from .samplers._builtin import GeometricDepth as GeometricDepth
from .samplers._builtin import LogNormalPoissonDepth as LogNormalPoissonDepth
from .samplers._builtin import ScheduledDepth as ScheduledDepth
from .samplers._builtin import SeededDepth as SeededDepth
from .samplers._builtin import UniformDepth as UniformDepth
from .samplers._protocol import DepthSampler as DepthSampler
from .samplers._registry import available_samplers as available_samplers
from .samplers._registry import get_sampler as get_sampler
from .samplers._registry import refresh_samplers as refresh_samplers
from .samplers._registry import register_sampler as register_sampler
from .samplers._registry import unregister_sampler as unregister_sampler
from .scheduling._act import ACTHalting as ACTHalting
from .scheduling._deep_supervision import DeepSupervision as DeepSupervision
from .scheduling._deep_supervision import SupervisionRows as SupervisionRows
from .scheduling._rules import HaltingRule as HaltingRule
from .scheduling._rules import PonderHalting as PonderHalting
from .scheduling._scheduler import DepthScheduler as DepthScheduler
from .scheduling._scheduler import ScheduledResult as ScheduledResult
from .training._checkpoint import Checkpoint as Checkpoint
from .training._checkpoint import load_checkpoint as load_checkpoint
from .training._cuda_graphs import CUDAGraphStep as CUDAGraphStep
from .training._history import StepRecord as StepRecord
from .training._history import TrainingHistory as TrainingHistory
from .training._trainer import train as train

if _typing.TYPE_CHECKING:
    from .generation._cache import DepthCache as DepthCache
    from .generation._speculative import SpeculativeResult as SpeculativeResult
    from .generation._speculative import speculative_generate as speculative_generate

__all__ = [
    "ACTHalting",
    "BernoulliDepth",
    "BernoulliDrop",
    "BroadcastDepth",
    "CUDAGraphStep",
    "Checkpoint",
    "CheckpointError",
    "DeepSupervision",
    "DepthCache",
    "DepthMismatchError",
    "DepthSampler",
    "DepthScheduler",
    "DropRule",
    "DynamicNet",
    "EvalDepth",
    "ExitCriterion",
    "ExitWhenConverged",
    "FixedDepth",
    "GeometricDepth",
    "HaltingRule",
    "LatentChange",
    "LayerDropList",
    "LogNormalPoissonDepth",
    "Mode",
    "NestedDrop",
    "NonFiniteError",
    "Output",
    "OutputKL",
    "PluginError",
    "PluginWarning",
    "PonderHalting",
    "RecursifyReport",
    "RepeatedBlock",
    "RowDraws",
    "ScheduledDepth",
    "ScheduledResult",
    "SeededDepth",
    "SkippedLayerTie",
    "SpeculativeResult",
    "StepRecord",
    "SupervisionRows",
    "TrainingHistory",
    "UniformDepth",
    "UnknownPluginError",
    "__version__",
    "add_layer_drop",
    "available_drop_rules",
    "available_exit_criteria",
    "available_samplers",
    "check_depth_agreement",
    "get_drop_rule",
    "get_exit_criterion",
    "get_sampler",
    "halting_depths",
    "halting_distribution",
    "linear_drop_rates",
    "load_checkpoint",
    "ponder_loss",
    "recursify",
    "refresh_drop_rules",
    "refresh_exit_criteria",
    "refresh_samplers",
    "register_drop_rule",
    "register_exit_criterion",
    "register_sampler",
    "speculative_generate",
    "train",
    "unregister_drop_rule",
    "unregister_exit_criterion",
    "unregister_sampler",
]

# Public names whose module imports an optional dependency (transformers): imported on
# first use, through the module's __getattr__, so that `import stochdepth` never needs it.
_LAZY = {
    "DepthCache": "stochdepth.generation._cache",
    "SpeculativeResult": "stochdepth.generation._speculative",
    "speculative_generate": "stochdepth.generation._speculative",
}

# Show the public names as `stochdepth.X`, not the private modules they live in. The
# type aliases are typing objects (shared, and immutable from Python 3.14): left as they are.
_TYPE_ALIASES = ("EvalDepth", "Mode", "Output", "RowDraws")
for _name in __all__:
    if _name in _LAZY or _name in _TYPE_ALIASES:
        continue
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = __name__
del _name, _obj


def __getattr__(name: str) -> _Any:
    """The names imported on first use, and the deprecated ones.

    ``DepthCache`` needs ``transformers`` (an optional dependency): its module is imported
    when the name is first asked for. A deprecated name warns with a ``FutureWarning`` and
    gives its replacement.
    """
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        obj = getattr(importlib.import_module(module), name)
        obj.__module__ = __name__
        globals()[name] = obj
        return obj
    replacement = _DEPRECATED_ALIASES.get(name)
    if replacement is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _sys._getframe(1).f_globals.get("__name__") == "importlib._bootstrap":
        # `from stochdepth import X` asks hasattr first, then gets X: warn once, at the get
        return replacement
    _warnings.warn(
        f"stochdepth.{name} is deprecated and will be removed in the next release; use "
        f"stochdepth.{replacement.__name__}, the one class every plugin kind raises (it is "
        f"the same class, so except clauses keep working)",
        FutureWarning,
        stacklevel=2,
    )
    return replacement
