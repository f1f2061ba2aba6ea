"""RepeatedBlock with eval_depth=ExitWhenConverged: repeats until the state converges."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import ExitWhenConverged, LatentChange, OutputKL, RepeatedBlock, UniformDepth


def contraction(width: int = 4, rate: float = 0.5, fixed: float = 2.0) -> nn.Linear:
    """``x -> rate * x + (1 - rate) * fixed``: every row converges to ``fixed``."""
    layer = nn.Linear(width, width).double()
    with torch.no_grad():
        layer.weight.copy_(rate * torch.eye(width))
        layer.bias.fill_((1 - rate) * fixed)
    return layer


class Grow(nn.Module):
    """``x -> 2 x + 1``: never converges."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * x + 1


def hand_loop(layer: nn.Module, x: Tensor, depth: int) -> Tensor:
    for _ in range(depth):
        x = layer(x)
    return x


@torch.no_grad()
def test_a_contraction_converges_and_a_smaller_tol_runs_deeper() -> None:
    x = torch.zeros(3, 4, dtype=torch.float64)
    depths = []
    for tol in (1e-2, 1e-4, 1e-8):
        block = RepeatedBlock(contraction(), eval_depth=ExitWhenConverged(tol, 200)).eval()
        out = block(x)
        depth = block.last_depth
        assert isinstance(depth, int)
        assert depth < 200
        torch.testing.assert_close(out, torch.full_like(x, 2.0), atol=10 * tol, rtol=0)
        depths.append(depth)
    assert depths[0] < depths[1] < depths[2]


@torch.no_grad()
def test_rows_further_from_the_fixed_point_run_longer() -> None:
    distances = torch.tensor([0.0, 0.01, 1.0, 100.0, 1e4], dtype=torch.float64)
    x = 2.0 + distances[:, None].expand(5, 4)
    block = RepeatedBlock(
        contraction(), per_sample=True, eval_depth=ExitWhenConverged(1e-6, 200)
    ).eval()
    out = block(x)
    depths = block.last_depth
    assert isinstance(depths, Tensor)
    assert depths.dtype == torch.int64
    assert depths.tolist() == sorted(depths.tolist())
    assert depths[0] < depths[-1]
    for row in range(5):
        torch.testing.assert_close(
            out[row], hand_loop(block.layer, x[row : row + 1], int(depths[row]))[0]
        )


@pytest.mark.parametrize("per_sample", [False, True])
@torch.no_grad()
def test_a_layer_that_never_converges_stops_at_max_depth(per_sample: bool) -> None:
    block = RepeatedBlock(
        Grow(), per_sample=per_sample, eval_depth=ExitWhenConverged(1e-3, 7)
    ).eval()
    x = torch.randn(3, 2, dtype=torch.float64)
    out = block(x)
    torch.testing.assert_close(out, hand_loop(Grow(), x, 7))
    if per_sample:
        assert isinstance(block.last_depth, Tensor)
        assert block.last_depth.tolist() == [7, 7, 7]
    else:
        assert block.last_depth == 7


@given(
    rows=st.integers(0, 6),
    width=st.integers(1, 5),
    tol=st.floats(1e-6, 0.5),
    max_depth=st.integers(1, 12),
    min_depth=st.integers(1, 12),
    per_sample=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_output_equals_the_hand_loop_at_the_reported_depth(
    rows: int, width: int, tol: float, max_depth: int, min_depth: int, per_sample: bool, seed: int
) -> None:
    min_depth = min(min_depth, max_depth)
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(width, width), nn.Tanh()).double()
    policy = ExitWhenConverged(tol, max_depth, min_depth=min_depth)
    block = RepeatedBlock(layer, per_sample=per_sample, eval_depth=policy).eval()
    x = torch.randn(rows, width, dtype=torch.float64)
    out = block(x)
    depths = block.last_depth
    if per_sample:
        assert isinstance(depths, Tensor)
        assert depths.shape == (rows,)
        pairs = [(x[r : r + 1], int(depths[r]), out[r : r + 1]) for r in range(rows)]
    else:
        assert isinstance(depths, int)
        pairs = [(x, depths, out)]
    criterion = LatentChange(tol)
    for row_in, depth, row_out in pairs:
        assert min_depth <= depth <= max_depth
        # float64; a row alone may round differently from the same row in a batch.
        torch.testing.assert_close(row_out, hand_loop(layer, row_in, depth), rtol=0, atol=1e-12)
        # The criterion did not stop it earlier, and did stop it here (unless max_depth).
        states = [row_in]
        for _ in range(depth):
            states.append(layer(states[-1]))
        for n in range(min_depth, depth):
            assert not criterion(states[n - 1], states[n], n - 1).all()
        if depth < max_depth and rows:
            assert criterion(states[depth - 1], states[depth], depth - 1).all()


