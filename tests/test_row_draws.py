"""``row_draws``: per-row draws of the global batch under ``torch.distributed``, in one process.

The two-rank runs are in ``test_fsdp.py``; here one process plays rank ``r`` of a
global batch by replacing the row-count gather (``global_layout``), so that every
split of the batch can be tried, and a one-rank gloo group runs the real gather.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from stochdepth import LayerDropList, RepeatedBlock, SeededDepth, SkippedLayerTie
from stochdepth._row_draws import RowLayout

from support.strategies import seeds

WIDTH = 3


def _layers(count: int) -> list[nn.Module]:
    torch.manual_seed(0)
    return [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(count)]


def _list(seed: int, row_draws: str = "global") -> LayerDropList:
    return LayerDropList(
        _layers(3),
        0.5,
        per_sample=True,
        residual=True,
        seed=seed,
        row_draws=row_draws,  # type: ignore[arg-type]
    )


def _block(seed: int, grad_depth: int | None = None) -> RepeatedBlock:
    (layer,) = _layers(1)
    return RepeatedBlock(
        layer, SeededDepth(0, 3, seed=seed), per_sample=True, grad_depth=grad_depth
    )


@contextlib.contextmanager
def playing_rank() -> Iterator[list[RowLayout]]:
    """Play a rank: every global draw uses the layout put in the yielded list."""
    layout: list[RowLayout] = []
    with pytest.MonkeyPatch.context() as patch:
        for module in ("stochdepth._depth", "stochdepth.layer_drop._list"):
            patch.setattr(f"{module}.draws_globally", lambda row_draws: row_draws == "global")
            patch.setattr(f"{module}.global_layout", lambda rows: layout[0])
        yield layout


@pytest.mark.parametrize("make", [_list, _block])
def test_row_draws_must_be_global_or_local(make: object) -> None:
    build = (
        (lambda v: LayerDropList(_layers(1), 0.5, per_sample=True, row_draws=v))
        if make is _list
        else (lambda v: RepeatedBlock(nn.Identity(), per_sample=True, row_draws=v))
    )
    with pytest.raises(
        TypeError, match="row_draws must be one of 'global', 'local', got 1 of type int"
    ):
        build(1)
    with pytest.raises(ValueError, match="row_draws must be one of 'global', 'local', got 'rank'"):
        build("rank")
    assert build("local").row_draws == "local"
    assert "row_draws='local'" in repr(build("local"))
    assert "row_draws" not in repr(build("global"))


def test_outside_a_process_group_global_and_local_draw_alike() -> None:
    x = torch.randn(6, WIDTH)
    a, b = _list(3, "global"), _list(3, "local")
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert torch.equal(a.last_keep, b.last_keep)


def _chunks(sizes: list[int]) -> list[RowLayout]:
    starts = [sum(sizes[:rank]) for rank in range(len(sizes))]
    return [RowLayout(start, sum(sizes)) for start in starts]


rank_sizes = st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=4).filter(
    lambda sizes: sum(sizes) > 0
)


@given(sizes=rank_sizes, seed=seeds)
def test_a_rank_of_a_layer_drop_list_keeps_its_chunk_of_the_global_draw(
    sizes: list[int], seed: int
) -> None:
    x = torch.randn(sum(sizes), WIDTH, generator=torch.Generator().manual_seed(seed % 2**32))
    alone = _list(seed)
    want = alone(x)
    with playing_rank() as as_rank:
        _check_list_chunks(as_rank, sizes, seed, x, alone, want)


def _check_list_chunks(
    as_rank: list[RowLayout],
    sizes: list[int],
    seed: int,
    x: torch.Tensor,
    alone: LayerDropList,
    want: torch.Tensor,
) -> None:
    assert alone.last_keep is not None
    for (start, total), rows in zip(_chunks(sizes), sizes, strict=True):
        as_rank[:] = [RowLayout(start, total)]
        rank = _list(seed)
        calls: list[int] = []
        for layer in rank.children():  # iterating a training list draws (issue 20)
            layer.register_forward_pre_hook(lambda m, args, calls=calls: calls.append(len(args[0])))
        out = rank(x[start : start + rows])
        torch.testing.assert_close(out, want[start : start + rows], rtol=1e-6, atol=1e-6)
        assert torch.equal(rank.last_keep, alone.last_keep[:, start : start + rows])
        # the telemetry counts the global batch's rows: the same on every rank
        assert rank.layer_runs == alone.layer_runs
        assert rank.draws == alone.draws == total
        # a layer runs here when any row of the global batch keeps it (maybe on no rows)
        ran_anywhere = alone.last_keep.any(dim=1)
        assert len(calls) == int(ran_anywhere.sum())
        assert calls == [int(k.sum()) for k in rank.last_keep[ran_anywhere]]


@given(sizes=rank_sizes, seed=seeds, grad_depth=st.sampled_from([None, 0, 1, 2]))
def test_a_rank_of_a_per_row_block_makes_the_same_layer_calls_as_every_other(
    sizes: list[int], seed: int, grad_depth: int | None
) -> None:
    x = torch.randn(sum(sizes), WIDTH, generator=torch.Generator().manual_seed(seed % 2**32))
    alone = _block(seed, grad_depth)
    want = alone(x)
    assert isinstance(alone.last_depth, torch.Tensor)
    patterns = []
    for (start, total), rows in zip(_chunks(sizes), sizes, strict=True):
        rank = _block(seed, grad_depth)
        calls: list[bool] = []
        rank.layer.register_forward_pre_hook(
            lambda m, args, calls=calls: calls.append(torch.is_grad_enabled())
        )
        with playing_rank() as as_rank:
            as_rank[:] = [RowLayout(start, total)]
            out = rank(x[start : start + rows])
        torch.testing.assert_close(out, want[start : start + rows], rtol=1e-6, atol=1e-6)
        assert torch.equal(rank.last_depth, alone.last_depth[start : start + rows])
        assert rank.depth_histogram == alone.depth_histogram  # the global batch's rows
        patterns.append(calls)
    # every rank calls the layer as often, with autograd on or off alike: FSDP2's
    # unshards (collectives) pair up
    assert all(pattern == patterns[0] for pattern in patterns)
    deepest = int(alone.last_depth.max())
    assert len(patterns[0]) >= deepest


def test_local_row_draws_give_row_i_of_every_rank_the_same_draw() -> None:
    x = torch.randn(8, WIDTH)
    keeps = []
    for start in (0, 4):
        stack = _list(5, "local")
        with playing_rank() as as_rank:
            as_rank[:] = [RowLayout(start, 8)]
            stack(x[start : start + 4])
        keeps.append(stack.last_keep)
    assert torch.equal(keeps[0], keeps[1])


def test_in_a_one_rank_gloo_group_the_global_draw_is_the_local_one() -> None:
    init_file = f"{tempfile.mkdtemp()}/rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=0, world_size=1)
    try:
        x = torch.randn(5, WIDTH)
        stack, block = _list(2), _block(2)
        out, depth_out = stack(x), block(x)
    finally:
        dist.destroy_process_group()
    reference, reference_block = _list(2), _block(2)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    torch.testing.assert_close(depth_out, reference_block(x), rtol=0, atol=0)
    assert torch.equal(block.last_depth, reference_block.last_depth)


def test_a_rank_whose_rows_all_skip_keeps_the_gradient_the_global_batch_gave() -> None:
    """``SkippedLayerTie``: the layer ran for the global batch, so its gradient stays."""
    block = RepeatedBlock(nn.Linear(WIDTH, WIDTH), SeededDepth(0, 1, seed=0), per_sample=True)
    tie = SkippedLayerTie(block)
    everywhere = torch.tensor([0, 0, 1, 1])
    with playing_rank() as as_rank, pytest.MonkeyPatch.context() as patch:
        as_rank[:] = [RowLayout(0, 4)]  # rank 0: rows 0 and 1, both at depth 0
        patch.setattr("stochdepth._depth.draw_batch", lambda sampler, n: everywhere)
        block(torch.randn(2, WIDTH, requires_grad=True)).sum().backward()
    assert torch.equal(block.last_depth, torch.tensor([0, 0]))
    assert torch.equal(block.last_global_depth, everywhere)
    assert block.layer.weight.grad is not None  # zeros: the layer ran on no rows here
    assert tie.restore_skipped_grads() == []
    assert block.layer.weight.grad is not None
    tie.remove()
