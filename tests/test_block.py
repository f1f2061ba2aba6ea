"""Tests of `stochdepth.RepeatedBlock`: laws as Hypothesis properties, errors as plain tests."""

from __future__ import annotations

import copy
import io
import pickle
import random
import re
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import (
    DepthSampler,
    DynamicNet,
    FixedDepth,
    RepeatedBlock,
    SeededDepth,
    UniformDepth,
)
from stochdepth._extra_state import decode_state

from support.fakes import CountingSampler, ModuleSampler, ScriptedSampler
from support.strategies import (
    LAYERS,
    MAX_DEPTH,
    batch_sizes,
    bounds,
    depths,
    features,
    inputs,
    layer_names,
    layers,
    leading_dims,
    make_layer,
    samplers,
    seeds,
)

torch_seeds = st.integers(min_value=0, max_value=2**32 - 1)
draw_counts = st.integers(min_value=0, max_value=12)


# --------------------------------------------------------------------------- helpers


def by_hand(layer: nn.Module, x: Tensor, times: int) -> Tensor:
    """``layer`` applied ``times`` times, written out as the article does."""
    for _ in range(times):
        x = layer(x)
    return x


def draw_depths(block: RepeatedBlock, x: Tensor, count: int) -> list[int | None]:
    """Run ``count`` forward passes without an explicit depth; return the depths used."""
    used = []
    for _ in range(count):
        block(x)
        used.append(block.last_depth)
    return used


def same_state(a: object, b: object) -> bool:
    """Whether two (nested) states hold the same keys and exactly equal values."""
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and list(a) == list(b)
            and all(same_state(a[key], b[key]) for key in a)
        )
    return type(a) is type(b) and a == b


