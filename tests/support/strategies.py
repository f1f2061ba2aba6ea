"""Hypothesis strategies shared by the test modules, and the seeded-layer helper.

Every strategy stays inside the bounds the code it feeds enforces: depths within
``[0, 2**53]`` (``MAX_SAMPLER_DEPTH``), seeds within ``[0, 2**64 - 1]``, probabilities
within what each sampler takes. The sampler strategies are composed from the
registry's table of built-ins: each built-in's parameters are drawn by the entry of
``SAMPLER_PARAMETERS`` under its name, and a built-in without one fails at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from stochdepth import DepthSampler
from stochdepth.samplers._generator import MAX_SEED
from stochdepth.samplers._registry import BUILTIN_SAMPLERS

MAX_DEPTH = 6

depths = st.integers(min_value=0, max_value=MAX_DEPTH)
seeds = st.integers(min_value=0, max_value=MAX_SEED)
features = st.integers(min_value=1, max_value=8)
batch_sizes = st.integers(min_value=1, max_value=5)
leading_dims = st.lists(st.integers(min_value=1, max_value=3), max_size=2).map(tuple)


@st.composite
def bounds(draw: st.DrawFn, max_value: int = MAX_DEPTH) -> tuple[int, int]:
    """An inclusive depth range ``(low, high)`` with ``0 <= low <= high``."""
    low = draw(st.integers(min_value=0, max_value=max_value))
    high = draw(st.integers(min_value=low, max_value=max_value))
    return low, high


Parameters = Callable[[int, int], st.SearchStrategy[dict[str, Any]]]
"""Given bounds ``(low, high)``, the keyword arguments of one built-in sampler."""

SAMPLER_PARAMETERS: dict[str, Parameters] = {
    "uniform": lambda low, high: st.just({"low": low, "high": high}),
    "fixed": lambda low, high: st.fixed_dictionaries({"depth": st.sampled_from([low, high])}),
    "seeded": lambda low, high: st.fixed_dictionaries(
        {"low": st.just(low), "high": st.just(high), "seed": seeds}
    ),
    "bernoulli": lambda low, high: st.fixed_dictionaries(
        {"max_depth": st.just(high), "p": st.floats(0.0, 1.0), "seed": seeds}
    ),
    "geometric": lambda low, high: st.fixed_dictionaries(
        {"p": st.floats(0.05, 1.0), "max_depth": st.just(high), "seed": seeds}
    ),
    # Depths 1..max_depth: a max_depth of at least 1, within the bound when it allows.
    "lognormal_poisson": lambda low, high: st.fixed_dictionaries(
        {
            "mean": st.floats(0.05, 20.0),
            "sigma": st.floats(0.0, 1.5),
            "max_depth": st.just(max(high, 1)),
            "seed": seeds,
        }
    ),
    # A fresh schedule, at step 0 like every other sampler here before its first draw.
    "scheduled": lambda low, high: st.fixed_dictionaries(
        {
            "start": st.just(high),
            "end": st.just(low),
            "steps": st.integers(0, 20),
            "low": st.just(low),
            "seed": seeds,
        }
    ),
}
if set(SAMPLER_PARAMETERS) != set(BUILTIN_SAMPLERS):
    raise AssertionError(
        f"strategies.SAMPLER_PARAMETERS covers {sorted(SAMPLER_PARAMETERS)}, but the "
        f"built-in samplers are {sorted(BUILTIN_SAMPLERS)}"
    )


@st.composite
def samplers(
    draw: st.DrawFn,
    names: tuple[str, ...] = tuple(sorted(BUILTIN_SAMPLERS)),
    max_value: int = MAX_DEPTH,
) -> DepthSampler:
    """One of the built-in samplers ``names``, with drawn bounds up to ``max_value``."""
    low, high = draw(bounds(max_value=max_value))
    name = draw(st.sampled_from(names))
    return BUILTIN_SAMPLERS[name](**draw(SAMPLER_PARAMETERS[name](low, high)))


LAYERS: dict[str, Callable[[int], nn.Module]] = {
    "linear-relu": lambda n: nn.Sequential(nn.Linear(n, n), nn.ReLU()),
    "linear-tanh": lambda n: nn.Sequential(nn.Linear(n, n), nn.Tanh()),
    "linear": lambda n: nn.Linear(n, n),
    "layernorm-linear": lambda n: nn.Sequential(nn.LayerNorm(n), nn.Linear(n, n, bias=False)),
}


def make_layer(name: str, n: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build ``LAYERS[name](n)`` with weights from ``seed``, leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LAYERS[name](n).to(dtype)


@st.composite
def layers(draw: st.DrawFn, n: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A shape-preserving layer on ``n`` features, its weights seeded by Hypothesis."""
    name = draw(st.sampled_from(sorted(LAYERS)))
    return make_layer(name, n, draw(st.integers(min_value=0, max_value=2**32 - 1)), dtype)


