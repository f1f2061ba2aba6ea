"""The halting rules: PonderHalting is halting_depths one repeat at a time; bad rules named."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import (
    DepthScheduler,
    HaltingRule,
    PonderHalting,
    RepeatedBlock,
    halting_depths,
    halting_distribution,
)


class Count(nn.Module):
    """state -> state + 1: a row's state says which row it is and how deep it went."""

    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0


@given(
    table=st.lists(st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6), min_size=1, max_size=12),
    threshold=st.floats(0.05, 1.0),
    batch_size=st.integers(1, 4),
)
def test_ponder_halting_stops_where_halting_depths_says(
    table: list[list[float]], threshold: float, batch_size: int
) -> None:
    lambdas = torch.tensor(table, dtype=torch.float64)  # row r's lambda after repeat n

    def head(state: Tensor) -> Tensor:
        row, depth = state[:, 0].long(), state[:, 1].long()
        return lambdas[row, depth - 1]

    rows = len(table)
    xs = torch.stack([torch.arange(rows, dtype=torch.float64), torch.zeros(rows)], dim=1)
    rule = PonderHalting(head, max_depth=6, threshold=threshold)

    class RowAndDepth(nn.Module):  # keep the row id, count the depth in column 1
        def forward(self, x: Tensor) -> Tensor:
            return x + torch.tensor([0.0, 1.0], dtype=x.dtype)

    block = RepeatedBlock(RowAndDepth()).eval()
    results = DepthScheduler(block, batch_size, halting=rule).run(xs)
    want = halting_depths(halting_distribution(lambdas), threshold=threshold)
    assert [r.depth for r in results] == want.tolist()


def test_a_ponder_head_outside_zero_one_is_named() -> None:
    rule = PonderHalting(lambda s: s.sum(dim=1), max_depth=3)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\], got values from 2\.0"):
        DepthScheduler(RepeatedBlock(Count()), 2, halting=rule).run(torch.ones(2, 1))


def test_a_rule_that_answers_in_the_wrong_shape_is_named() -> None:
    class Bad:
        def start(self, x: Tensor) -> None:
            return None

        def __call__(
            self, previous: Tensor, current: Tensor, depth: Tensor, memory: object
        ) -> tuple[Tensor, None]:
            return torch.zeros(1, dtype=torch.bool), None

    assert isinstance(Bad(), HaltingRule)
    scheduler = DepthScheduler(RepeatedBlock(Count()), 3, halting=Bad(), max_depth=2)
    with pytest.raises(TypeError, match=r"must return a bool tensor of shape \(3,\)"):
        scheduler.run(torch.zeros(3, 1))


def test_a_custom_rule_keeps_its_memory_row_by_row() -> None:
    class Budget:
        """Stop a row once the sum of its states so far reaches 10 (memory: the sum)."""

        def start(self, x: Tensor) -> Tensor:
            return torch.zeros(x.shape[0])

        def __call__(
            self, previous: Tensor, current: Tensor, depth: Tensor, memory: Tensor | None
        ) -> tuple[Tensor, Tensor]:
            assert memory is not None
            total = memory + current[:, 0]
            return total >= 10, total

    starts = [0.0, 5.0, 1.0, 9.0, 2.0]
    results = DepthScheduler(RepeatedBlock(Count()), 2, halting=Budget(), max_depth=10).run(
        torch.tensor(starts)[:, None]
    )

    def alone(x: float) -> int:
        total, depth = 0.0, 0
        while total < 10 and depth < 10:
            depth += 1
            total += x + depth
        return depth

    assert [r.depth for r in results] == [alone(x) for x in starts]
