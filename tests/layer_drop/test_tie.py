"""Plain DDP through dropped layers: two gloo ranks, one spawn (``layer_drop_workers``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from stochdepth import LayerDropList

from support import layer_drop_workers as workers
from support.processes import scenario_result, spawn_ranks

SPAWN_DEADLINE = 240  # seconds: a hang fails the test instead of stalling the run


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("layer_drop_ddp")
    return spawn_ranks(workers.run_scenarios, workers.WORLD_SIZE, out, SPAWN_DEADLINE)


def single_process(mode: str, momentum: float) -> torch.Tensor:
    model = workers.make_model(mode, workers.SEED)
    x, y = workers.global_batch()
    workers.train(model, x, y, momentum)
    return workers.flat_parameters(model)


@pytest.mark.parametrize("name", ["batch", "row", "momentum", "own_seeds"])
def test_plain_ddp_trains_through_dropped_layers_with_identical_ranks(
    ranks: list[dict[str, Any]], name: str
) -> None:
    records = scenario_result(ranks, name)
    assert all(record["identical"] for record in records)
    assert torch.isfinite(records[0]["params"]).all()
    keeps = records[0]["keeps"]
    # some step dropped a layer on every rank (the case that breaks plain DDP)
    everywhere = [
        torch.stack(
            [(~record["keeps"][step]).reshape(workers.LAYERS, -1).all(dim=1) for record in records]
        )
        .all(dim=0)
        .any()
        for step in range(workers.STEPS)
    ]
    assert sum(bool(step) for step in everywhere) >= 3
    assert len(keeps) == workers.STEPS


def test_seeded_ranks_draw_the_same_layers_and_equal_one_process_on_the_global_batch(
    ranks: list[dict[str, Any]],
) -> None:
    records = scenario_result(ranks, "batch")
    for step in range(workers.STEPS):
        assert torch.equal(records[0]["keeps"][step], records[1]["keeps"][step]), step
    want = single_process("batch", 0.0)
    torch.testing.assert_close(records[0]["params"], want, rtol=1e-5, atol=1e-6)


def test_row_draws_under_ddp_are_those_of_the_global_batch_and_equal_one_process(
    ranks: list[dict[str, Any]],
) -> None:
    """Each rank keeps its chunk of the global batch's mask (``row_draws="global"``)."""
    records = scenario_result(ranks, "row")
    model = workers.make_model("row", workers.SEED)
    x, y = workers.global_batch()
    keeps = workers.train(model, x, y, 0.0)
    for step in range(workers.STEPS):
        joined = torch.cat([record["keeps"][step] for record in records], dim=1)
        assert torch.equal(joined, keeps[step]), step
    # DDP averages the ranks' mean losses: the mean over the global batch
    torch.testing.assert_close(
        records[0]["params"], workers.flat_parameters(model), rtol=1e-5, atol=1e-6
    )


def test_ranks_with_their_own_seeds_draw_differently_yet_stay_identical(
    ranks: list[dict[str, Any]],
) -> None:
    records = scenario_result(ranks, "own_seeds")
    differ = sum(
        not torch.equal(records[0]["keeps"][step], records[1]["keeps"][step])
        for step in range(workers.STEPS)
    )
    assert differ >= 10
    assert records[0]["identical"]


def test_without_the_tie_plain_ddp_fails(ranks: list[dict[str, Any]]) -> None:
    """The control that shows the scenarios above test something."""
    for record in scenario_result(ranks, "untied"):
        assert record["error"] is not None
        assert "Expected to have finished reduction" in record["error"]


def test_without_a_process_group_nothing_is_tied() -> None:
    stack = LayerDropList([nn.Linear(2, 2), nn.Linear(2, 2)], 0.5, seed=0)
    out = stack(torch.randn(3, 2), keep=torch.tensor([True, False]))
    assert out.grad_fn is not None
    assert "ZeroGradTie" not in type(out.grad_fn).__name__