@torch.no_grad()
def test_training_mode_samples_as_before_and_a_given_depth_is_used_as_given() -> None:
    block = RepeatedBlock(Grow(), UniformDepth(0, 3), eval_depth=ExitWhenConverged(1e-3, 9))
    x = torch.zeros(2, 1)
    for _ in range(20):
        out = block(x)
        assert isinstance(block.last_depth, int)
        torch.testing.assert_close(out, hand_loop(Grow(), x, block.last_depth))
        assert block.last_depth <= 3
    block.eval()
    torch.testing.assert_close(block(x, depth=2), hand_loop(Grow(), x, 2))
    assert block.last_depth == 2
    block(x)
    assert block.last_depth == 9
    assert sum(block.depth_histogram.values()) == 20  # eval passes are not counted


@torch.no_grad()
def test_output_kl_stops_when_the_heads_distribution_settles() -> None:
    torch.manual_seed(0)
    head = nn.Linear(4, 3).double()
    policy = ExitWhenConverged(1e-9, 100, criterion="output_kl", head=head)
    block = RepeatedBlock(contraction(), per_sample=True, eval_depth=policy).eval()
    x = 2.0 + torch.tensor([[0.0], [0.3], [2.0]], dtype=torch.float64).expand(3, 4)
    block(x)
    depths = block.last_depth
    assert isinstance(depths, Tensor)
    assert depths.tolist() == sorted(depths.tolist())
    assert int(depths[-1]) < 100
    criterion = OutputKL(1e-9)
    row = x[2:3]
    states = [row]
    for _ in range(int(depths[-1])):
        states.append(block.layer(states[-1]))
    last, before = states[-1], states[-2]
    assert criterion(before, last, 0, (head(before), head(last))).all()


def test_gradients_flow_through_an_early_exit_pass() -> None:
    layer = contraction()
    block = RepeatedBlock(layer, per_sample=True, eval_depth=ExitWhenConverged(1e-3, 50)).eval()
    x = torch.tensor([[2.0] * 4, [3.0] * 4], dtype=torch.float64, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None
    assert layer.weight.grad is not None


def test_masked_mode_refuses_early_exit() -> None:
    with pytest.raises(ValueError, match="use mode='skip' for early exit"):
        RepeatedBlock(nn.Linear(2, 2), mode="masked", eval_depth=ExitWhenConverged(0.1, 3))
    block = RepeatedBlock(nn.Linear(2, 2), mode="masked")
    block.eval_depth = ExitWhenConverged(0.1, 3)
    with pytest.raises(ValueError, match="use mode='skip' for early exit"):
        block.eval()(torch.zeros(1, 2))


def test_a_max_depth_above_the_depth_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"eval_depth.max_depth must be <= depth_limit=5"):
        RepeatedBlock(nn.Linear(2, 2), depth_limit=5, eval_depth=ExitWhenConverged(0.1, 6))


def test_a_criterion_that_returns_no_bool_per_row_is_reported() -> None:
    class Bad:
        def __call__(self, previous, current, repeat, outputs=None):  # type: ignore[no-untyped-def]
            return torch.tensor(True)

    policy = ExitWhenConverged(None, 5, criterion=Bad())
    block = RepeatedBlock(nn.Linear(2, 2), eval_depth=policy).eval()
    with pytest.raises(TypeError, match=r"must return a bool tensor of shape \(3,\)"):
        block(torch.zeros(3, 2))