def same_params(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold exactly equal parameters and buffers, under the same names."""
    state_a, state_b = a.state_dict(), b.state_dict()
    return list(state_a) == list(state_b) and all(
        same_state(value, state_b[key])
        for key, value in state_a.items()
        if not key.endswith("_extra_state")
    )


class MyInt(int):
    """An integral type that is not exactly ``int``."""


class TupleLayer(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(LAYERS))
@given(n=features, lead=leading_dims, batch=batch_sizes, depth=depths, seed=torch_seeds)
def test_output_shape_equals_input_shape_with_explicit_depth(
    name: str, n: int, lead: tuple[int, ...], batch: int, depth: int, seed: int
) -> None:
    block = RepeatedBlock(make_layer(name, n, seed))
    x = torch.randn(*lead, batch, n)
    for mode in (block.train, block.eval):
        mode()
        assert block(x, depth=depth).shape == x.shape
        assert block.last_depth == depth


@pytest.mark.parametrize("name", sorted(LAYERS))
@given(n=features, lead=leading_dims, batch=batch_sizes, depth=depths, seed=torch_seeds)
def test_output_shape_equals_input_shape_with_fixed_depth(
    name: str, n: int, lead: tuple[int, ...], batch: int, depth: int, seed: int
) -> None:
    block = RepeatedBlock(make_layer(name, n, seed), FixedDepth(depth))
    x = torch.randn(*lead, batch, n)
    for mode in (block.train, block.eval):
        mode()
        assert block(x).shape == x.shape
        assert block.last_depth == depth


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(LAYERS))
@given(data=st.data(), n=features, depth=depths, seed=torch_seeds)
def test_fixed_and_explicit_depth_equal_hand_written_repeats(
    name: str, data: st.DataObject, n: int, depth: int, seed: int
) -> None:
    x = data.draw(inputs(n))
    layer = make_layer(name, n, seed)
    expected = by_hand(layer, x, depth)
    fixed = RepeatedBlock(layer, FixedDepth(depth))
    assert torch.equal(fixed(x), expected)
    explicit = RepeatedBlock(layer, UniformDepth(0, 0))
    assert torch.equal(explicit(x, depth=depth), expected)
    explicit.eval()
    assert torch.equal(explicit(x, depth=depth), expected)


@pytest.mark.parametrize("training", [True, False])
def test_the_inline_pass_equals_the_strategy_path_and_runs_the_layers_module_hooks(
    training: bool,
) -> None:
    """The common pass runs inline in forward(); a repeat hook sends it through Skip."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    seen: list[str] = []
    layer.register_forward_pre_hook(lambda *_: seen.append("pre"))
    layer.register_forward_hook(lambda *_: seen.append("post"))
    block = RepeatedBlock(layer, UniformDepth(0, 3), eval_depth="sample").train(training)
    x = torch.randn(3, 4, requires_grad=True)

    def passes() -> list[tuple[Tensor, object]]:
        random.seed(5)
        return [(block(x), block.last_depth) for _ in range(8)]

    inline = passes()
    assert seen.count("pre") == seen.count("post") > 0
    handle = block.register_repeat_hook(lambda *_: None)
    stepped = passes()
    handle.remove()
    assert [depth for _, depth in inline] == [depth for _, depth in stepped]
    assert len({depth for _, depth in inline}) > 1
    for (got, _), (want, _) in zip(inline, stepped, strict=True):
        assert torch.equal(got, want)
        if got is not x:
            (grad_got,) = torch.autograd.grad(got.sum(), x)
            (grad_want,) = torch.autograd.grad(want.sum(), x)
            assert torch.equal(grad_got, grad_want)


@given(data=st.data(), n=features, sampler=samplers())
def test_depth_zero_returns_the_input_object(
    data: st.DataObject, n: int, sampler: DepthSampler
) -> None:
    x = data.draw(inputs(n))
    block = RepeatedBlock(data.draw(layers(n)), sampler, eval_depth=0)
    assert block(x, depth=0) is x
    assert RepeatedBlock(block.layer, FixedDepth(0))(x) is x
    block.eval()
    assert block(x) is x
    assert block(x, depth=0) is x


# --------------------------------------------------------------------------- gradients


@given(data=st.data(), n=features, depth=depths, name=layer_names, seed=torch_seeds)
def test_gradients_equal_those_of_hand_written_repeats(
    data: st.DataObject, n: int, depth: int, name: str, seed: int
) -> None:
    x = data.draw(inputs(n))
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    block = RepeatedBlock(make_layer(name, n, seed), FixedDepth(depth))
    reference = make_layer(name, n, seed)

    x_block = x.clone().requires_grad_()
    (block(x_block) * weight).sum().backward()
    x_ref = x.clone().requires_grad_()
    (by_hand(reference, x_ref, depth) * weight).sum().backward()

    assert x_block.grad is not None
    assert torch.equal(x_block.grad, x_ref.grad)
    if depth == 0:
        assert torch.equal(x_block.grad, weight)
    pairs = zip(block.layer.named_parameters(), reference.named_parameters(), strict=True)
    for (param_name, got), (_, want) in pairs:
        if depth == 0:
            assert got.grad is None, param_name
        else:
            assert got.grad is not None, param_name
            assert torch.equal(got.grad, want.grad), param_name


@given(
    n=st.integers(min_value=1, max_value=3),
    batch=st.integers(min_value=1, max_value=2),
    depth=st.integers(min_value=0, max_value=3),
    name=layer_names,
    seed=torch_seeds,
)
def test_gradcheck_float64_through_input_and_weights(
    n: int, batch: int, depth: int, name: str, seed: int
) -> None:
    block = RepeatedBlock(make_layer(name, n, seed, torch.float64))
    names = [param_name for param_name, _ in block.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in block.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dtype=torch.float64, generator=generator, requires_grad=True)

    def apply(x: Tensor, *weights: Tensor) -> Tensor:
        return torch.func.functional_call(
            block, dict(zip(names, weights, strict=True)), (x,), {"depth": depth}
        )

    assert torch.autograd.gradcheck(apply, (x, *params))


# --------------------------------------------------------------------------- parameters


@given(data=st.data(), n=features, sampler=samplers(), forward_depths=st.lists(depths))
def test_parameters_are_the_layers_whatever_the_depth(
    data: st.DataObject, n: int, sampler: DepthSampler, forward_depths: list[int]
) -> None:
    layer = data.draw(layers(n))
    block = RepeatedBlock(layer, sampler)
    layer_params = list(layer.parameters())
    layer_count = sum(p.numel() for p in layer_params)
    x = data.draw(inputs(n))
    for depth in [None, *forward_depths]:
        if depth is not None:
            block(x, depth=depth)
        params = list(block.parameters())
        assert len(params) == len(layer_params)
        assert all(a is b for a, b in zip(params, layer_params, strict=True))
        assert sum(p.numel() for p in params) == layer_count
        assert [k for k, _ in block.named_parameters()] == [
            f"layer.{k}" for k, _ in layer.named_parameters()
        ]
    for other_depth in (0, MAX_DEPTH):
        other = RepeatedBlock(copy.deepcopy(layer), FixedDepth(other_depth))
        assert sum(p.numel() for p in other.parameters()) == layer_count


# --------------------------------------------------------------------------- last_depth


@given(data=st.data(), n=features, sampler=samplers(), explicit=st.lists(depths, min_size=1))
def test_last_depth_is_none_then_the_depth_used(
    data: st.DataObject, n: int, sampler: DepthSampler, explicit: list[int]
) -> None:
    block = RepeatedBlock(data.draw(layers(n)), sampler)
    assert block.last_depth is None
    x = data.draw(inputs(n))
    for depth in explicit:
        block(x, depth=depth)
        assert block.last_depth == depth
        out = block(x)
        assert type(block.last_depth) is int
        assert sampler.min_depth <= block.last_depth <= sampler.max_depth
        assert torch.equal(out, by_hand(block.layer, x, block.last_depth))


@given(seed=st.integers(), bound=bounds(), count=draw_counts, n=features)
def test_uniform_depth_draws_follow_python_random(
    seed: int, bound: tuple[int, int], count: int, n: int
) -> None:
    low, high = bound
    block = RepeatedBlock(nn.Linear(n, n), UniformDepth(low, high))
    x = torch.randn(1, n)
    random.seed(seed)
    used = draw_depths(block, x, count)
    random.seed(seed)
    assert used == [random.randint(low, high) for _ in range(count)]


@given(seed=seeds, other=st.integers(), bound=bounds(), count=draw_counts, n=features)
def test_seeded_depth_draws_equal_another_seeded_depth_with_the_same_seed(
    seed: int, other: int, bound: tuple[int, int], count: int, n: int
) -> None:
    low, high = bound
    block = RepeatedBlock(nn.Linear(n, n), SeededDepth(low, high, seed=seed))
    twin = SeededDepth(low, high, seed=seed)
    x = torch.randn(1, n)
    used = []
    for step in range(count):
        # The global RNGs do not affect a SeededDepth's draws.
        random.seed(other + step)
        torch.manual_seed((other + step) % 2**32)
        block(x)
        used.append(block.last_depth)
    assert used == [twin.sample() for _ in range(count)]


# --------------------------------------------------------------------------- eval mode


@given(data=st.data(), n=features, bound=bounds(), seed=st.integers(), count=draw_counts)
def test_eval_max_is_deterministic_and_never_samples(
    data: st.DataObject, n: int, bound: tuple[int, int], seed: int, count: int
) -> None:
    sampler = CountingSampler(*bound, seed=seed)
    block = RepeatedBlock(data.draw(layers(n)), sampler)
    assert block.eval_depth == "max"
    x = data.draw(inputs(n))
    block.eval()
    expected = by_hand(block.layer, x, sampler.max_depth)
    for _ in range(count + 1):
        assert torch.equal(block(x), expected)
        assert block.last_depth == sampler.max_depth
    assert sampler.calls == 0
    block.train()
    block(x)
    assert sampler.calls == 1


@given(data=st.data(), n=features, bound=bounds(), eval_depth=depths, count=draw_counts)
def test_eval_depth_int_and_min_never_sample(
    data: st.DataObject, n: int, bound: tuple[int, int], eval_depth: int, count: int
) -> None:
    x = data.draw(inputs(n))
    layer = data.draw(layers(n))
    for policy, expected_depth in ((eval_depth, eval_depth), ("min", bound[0]), ("max", bound[1])):
        sampler = CountingSampler(*bound)
        block = RepeatedBlock(layer, sampler, eval_depth=policy).eval()
        expected = by_hand(layer, x, expected_depth)
        for _ in range(count + 1):
            assert torch.equal(block(x), expected)
            assert block.last_depth == expected_depth
        assert sampler.calls == 0


@given(data=st.data(), n=features, bound=bounds(), seed=st.integers(), count=draw_counts)
def test_eval_depth_sample_draws_from_the_sampler_in_eval_mode(
    data: st.DataObject, n: int, bound: tuple[int, int], seed: int, count: int
) -> None:
    sampler = CountingSampler(*bound, seed=seed)
    twin = CountingSampler(*bound, seed=seed)
    block = RepeatedBlock(data.draw(layers(n)), sampler, eval_depth="sample").eval()
    x = data.draw(inputs(n))
    for _ in range(count):
        out = block(x)
        expected_depth = twin.sample()
        assert block.last_depth == expected_depth
        assert torch.equal(out, by_hand(block.layer, x, expected_depth))
    assert sampler.calls == count


@given(
    data=st.data(),
    n=features,
    bound=bounds(),
    policy=st.one_of(depths, st.sampled_from(["max", "min", "sample"])),
    depth=st.integers(min_value=0, max_value=MAX_DEPTH + 3),
    training=st.booleans(),
)
def test_explicit_depth_overrides_sampler_and_eval_policy(
    data: st.DataObject,
    n: int,
    bound: tuple[int, int],
    policy: int | str,
    depth: int,
    training: bool,
) -> None:
    sampler = CountingSampler(*bound)
    block = RepeatedBlock(data.draw(layers(n)), sampler, eval_depth=policy).train(training)
    x = data.draw(inputs(n))
    assert torch.equal(block(x, depth=depth), by_hand(block.layer, x, depth))
    assert block.last_depth == depth
    assert sampler.calls == 0


# --------------------------------------------------------------------------- state_dict


@given(data=st.data(), n=features, name=layer_names, seeds_=st.tuples(torch_seeds, torch_seeds))
def test_state_dict_round_trip_gives_identical_outputs(
    data: st.DataObject, n: int, name: str, seeds_: tuple[int, int]
) -> None:
    sampler = data.draw(samplers())
    original = RepeatedBlock(make_layer(name, n, seeds_[0]), sampler)
    restored = RepeatedBlock(make_layer(name, n, seeds_[1]), copy.deepcopy(sampler))
    restored.load_state_dict(original.state_dict())
    assert same_state(dict(restored.state_dict()), dict(original.state_dict()))
    x = data.draw(inputs(n))
    for depth in data.draw(st.lists(depths, min_size=1, max_size=4)):
        assert torch.equal(restored(x, depth=depth), original(x, depth=depth))


@given(
    seed=seeds,
    other_seed=seeds,
    bound=bounds(),
    before=draw_counts,
    after=draw_counts,
    via_bytes=st.booleans(),
)
def test_seeded_depth_restored_block_continues_the_sequence(
    seed: int, other_seed: int, bound: tuple[int, int], before: int, after: int, via_bytes: bool
) -> None:
    n = 3
    x = torch.randn(2, n)
    original = RepeatedBlock(nn.Linear(n, n), SeededDepth(*bound, seed=seed))
    draw_depths(original, x, before)
    state = original.state_dict()
    if via_bytes:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    continuation = draw_depths(original, x, after)

    copy_ = RepeatedBlock(nn.Linear(n, n), SeededDepth(*bound, seed=other_seed))
    copy_.load_state_dict(state)
    assert isinstance(copy_.sampler, SeededDepth)
    assert copy_.sampler.seed == seed
    assert draw_depths(copy_, x, after) == continuation
    assert same_params(original, copy_)


@given(data=st.data(), n=features, name=layer_names, seed=torch_seeds)
def test_state_dict_survives_torch_save_and_weights_only_load(
    data: st.DataObject, n: int, name: str, seed: int
) -> None:
    sampler = data.draw(samplers())
    original = RepeatedBlock(make_layer(name, n, seed), sampler, eval_depth="min")
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    restored = RepeatedBlock(make_layer(name, n, seed + 1), copy.deepcopy(sampler))
    assert restored.load_state_dict(state) is not None
    assert same_params(original, restored)
    x = data.draw(inputs(n))
    depth = data.draw(depths)
    assert torch.equal(restored(x, depth=depth), original(x, depth=depth))


@pytest.mark.parametrize("wrap", [False, True], ids=["top-level", "nested"])
def test_state_without_extra_state_loads_strictly_for_a_stateless_sampler(wrap: bool) -> None:
    source = RepeatedBlock(nn.Linear(3, 3), UniformDepth(0, 2))
    target = RepeatedBlock(nn.Linear(3, 3), UniformDepth(0, 2))
    if wrap:
        source, target = nn.Sequential(source), nn.Sequential(target)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("_extra_state")}
    assert len(state) == 2
    result = target.load_state_dict(state, strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert same_params(source, target)


@pytest.mark.parametrize("wrap", [False, True], ids=["top-level", "nested"])
def test_state_without_extra_state_reports_the_missing_key_for_seeded_depth(wrap: bool) -> None:
    source = RepeatedBlock(nn.Linear(3, 3), UniformDepth(0, 2))
    target = RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 5, seed=1))
    twin = SeededDepth(0, 5, seed=1)
    key = "_extra_state"
    if wrap:
        source, target = nn.Sequential(source), nn.Sequential(target)
        key = "0._extra_state"
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match=re.escape(f'Missing key(s) in state_dict: "{key}"')):
        target.load_state_dict(state, strict=True)
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == [key]
    assert same_params(source, target)
    block = target[0] if isinstance(target, nn.Sequential) else target
    # The sampler keeps the state it had.
    assert draw_depths(block, torch.randn(1, 3), 10) == [twin.sample() for _ in range(10)]


