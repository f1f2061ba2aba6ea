"""`RepeatedBlock(per_token=True)`: a depth per position, frozen-state semantics.

The law: a forward pass with per-position depths ``d`` equals the hand loop
``h = where(r < d, layer(h), h)`` over ``r < max(d)``, for a layer that mixes the
positions (so a running position reads the frozen states of the stopped ones).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch._dynamo.testing import CompileCounter

from stochdepth import ExitWhenConverged, FixedDepth, RepeatedBlock, SeededDepth, UniformDepth

from support.strategies import MAX_DEPTH, token_depths

WIDTH = 4


class Mixer(nn.Module):
    """A residual layer whose output at each position reads every position (a mean)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.own = nn.Linear(WIDTH, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)

    def forward(
        self, h: torch.Tensor, bias: torch.Tensor | None = None, step: int | None = None
    ) -> torch.Tensor:
        out = h + torch.tanh(self.own(h) + self.mix(h.mean(dim=1, keepdim=True)))
        if bias is not None:
            out = out + bias
        if step is not None:
            out = out + 0.01 * step
        return out


def hand_loop(
    layer: nn.Module, x: torch.Tensor, depth: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    h = x
    for r in range(int(depth.max()) if depth.numel() else 0):
        h = torch.where((r < depth)[..., None], layer(h, **kwargs), h)
    return h


@given(depth=token_depths(), masked=st.booleans())
def test_a_pass_equals_the_hand_where_loop(depth: torch.Tensor, masked: bool) -> None:
    layer = Mixer()
    mode = "masked" if masked else "skip"
    block = RepeatedBlock(layer, UniformDepth(0, MAX_DEPTH), per_token=True, mode=mode)
    x = torch.randn(*depth.shape, WIDTH)
    out = block(x, depth=depth)
    assert torch.equal(out, hand_loop(layer, x, depth))
    assert block.last_depth is not None
    assert torch.equal(block.last_depth, depth)


def test_training_draws_a_depth_per_position_and_counts_each() -> None:
    layer = Mixer()
    block = RepeatedBlock(layer, SeededDepth(0, 5, seed=3), per_token=True)
    x = torch.randn(3, 7, WIDTH)
    out = block(x)
    depth = block.last_depth
    assert isinstance(depth, torch.Tensor)
    assert depth.shape == (3, 7)
    assert len(set(depth.flatten().tolist())) > 1  # not one depth for all
    assert torch.equal(out, hand_loop(layer, x, depth))
    assert sum(block.depth_histogram.values()) == 21
    again = RepeatedBlock(Mixer(), SeededDepth(0, 5, seed=3), per_token=True)
    again(x)
    assert torch.equal(again.last_depth, depth)  # type: ignore[arg-type]


def test_an_int_depth_gives_every_position_that_depth() -> None:
    layer = Mixer()
    block = RepeatedBlock(layer, per_token=True)
    x = torch.randn(2, 3, WIDTH)
    out = block(x, depth=2)
    assert torch.equal(block.last_depth, torch.full((2, 3), 2))  # type: ignore[arg-type]
    assert torch.equal(out, layer(layer(x)))


@pytest.mark.parametrize(("batch", "seq"), [(2, 6), (3, 30)])  # 12 answers a repeat, and 90
def test_early_exit_stops_each_position_on_its_own(batch: int, seq: int) -> None:
    layer = Mixer()
    policy = ExitWhenConverged(0.05, max_depth=40)
    block = RepeatedBlock(layer, per_token=True, eval_depth=policy).eval()
    x = torch.randn(batch, seq, WIDTH) * torch.logspace(-1, 2, seq).view(1, seq, 1)
    with torch.no_grad():
        out = block(x)
        depth = block.last_depth
        assert isinstance(depth, torch.Tensor)
        assert depth.shape == (batch, seq)
        assert len(set(depth.flatten().tolist())) > 2
        # Frozen-state semantics: the output is the where loop at the depths used.
        assert torch.equal(out, hand_loop(layer, x, depth))
        # And each position stopped at the first repeat its change fell under tol
        # (or at max_depth).
        h = x
        for r in range(int(depth.max())):
            new = torch.where((r < depth)[..., None], layer(h), h)
            change = (new - h).flatten(2).norm(dim=-1) / new.flatten(2).norm(dim=-1)
            if r + 1 < policy.max_depth:  # max_depth stops a position unasked
                assert bool((change[depth == r + 1] <= 0.05).all()), r
            assert bool((change[depth > r + 1] > 0.05).all()), r
            h = new


def test_row_args_and_step_kwarg_reach_every_repeat() -> None:
    layer = Mixer()
    block = RepeatedBlock(layer, per_token=True, row_args="bias", step_kwarg="step")
    x = torch.randn(2, 3, WIDTH)
    bias = torch.randn(2, 1, WIDTH)
    depth = torch.tensor([[0, 2, 3], [1, 1, 4]])
    out = block(x, bias=bias, depth=depth)
    h = x
    for r in range(4):
        h = torch.where((r < depth)[..., None], layer(h, bias=bias, step=r), h)
    assert torch.equal(out, h)
    with pytest.raises(ValueError, match="row_args names keyword argument 'bias'"):
        block(x, bias=torch.randn(3, 1, WIDTH), depth=depth)


def test_checkpointed_gradients_are_the_plain_ones() -> None:
    x = torch.randn(2, 4, WIDTH)
    depth = torch.tensor([[0, 3, 1, 5], [2, 2, 4, 1]])
    grads = []
    for checkpoint in (False, True):
        layer = Mixer()
        block = RepeatedBlock(layer, per_token=True, checkpoint=checkpoint)
        block(x, depth=depth).square().sum().backward()
        grads.append([p.grad for p in layer.parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        assert torch.equal(plain, checkpointed)


def test_depth_zero_everywhere_is_the_input() -> None:
    block = RepeatedBlock(Mixer(), per_token=True)
    x = torch.randn(2, 3, WIDTH)
    assert torch.equal(block(x, depth=torch.zeros(2, 3, dtype=torch.int64)), x)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
def test_masked_mode_compiles_fullgraph_with_the_depth_as_a_tensor() -> None:
    layer = Mixer()
    block = RepeatedBlock(layer, FixedDepth(4), per_token=True, mode="masked")
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, WIDTH)
    for values in ([[0, 1, 2], [3, 4, 0]], [[4, 4, 4], [1, 0, 2]]):
        depth = torch.tensor(values)
        assert torch.equal(compiled(x, depth=depth), hand_loop(layer, x, depth))
    assert counter.frame_count == 1


@pytest.mark.usefixtures("fresh_dynamo")
def test_skip_mode_compiles_and_draws_as_in_eager_mode() -> None:
    layer = Mixer()
    block = RepeatedBlock(layer, SeededDepth(0, 3, seed=5), per_token=True)
    eager = RepeatedBlock(layer, SeededDepth(0, 3, seed=5), per_token=True)
    compiled = torch.compile(block, backend="eager")
    x = torch.randn(2, 3, WIDTH)
    for _ in range(6):
        got, want = compiled(x), eager(x)
        assert torch.equal(block.last_depth, eager.last_depth)  # type: ignore[arg-type]
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"per_sample": True}, "per_token=True .* and per_sample=True every row: choose one"),
        ({"grad_depth": 2}, "grad_depth is not supported with per_token=True"),
    ],
)
def test_refused_combinations_say_why(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RepeatedBlock(Mixer(), per_token=True, **options)  # type: ignore[arg-type]


def test_bad_inputs_and_depths_are_refused_clearly() -> None:
    block = RepeatedBlock(Mixer(), per_token=True)
    with pytest.raises(ValueError, match=r"state its own depth, but x has shape \(4,\)"):
        block(torch.randn(4))
    x = torch.randn(2, 3, WIDTH)
    with pytest.raises(TypeError, match=r"shape \(2, 3\) \(batch, seq\) .* shape \(2,\)"):
        block(x, depth=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"dtype torch\.float32"):
        block(x, depth=torch.ones(2, 3))
    with pytest.raises(ValueError, match="depth must be >= 0, got a tensor holding -1"):
        block(x, depth=torch.tensor([[1, -1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="depth_limit=10000"):
        block(x, depth=torch.full((2, 3), 10**5))
    masked = RepeatedBlock(Mixer(), FixedDepth(2), per_token=True, mode="masked")
    with pytest.raises(ValueError, match="max_depth=2 in mode='masked'"):
        masked(x, depth=torch.full((2, 3), 3))
    assert "per_token=True" in repr(block)
    assert block.per_token


def test_the_seam_draws_runs_and_hooks_per_token() -> None:
    layer = Mixer()
    block = RepeatedBlock(layer, SeededDepth(0, 4, seed=9), per_token=True)
    twin = RepeatedBlock(layer, SeededDepth(0, 4, seed=9), per_token=True)
    x = torch.randn(2, 3, WIDTH)
    drawn = block.draw_depth(x)
    assert isinstance(drawn, torch.Tensor)
    assert drawn.shape == (2, 3)
    assert block.last_depth is None  # nothing recorded
    twin(x)
    assert torch.equal(drawn, twin.last_depth)  # type: ignore[arg-type]
    seen: list[int] = []
    block.register_repeat_hook(lambda module, repeat: seen.append(repeat))
    out = block.run(x, depth=drawn)
    assert block.last_depth is None
    assert torch.equal(out, hand_loop(layer, x, drawn))
    assert seen == list(range(int(drawn.max())))