def test_the_repr_shows_the_policy() -> None:
    block = RepeatedBlock(nn.Linear(2, 2), eval_depth=ExitWhenConverged(0.1, 3))
    assert "eval_depth=ExitWhenConverged(tol=0.1, max_depth=3" in repr(block)


class Injected(nn.Module):
    """``s -> tanh(W s + U e) `` with the input ``e`` injected, and the step index seen."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.state = nn.Linear(width, width, bias=False)
        self.input = nn.Linear(width, width)
        self.steps: list[int] = []

    def forward(self, s: Tensor, e: Tensor, *, scale: float = 1.0, step: int = 0) -> Tensor:
        self.steps.append(step)
        return torch.tanh(scale * self.state(s) + self.input(e))


@given(rows=st.integers(1, 6), tol=st.floats(1e-8, 1e-2), seed=st.integers(0, 2**16))
def test_each_row_stops_as_it_would_alone_with_its_own_injected_input(
    rows: int, tol: float, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = Injected(3).double()
    with torch.no_grad():
        layer.state.weight.mul_(0.5)  # a contraction in s: every row converges
    policy = ExitWhenConverged(tol, 60)
    block = RepeatedBlock(
        layer, per_sample=True, row_args=0, step_kwarg="step", eval_depth=policy
    ).eval()
    e = 3 * torch.randn(rows, 3, dtype=torch.float64)
    with torch.no_grad():
        out = block(torch.zeros_like(e), e, scale=0.9)
        depths = block.last_depth
        assert isinstance(depths, Tensor)
        for row in range(rows):
            alone = block(torch.zeros_like(e[row : row + 1]), e[row : row + 1], scale=0.9)
            assert block.last_depth.tolist() == [int(depths[row])]
            torch.testing.assert_close(out[row : row + 1], alone, rtol=0, atol=1e-12)
    assert set(layer.steps) <= set(range(60))


@torch.no_grad()
def test_the_batch_stops_when_every_row_may_with_extra_arguments() -> None:
    torch.manual_seed(0)
    layer = Injected(3).double()
    with torch.no_grad():
        layer.state.weight.mul_(0.5)
    block = RepeatedBlock(layer, step_kwarg="step", eval_depth=ExitWhenConverged(1e-6, 60)).eval()
    e = torch.randn(4, 3, dtype=torch.float64)
    out = block(torch.zeros_like(e), e)
    depth = block.last_depth
    assert isinstance(depth, int)
    assert layer.steps == list(range(depth))
    s = torch.zeros_like(e)
    for step in range(depth):
        s = layer(s, e, step=step)
    torch.testing.assert_close(out, s, rtol=0, atol=0)


@torch.no_grad()
def test_iterate_in_eval_mode_with_early_exit_runs_max_depth() -> None:
    block = RepeatedBlock(Grow(), eval_depth=ExitWhenConverged(1e-3, 5)).eval()
    assert len(list(block.iterate(torch.zeros(1, 1)))) == 5


@pytest.mark.parametrize("per_sample", [False, True])
@torch.no_grad()
def test_early_exit_under_torch_compile_runs_eagerly_with_the_same_result(
    per_sample: bool,
) -> None:
    block = RepeatedBlock(
        contraction(), per_sample=per_sample, eval_depth=ExitWhenConverged(1e-4, 50)
    ).eval()
    x = 2.0 + torch.tensor([[0.5], [10.0], [100.0]], dtype=torch.float64).expand(3, 4)
    eager = block(x)
    eager_depth = block.last_depth
    compiled = torch.compile(block)(x)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    if per_sample:
        assert isinstance(eager_depth, Tensor)
        assert torch.equal(block.last_depth, eager_depth)  # type: ignore[arg-type]
    else:
        assert block.last_depth == eager_depth