def test_loading_seeded_state_into_a_stateless_sampler_raises() -> None:
    state = RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 3, seed=5)).state_dict()
    target = RepeatedBlock(nn.Linear(3, 3), UniformDepth(1, 2))
    with pytest.raises(
        ValueError, match=r"holds a sampler state.*UniformDepth\(low=1, high=2\) keeps none"
    ):
        target.load_state_dict(state)


# --------------------------------------------------------------------------- copies


@pytest.mark.parametrize(
    "duplicate",
    [copy.deepcopy, lambda block: pickle.loads(pickle.dumps(block))],
    ids=["deepcopy", "pickle"],
)
@given(seed=seeds, bound=bounds(), before=draw_counts, after=draw_counts)
def test_copy_continues_the_same_sequence_independently(
    duplicate: Callable[[RepeatedBlock], RepeatedBlock],
    seed: int,
    bound: tuple[int, int],
    before: int,
    after: int,
) -> None:
    x = torch.randn(2, 3)
    original = RepeatedBlock(nn.Linear(3, 3), SeededDepth(*bound, seed=seed))
    draw_depths(original, x, before)
    duplicate_ = duplicate(original)
    assert duplicate_.sampler is not original.sampler
    assert same_params(original, duplicate_)
    # The copy draws first: if it shared the generator, the original would be moved on.
    from_copy = draw_depths(duplicate_, x, after)
    from_original = draw_depths(original, x, after)
    assert from_copy == from_original
    assert draw_depths(duplicate_, x, after) == draw_depths(original, x, after)