layer_names = st.sampled_from(sorted(LAYERS))
"""A key of ``LAYERS``."""


@st.composite
def inputs(draw: st.DrawFn, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A standard-normal tensor of shape ``(*leading, batch, n)``, seeded by Hypothesis."""
    shape = (*draw(leading_dims), draw(batch_sizes), n)
    generator = torch.Generator().manual_seed(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    return torch.randn(shape, generator=generator, dtype=dtype)


def wide_samplers(max_value: int = 10**6) -> st.SearchStrategy[DepthSampler]:
    """The samplers without a law to draw by (uniform, fixed, seeded), with wide bounds."""
    return samplers(names=("fixed", "seeded", "uniform"), max_value=max_value)


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


_leaf_tensors = st.sampled_from([torch.uint8, torch.int64, torch.float32, torch.bool]).flatmap(
    lambda dtype: st.lists(st.integers(0, 1 if dtype == torch.bool else 200), max_size=6).map(
        lambda values: torch.tensor(values, dtype=dtype)
    )
)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**127), max_value=2**127 - 1),  # what 16 bytes hold
    st.floats(allow_nan=False),
    st.text(max_size=8),
    _leaf_tensors,
)
extra_states = st.dictionaries(
    st.one_of(st.text(max_size=6), st.integers(-5, 5)),
    st.recursive(
        _leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(st.text(max_size=4), children, max_size=3),
        ),
        max_leaves=8,
    ),
    max_size=4,
)
"""A module extra state: what ``stochdepth._extra_state.encode_state`` takes."""


@st.composite
def token_depths(draw: st.DrawFn, max_depth: int = MAX_DEPTH) -> torch.Tensor:
    """A ``(batch, seq)`` int64 tensor of per-position depths in ``[0, max_depth]``."""
    batch = draw(st.integers(min_value=1, max_value=3))
    seq = draw(st.integers(min_value=1, max_value=5))
    values = draw(
        st.lists(
            st.integers(min_value=0, max_value=max_depth),
            min_size=batch * seq,
            max_size=batch * seq,
        )
    )
    return torch.tensor(values, dtype=torch.int64).view(batch, seq)


@st.composite
def recursify_cases(draw: st.DrawFn) -> dict[str, Any]:
    """A stack, a core and a block_size that divides it, an init, and a width (recursify).

    ``core`` holds 1 to 6 layers, with 0 to 2 layers before it and after it; ``init`` is
    ``"average"``, ``"first"`` or a group index within the core's groups.
    """
    block_size = draw(st.integers(min_value=1, max_value=3))
    repeats = draw(st.integers(min_value=1, max_value=6 // block_size))
    before = draw(st.integers(min_value=0, max_value=2))
    after = draw(st.integers(min_value=0, max_value=2))
    init = draw(st.one_of(st.sampled_from(["average", "first"]), st.integers(0, repeats - 1)))
    return {
        "count": before + block_size * repeats + after,
        "core": slice(before, before + block_size * repeats),
        "block_size": block_size,
        "init": init,
        "width": draw(st.integers(min_value=1, max_value=6)),
        "seed": draw(st.integers(min_value=0, max_value=2**31 - 1)),
    }
