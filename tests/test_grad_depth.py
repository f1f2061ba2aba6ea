"""Truncated backprop (``grad_depth``): the depth-0 path, a sampled grad_depth, its state, checks.

Its law against the hand-written loop, with extra and row-aligned arguments, is in
test_layer_call.py (``test_grad_depth_records_only_the_last_k_repeats``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from stochdepth import FixedDepth, RepeatedBlock, SeededDepth


def hand_plain(layer: nn.Module, x: Tensor, depth: int) -> Tensor:
    for _ in range(depth):
        x = layer(x)
    return x


# --- grad_depth: samplers, depth 0, masked mode, state -----------------------------------


def test_grad_depth_zero_goes_through_the_depth_zero_path() -> None:
    # DDP needs the skipped layer tied in when no repeat records a gradient, as at
    # depth 0: both reach the one zero-depth method.
    for per_sample in (False, True):
        block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), grad_depth=0, per_sample=per_sample)
        seen: list[Tensor] = []
        original = block._depth_zero

        def spy(
            x: Tensor, original: Callable[[Tensor], Tensor] = original, seen: list[Tensor] = seen
        ) -> Tensor:
            seen.append(x)
            return original(x)

        block._depth_zero = spy  # type: ignore[method-assign]
        x = torch.randn(4, 3, requires_grad=True)
        out = block(x)
        assert len(seen) == 1
        assert not out.requires_grad
        assert torch.equal(out, hand_plain(block.layer, x, 2))
        with torch.no_grad():  # without autograd nothing is frozen, no tie is needed
            block(x)
        assert len(seen) == 1


def test_grad_depth_sampler_is_drawn_with_autograd_and_saved_with_the_block() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(6), grad_depth=SeededDepth(1, 4, seed=7))
    x = torch.randn(2, 3, requires_grad=True)
    twin = SeededDepth(1, 4, seed=7)
    for _ in range(5):
        k = twin.sample()
        states = list(block.iterate(x))
        assert [s.requires_grad for s in states] == [i >= 6 - k for i in range(6)]
    with torch.no_grad():
        block(x)  # draws nothing
    state = block.state_dict()
    restored = RepeatedBlock(nn.Linear(3, 3), FixedDepth(6), grad_depth=SeededDepth(1, 4, seed=0))
    restored.load_state_dict(state)
    assert restored._grad.draw() == block._grad.draw() == twin.sample()


def test_masked_mode_refuses_grad_depth_and_says_why() -> None:
    with pytest.raises(ValueError, match=r"grad_depth is not supported with mode='masked'.*"):
        RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), mode="masked", grad_depth=1)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1, ValueError, "grad_depth must be an int >= 0, got -1"),
        (1.5, TypeError, "grad_depth must be None, an int >= 0 or a depth sampler, got"),
        (True, TypeError, "grad_depth must be None"),
        ("4", TypeError, "grad_depth must be None"),
        (object(), TypeError, "grad_depth must satisfy the DepthSampler protocol"),
    ],
)
def test_bad_grad_depth_is_refused(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RepeatedBlock(nn.Linear(3, 3), grad_depth=value)  # type: ignore[arg-type]