@pytest.mark.parametrize(
    "duplicate",
    [copy.deepcopy, lambda block: pickle.loads(pickle.dumps(block))],
    ids=["deepcopy", "pickle"],
)
@given(data=st.data(), n=features, sampler=samplers(), policy=st.sampled_from(["max", "min", 2]))
def test_copy_of_any_block_has_the_same_repr_state_and_outputs(
    duplicate: Callable[[RepeatedBlock], RepeatedBlock],
    data: st.DataObject,
    n: int,
    sampler: DepthSampler,
    policy: int | str,
) -> None:
    original = RepeatedBlock(data.draw(layers(n)), sampler, eval_depth=policy)
    duplicate_ = duplicate(original)
    assert repr(duplicate_) == repr(original)
    assert same_state(dict(duplicate_.state_dict()), dict(original.state_dict()))
    assert all(
        a is not b for a, b in zip(duplicate_.parameters(), original.parameters(), strict=True)
    )
    x = data.draw(inputs(n))
    original.eval()
    duplicate_.eval()
    assert torch.equal(duplicate_(x), original(x))
    assert duplicate_.last_depth == original.last_depth


# --------------------------------------------------------------------------- repr


@given(
    n=features,
    sampler=samplers(),
    eval_depth=st.one_of(depths, st.sampled_from(["max", "min", "sample"])),
)
def test_repr_shows_sampler_eval_depth_and_layer(
    n: int, sampler: DepthSampler, eval_depth: int | str
) -> None:
    layer = nn.Sequential(nn.Linear(n, n), nn.ReLU())
    block = RepeatedBlock(layer, sampler, eval_depth=eval_depth)
    assert block.extra_repr() == f"sampler={sampler!r}, eval_depth={eval_depth!r}"
    text = repr(block)
    assert f"sampler={sampler!r}" in text
    assert f"eval_depth={eval_depth!r}" in text
    assert f"Linear(in_features={n}, out_features={n}, bias=True)" in text
    assert "(layer): Sequential(" in text


