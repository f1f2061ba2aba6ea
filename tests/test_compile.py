"""`torch.compile` and `torch.export` on `RepeatedBlock`, in skip and masked mode.

Skip mode (the default) draws the depth outside the compiled code: one graph per
distinct depth, none after every depth was seen, and the same depths as in eager
mode. Masked mode compiles to one graph with no graph break (``fullgraph=True``) and
exports, with the depth as a tensor argument. The tests use Dynamo's counting and
eager backends (no code generation), so they stay quick.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from stochdepth import DynamicNet, FixedDepth, RepeatedBlock, SeededDepth

# Dynamo reads `.grad` of the non-leaf tensors that cross a graph break while it builds
# the next frame's inputs; torch warns about that read, and the suite's
# `filterwarnings = error` would turn Dynamo's own access into a failure. Plain runs
# show no warning.
pytestmark = pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_skip_mode_draws_the_eager_sequence_with_one_graph_per_depth() -> None:
    torch.manual_seed(0)
    model = DynamicNet(6, 5, 2, sampler=SeededDepth(0, 3, seed=11))
    eager = copy.deepcopy(model)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    x = torch.randn(4, 6)

    seen: set[int] = set()
    for step in range(40):
        got, want = compiled(x), eager(x)
        assert model.middle.last_depth == eager.middle.last_depth, step
        assert torch.equal(got, want), step
        seen.add(model.middle.last_depth)  # type: ignore[arg-type]
    assert seen == {0, 1, 2, 3}  # every depth was drawn: the draw was not frozen
    # The graph before the block, the one after it, and one per depth.
    assert counter.frame_count == 2 + len(seen)
    assert model.middle.depth_histogram == eager.middle.depth_histogram
    frames = counter.frame_count
    for _ in range(20):
        compiled(x)
    assert counter.frame_count == frames  # no recompiles once every depth was seen
    assert sum(model.middle.depth_histogram.values()) == 60


def test_skip_mode_gradients_under_compile_equal_eager() -> None:
    torch.manual_seed(0)
    model = DynamicNet(5, 4, 3, sampler=SeededDepth(0, 2, seed=3))
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 5)
    for step in range(6):
        model.zero_grad(set_to_none=True)
        eager.zero_grad(set_to_none=True)
        compiled(x).square().sum().backward()
        eager(x).square().sum().backward()
        for (name, got), want in zip(model.named_parameters(), eager.parameters(), strict=True):
            if want.grad is None:  # the middle layer at depth 0
                assert got.grad is None, (step, name)
            else:
                torch.testing.assert_close(got.grad, want.grad, msg=f"{name} at step {step}")


def test_masked_mode_compiles_fullgraph_to_one_graph_for_every_depth() -> None:
    torch.manual_seed(0)
    block = RepeatedBlock(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), FixedDepth(4), mode="masked")
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    x = torch.randn(3, 6)
    for depth in [0, 3, 1, 4, 2, 0]:
        given = torch.tensor(depth)
        out = compiled(x, depth=given)
        if torch.__version__ >= "2.13":  # torch 2.11's Dynamo drops this side effect
            assert block.last_depth is given  # set under compile too
        assert torch.equal(out, block(x, depth=depth))
    assert counter.frame_count == 1
    explanation = torch._dynamo.explain(block)(x, depth=torch.tensor(2))
    assert explanation.graph_count == 1
    assert explanation.graph_break_count == 0


def test_masked_mode_draws_outside_the_graph_without_recompiling() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
    block = RepeatedBlock(layer, SeededDepth(0, 5, seed=2), mode="masked")
    twin = RepeatedBlock(copy.deepcopy(layer), SeededDepth(0, 5, seed=2))
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter)
    x = torch.randn(3, 6)
    for step in range(30):
        assert torch.equal(compiled(x), twin(x)), step
        assert block.last_depth == twin.last_depth, step
    assert counter.frame_count == 1
    assert block.depth_histogram == twin.depth_histogram


@pytest.mark.parametrize("per_sample", [False, True])
def test_masked_mode_exports_with_the_depth_as_a_tensor_argument(per_sample: bool) -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(5, 5), nn.Tanh())
    block = RepeatedBlock(layer, FixedDepth(3), mode="masked", per_sample=per_sample)
    x = torch.randn(4, 5)
    example = torch.tensor([0, 1, 2, 3]) if per_sample else torch.tensor(2)
    exported = torch.export.export(block, (x,), {"depth": example}).module()
    for depth in range(4):
        depths = torch.tensor([depth, 3 - depth, 1, 0]) if per_sample else torch.tensor(depth)
        assert torch.equal(exported(x, depth=depths), block(x, depth=depths))


def test_per_sample_skip_mode_runs_under_compile() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    block = RepeatedBlock(layer, SeededDepth(0, 3, seed=5), per_sample=True)
    twin = RepeatedBlock(copy.deepcopy(layer), SeededDepth(0, 3, seed=5), per_sample=True)
    compiled = torch.compile(block, backend="eager")
    x = torch.randn(6, 4)
    for step in range(5):
        assert torch.equal(compiled(x), twin(x)), step
        assert torch.equal(block.last_depth, twin.last_depth), step  # type: ignore[arg-type]


def test_more_depths_than_the_recompile_limit_stay_correct() -> None:
    # Past torch._dynamo.config.recompile_limit distinct depths, Dynamo runs the block's
    # repeats eagerly for the new depths: slower, still right (docs/performance.md).
    limit = torch._dynamo.config.recompile_limit
    torch.manual_seed(0)
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(0))
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter)
    x = torch.randn(2, 3)
    for depth in range(limit + 3):
        torch.testing.assert_close(compiled(x, depth=depth), block(x, depth=depth), rtol=0, atol=0)
        assert block.last_depth == depth
    assert counter.frame_count == limit  # depths 0 to limit - 1, one graph each


class MaskedStep(nn.Module):
    """A layer with an injected input, a row-aligned mask and the repeat index."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)
        self.time = nn.Embedding(4, 4)

    def forward(
        self, x: torch.Tensor, e: torch.Tensor, *, mask: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.linear(torch.cat([x, e], dim=-1)) + self.time.weight[step]) * mask
        return h, h.sum()


