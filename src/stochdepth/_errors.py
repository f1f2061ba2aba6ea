"""Every exception and warning stochdepth raises of its own.

Each one pickles and unpickles with its message, its constructor's arguments and its
notes, so that it crosses process boundaries intact (multiprocessing, DataLoader
workers, torchrun): an exception whose constructor takes other arguments than the
message says how to rebuild itself in ``__reduce__``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any


class UnknownPluginError(LookupError, ValueError):
    """No sampler, drop rule or exit criterion has this name: built in, registered or plugged in.

    The message names the kind, lists the names that are available and suggests the
    closest one. A ``LookupError``, and a ``ValueError`` as an unknown
    ``LayerDropList(..., rule=name)`` argument is.
    """


class PluginError(RuntimeError, LookupError):
    """A plugin asked for by name failed to load, or does not provide its kind of object.

    The message names the kind, the plugin's entry point and its distribution. A
    ``RuntimeError``, and a ``LookupError`` (as a failed lookup by name).
    """


class PluginWarning(UserWarning):
    """A plugin was left out of a listing: it failed to load, is of the wrong kind, or is shadowed.

    Listing the samplers, the drop rules or the exit criteria never fails because of a
    plugin; it warns with this category, naming the entry point, and goes on.
    """


DEPRECATED_ALIASES: Mapping[str, type[Exception]] = {
    "UnknownSamplerError": UnknownPluginError,
    "UnknownDropRuleError": UnknownPluginError,
    "UnknownExitCriterionError": UnknownPluginError,
    "SamplerPluginError": PluginError,
    "DropRulePluginError": PluginError,
    "ExitCriterionPluginError": PluginError,
    "SamplerPluginWarning": PluginWarning,
    "ExitCriterionPluginWarning": PluginWarning,
}
"""The kinds' own exception names before the one set above, each now the shared class.

``stochdepth.SamplerPluginError`` still imports, with a ``FutureWarning``, and *is*
:class:`PluginError`, so that ``except SamplerPluginError`` catches what it caught.
"""


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this run.

    The file is missing or unreadable, truncated, corrupted, not a stochdepth
    checkpoint, written by an incompatible version of the format, or saved from
    another model shape, other data, another sampler or other training arguments.
    The message is one line and names the file and the problem. A run that raises it
    has not written to the file.

    Args:
        path: The checkpoint's path.
        problem: What is wrong, to follow ``checkpoint 'PATH'`` in the message.

    Attributes:
        path: The checkpoint's path, as given.
        problem: What is wrong with it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = " ".join(problem.split())  # one line
        super().__init__(f"checkpoint '{self.path}' {self.problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.problem), self.__dict__


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or an infinity: in the loss, or in the state to save.

    :func:`~stochdepth.train` raises it at the first point where it reads the losses
    back (a log line, a checkpoint, the progress bar, every 100 steps and the end of
    the run), so it may come up to 99 steps after the step it names. A checkpoint is
    never written with a non-finite loss in its history, or with non-finite
    parameters or optimizer state: the last good checkpoint stays on disk.

    Args:
        message: The error message.
        step: The index of the step whose loss was not finite, or whose update made
            the state non-finite.
        loss: That step's loss (``nan``, ``inf`` or ``-inf`` when the loss is what
            went wrong).

    Attributes:
        step: The index of the step that went wrong.
        loss: That step's loss.
    """

    def __init__(self, message: str, *, step: int, loss: float) -> None:
        super().__init__(message)
        self.step = step
        self.loss = loss

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_non_finite, (type(self), *self.args, self.step, self.loss), self.__dict__


def _rebuild_non_finite(
    kind: type[NonFiniteError], message: str, step: int, loss: float
) -> NonFiniteError:
    return kind(message, step=step, loss=loss)


class DepthMismatchError(RuntimeError):
    """Ranks of a distributed run drew different depths for the same step.

    DDP needs every rank to run the same graph: with different depths it hangs in a
    collective or trains replicas that drift apart. The message names each rank and
    the depths it drew, and how to make the ranks agree.

    Args:
        message: The error message.
        depths: Every rank's depths, indexed by rank: one int per
            :class:`~stochdepth.RepeatedBlock` of the model (``-1`` for a block that
            has not run yet, ``-2`` for one that draws a depth per row, whose rows
            differ from rank to rank and are not compared).
        step: The training step, or ``None`` when the caller did not say.

    Attributes:
        depths: Every rank's depths, as given.
        step: The training step, or ``None``.
    """

    def __init__(self, message: str, depths: Sequence[Sequence[int]], step: int | None) -> None:
        super().__init__(message)
        self.depths = [list(rank_depths) for rank_depths in depths]
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (*self.args, self.depths, self.step), self.__dict__