# --------------------------------------------------------------------------- custom samplers


@given(data=st.data(), n=features, depth=depths, extra=st.integers(min_value=0, max_value=3))
def test_a_protocol_only_sampler_works(data: st.DataObject, n: int, depth: int, extra: int) -> None:
    class Constant:  # no base class: only the three members of the protocol
        min_depth = depth
        max_depth = depth + extra

        def sample(self) -> int:
            return depth

    sampler = Constant()
    assert isinstance(sampler, DepthSampler)
    block = RepeatedBlock(data.draw(layers(n)), sampler)
    assert block.sampler is sampler
    x = data.draw(inputs(n))
    assert torch.equal(block(x), by_hand(block.layer, x, depth))
    assert block.last_depth == depth
    block.eval()
    assert torch.equal(block(x), by_hand(block.layer, x, depth + extra))
    assert decode_state(block.state_dict()["_extra_state"]) == {}


@given(data=st.data(), n=features, depth=st.integers(min_value=0, max_value=4))
def test_a_module_sampler_is_registered_as_a_child(data: st.DataObject, n: int, depth: int) -> None:
    layer = data.draw(layers(n))
    sampler = ModuleSampler(depth)
    block = RepeatedBlock(layer, sampler)
    assert dict(block.named_children()) == {"layer": layer, "sampler": sampler}
    assert "(sampler): ModuleSampler()" in repr(block)
    assert "sampler=" not in block.extra_repr()
    x = data.draw(inputs(n))
    assert torch.equal(block(x), by_hand(layer, x, depth))
    assert block.last_depth == depth
    # Its state travels through the module tree, not through _extra_state.
    state = block.state_dict()
    assert torch.equal(state["sampler.next_depth"], torch.tensor(depth))
    assert decode_state(state["_extra_state"]) == {}
    restored = RepeatedBlock(copy.deepcopy(layer), ModuleSampler((depth + 1) % 5))
    restored.load_state_dict(state)
    restored(x)
    assert restored.last_depth == depth


