"""FSDP2 (``fully_shard``) through random depth and dropped layers: two gloo ranks, one spawn.

Every stochdepth layer and the root are sharded (``fsdp_workers.shard``), in a user's
own loop; the tests check that the ranks agree, that training equals one process on
the global batch, and that a layer no rank runs is never unsharded (its all-gathers
are counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from support import fsdp_workers as workers
from support.processes import run_python, scenario_result, spawn_ranks

SPAWN_DEADLINE = 300  # seconds: a hang fails the test instead of stalling the run


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("fsdp")
    return spawn_ranks(workers.run_scenarios, workers.WORLD_SIZE, out, SPAWN_DEADLINE)


def single_process(name: str) -> dict[str, Any]:
    """The same model, loop and steps in one process, on the whole global batch."""
    model = workers.MODELS[name]()
    x, y = workers.global_batch()
    optimizer = workers.optimizer_for(model)
    steps = range(workers.STEPS)
    records = workers.train_steps(model, optimizer, x, y, steps, scale=1.0)
    return {"records": records, "params": workers.full_parameters(model)}


def global_draws(ranks: list[dict[str, Any]], step: int) -> list[torch.Tensor]:
    """Each module's draw at ``step`` over the global batch: the ranks' rows joined.

    A per-batch draw (a 0-d depth, a ``(layers,)`` mask) must be the same on every
    rank; a per-row one is joined along its row dimension, in rank order.
    """
    per_rank = [rank["records"][step]["drawn"] for rank in ranks]
    joined = []
    for values in zip(*per_rank, strict=True):
        if values[0].ndim == 0 or (values[0].ndim == 1 and values[0].dtype == torch.bool):
            assert all(torch.equal(values[0], v) for v in values), (step, values)
            joined.append(values[0])
        else:
            joined.append(torch.cat(values, dim=-1))
    return joined


EQUAL_TO_ONE_PROCESS = [name for name in workers.SCENARIOS if name != "drop_row_local"]


@pytest.mark.parametrize("name", EQUAL_TO_ONE_PROCESS)
def test_sharded_training_equals_one_process_on_the_global_batch(
    ranks: list[dict[str, Any]], name: str
) -> None:
    records = scenario_result(ranks, name)
    assert all(record["params_identical"] for record in records)
    # the generators, samplers and telemetry: replicated, the same on every rank
    assert all(record["states_identical"] for record in records)
    want = single_process(name)
    for step in range(workers.STEPS):
        got = global_draws(records, step)
        expected = want["records"][step]["drawn"]
        for module, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert torch.equal(a, b), (name, step, module, a, b)
        # a parameter without gradient on every rank exactly where one process has none
        for record in records:
            assert record["records"][step]["no_grad"] == want["records"][step]["no_grad"], step
    torch.testing.assert_close(records[0]["params"], want["params"], rtol=1e-5, atol=1e-6)


def unshards(record: dict[str, Any], step: int, unit: str) -> int:
    return int(record["records"][step]["unshards"].get(unit, 0))


def test_a_block_at_depth_0_does_not_unshard_its_layer(ranks: list[dict[str, Any]]) -> None:
    records = scenario_result(ranks, "depth0")
    depths = [int(records[0]["records"][step]["drawn"][0]) for step in range(workers.STEPS)]
    assert depths.count(0) >= 3
    for step, depth in enumerate(depths):
        for record in records:
            # each repeat unshards the layer in forward, and again for its backward
            assert unshards(record, step, "unit0") == 2 * depth, (step, depth)
            assert unshards(record, step, "root") == 1


def test_a_block_whose_grad_depth_records_no_repeat_leaves_its_layer_without_gradient(
    ranks: list[dict[str, Any]],
) -> None:
    records = scenario_result(ranks, "grad_depth")
    want = single_process("grad_depth")
    sampler = workers.SeededDepth(0, 1, seed=4)
    recorded = [sampler.sample() for _ in range(workers.STEPS)]  # grad_depth's draws
    assert recorded.count(0) >= 3
    layer = slice(2, 4)  # the block's layer's weight and bias, after the first Linear
    for step, k in enumerate(recorded):
        assert all(want["records"][step]["no_grad"][layer]) == (k == 0)
        for record in records:
            assert record["records"][step]["no_grad"] == want["records"][step]["no_grad"]
            # two forward unshards (depth 2) and one for the backward pass, even at
            # k = 0: FSDP2's backward prefetch follows the forward order, no-grad
            # repeats included
            assert unshards(record, step, "unit0") == 3, (step, k)


@pytest.mark.parametrize("name", ["per_row", "per_row_grad"])
def test_per_row_blocks_make_the_same_layer_calls_on_every_rank(
    ranks: list[dict[str, Any]], name: str
) -> None:
    records = scenario_result(ranks, name)
    own_rows_idle = 0
    for step in range(workers.STEPS):
        counts = [unshards(record, step, "unit0") for record in records]
        assert counts[0] == counts[1], (step, counts)
        depths = [record["records"][step]["drawn"][0] for record in records]
        if not torch.cat(depths).any():
            assert counts[0] == 0  # every row of the global batch skipped the layer
        elif any(not d.any() for d in depths):
            own_rows_idle += 1  # this rank called the layer on no rows, for the others
    if name == "per_row":
        assert own_rows_idle >= 3


def test_dropped_layers_are_not_unsharded_in_batch_mode(ranks: list[dict[str, Any]]) -> None:
    records = scenario_result(ranks, "drop_batch")
    everything_dropped = 0
    for step in range(workers.STEPS):
        keep = records[0]["records"][step]["drawn"][0]
        everything_dropped += not bool(keep.any())
        for record in records:
            for layer in range(workers.LAYERS):
                want = 2 if keep[layer] else 0  # forward, and backward after resharding
                assert unshards(record, step, f"unit{layer}") == want, (step, layer)
    assert everything_dropped >= 1


def test_a_layer_no_row_keeps_is_not_unsharded_in_row_mode(ranks: list[dict[str, Any]]) -> None:
    records = scenario_result(ranks, "drop_row")
    dropped_everywhere = kept_by_one_rank = 0
    for step in range(workers.STEPS):
        keep = global_draws(records, step)[0]  # (layers, global rows)
        half = workers.ROWS // workers.WORLD_SIZE
        for layer in range(workers.LAYERS):
            counts = [unshards(record, step, f"unit{layer}") for record in records]
            want = 2 if keep[layer].any() else 0
            assert counts == [want, want], (step, layer)
            dropped_everywhere += not bool(keep[layer].any())
            by_rank = [bool(keep[layer, :half].any()), bool(keep[layer, half:].any())]
            kept_by_one_rank += by_rank.count(True) == 1
    assert dropped_everywhere >= 3
    assert kept_by_one_rank >= 3  # the other rank then ran the layer on no rows


def test_local_row_draws_repeat_one_pattern_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    """``row_draws="local"``: what row draws did before; row ``i`` of every rank alike."""
    records = scenario_result(ranks, "drop_row_local")
    want = single_process("drop_row_local")
    differs = 0
    for step in range(workers.STEPS):
        keeps = [record["records"][step]["drawn"][0] for record in records]
        assert torch.equal(keeps[0], keeps[1]), step
        differs += not torch.equal(torch.cat(keeps, dim=1), want["records"][step]["drawn"][0])
    assert differs >= workers.STEPS // 2
    assert all(record["params_identical"] for record in records)


def test_the_fsdp_benchmark_runs_and_prints_every_row() -> None:
    """Only that it runs: the figures belong to the benchmark's report."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fsdp.py"
    args = ("--steps", "2", "--chunk", "1", "--layers", "2", "--width", "16", "--tokens", "4")
    result = run_python(script, *args, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[2:]] == [
        "every layer",
        "drop rate 0.1",
        "drop rate 0.3",
        "drop rate 0.5",
    ]
