"""DynamicNet: the article's model, its initialisation, its state_dict and its errors."""

from __future__ import annotations

import io
import random
import re

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from stochdepth import DynamicNet, FixedDepth, RepeatedBlock, SeededDepth, UniformDepth

from support import article9
from support.strategies import batch_sizes, depths, features, leading_dims, seeds

ARTICLE_SIZES = (1000, 100, 10)


def article_name(name: str) -> str:
    return name.replace("middle.layer.0.", "middle_linear.")


def drawn_depths(model: DynamicNet, x: torch.Tensor, count: int) -> list[int | None]:
    """Run ``count`` forward passes; return the depth each one used."""
    used = []
    for _ in range(count):
        model(x)
        used.append(model.middle.last_depth)
    return used


def article_forward(model: article9.DynamicNet, x: torch.Tensor, depth: int) -> torch.Tensor:
    """The article's forward pass with its random.randint(0, 3) made to return depth."""
    state = random.getstate()
    randint = random.randint
    try:
        random.randint = lambda low, high: depth  # type: ignore[assignment]
        return model(x)
    finally:
        random.randint = randint  # type: ignore[assignment]
        random.setstate(state)


@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_parameters_are_created_in_the_articles_order_with_its_initialisation(seed: int) -> None:
    torch.manual_seed(seed)
    ours = DynamicNet(7, 5, 3)
    torch.manual_seed(seed)
    theirs = article9.DynamicNet(7, 5, 3)
    ours_named = list(ours.named_parameters())
    theirs_named = list(theirs.named_parameters())
    assert [article_name(name) for name, _ in ours_named] == [name for name, _ in theirs_named]
    for (_, mine), (_, original) in zip(ours_named, theirs_named, strict=True):
        assert torch.equal(mine, original)


@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_construction_leaves_the_torch_rng_where_the_article_leaves_it(seed: int) -> None:
    torch.manual_seed(seed)
    DynamicNet(7, 5, 3)
    after_ours = torch.rand(3)
    torch.manual_seed(seed)
    article9.DynamicNet(7, 5, 3)
    after_theirs = torch.rand(3)
    assert torch.equal(after_ours, after_theirs)


def test_the_parameter_count_is_the_articles() -> None:
    ours = sum(p.numel() for p in DynamicNet(*ARTICLE_SIZES).parameters())
    theirs = sum(p.numel() for p in article9.DynamicNet(*ARTICLE_SIZES).parameters())
    assert ours == theirs == 1000 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10


@given(depth=st.integers(min_value=0, max_value=5), seed=st.integers(0, 2**32 - 1))
def test_the_articles_state_dict_loads_and_gives_the_same_outputs_and_gradients(
    depth: int, seed: int
) -> None:
    torch.manual_seed(seed)
    theirs = article9.DynamicNet(6, 4, 3)
    zeros = article9.watch_zero_pre_activations(theirs)
    ours = DynamicNet(6, 4, 3)
    result = ours.load_state_dict(theirs.state_dict())  # strict by default
    assert not result.missing_keys
    assert not result.unexpected_keys
    x = torch.randn(5, 6)

    out_ours = ours(x, depth=depth)
    out_theirs = article_forward(theirs, x, depth)
    assert torch.equal(out_ours, out_theirs)
    assume(not any(zeros))  # there clamp passes a gradient that ReLU does not

    out_ours.square().sum().backward()
    out_theirs.square().sum().backward()
    theirs_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        original = theirs_params[article_name(name)]
        if param.grad is None:
            assert original.grad is None, name
        else:
            assert torch.equal(param.grad, original.grad), name
    assert (ours.middle_linear.weight.grad is None) == (depth == 0)


def test_the_articles_state_dict_loads_through_torch_save_with_weights_only() -> None:
    theirs = article9.DynamicNet(6, 4, 3)
    buffer = io.BytesIO()
    torch.save(theirs.state_dict(), buffer)
    buffer.seek(0)
    ours = DynamicNet(6, 4, 3)
    ours.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(ours.middle_linear.weight, theirs.middle_linear.weight)
    assert torch.equal(ours.middle_linear.bias, theirs.middle_linear.bias)


def test_loading_the_articles_weights_keeps_a_seeded_samplers_own_state() -> None:
    reference = SeededDepth(0, 3, seed=11)
    ours = DynamicNet(6, 4, 3, sampler=SeededDepth(0, 3, seed=11))
    x = torch.randn(2, 6)
    before = drawn_depths(ours, x, 5)
    ours.load_state_dict(article9.DynamicNet(6, 4, 3).state_dict())
    after = drawn_depths(ours, x, 5)
    assert before + after == [reference.sample() for _ in range(10)]