def test_assigning_a_sampler_runs_the_constructors_checks() -> None:
    kept = FixedDepth(2)
    block = RepeatedBlock(nn.Linear(3, 3), kept, depth_limit=5)
    with pytest.raises(TypeError, match=r"^sampler must satisfy the DepthSampler protocol"):
        block.sampler = "junk"  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"^sampler must be a DepthSampler instance"):
        block.sampler = FixedDepth  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"^sampler.max_depth must be <= depth_limit=5, got 6"):
        block.sampler = FixedDepth(6)
    assert block.sampler is kept  # a refused sampler leaves the block as it was
    masked = RepeatedBlock(nn.Linear(3, 3), FixedDepth(3), mode="masked", eval_depth=3)
    with pytest.raises(ValueError, match=r"^eval_depth must be <= sampler.max_depth=1 in mode="):
        masked.sampler = FixedDepth(1)
    masked.sampler = deeper = FixedDepth(4)
    assert masked.sampler is deeper
    assert masked(torch.randn(2, 3)).shape == (2, 3)
    assert masked.last_depth == 4


def test_assigning_a_module_sampler_adopts_it_and_a_plain_one_drops_it() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(1))
    sampler = ModuleSampler(2)
    block.sampler = sampler
    assert dict(block.named_children())["sampler"] is sampler
    assert block.sampler is sampler
    block.sampler = plain = FixedDepth(1)
    assert "sampler" not in dict(block.named_children())
    assert block.sampler is plain


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("layer", "shown"),
    [
        ("linear", "'linear' of type str"),
        (None, "None of type NoneType"),
        (nn.Linear, "<class 'torch.nn.modules.linear.Linear'> of type type"),
        (torch.relu, "of type builtin_function_or_method"),
    ],
)
def test_layer_not_a_module_raises_type_error(layer: object, shown: str) -> None:
    with pytest.raises(
        TypeError, match=r"layer must be a torch\.nn\.Module, got .*" + re.escape(shown)
    ):
        RepeatedBlock(layer)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [UniformDepth, FixedDepth, SeededDepth])
def test_sampler_class_instead_of_instance_raises_type_error(cls: type) -> None:
    name = cls.__name__
    with pytest.raises(
        TypeError,
        match=re.escape(f"sampler must be a DepthSampler instance, got the class {name}; ")
        + re.escape(f"did you mean {name}(...)?"),
    ):
        RepeatedBlock(nn.Linear(2, 2), cls)  # type: ignore[arg-type]


class _NoSample:
    min_depth = 0
    max_depth = 1


class _NoBounds:
    def sample(self) -> int:
        return 0


class _NoMax:
    min_depth = 0

    def sample(self) -> int:
        return 0


class _SampleNotCallable:
    min_depth = 0
    max_depth = 1
    sample = 3


@pytest.mark.parametrize(
    ("sampler", "detail"),
    [
        (_NoSample(), "it lacks sample"),
        (_NoBounds(), "it lacks min_depth, max_depth"),
        (_NoMax(), "it lacks max_depth"),
        (_SampleNotCallable(), "its sample is not callable"),
        ("uniform", "'uniform' of type str; it lacks min_depth, max_depth, sample"),
        (3, "3 of type int; it lacks min_depth, max_depth, sample"),
    ],
)
def test_sampler_missing_members_raises_type_error(sampler: object, detail: str) -> None:
    with pytest.raises(
        TypeError,
        match=r"sampler must satisfy the DepthSampler protocol .*" + re.escape(detail),
    ):
        RepeatedBlock(nn.Linear(2, 2), sampler)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("low", "high", "error", "message"),
    [
        (-1, 2, ValueError, "sampler.min_depth must be an int >= 0, got -1"),
        (0, -2, ValueError, "sampler.max_depth must be an int >= 0, got -2"),
        (
            3,
            1,
            ValueError,
            "sampler.max_depth must be >= sampler.min_depth, got min_depth=3 and max_depth=1 "
            "for ScriptedSampler(low=3, high=1)",
        ),
        (1.0, 2, TypeError, "sampler.min_depth must be an int, got 1.0 of type float"),
        (0, "3", TypeError, "sampler.max_depth must be an int, got '3' of type str"),
        (True, 2, TypeError, "sampler.min_depth must be an int, got True of type bool"),
        (0, None, TypeError, "sampler.max_depth must be an int, got None of type NoneType"),
    ],
)
def test_sampler_with_bad_bounds_raises(
    low: object, high: object, error: type[Exception], message: str
) -> None:
    sampler = ScriptedSampler([], low=low, high=high)  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(message)):
        RepeatedBlock(nn.Linear(2, 2), sampler)


