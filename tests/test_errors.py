"""Every public exception pickles and unpickles with its message, arguments and notes."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

import stochdepth

# How to build every public exception, as stochdepth builds it.
EXAMPLES: dict[str, Callable[[], BaseException]] = {
    "CheckpointError": lambda: stochdepth.CheckpointError("run.ckpt", "is truncated:\n  12 bytes"),
    "DepthMismatchError": lambda: stochdepth.DepthMismatchError("differ", [[1, 2], [1, 3]], 7),
    "NonFiniteError": lambda: stochdepth.NonFiniteError("loss is inf", step=3, loss=float("inf")),
    "PluginError": lambda: stochdepth.PluginError("sampler 'x' comes from the plugin ..."),
    "PluginWarning": lambda: stochdepth.PluginWarning("sampler plugin ... is left out"),
    "UnknownPluginError": lambda: stochdepth.UnknownPluginError("unknown drop rule 'y'"),
}


def test_every_public_exception_has_an_example() -> None:
    public = {
        name
        for name in stochdepth.__all__
        if isinstance(getattr(stochdepth, name), type)
        and issubclass(getattr(stochdepth, name), BaseException)
    }
    assert public == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_public_exception_survives_pickling(name: str) -> None:
    error = EXAMPLES[name]()
    error.add_note("raised on rank 1")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    assert vars(copy) == vars(error)  # the attributes and notes
    assert copy.__notes__ == ["raised on rank 1"]


def test_the_attributes_come_back() -> None:
    checkpoint = pickle.loads(pickle.dumps(EXAMPLES["CheckpointError"]()))
    assert isinstance(checkpoint, stochdepth.CheckpointError)
    assert (checkpoint.path, checkpoint.problem) == ("run.ckpt", "is truncated: 12 bytes")
    assert str(checkpoint) == "checkpoint 'run.ckpt' is truncated: 12 bytes"
    finite = pickle.loads(pickle.dumps(EXAMPLES["NonFiniteError"]()))
    assert isinstance(finite, stochdepth.NonFiniteError)
    assert (finite.step, finite.loss) == (3, float("inf"))
    mismatch = pickle.loads(pickle.dumps(EXAMPLES["DepthMismatchError"]()))
    assert isinstance(mismatch, stochdepth.DepthMismatchError)
    assert (mismatch.depths, mismatch.step) == ([[1, 2], [1, 3]], 7)
