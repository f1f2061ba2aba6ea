"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import strategies as st
from torch import nn

from stochdepth import (
    BernoulliDepth,
    DepthSampler,
    FixedDepth,
    GeometricDepth,
    ScheduledDepth,
    SeededDepth,
    UniformDepth,
)

MAX_DEPTH = 6

depths = st.integers(min_value=0, max_value=MAX_DEPTH)
seeds = st.integers(min_value=0, max_value=2**64 - 1)
features = st.integers(min_value=1, max_value=8)
batch_sizes = st.integers(min_value=1, max_value=5)
leading_dims = st.lists(st.integers(min_value=1, max_value=3), max_size=2).map(tuple)


@st.composite
def bounds(draw: st.DrawFn, max_value: int = MAX_DEPTH) -> tuple[int, int]:
    """An inclusive depth range ``(low, high)`` with ``0 <= low <= high``."""
    low = draw(st.integers(min_value=0, max_value=max_value))
    high = draw(st.integers(min_value=low, max_value=max_value))
    return low, high


@st.composite
def samplers(draw: st.DrawFn) -> DepthSampler:
    """One of the built-in samplers, with drawn bounds."""
    low, high = draw(bounds())
    kind = draw(
        st.sampled_from(["uniform", "fixed", "seeded", "bernoulli", "geometric", "scheduled"])
    )
    if kind == "uniform":
        return UniformDepth(low, high)
    if kind == "fixed":
        return FixedDepth(high)
    if kind == "seeded":
        return SeededDepth(low, high, seed=draw(seeds))
    if kind == "bernoulli":
        return BernoulliDepth(high, draw(st.floats(0.0, 1.0)), seed=draw(seeds))
    if kind == "geometric":
        return GeometricDepth(draw(st.floats(0.05, 1.0)), high, seed=draw(seeds))
    # A fresh schedule, at step 0 like every other sampler here before its first draw.
    return ScheduledDepth(high, low, draw(st.integers(0, 20)), low=low, seed=draw(seeds))


LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "linear-relu": lambda n: nn.Sequential(nn.Linear(n, n), nn.ReLU()),
    "linear-tanh": lambda n: nn.Sequential(nn.Linear(n, n), nn.Tanh()),
    "linear": lambda n: nn.Linear(n, n),
    "layernorm-linear": lambda n: nn.Sequential(nn.LayerNorm(n), nn.Linear(n, n, bias=False)),
}


@st.composite
def layers(draw: st.DrawFn, n: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A shape-preserving layer on ``n`` features, its weights seeded by Hypothesis."""
    make = LAYERS[draw(st.sampled_from(sorted(LAYERS)))]
    torch.manual_seed(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    return make(n).to(dtype)


layer_names = st.sampled_from(sorted(LAYERS))
"""A key of ``LAYERS``."""


@st.composite
def inputs(draw: st.DrawFn, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A standard-normal tensor of shape ``(*leading, batch, n)``, seeded by Hypothesis."""
    shape = (*draw(leading_dims), draw(batch_sizes), n)
    generator = torch.Generator().manual_seed(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    return torch.randn(shape, generator=generator, dtype=dtype)


@st.composite
def wide_samplers(draw: st.DrawFn, max_value: int = 10**6) -> DepthSampler:
    """One of the built-in samplers, with bounds drawn from a wide range."""
    low, high = draw(bounds(max_value=max_value))
    kind = draw(st.sampled_from(["uniform", "fixed", "seeded"]))
    if kind == "uniform":
        return UniformDepth(low, high)
    if kind == "fixed":
        return FixedDepth(draw(st.sampled_from([low, high])))
    return SeededDepth(low, high, seed=draw(seeds))


non_ints = st.one_of(
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)
"""Values that are not integers (bools included), so a bound, depth or seed rejects them."""

spaces = st.sampled_from(["", " ", "  ", "\t"])
"""Whitespace a sampler spec tolerates around its name, keys and values."""

spec_words = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,7}", fullmatch=True).filter(
    lambda word: word.lower() not in {"true", "false", "inf", "nan", "infinity"}
)
"""Spec values that are neither a number nor a bool, so they stay strings."""
