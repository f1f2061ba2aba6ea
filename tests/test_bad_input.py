"""Bad input, tried systematically: every entry point, one argument made bad at a time.

Each test starts from arguments that work, replaces one of them with a value drawn
from a pool of bad (and some good) values, and checks the law of the suite: the call
either works correctly (a sampler draws within its bounds, a forward pass returns
what applying the layer by hand returns, training returns one record per step) or
raises ``TypeError`` or ``ValueError`` (``LookupError`` for an unknown sampler name,
:class:`~stochdepth.NonFiniteError` for a diverging run) whose one-line message names
the argument. Nothing returns a wrong tensor; nothing hangs (depths and steps are
bounded: see ``depth_limit``).
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from stochdepth import (
    BernoulliDepth,
    DynamicNet,
    FixedDepth,
    GeometricDepth,
    NonFiniteError,
    RepeatedBlock,
    ScheduledDepth,
    SeededDepth,
    UniformDepth,
    get_sampler,
    train,
)
from stochdepth._cli import main
from stochdepth.samplers._registry import BUILTIN_SAMPLERS

T = TypeVar("T")
HUGE = 10**9  # a depth far above any depth_limit

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),  # NaN and the infinities included
    st.complex_numbers(max_magnitude=10),
    st.text(max_size=4),
    st.binary(max_size=3),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
    st.just(torch.tensor(2)),
)
"""Values of the wrong type for every argument (some, like ``tensor(2)``, subtle)."""

ints = st.one_of(
    st.sampled_from([-1, 0, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30]),
    st.integers(-5, 12),
    st.integers(-(2**70), 2**70),
)
"""Integers that may be negative, reversed against another bound, or absurdly large."""

probabilities = st.one_of(
    st.floats(-2, 2),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0, 1e-300, 1 - 1e-16]),
)


def attempt(
    call: Callable[[], T], *errors: type[BaseException]
) -> tuple[T | None, BaseException | None]:
    """Return ``(result, None)``, or ``(None, error)`` if ``call`` raised one of ``errors``."""
    try:
        return call(), None
    except errors as error:
        return None, error


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message
    assert "\n" not in message, message
    return message


# --- samplers ---------------------------------------------------------------------------

SAMPLERS: dict[type, dict[str, Any]] = {
    UniformDepth: {"low": 0, "high": 3},
    FixedDepth: {"depth": 2},
    SeededDepth: {"low": 0, "high": 3, "seed": 0},
    BernoulliDepth: {"max_depth": 4, "p": 0.5, "seed": 0},
    GeometricDepth: {"p": 0.5, "max_depth": 4, "seed": 0},
    ScheduledDepth: {"start": 1, "end": 4, "steps": 10, "low": 0, "seed": 0},
}
PROBABILITY_PARAMETERS = {"p"}


def assert_draws_within_bounds(sampler: Any) -> None:
    low, high = sampler.min_depth, sampler.max_depth
    assert type(low) is int
    assert type(high) is int
    assert 0 <= low <= high
    for _ in range(3):
        depth = sampler.sample()
        assert type(depth) is int
        assert low <= depth <= high


SAMPLER_PARAMETERS = [
    pytest.param(kind, name, id=f"{kind.__name__}-{name}")
    for kind, kwargs in SAMPLERS.items()
    for name in [*kwargs, *(["generator"] if "seed" in kwargs else [])]
]


@pytest.mark.parametrize(("kind", "name"), SAMPLER_PARAMETERS)
@given(data=st.data())
def test_sampler_constructors(kind: type, name: str, data: st.DataObject) -> None:
    kwargs = dict(SAMPLERS[kind])
    if name == "generator":
        kwargs.pop("seed")
        value = data.draw(st.one_of(junk, st.just(torch.Generator())), label=name)
    elif name in PROBABILITY_PARAMETERS:
        value = data.draw(st.one_of(junk, probabilities), label=name)
    else:
        value = data.draw(st.one_of(junk, ints), label=name)
    kwargs[name] = value
    sampler, error = attempt(lambda: kind(**kwargs), TypeError, ValueError)
    if error is not None:
        assert name in one_line(error), (name, error)
    else:
        assert_draws_within_bounds(sampler)


@given(
    name=st.one_of(
        st.sampled_from(list(BUILTIN_SAMPLERS)),
        st.text(max_size=6),
    ),
    params=st.dictionaries(
        st.sampled_from(
            [
                *("low", "high", "depth", "seed", "p", "max_depth", "start", "end", "steps"),
                *("mean", "sigma", "x"),
            ]
        ),
        st.one_of(
            ints.map(str),
            probabilities.map(repr),
            st.sampled_from(["nan", "inf", "-inf", "true", "false", "", "abc", "1e3", "0x10"]),
        ),
        max_size=4,
    ),
    separator=st.sampled_from([",", ";", ",,"]),
)
def test_sampler_specs(name: str, params: dict[str, str], separator: str) -> None:
    spec = name + (":" + separator.join(f"{k}={v}" for k, v in params.items()) if params else "")
    sampler, error = attempt(lambda: get_sampler(spec), LookupError, TypeError, ValueError)
    if error is not None:
        message = one_line(error)
        # it names the sampler, or quotes the spec when the spec itself is malformed
        assert repr(name.strip()) in message or repr(spec) in message, (spec, message)
    else:
        assert_draws_within_bounds(sampler)


@given(spec=st.one_of(st.text(max_size=12), st.sampled_from(["uniform:high=100000"])))
def test_sampler_specs_on_the_command_line(spec: str) -> None:
    out_buffer, err_buffer = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out_buffer), contextlib.redirect_stderr(err_buffer):
        try:
            status: object = main(["train", "--steps", "0", "--no-summary", "--sampler", spec])
        except SystemExit as exit_:
            status = exit_.code
    out, err = out_buffer.getvalue(), err_buffer.getvalue()
    if status == 0:
        assert err == ""
    else:
        assert status == 2
        assert err.count("\n") == 1
        assert "--sampler" in err
    assert out == ""


class Bounds:
    """A hand-written sampler whose members are given."""

    def __init__(self, low: Any, high: Any, draw: Any = 0) -> None:
        self.min_depth, self.max_depth, self.draw = low, high, draw

    def sample(self) -> Any:
        return self.draw

    def __repr__(self) -> str:
        return f"Bounds({self.min_depth!r}, {self.max_depth!r}, {self.draw!r})"


bad_samplers = st.one_of(
    junk,
    st.sampled_from([UniformDepth, SeededDepth]),  # classes, not instances
    st.builds(Bounds, st.one_of(ints, junk), st.one_of(ints, junk)),
    st.builds(lambda high: UniformDepth(0, high), st.integers(10_001, 2**53)),
)


# --- RepeatedBlock ----------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["layer", "sampler", "eval_depth", "depth_limit"])
@given(data=st.data())
def test_block_constructor(argument: str, data: st.DataObject) -> None:
    kwargs: dict[str, Any] = {
        "layer": nn.Linear(3, 3),
        "sampler": FixedDepth(2),
        "eval_depth": "max",
        "depth_limit": 10,
    }
    kwargs[argument] = data.draw(
        {
            "layer": st.one_of(junk, st.just(nn.Linear)),
            "sampler": bad_samplers,
            "eval_depth": st.one_of(junk, ints, st.sampled_from(["max", "mean", "MAX", ""])),
            "depth_limit": st.one_of(junk, ints),
        }[argument],
        label=argument,
    )
    block, error = attempt(lambda: RepeatedBlock(**kwargs), TypeError, ValueError)
    if error is not None:
        assert argument in one_line(error), (argument, error)
    else:
        assert block is not None
        x = torch.randn(2, 3)
        assert torch.equal(block.eval()(x), manual(block.layer, x, block.last_depth))


def manual(layer: nn.Module, x: torch.Tensor, depth: int | None) -> torch.Tensor:
    assert depth is not None
    for _ in range(depth):
        x = layer(x)
    return x


@given(
    x=st.one_of(
        junk,
        st.builds(
            lambda shape: torch.randn(shape),
            st.lists(st.integers(0, 4), max_size=3).map(tuple),
        ),
    ),
    depth=st.one_of(st.none(), junk, ints, st.just(HUGE)),
    draw=st.one_of(st.integers(-2, 6), junk),
)
def test_block_forward(x: Any, depth: Any, draw: Any) -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    block = RepeatedBlock(layer, Bounds(0, 4, draw), depth_limit=100)
    with torch.no_grad():
        out, error = attempt(lambda: block(x, depth=depth), TypeError, ValueError, RuntimeError)
    if isinstance(error, RuntimeError):
        # An input the layer cannot take: the layer's own error, unchanged (the block
        # cannot know what its layer takes), naming the shapes involved.
        assert isinstance(x, torch.Tensor)
        assert x.shape[-1:] != (4,)
        assert re.search(r"cannot be multiplied|at least 1D", str(error)), error
    elif error is not None:
        message = one_line(error)
        assert any(word in message for word in ("x must", "depth", "sampler", "shape")), message
    else:
        used = draw if depth is None else depth
        assert block.last_depth == used
        with torch.no_grad():
            assert torch.equal(out, manual(layer, x, used))


def test_a_huge_depth_fails_at_once_instead_of_running_for_hours() -> None:
    block = RepeatedBlock(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"depth must be <= the block's depth_limit=10000"):
        block(torch.randn(1, 2), depth=10**9)
    with pytest.raises(ValueError, match=r"sampler\.max_depth must be <= depth_limit=10000"):
        RepeatedBlock(nn.Linear(2, 2), UniformDepth(0, 10**9))
    deep = RepeatedBlock(nn.Linear(2, 2), UniformDepth(0, 10**5), depth_limit=10**5)
    assert deep(torch.randn(1, 2), depth=20_000).shape == (1, 2)
    assert "depth_limit=100000" in repr(deep)


@pytest.mark.parametrize("width", [3, 5])
def test_a_layer_that_changes_the_shape_is_an_error_naming_both_shapes(width: int) -> None:
    block = RepeatedBlock(nn.Linear(4, width), FixedDepth(2))
    with pytest.raises(ValueError, match=rf"\(2, 4\) into \(2, {width}\) at repeat 1 of 2"):
        block(torch.randn(2, 4))
    assert torch.equal(block(x := torch.randn(2, 4), depth=0), x)


# --- DynamicNet -------------------------------------------------------------------------


@pytest.mark.parametrize("argument", ["D_in", "H", "D_out", "sampler", "eval_depth", "depth_limit"])
@given(data=st.data())
def test_model_constructor(argument: str, data: st.DataObject) -> None:
    kwargs: dict[str, Any] = {"D_in": 3, "H": 4, "D_out": 2, "sampler": None}
    small_ints = st.integers(-(2**70), 6)  # no huge sizes: they would allocate
    kwargs[argument] = data.draw(
        {
            "D_in": st.one_of(junk, small_ints),
            "H": st.one_of(junk, small_ints),
            "D_out": st.one_of(junk, small_ints),
            "sampler": bad_samplers,
            "eval_depth": st.one_of(junk, ints),
            "depth_limit": st.one_of(junk, ints),
        }[argument],
        label=argument,
    )
    model, error = attempt(lambda: DynamicNet(**kwargs), TypeError, ValueError)
    if error is not None:
        assert argument in one_line(error), (argument, error)
    else:
        assert model is not None
        out = model.eval()(torch.randn(5, model.input_linear.in_features))
        assert out.shape == (5, model.output_linear.out_features)


@given(
    shape=st.lists(st.integers(0, 4), max_size=3).map(tuple),
    depth=st.one_of(st.none(), ints, st.just(HUGE)),
)
def test_model_forward(shape: tuple[int, ...], depth: int | None) -> None:
    torch.manual_seed(0)
    model = DynamicNet(4, 3, 2, FixedDepth(1), depth_limit=50)
    x = torch.randn(shape)
    try:
        with torch.no_grad():
            out = model(x, depth=depth)
    except (TypeError, ValueError) as error:
        message = one_line(error)
        assert ("D_in=4" in message and str(tuple(shape)) in message) or "depth" in message
    else:
        assert shape[-1:] == (4,)
        assert out.shape == (*shape[:-1], 2)
        with torch.no_grad():
            hidden = manual(
                model.middle.layer, model.input_linear(x).relu(), model.middle.last_depth
            )
            assert torch.equal(out, model.output_linear(hidden))


def test_an_empty_batch_works() -> None:
    model = DynamicNet(4, 3, 2, FixedDepth(2))
    assert model(torch.randn(0, 4)).shape == (0, 2)
    history = train(model, torch.randn(0, 4), torch.randn(0, 2), steps=3, log_every=None)
    assert [record.loss for record in history] == [0.0, 0.0, 0.0]


# --- train ------------------------------------------------------------------------------

TRAIN_ARGUMENTS = {
    "model": st.one_of(junk, st.just(nn.Linear)),
    "x": st.one_of(junk, st.builds(torch.randn, st.integers(0, 3), st.integers(1, 5))),
    "y": st.one_of(junk, st.builds(torch.randn, st.integers(0, 3), st.integers(1, 3))),
    "steps": st.one_of(junk, st.integers(-(2**70), 5)),
    "lr": st.one_of(junk, st.floats(), st.sampled_from([1e39, 1e308, 1e-320])),
    "momentum": st.one_of(junk, st.floats()),
    "log_every": st.one_of(junk, ints),
    "sampler": bad_samplers,
    "progress": junk,
    "file": junk,
    "summary": junk,
    "checkpoint": st.one_of(junk.filter(lambda v: not isinstance(v, str)), st.just("")),
    "checkpoint_every": st.one_of(junk, ints),
    "resume": junk,
}


@pytest.mark.parametrize("argument", sorted(TRAIN_ARGUMENTS))
@given(data=st.data())
def test_train_arguments(argument: str, data: st.DataObject) -> None:
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {
        "model": DynamicNet(3, 4, 2, FixedDepth(1)),
        "x": torch.randn(3, 3),
        "y": torch.randn(3, 2),
        "steps": 3,
        "log_every": 1,
        "file": io.StringIO(),
    }
    value = data.draw(TRAIN_ARGUMENTS[argument], label=argument)
    assume(not (argument == "progress" and value is True))  # a bar on stderr: tested elsewhere
    kwargs[argument] = value
    try:
        history = train(**kwargs)
    except NonFiniteError:
        assert argument in ("lr", "momentum")
    except (TypeError, ValueError) as error:
        message = one_line(error)
        named = {"model": "model", "x": "x", "y": "y"}.get(argument, argument)
        assert named in message or "shape of y" in message, (argument, message)
    else:
        assert [record.step for record in history] == list(range(kwargs["steps"]))
        assert all(math.isfinite(record.loss) for record in history)
