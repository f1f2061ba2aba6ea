"""Tests of `RepeatedBlock`'s public seam: what a driver (CUDA graphs, a cache) calls.

``draw_depth`` draws as ``forward`` does, ``run`` runs as ``forward(depth=...)`` does
without recording, ``step`` applies one repeat as the forward pass does, and the repeat
hooks see every application of the layer, in every path.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from stochdepth import ExitWhenConverged, FixedDepth, RepeatedBlock, SeededDepth, UniformDepth

OPTIONS = {
    "skip": {},
    "per_sample": {"per_sample": True},
    "masked": {"mode": "masked"},
    "masked_rows": {"mode": "masked", "per_sample": True},
}


def plain(depth: object) -> object:
    return depth.tolist() if isinstance(depth, Tensor) else depth


def block_with(options: dict[str, object], seed: int = 0) -> RepeatedBlock:
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    return RepeatedBlock(layer, SeededDepth(0, 3, seed=seed), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", OPTIONS)
def test_draw_depth_draws_the_depths_forward_draws_and_records_nothing(name: str) -> None:
    eager = block_with(OPTIONS[name])
    drawing = copy.deepcopy(eager)
    x = torch.randn(5, 4)
    for _ in range(12):
        eager(x)
        assert plain(drawing.draw_depth(x)) == plain(eager.last_depth)
    assert drawing.last_depth is None
    assert drawing.depth_histogram == {}
    assert sum(eager.depth_histogram.values()) == 12 * (5 if "per_sample" in OPTIONS[name] else 1)


def test_draw_depth_in_eval_mode_is_the_eval_policys_depth() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), UniformDepth(1, 3), eval_depth="min").eval()
    assert block.draw_depth(torch.randn(2, 4)) == 1
    block.eval_depth = "max"
    assert block.draw_depth(torch.randn(2, 4)) == 3


@pytest.mark.parametrize("name", OPTIONS)
def test_draw_then_run_then_record_equals_a_forward_pass(name: str) -> None:
    eager = block_with(OPTIONS[name], seed=1)
    driven = copy.deepcopy(eager)
    x = torch.randn(5, 4)
    for _ in range(8):
        want = eager(x)
        depth = driven.draw_depth(x)
        before = (plain(driven.last_depth), driven.depth_histogram)
        got = driven.run(x, depth=depth)
        assert (plain(driven.last_depth), driven.depth_histogram) == before
        driven.record_depth(depth)
        assert torch.equal(got, want)
        assert plain(driven.last_depth) == plain(eager.last_depth)
    assert driven.depth_histogram == eager.depth_histogram


def test_run_needs_a_depth_and_checks_it_as_forward_does() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 3))
    with pytest.raises(TypeError, match="run\\(\\) needs a depth"):
        block.run(torch.randn(2, 4), depth=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth must be <= the block's depth_limit"):
        block.run(torch.randn(2, 4), depth=10**6)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        block.run([1.0], depth=1)  # type: ignore[arg-type]


def test_steps_compose_to_the_forward_pass_with_step_kwarg_and_output() -> None:
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: Tensor, bias: Tensor, *, step: int) -> tuple[Tensor, int]:
            return torch.tanh(self.linear(x) + bias * (step + 1)), step

    torch.manual_seed(2)
    block = RepeatedBlock(Layer(), FixedDepth(3), step_kwarg="step", output=0)
    x, bias = torch.randn(2, 4), torch.randn(4)
    state = x
    for repeat in range(3):
        state = block.step(state, bias, repeat=repeat)
    assert torch.equal(state, block(x, bias))
    assert block.last_depth == 3  # step recorded nothing; the forward pass did


def test_step_checks_the_state_and_the_repeat() -> None:
    block = RepeatedBlock(nn.Linear(4, 3), FixedDepth(1))
    with pytest.raises(ValueError, match="at repeat 1 of 1"):
        block.step(torch.randn(2, 4), repeat=0)
    with pytest.raises(ValueError, match="repeat must be an int >= 0, got -1"):
        block.step(torch.randn(2, 4), repeat=-1)
    with pytest.raises(TypeError, match="repeat"):
        block.step(torch.randn(2, 4), repeat=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"state must be a torch\.Tensor"):
        block.step("x", repeat=0)  # type: ignore[arg-type]


def hooked(block: RepeatedBlock) -> list[int]:
    seen: list[int] = []

    def hook(owner: RepeatedBlock, repeat: int) -> None:
        assert owner is block
        seen.append(repeat)

    block.register_repeat_hook(hook)
    return seen


@pytest.mark.parametrize(
    ("options", "want"),
    [
        ({}, [0, 1, 2]),
        ({"mode": "masked"}, [0, 1, 2, 3, 4]),  # masked mode runs max_depth repeats
        ({"checkpoint": 2}, [0, 1, 2]),
    ],
    ids=["skip", "masked", "checkpointed"],
)
def test_a_repeat_hook_sees_every_application_in_order(
    options: dict[str, object], want: list[int]
) -> None:
    block = RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 5), **options)  # type: ignore[arg-type]
    seen = hooked(block)
    block(torch.randn(2, 4), depth=3)
    assert seen == want


def test_a_repeat_hook_runs_again_when_a_checkpoint_recomputes() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), FixedDepth(3), checkpoint=True)
    seen = hooked(block)
    block(torch.randn(2, 4, requires_grad=True)).sum().backward()
    forward, recomputed = seen[:3], seen[3:]
    assert forward == [0, 1, 2]
    assert sorted(recomputed) == [0, 1, 2]  # each segment again, same indices


def test_a_repeat_hook_sees_per_row_iterate_step_and_early_exit_and_can_be_removed() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 3), per_sample=True)
    seen = hooked(block)
    block(torch.randn(3, 4), depth=torch.tensor([2, 0, 1]))
    assert seen == [0, 1]
    seen.clear()
    list(block.iterate(torch.randn(3, 4), depth=2))
    block.step(torch.randn(3, 4), repeat=7)
    assert seen == [0, 1, 7]
    seen.clear()
    block.eval_depth = ExitWhenConverged(tol=0.0, max_depth=3)
    block.eval()(torch.randn(3, 4))
    assert seen
    assert seen[0] == 0
    handles = []
    calls: list[int] = []
    handles.append(block.register_repeat_hook(lambda _, r: calls.append(r)))
    handles[0].remove()
    block.train()(torch.randn(3, 4), depth=torch.tensor([1, 1, 1]))
    assert calls == []


def test_last_grad_depth_is_the_k_the_last_pass_with_autograd_drew() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), FixedDepth(3), grad_depth=SeededDepth(0, 2, seed=5))
    assert block.last_grad_depth is None
    ks = SeededDepth(0, 2, seed=5)
    for _ in range(6):
        block(torch.randn(2, 4))
        assert block.last_grad_depth == ks.sample()
    assert RepeatedBlock(nn.Linear(4, 4)).last_grad_depth is None


def test_check_sampler_checks_without_binding() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 3), depth_limit=5)
    sampler = UniformDepth(0, 5)
    assert block.check_sampler(sampler) is sampler
    assert block.sampler is not sampler
    with pytest.raises(ValueError, match="depth_limit=5"):
        block.check_sampler(UniformDepth(0, 6))
    with pytest.raises(TypeError):
        block.check_sampler(object())