def test_a_state_dict_that_is_neither_ours_nor_the_articles_is_reported() -> None:
    state = article9.DynamicNet(6, 4, 3).state_dict()
    state["middle_linear.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"middle_linear\.extra"):
        DynamicNet(6, 4, 3).load_state_dict(state)
    wrong_shape = article9.DynamicNet(6, 5, 3).state_dict()
    with pytest.raises(RuntimeError, match=r"size mismatch for middle\.layer\.0\.weight"):
        DynamicNet(6, 4, 3).load_state_dict(wrong_shape)


@given(seed=seeds, draws=st.integers(min_value=0, max_value=10))
def test_own_state_dict_round_trip_continues_the_depth_sequence(seed: int, draws: int) -> None:
    model = DynamicNet(4, 3, 2, sampler=SeededDepth(0, 5, seed=seed))
    x = torch.randn(2, 4)
    for _ in range(draws):
        model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = DynamicNet(4, 3, 2, sampler=SeededDepth(0, 5, seed=0))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for _ in range(8):
        assert torch.equal(model(x), restored(x))
        assert model.middle.last_depth == restored.middle.last_depth


def test_middle_is_a_repeated_block_around_linear_and_relu() -> None:
    model = DynamicNet(6, 4, 3)
    assert isinstance(model.middle, RepeatedBlock)
    assert isinstance(model.middle.sampler, UniformDepth)
    assert (model.middle.sampler.low, model.middle.sampler.high) == (0, 3)
    layer = model.middle.layer
    assert isinstance(layer, torch.nn.Sequential)
    assert isinstance(layer[0], torch.nn.Linear)
    assert isinstance(layer[1], torch.nn.ReLU)
    assert model.middle_linear is layer[0]
    assert (model.middle_linear.in_features, model.middle_linear.out_features) == (4, 4)
    text = repr(model)
    assert "UniformDepth(low=0, high=3)" in text
    assert "eval_depth='max'" in text


def test_the_default_depth_draws_from_pythons_random_as_the_article() -> None:
    model = DynamicNet(6, 4, 3)
    x = torch.randn(2, 6)
    random.seed(5)
    used = drawn_depths(model, x, 30)
    random.seed(5)
    assert used == [random.randint(0, 3) for _ in range(30)]


def test_eval_mode_uses_the_maximum_depth_by_default_and_eval_depth_otherwise() -> None:
    x = torch.randn(3, 6)
    model = DynamicNet(6, 4, 3).eval()
    outputs = {model(x).sum().item() for _ in range(5)}
    assert len(outputs) == 1
    assert model.middle.last_depth == 3
    assert torch.equal(model(x), model(x, depth=3))
    shallow = DynamicNet(6, 4, 3, eval_depth=1).eval()
    shallow(x)
    assert shallow.middle.last_depth == 1


@given(
    batch=batch_sizes,
    leading=leading_dims,
    d_in=features,
    hidden=features,
    d_out=features,
    depth=depths,
)
def test_output_shape(
    batch: int, leading: tuple[int, ...], d_in: int, hidden: int, d_out: int, depth: int
) -> None:
    model = DynamicNet(d_in, hidden, d_out, sampler=FixedDepth(depth))
    assert model(torch.randn(*leading, batch, d_in)).shape == (*leading, batch, d_out)


@pytest.mark.parametrize(
    ("sizes", "error", "message"),
    [
        ((0, 4, 3), ValueError, r"D_in must be an int >= 1, got 0"),
        ((6, -1, 3), ValueError, r"H must be an int >= 1, got -1"),
        ((6, 4, 2.5), TypeError, r"D_out must be an int, got 2\.5 of type float"),
        ((True, 4, 3), TypeError, r"D_in must be an int, got True of type bool"),
    ],
)
def test_bad_sizes_are_named(sizes: tuple[object, ...], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DynamicNet(*sizes)  # type: ignore[arg-type]


def test_a_bad_sampler_is_named() -> None:
    with pytest.raises(TypeError, match=r"sampler must satisfy the DepthSampler protocol"):
        DynamicNet(6, 4, 3, sampler=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 5), (2, 7), (6, 2), ()])
def test_input_of_the_wrong_width_is_an_error_naming_both(shape: tuple[int, ...]) -> None:
    model = DynamicNet(6, 4, 3)
    message = f"x must have shape (..., D_in) with D_in=6, got shape {tuple(shape)}"
    with pytest.raises(ValueError, match=re.escape(message)):
        model(torch.randn(shape))


def test_input_that_is_not_a_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got \[1\.0\]"):
        DynamicNet(1, 4, 3)([1.0])