def test_extra_arguments_compile_without_recompiles_after_warm_up() -> None:
    torch.manual_seed(0)
    layer = MaskedStep()
    options = {"row_args": ["mask", 0], "step_kwarg": "step", "output": 0}
    block = RepeatedBlock(layer, SeededDepth(0, 3, seed=4), **options)
    twin = RepeatedBlock(copy.deepcopy(layer), SeededDepth(0, 3, seed=4), **options)
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter)
    x, e, mask = torch.randn(3, 4), torch.randn(3, 4), (torch.randn(3, 4) > 0).float()
    seen: set[int] = set()
    for step in range(30):
        assert torch.equal(compiled(x, e, mask=mask), twin(x, e, mask=mask)), step
        assert block.last_depth == twin.last_depth
        seen.add(block.last_depth)  # type: ignore[arg-type]
    assert seen == {0, 1, 2, 3}
    frames = counter.frame_count
    for _ in range(20):
        compiled(x, e, mask=mask)
    assert counter.frame_count == frames  # no recompiles once every depth was seen


@pytest.mark.parametrize("per_sample", [False, True])
def test_extra_arguments_compile_fullgraph_and_export_in_masked_mode(per_sample: bool) -> None:
    torch.manual_seed(0)
    options = {"row_args": ["mask", 0], "step_kwarg": "step", "output": 0}
    block = RepeatedBlock(
        MaskedStep(), FixedDepth(3), mode="masked", per_sample=per_sample, **options
    )
    x, e, mask = torch.randn(4, 4), torch.randn(4, 4), (torch.randn(4, 4) > 0).float()
    example = torch.tensor([0, 1, 2, 3]) if per_sample else torch.tensor(2)
    counter = CompileCounter()
    compiled = torch.compile(block, backend=counter, fullgraph=True)
    exported = torch.export.export(block, (x, e), {"mask": mask, "depth": example}).module()
    for depth in range(4):
        depths = torch.tensor([depth, 3 - depth, 1, 0]) if per_sample else torch.tensor(depth)
        want = block(x, e, mask=mask, depth=depths)
        assert torch.equal(compiled(x, e, mask=mask, depth=depths), want)
        assert torch.equal(exported(x, e, mask=mask, depth=depths), want)
    assert counter.frame_count == 1


def test_grad_depth_and_per_row_arguments_run_under_compile() -> None:
    torch.manual_seed(0)
    layer = MaskedStep()
    options = {"row_args": ["mask", 0], "step_kwarg": "step", "output": 0, "grad_depth": 1}
    for per_sample in (False, True):
        block = RepeatedBlock(layer, SeededDepth(0, 3, seed=5), per_sample=per_sample, **options)
        twin = RepeatedBlock(
            copy.deepcopy(layer), SeededDepth(0, 3, seed=5), per_sample=per_sample, **options
        )
        compiled = torch.compile(block, backend="aot_eager")
        x, e, mask = torch.randn(6, 4), torch.randn(6, 4), (torch.randn(6, 4) > 0).float()
        for step in range(6):
            layer.zero_grad(set_to_none=True)
            twin.zero_grad(set_to_none=True)
            got, want = compiled(x, e, mask=mask), twin(x, e, mask=mask)
            torch.testing.assert_close(got, want, msg=f"step {step}")
            if want.requires_grad:
                got.sum().backward()
                want.sum().backward()
                for mine, theirs in zip(layer.parameters(), twin.parameters(), strict=True):
                    if theirs.grad is None:
                        assert mine.grad is None or not mine.grad.any()
                    else:
                        torch.testing.assert_close(mine.grad, theirs.grad)
