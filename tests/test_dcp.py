"""Distributed checkpoints (DCP) of a sharded model with random depth: killed, then resumed.

Two gloo ranks train ``fsdp_workers.mixed_model`` (a per-row ``RepeatedBlock`` with a
``grad_depth`` sampler, then a row-mode ``LayerDropList``: three generators) under
FSDP2, saving the model, the optimizer and every module's state with
``get_state_dict`` and ``dcp.save`` every few steps. The run is killed with SIGKILL
inside a step; a fresh job resumes from the last complete checkpoint, on two ranks and
on one, and is compared with the uninterrupted run.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.multiprocessing import ProcessExitedException

from support import fsdp_workers as workers
from support.processes import spawn_ranks

SPAWN_DEADLINE = 300  # seconds: a hang fails the test instead of stalling the run


def _job(checkpoints: Path | None, world_size: int, *, kill_at: int | None, resume: bool) -> Any:
    return functools.partial(
        workers.run_checkpointed,
        checkpoints=None if checkpoints is None else str(checkpoints),
        world_size=world_size,
        kill_at=kill_at,
        resume=resume,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkpoints = tmp_path_factory.mktemp("dcp_checkpoints")
    killed_out = tmp_path_factory.mktemp("dcp_killed")
    job = _job(checkpoints, workers.WORLD_SIZE, kill_at=workers.KILL_AT, resume=False)
    with pytest.raises(ProcessExitedException) as killed:
        spawn_ranks(job, workers.WORLD_SIZE, killed_out, SPAWN_DEADLINE)
    latest = int((checkpoints / "latest").read_text())
    resumed = {
        world_size: _runs(
            spawn_ranks(
                _job(checkpoints, world_size, kill_at=None, resume=True),
                world_size,
                tmp_path_factory.mktemp(f"dcp_resumed_{world_size}"),
                SPAWN_DEADLINE,
            )
        )
        for world_size in (workers.WORLD_SIZE, 1)
    }
    uninterrupted = _runs(
        spawn_ranks(
            _job(None, workers.WORLD_SIZE, kill_at=None, resume=False),
            workers.WORLD_SIZE,
            tmp_path_factory.mktemp("dcp_uninterrupted"),
            SPAWN_DEADLINE,
        )
    )
    return {
        "killed": killed.value,
        "latest": latest,
        "resumed": resumed,
        "reference": uninterrupted,
    }


def _runs(ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rank["run"] for rank in ranks]


def checked(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for rank, record in enumerate(records):
        if "traceback" in record:
            pytest.fail(f"rank {rank}: {record['traceback']}")
    return records


def draws(records: list[dict[str, Any]], step: int) -> list[torch.Tensor]:
    """Every module's draw at ``step`` (index into the records) over the global batch."""
    per_rank = [record["records"][step]["drawn"] for record in records]
    return [torch.cat(values, dim=-1) for values in zip(*per_rank, strict=True)]


def test_the_killed_run_died_of_sigkill_after_a_complete_checkpoint(
    runs: dict[str, Any],
) -> None:
    assert runs["killed"].signal_name == "SIGKILL"
    assert runs["killed"].exit_code == -signal.SIGKILL
    # checkpoints every DCP_EVERY steps; killed inside step KILL_AT
    assert runs["latest"] == workers.KILL_AT // workers.DCP_EVERY * workers.DCP_EVERY


def test_a_run_resumed_on_as_many_ranks_equals_the_uninterrupted_run(runs: dict[str, Any]) -> None:
    reference = checked(runs["reference"])
    resumed = checked(runs["resumed"][workers.WORLD_SIZE])
    start = runs["latest"]
    assert all(record["start"] == start for record in resumed)
    for index, step in enumerate(range(start, workers.DCP_STEPS)):
        for a, b in zip(draws(resumed, index), draws(reference, step), strict=True):
            assert torch.equal(a, b), step
    for record, want in zip(resumed, reference, strict=True):
        assert torch.equal(record["params"], want["params"])
        assert _same_state(record["states"], want["states"])


def test_a_run_resumed_on_one_rank_draws_the_same_and_ends_within_rounding(
    runs: dict[str, Any],
) -> None:
    """The documented rule: global row draws depend on the global batch, not on the ranks."""
    reference = checked(runs["reference"])
    (alone,) = checked(runs["resumed"][1])
    start = runs["latest"]
    for index, step in enumerate(range(start, workers.DCP_STEPS)):
        for a, b in zip(draws([alone], index), draws(reference, step), strict=True):
            assert torch.equal(a, b), step
    # the gradient of the global batch, summed in one process instead of two halves
    torch.testing.assert_close(alone["params"], reference[0]["params"], rtol=1e-5, atol=1e-6)
    assert _same_state(alone["states"], reference[0]["states"])


def _same_state(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(a == b)
