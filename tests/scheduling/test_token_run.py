"""DepthScheduler with per_token=True: each position stops on its own, rows refill.

The law: every result equals the ``per_token=True`` block applied to that input alone
(a batch of one row) with the same exit rule, with its ``(seq,)`` depths; a row counts
its deepest position's depth in row-repeats.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import DepthScheduler, ExitWhenConverged, PonderHalting, RepeatedBlock

WIDTH = 3
SEQ = 5
SCALES = torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0], dtype=torch.float64).view(SEQ, 1)


class Mixer(nn.Module):
    """A contraction whose output at each position reads every position (a mean)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.own = nn.Parameter(0.4 * torch.randn(WIDTH, WIDTH, generator=generator))
        self.mix = nn.Parameter(0.4 * torch.randn(WIDTH, WIDTH, generator=generator))

    def forward(self, h: Tensor, bias: Tensor | None = None, step: int | None = None) -> Tensor:
        out = 0.5 * h + 0.3 * torch.tanh(h @ self.own + h.mean(dim=1, keepdim=True) @ self.mix)
        if bias is not None:
            out = out + bias
        if step is not None:
            out = out + 0.01 * step
        return out


def inputs(count: int, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(SEQ, WIDTH, generator=generator, dtype=torch.float64) * SCALES
        for _ in range(count)
    ]


def block_of(**options: object) -> RepeatedBlock:
    return RepeatedBlock(Mixer().double(), per_token=True, **options).eval()  # type: ignore[arg-type]


def close(a: Tensor, b: Tensor) -> bool:
    return torch.allclose(a, b, rtol=0.0, atol=1e-12)


def test_early_exit_per_token_equals_each_input_alone() -> None:
    policy = ExitWhenConverged(0.05, max_depth=30)
    block = block_of(eval_depth=policy)
    xs = inputs(9)
    scheduler = DepthScheduler(block, batch_size=3, halting=policy)
    assert scheduler.per_token
    results = scheduler.run(xs)
    assert [r.index for r in results] == list(range(9))
    spread = set()
    total = 0
    with torch.no_grad():
        for x, result in zip(xs, results, strict=True):
            alone = block(x[None])
            depth = block.last_depth
            assert isinstance(depth, Tensor)
            assert result.depths is not None
            assert torch.equal(result.depths, depth[0])
            assert result.depth == int(depth.max())
            assert close(result.output, alone[0])
            spread |= set(result.depths.tolist())
            total += result.depth
    assert len(spread) > 2  # the positions stopped at different depths
    assert scheduler.row_repeats == total  # the sum of the rows' deepest positions


@given(
    caps=st.lists(
        st.lists(st.integers(min_value=0, max_value=6), min_size=SEQ, max_size=SEQ),
        min_size=1,
        max_size=8,
    ),
    batch_size=st.integers(min_value=1, max_value=4),
)
@settings(max_examples=25, deadline=None)
def test_a_fixed_per_position_depth_equals_the_block_alone(
    caps: list[list[int]], batch_size: int
) -> None:
    block = block_of()
    xs = inputs(len(caps))
    depths = [torch.tensor(c, dtype=torch.int64) for c in caps]
    scheduler = DepthScheduler(block, batch_size=batch_size, max_depth=6)
    results = scheduler.run(xs, depths=depths)
    with torch.no_grad():
        for x, d, result in zip(xs, depths, results, strict=True):
            assert result.depths is not None
            assert torch.equal(result.depths, d)
            assert result.depth == int(d.max())
            assert close(result.output, block(x[None], depth=d[None])[0])
    assert scheduler.row_repeats == sum(max(c) for c in caps)


def test_order_and_identity_under_random_arrival_with_args_and_steps() -> None:
    block = block_of(row_args="bias", step_kwarg="step")
    xs = inputs(7, seed=1)
    biases = [0.01 * torch.randn(1, WIDTH, dtype=torch.float64) for _ in xs]
    rng = random.Random(4)
    caps = [torch.tensor([rng.randint(0, 5) for _ in range(SEQ)]) for _ in xs]
    caps[2] = torch.zeros(SEQ, dtype=torch.int64)  # no repeat at all: the input itself
    scheduler = DepthScheduler(block, batch_size=2, max_depth=5)
    assert scheduler.by_repeat
    seen = list(scheduler.stream(zip(xs, biases, strict=True), depths=caps))
    assert sorted(r.index for r in seen) == list(range(7))
    with torch.no_grad():
        for result in seen:
            i = result.index
            alone = block(xs[i][None], bias=biases[i][None], depth=caps[i][None])
            assert close(result.output, alone[0]), i
            assert result.depths is not None
            assert torch.equal(result.depths, caps[i])
    nothing = next(r for r in seen if r.index == 2)
    assert torch.equal(nothing.output, xs[2])
    assert nothing.depth == 0
    assert scheduler.row_repeats == sum(int(c.max()) for c in caps)


