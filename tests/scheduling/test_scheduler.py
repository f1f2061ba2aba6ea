"""DepthScheduler: outputs equal each input run alone, work is the sum of depths, order holds."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import (
    DepthScheduler,
    ExitWhenConverged,
    LatentChange,
    PonderHalting,
    RepeatedBlock,
    halting_depths,
    halting_distribution,
    recursify,
)


class Halve(nn.Module):
    """Elementwise, no matrix product: a batch computes bitwise what one row computes."""

    def forward(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        out = 0.5 * x + 1.0
        return out if shift is None else out + shift


class StepTagged(nn.Module):
    """Adds the repeat index passed as ``step``: wrong if rows at other repeats share a call."""

    def forward(self, x: Tensor, *, step: int) -> Tensor:
        return x + float(step)


def linear_block(width: int = 4, seed: int = 0) -> RepeatedBlock:
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(width, width), nn.Tanh()).double()
    return RepeatedBlock(layer).eval()


def alone(block: RepeatedBlock, x: Tensor, depth: int, *args: Tensor) -> Tensor:
    with torch.no_grad():
        return block(x[None], *(a[None] for a in args), depth=depth)[0]


@given(
    batch_size=st.integers(1, 6),
    depths=st.lists(st.integers(0, 12), min_size=0, max_size=25),
    seed=st.integers(0, 2**16),
)
def test_each_output_is_the_input_run_alone_and_the_work_is_the_sum_of_depths(
    batch_size: int, depths: list[int], seed: int
) -> None:
    block = RepeatedBlock(Halve(), row_args=0, depth_limit=12).eval()
    generator = torch.Generator().manual_seed(seed)
    xs = torch.randn(len(depths), 3, dtype=torch.float64, generator=generator)
    shifts = torch.randn(len(depths), 3, dtype=torch.float64, generator=generator)
    scheduler = DepthScheduler(block, batch_size, max_depth=12)
    results = scheduler.run(zip(xs, shifts, strict=True), depths=depths)
    assert [r.index for r in results] == list(range(len(depths)))
    for result, x, shift, depth in zip(results, xs, shifts, depths, strict=True):
        assert result.depth == depth
        assert torch.equal(result.output, alone(block, x, depth, shift))
    # every row ran exactly its depth: nothing is padded when the stream runs dry
    assert scheduler.row_repeats == sum(depths)


def test_a_linear_layer_matches_alone_to_float64_rounding() -> None:
    block = linear_block()
    xs = torch.randn(30, 4, dtype=torch.float64)
    depths = [random.Random(0).randint(1, 16) for _ in range(30)]
    results = DepthScheduler(block, 8, max_depth=16).run(xs, depths=depths)
    for result, x, depth in zip(results, xs, depths, strict=True):
        torch.testing.assert_close(result.output, alone(block, x, depth), rtol=1e-13, atol=1e-13)


def test_early_exit_stops_each_row_where_the_blocks_own_early_exit_stops_it_alone() -> None:
    block = linear_block(seed=1)
    policy = ExitWhenConverged(1e-4, max_depth=40, min_depth=2)
    own = RepeatedBlock(block.layer, eval_depth=policy, per_sample=True).eval()
    xs = 3 * torch.randn(25, 4, dtype=torch.float64)
    scheduler = DepthScheduler(block, 4, halting=policy)
    results = scheduler.run(xs)
    depths = []
    with torch.no_grad():
        for result, x in zip(results, xs, strict=True):
            out = own(x[None])
            assert result.depth == int(own.last_depth)  # type: ignore[arg-type]
            torch.testing.assert_close(result.output, out[0], rtol=1e-13, atol=1e-13)
            depths.append(result.depth)
    assert len(set(depths)) > 1, "the inputs should need different depths"
    assert scheduler.row_repeats == sum(depths)


class RepeatReading:
    """A criterion that reads ``repeat``: stop at repeat index 2 (depth 3), whatever the state."""

    def __call__(
        self, previous: Tensor, current: Tensor, repeat: int, outputs: object = None
    ) -> Tensor:
        return torch.full((current.shape[0],), repeat == 2)


def test_a_criterion_that_reads_the_repeat_is_asked_per_depth() -> None:
    block = linear_block()
    policy = ExitWhenConverged(None, max_depth=10, criterion=RepeatReading())
    xs = torch.randn(9, 4, dtype=torch.float64)
    results = DepthScheduler(block, 4, halting=policy).run(xs, depths=[1, 2, 5, 1, 9, 3, 1, 2, 7])
    assert [r.depth for r in results] == [1, 2, 3, 1, 3, 3, 1, 2, 3]


def test_a_head_criterion_sees_the_heads_outputs_before_and_after() -> None:
    block = linear_block(seed=2)
    head = nn.Linear(4, 3).double()
    policy = ExitWhenConverged(1e-5, max_depth=30, criterion="output_kl", head=head)
    own = RepeatedBlock(block.layer, eval_depth=policy, per_sample=True).eval()
    xs = 2 * torch.randn(12, 4, dtype=torch.float64)
    results = DepthScheduler(block, 5, halting=policy).run(xs)
    with torch.no_grad():
        for result, x in zip(results, xs, strict=True):
            own(x[None])
            assert result.depth == int(own.last_depth)  # type: ignore[arg-type]


def test_ponder_halting_gives_the_depths_of_halting_depths() -> None:
    torch.manual_seed(3)
    block = linear_block(seed=3)
    probe = nn.Linear(4, 1).double()

    def head(state: Tensor) -> Tensor:
        return torch.sigmoid(probe(state) - 1.5).squeeze(-1)

    n = 12
    xs = torch.randn(20, 4, dtype=torch.float64)
    results = DepthScheduler(block, 6, halting=PonderHalting(head, max_depth=n)).run(xs)
    with torch.no_grad():
        states = list(block.iterate(xs, depth=n))
        lambdas = torch.stack([head(s) for s in states], dim=1)
    want = halting_depths(halting_distribution(lambdas), threshold=0.5)
    assert [r.depth for r in results] == want.tolist()
    assert len(set(want.tolist())) > 1


def test_a_layer_that_reads_the_repeat_index_gets_one_call_per_index() -> None:
    block = RepeatedBlock(StepTagged(), step_kwarg="step", depth_limit=8).eval()
    xs = torch.zeros(7, 2, dtype=torch.float64)
    depths = [3, 1, 4, 1, 5, 2, 6]
    scheduler = DepthScheduler(block, 3, max_depth=8)
    assert scheduler.by_repeat
    results = scheduler.run(xs, depths=depths)
    for result, depth in zip(results, depths, strict=True):
        assert result.output.tolist() == [float(sum(range(depth)))] * 2


def arrivals(xs: Tensor, seed: int, seen: list[int]) -> Iterator[Tensor]:
    """Yield the inputs lazily, recording how many were read."""
    rng = random.Random(seed)
    for index, x in enumerate(xs):
        if rng.random() < 0.3:  # other work between arrivals
            torch.randn(rng.randint(1, 4))
        seen.append(index)
        yield x


@given(
    batch_size=st.integers(1, 5),
    count=st.integers(0, 30),
    seed=st.integers(0, 2**16),
)
def test_streamed_results_keep_their_identity_and_read_at_most_a_batch_ahead(
    batch_size: int, count: int, seed: int
) -> None:
    block = RepeatedBlock(Halve(), depth_limit=10).eval()
    rng = random.Random(seed)
    depths = [rng.randint(0, 10) for _ in range(count)]
    # distinct inputs: the index says which input a result came from
    xs = torch.arange(count, dtype=torch.float64)[:, None] * torch.ones(1, 2, dtype=torch.float64)
    seen: list[int] = []
    scheduler = DepthScheduler(block, batch_size, max_depth=10)
    yielded = []
    for result in scheduler.stream(arrivals(xs, seed, seen), depths=depths):
        yielded.append(result.index)
        # read ahead: the rows in flight, besides the depth-0 inputs (done when read)
        instant = sum(1 for index in seen if depths[index] == 0)
        assert len(seen) - instant <= len(yielded) + batch_size
        assert result.depth == depths[result.index]
        assert torch.equal(result.output, alone(block, xs[result.index], result.depth))
    assert sorted(yielded) == list(range(count))
    if batch_size == 1:  # one row in flight: the results leave in input order
        assert yielded == list(range(count))


def test_the_batch_stays_full_while_the_stream_lasts() -> None:
    block = RepeatedBlock(Halve(), depth_limit=32).eval()
    depths = [random.Random(1).randint(1, 32) for _ in range(200)]
    scheduler = DepthScheduler(block, 16, max_depth=32)
    scheduler.run(torch.zeros(200, 2), depths=depths)
    assert scheduler.row_repeats == sum(depths)
    # one call per repeat while rows are in flight: far fewer than one per row-repeat
    assert scheduler.layer_calls <= sum(depths) // 16 + 32


def test_early_exit_without_depths_runs_to_max_depth() -> None:
    block = RepeatedBlock(Halve(), depth_limit=20).eval()
    results = DepthScheduler(block, 3, max_depth=5).run(torch.zeros(4, 2))
    assert [r.depth for r in results] == [5, 5, 5, 5]


def test_latent_change_is_asked_in_one_call_for_all_rows() -> None:
    assert LatentChange.reads_repeat is False


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0, "max_depth": 3}, ValueError, "batch_size must be"),
        ({"batch_size": 2}, ValueError, "max_depth must be given"),
        ({"batch_size": 2, "max_depth": 10**6}, ValueError, "depth_limit"),
        ({"batch_size": 2, "halting": "latent"}, TypeError, "halting must be None"),
        ({"batch_size": 2, "halting": PonderHalting}, TypeError, "the class PonderHalting"),
        ({"batch_size": 2, "max_depth": 3, "by_repeat": 1}, TypeError, "by_repeat"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DepthScheduler(RepeatedBlock(Halve()), **kwargs)  # type: ignore[arg-type]


def test_a_block_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match=r"block must be a stochdepth\.RepeatedBlock"):
        DepthScheduler(Halve(), 2, max_depth=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("inputs", "depths", "error", "match"),
    [
        ([torch.zeros(2), torch.zeros(3)], None, ValueError, r"input 1 has \(3,\)"),
        ([torch.zeros(2), "x"], None, TypeError, "input 1 is 'x'"),
        (
            [torch.zeros(2), torch.zeros(2).double()],
            None,
            ValueError,
            r"input 1 has \(torch\.float64",
        ),
        (
            [(torch.zeros(2), torch.zeros(1)), (torch.zeros(2), torch.zeros(3))],
            None,
            ValueError,
            r"input 1 has \(2,\), \(3,\)",
        ),
        ([torch.zeros(2)] * 2, [1], ValueError, "fewer entries than inputs"),
        ([torch.zeros(2)], [1, 2], ValueError, "more entries than the 1 inputs"),
        ([torch.zeros(2)], [9], ValueError, r"depths\[0\] must be in \[0, max_depth=4\]"),
        ([torch.zeros(2)], [1.5], TypeError, r"depths\[0\] must be an int"),
        (3, None, TypeError, "inputs must be an iterable"),
    ],
)
def test_bad_inputs_are_named(inputs: object, depths: object, error: type, match: str) -> None:
    scheduler = DepthScheduler(RepeatedBlock(Halve()), 2, max_depth=4)
    with pytest.raises(error, match=match):
        scheduler.run(inputs, depths=depths)  # type: ignore[arg-type]


def test_a_layer_that_changes_the_shape_is_refused_with_the_shapes() -> None:
    block = RepeatedBlock(nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"\(2, 2\) into \(2, 3\)"):
        DepthScheduler(block, 2, max_depth=2).run(torch.zeros(2, 2))


def test_the_stream_leaves_autograd_alone_between_results() -> None:
    block = RepeatedBlock(Halve(), depth_limit=4).eval()
    for _ in DepthScheduler(block, 2, max_depth=4).stream(torch.zeros(3, 2)):
        assert torch.is_grad_enabled()


def test_on_cuda_the_results_are_the_cpus(cuda_device: torch.device) -> None:
    block = linear_block(seed=4)
    xs = 2 * torch.randn(17, 4, dtype=torch.float64)
    depths = [random.Random(4).randint(0, 12) for _ in range(17)]
    want = DepthScheduler(block, 5, max_depth=12).run(xs, depths)
    got = DepthScheduler(block.to(cuda_device), 5, max_depth=12).run(xs.to(cuda_device), depths)
    assert [r.depth for r in got] == [r.depth for r in want]
    for a, b in zip(got, want, strict=True):
        assert a.output.device == cuda_device
        torch.testing.assert_close(a.output.cpu(), b.output, rtol=1e-10, atol=1e-10)


class Recorder(nn.Module):
    """state -> state + 1, recording the states of every call: each row's depth so far."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[float]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(x[:, 0].tolist())
        return x + 1.0