POLICIES = "an int >= 0, one of 'max', 'min', 'sample', or ExitWhenConverged(...)"
BAD_EVAL_DEPTHS = [
    (-1, ValueError, "eval_depth must be an int >= 0, got -1"),
    (2.0, TypeError, f"eval_depth must be {POLICIES}, got 2.0 of type float"),
    (True, TypeError, f"eval_depth must be {POLICIES}, got True of type bool"),
    (False, TypeError, f"eval_depth must be {POLICIES}, got False of type bool"),
    ("maximum", ValueError, f"eval_depth must be {POLICIES}, got 'maximum'"),
    ("MAX", ValueError, f"eval_depth must be {POLICIES}, got 'MAX'"),
    (None, TypeError, f"eval_depth must be {POLICIES}, got None of type NoneType"),
]


@pytest.mark.parametrize(("eval_depth", "error", "message"), BAD_EVAL_DEPTHS)
def test_bad_eval_depth_raises_at_construction(
    eval_depth: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        RepeatedBlock(nn.Linear(2, 2), eval_depth=eval_depth)  # type: ignore[arg-type]


@pytest.mark.parametrize(("eval_depth", "error", "message"), BAD_EVAL_DEPTHS)
def test_eval_depth_reassigned_to_a_bad_value_raises_at_the_next_eval_forward(
    eval_depth: object, error: type[Exception], message: str
) -> None:
    block = RepeatedBlock(nn.Linear(2, 2), FixedDepth(2), eval_depth=1)
    x = torch.randn(1, 2)
    block.eval_depth = eval_depth  # type: ignore[assignment]
    block(x)  # training mode does not look at eval_depth
    assert block.last_depth == 2
    block.eval()
    with pytest.raises(error, match=re.escape(message)):
        block(x)
    assert block.last_depth == 2
    assert torch.equal(block(x, depth=0), x)  # an explicit depth still works


@pytest.mark.parametrize(
    ("depth", "error", "message"),
    [
        (-1, ValueError, "depth must be an int >= 0, got -1"),
        (2.0, TypeError, "depth must be an int, got 2.0 of type float"),
        (True, TypeError, "depth must be an int, got True of type bool"),
        (False, TypeError, "depth must be an int, got False of type bool"),
        ("2", TypeError, "depth must be an int, got '2' of type str"),
        (torch.tensor(2), TypeError, "depth must be an int, got tensor(2) of type Tensor"),
    ],
)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bad_depth_raises(
    depth: object, error: type[Exception], message: str, training: bool
) -> None:
    block = RepeatedBlock(nn.Linear(2, 2)).train(training)
    with pytest.raises(error, match=re.escape(message)):
        block(torch.randn(1, 2), depth=depth)  # type: ignore[arg-type]
    assert block.last_depth is None


@given(depth=st.integers(max_value=-1))
def test_any_negative_depth_raises_value_error_naming_it(depth: int) -> None:
    block = RepeatedBlock(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=re.escape(f"depth must be an int >= 0, got {depth}")):
        block(torch.randn(1, 2), depth=depth)


@pytest.mark.parametrize(
    ("x", "shown"),
    [
        ([1.0, 2.0], "[1.0, 2.0] of type list"),
        (None, "None of type NoneType"),
        (3.0, "3.0 of type float"),
    ],
)
def test_x_not_a_tensor_raises_type_error(x: object, shown: str) -> None:
    block = RepeatedBlock(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=re.escape(f"x must be a torch.Tensor, got {shown}")):
        block(x)  # type: ignore[arg-type]


@given(depth=st.integers(min_value=1, max_value=MAX_DEPTH), batch=batch_sizes)
def test_shape_changing_layer_raises_value_error_at_first_forward_with_depth_1_or_more(
    depth: int, batch: int
) -> None:
    block = RepeatedBlock(nn.Linear(4, 3), FixedDepth(depth))  # no error yet
    x = torch.randn(batch, 4)
    assert block(x, depth=0) is x  # depth 0 never calls the layer
    message = (
        f"but Linear turned an input of shape ({batch}, 4) into ({batch}, 3) at repeat 1 of {depth}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        block(x)
    with pytest.raises(ValueError, match=re.escape(message)):
        block(x, depth=depth)


def test_layer_returning_a_tuple_raises_type_error() -> None:
    block = RepeatedBlock(TupleLayer(), FixedDepth(2))
    with pytest.raises(
        TypeError,
        match=r"layer must return a tensor of its input's shape, but TupleLayer returned "
        r"a tuple of length \d \(a tensor of shape \(1, 2\).*\) at repeat 1 of 2; "
        r"pass output=0",
    ) as caught:
        block(torch.randn(1, 2))
    assert len(str(caught.value)) < 300  # shapes, not the tensors' values


@pytest.mark.parametrize("value", [-1, 0, 4, 10])
@pytest.mark.parametrize("policy", ["train", "eval-sample"])
def test_sampler_draw_outside_its_bounds_raises_value_error(value: int, policy: str) -> None:
    sampler = ScriptedSampler([value], low=1, high=3)
    block = RepeatedBlock(nn.Linear(2, 2), sampler, eval_depth="sample")
    if policy == "eval-sample":
        block.eval()
    message = (
        f"sampler ScriptedSampler(low=1, high=3) returned depth {value} from sample(), "
        f"outside its bounds [min_depth=1, max_depth=3]"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        block(torch.randn(1, 2))


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2.0, "2.0 of type float"),
        (True, "True of type bool"),
        (False, "False of type bool"),
        ("2", "'2' of type str"),
        (None, "None of type NoneType"),
        (torch.tensor(2), "tensor(2) of type Tensor"),
    ],
)
@pytest.mark.parametrize("policy", ["train", "eval-sample"])
def test_sampler_draw_that_is_not_an_int_raises_type_error(
    value: object, shown: str, policy: str
) -> None:
    sampler = ScriptedSampler([value], low=0, high=3)
    block = RepeatedBlock(nn.Linear(2, 2), sampler, eval_depth="sample")
    if policy == "eval-sample":
        block.eval()
    message = (
        f"sampler ScriptedSampler(low=0, high=3) returned {shown} from sample(); "
        f"a depth must be an int"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        block(torch.randn(1, 2))


@given(data=st.data(), n=features, depth=depths)
def test_sampler_draw_of_an_int_subclass_is_accepted(
    data: st.DataObject, n: int, depth: int
) -> None:
    sampler = ScriptedSampler([MyInt(depth), MyInt(depth)], low=0, high=MAX_DEPTH)
    block = RepeatedBlock(data.draw(layers(n)), sampler, eval_depth="sample")
    x = data.draw(inputs(n))
    expected = by_hand(block.layer, x, depth)
    for mode in (block.train, block.eval):
        mode()
        assert torch.equal(block(x), expected)
        assert block.last_depth == depth
        assert type(block.last_depth) is int
    assert torch.equal(block(x, depth=MyInt(depth)), expected)
    assert type(block.last_depth) is int


# --------------------------------------------------------------------------- depth_histogram


def linear_block(sampler: object = None) -> RepeatedBlock:
    return RepeatedBlock(nn.Linear(3, 3), sampler)  # type: ignore[arg-type]


@given(bounds(), seeds, st.integers(0, 40))
def test_the_histogram_counts_every_training_pass(
    low_high: tuple[int, int], seed: int, n: int
) -> None:
    module = linear_block(SeededDepth(*low_high, seed=seed))
    used = []
    for _ in range(n):
        module(torch.randn(2, 3))
        used.append(module.last_depth)
    assert module.depth_histogram == dict(sorted(Counter(used).items()))
    assert list(module.depth_histogram) == sorted(module.depth_histogram)


def test_explicit_depths_in_training_count_and_eval_passes_do_not() -> None:
    module = linear_block(FixedDepth(1))
    module(torch.randn(2, 3), depth=4)
    module(torch.randn(2, 3))
    module.eval()
    module(torch.randn(2, 3))
    module(torch.randn(2, 3), depth=2)
    assert module.depth_histogram == {1: 1, 4: 1}


def test_the_histogram_resets_and_is_a_copy() -> None:
    module = linear_block(FixedDepth(2))
    module(torch.randn(2, 3))
    histogram = module.depth_histogram
    histogram[2] = 100
    assert module.depth_histogram == {2: 1}
    module.reset_depth_histogram()
    assert module.depth_histogram == {}
    module(torch.randn(2, 3))
    assert module.depth_histogram == {2: 1}


def test_the_histogram_is_not_part_of_the_state_dict() -> None:
    module = linear_block(FixedDepth(2))
    module(torch.randn(2, 3))
    twin = linear_block(FixedDepth(2))
    twin.load_state_dict(module.state_dict())
    assert twin.depth_histogram == {}


def test_the_articles_sampler_shows_depths_zero_to_three() -> None:
    # random.randint(0, 3) includes both ends: four depths, 0 to 3, not 1 to 3 or
    # 0 to 2. A reader unsure of what a description of the range means can look here.
    random.seed(0)
    model = DynamicNet(5, 4, 2)
    for _ in range(200):
        model(torch.randn(3, 5))
    assert set(model.middle.depth_histogram) == {0, 1, 2, 3}


def test_a_layer_replaced_past_setattr_is_the_one_that_runs() -> None:
    # add_module writes _modules directly, past __setattr__ (so do tools that swap layers,
    # torch.ao's quantize_dynamic among them).
    torch.manual_seed(0)
    block = RepeatedBlock(nn.Linear(8, 8), FixedDepth(2))
    x = torch.randn(4, 8)
    block(x)  # the block has run (and built its calls) with the first layer
    new = nn.Linear(8, 8)
    block.add_module("layer", new)
    assert torch.equal(block(x), new(new(x)))
    block.eval_depth = 2
    assert torch.equal(block.eval()(x), new(new(x)))