def test_a_learned_head_halts_positions_and_an_int_depth_caps_them() -> None:
    block = block_of()
    rule = PonderHalting(lambda s: torch.sigmoid(s.sum(dim=-1)), max_depth=8)
    xs = inputs(4, seed=2)
    results = DepthScheduler(block, 2, halting=rule).run(xs, depths=[8, 3, 8, 1])
    with torch.no_grad():
        for result, x in zip(results, xs, strict=True):
            assert result.depths is not None
            # the same positions' depths reproduce the output through the block alone
            assert close(result.output, block(x[None], depth=result.depths[None])[0])
    assert results[1].depth <= 3
    assert results[3].depth == 1


def test_rows_of_different_lengths_are_refused_naming_the_input() -> None:
    scheduler = DepthScheduler(block_of(), batch_size=2, max_depth=3)
    xs = [*inputs(2), torch.zeros(SEQ - 1, WIDTH, dtype=torch.float64)]
    with pytest.raises(
        ValueError, match=r"first input's sequence length 5 .* input 2 has length 4"
    ):
        scheduler.run(xs)


@pytest.mark.parametrize(
    ("depth", "error", "match"),
    [
        (torch.zeros(SEQ - 1, dtype=torch.int64), TypeError, r"depths\[0\] must be an int or"),
        (torch.full((SEQ,), 0.5), TypeError, r"depths\[0\] must be an int or"),
        (torch.full((SEQ,), 9), ValueError, r"depths\[0\] must hold depths in \[0, max_depth=3\]"),
        (4, ValueError, r"depths\[0\] must be in \[0, max_depth=3\], got 4"),
        ("2", TypeError, r"depths\[0\] must be an int"),
    ],
)
def test_bad_per_position_depths_are_refused(
    depth: object, error: type[Exception], match: str
) -> None:
    scheduler = DepthScheduler(block_of(), batch_size=2, max_depth=3)
    with pytest.raises(error, match=match):
        scheduler.run(inputs(1), depths=[depth])  # type: ignore[list-item]


def test_depths_and_inputs_must_pair_up() -> None:
    scheduler = DepthScheduler(block_of(), batch_size=2, max_depth=3)
    with pytest.raises(ValueError, match="depths has fewer entries than inputs: none for input 1"):
        scheduler.run(inputs(2), depths=[1])
    with pytest.raises(ValueError, match="depths has more entries than the 2 inputs"):
        scheduler.run(inputs(2), depths=[1, 2, 3])


def test_a_zero_dim_input_is_refused_and_per_token_can_be_turned_off() -> None:
    scheduler = DepthScheduler(block_of(), batch_size=2, max_depth=3)
    with pytest.raises(ValueError, match=r"\(seq, \.\.\.\) row, but input 0 has shape \(\)"):
        scheduler.run([torch.tensor(1.0)])
    plain = DepthScheduler(RepeatedBlock(Mixer().double()), 2, max_depth=3, per_token=True)
    assert plain.per_token
    assert "per_token=True" in repr(plain)
    off = DepthScheduler(block_of(), 2, max_depth=3, per_token=False)
    result = off.run(inputs(1))[0]
    assert result.depths is None
    assert result.depth == 3
    with pytest.raises(TypeError, match="per_token"):
        DepthScheduler(block_of(), 2, max_depth=3, per_token=1)  # type: ignore[arg-type]


def kl_policy() -> ExitWhenConverged:
    head = nn.Linear(WIDTH, 4).double()
    return ExitWhenConverged(1e-3, max_depth=30, criterion="output_kl", head=head, min_depth=2)


@pytest.mark.parametrize("kind", ["step_kwarg", "output_kl"])
def test_early_exit_per_token_with_steps_or_a_head_equals_each_input_alone(kind: str) -> None:
    if kind == "step_kwarg":
        policy = ExitWhenConverged(0.1, max_depth=30)
        block = block_of(eval_depth=policy, step_kwarg="step")
    else:
        policy = kl_policy()
        block = block_of(eval_depth=policy)
    xs = inputs(6, seed=3)
    scheduler = DepthScheduler(block, batch_size=2, halting=policy)
    results = scheduler.run(iter(xs))
    with torch.no_grad():
        for x, result in zip(xs, results, strict=True):
            alone = block(x[None])
            depth = block.last_depth
            assert isinstance(depth, Tensor)
            assert result.depths is not None
            assert torch.equal(result.depths, depth[0])
            assert close(result.output, alone[0])
    assert len({d for r in results if r.depths is not None for d in r.depths.tolist()}) > 1
    assert scheduler.row_repeats == sum(r.depth for r in results)


def test_a_non_tensor_input_is_refused_even_with_depth_zero() -> None:
    scheduler = DepthScheduler(block_of(), batch_size=2, max_depth=3)
    x = inputs(1)[0]
    with pytest.raises(TypeError, match=r"but input 1 is .row. of type str"):
        scheduler.run([x, "row"], depths=[1, 0])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="input 1 is a tuple holding a non-tensor"):
        scheduler.run([x, (x, 3)], depths=[1, 0])