def test_repeat_hooks_see_each_rows_own_repeat_with_by_repeat() -> None:
    layer = Recorder()
    block = RepeatedBlock(layer, depth_limit=6).eval()
    seen: list[int] = []
    block.register_repeat_hook(lambda _, repeat: seen.append(repeat))
    depths = [3, 1, 2, 3, 1, 5, 2]
    results = DepthScheduler(block, 3, max_depth=6, by_repeat=True).run(
        torch.zeros(7, 1), depths=depths
    )
    assert [float(r.output) for r in results] == [float(d) for d in depths]
    assert len(seen) == len(layer.calls)
    for repeat, states in zip(seen, layer.calls, strict=True):
        assert states == [float(repeat)] * len(states)  # every row of the call at this repeat


def test_a_recursified_block_with_per_repeat_deltas_is_run_one_repeat_index_a_call() -> None:
    torch.manual_seed(5)
    layers = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(4)).double()
    converted = recursify(layers, core=slice(0, 4), lora_rank="full")
    block = next(m for m in converted.modules() if isinstance(m, RepeatedBlock)).eval()
    scheduler = DepthScheduler(block, 3, max_depth=4)
    assert scheduler.by_repeat  # the deltas are selected by a repeat hook
    xs = torch.randn(9, 4, dtype=torch.float64)
    depths = [4, 1, 3, 2, 4, 4, 1, 2, 3]
    results = scheduler.run(xs, depths)
    for result, x, depth in zip(results, xs, depths, strict=True):
        want = x[None]
        with torch.no_grad():
            for layer in layers[:depth]:  # the original layers: what full-rank deltas give
                want = layer(want)
        torch.testing.assert_close(result.output, want[0], rtol=1e-10, atol=1e-10)
