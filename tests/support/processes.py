"""Running Python in a subprocess, as a user would from a shell, or as spawned DDP ranks.

The DDP rank harness is in two halves: :func:`spawn_ranks` in the test starts the ranks
and collects what they saved; :func:`run_rank` in each rank joins the gloo group, runs
the scenarios and saves their results.
"""

from __future__ import annotations

import datetime
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# torch 2.13 warns on stderr at import when NumPy is absent; stochdepth does not use
# NumPy, and the tests check that stderr holds nothing else.
QUIET_ENV = {**os.environ, "PYTHONWARNINGS": "ignore:Failed to initialize NumPy:UserWarning"}

TIMEOUT = 300  # seconds: a hang fails the test instead of stalling the run

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=30)  # a hang inside gloo fails, not stalls

Scenario = Callable[[int], dict[str, Any]]
"""What a rank runs: ``scenario(rank)`` returns what the test checks."""


def run_python(
    *args: str | Path, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS...`` with this interpreter; return what it printed.

    ``env`` adds to (or overrides) the environment's variables.
    """
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        timeout=TIMEOUT,
        env={**QUIET_ENV, **(env or {})},
    )


def kill_when_parked(*args: str | Path, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Run ``python ARGS...`` until it writes ``PARKED`` on stderr, then SIGKILL it.

    Returns:
        What it printed on stdout and stderr before it was killed.
    """
    child = subprocess.Popen(
        [sys.executable, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**QUIET_ENV, **(env or {})},
    )
    assert child.stderr is not None
    err = b""
    deadline = time.monotonic() + TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(child.stderr, selectors.EVENT_READ)
        while b"PARKED\n" not in err:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(timeout=left):
                child.kill()
                raise AssertionError(f"the run did not park in {TIMEOUT} s: {err!r}")
            chunk = os.read(child.stderr.fileno(), 4096)
            if not chunk:
                child.wait(timeout=TIMEOUT)
                raise AssertionError(f"the run ended without parking: {err!r}")
            err += chunk
    child.send_signal(signal.SIGKILL)
    out, rest = child.communicate(timeout=TIMEOUT)
    assert child.returncode == -signal.SIGKILL
    return out.decode(), (err + rest).decode()


def spawn_ranks(
    entry: Callable[..., None],
    world_size: int,
    out: Path,
    deadline_s: float,
    extra: tuple[Any, ...] = (),
) -> list[dict[str, Any]]:
    """Spawn ``world_size`` ranks of ``entry(rank, init_file, out_dir, *extra)``; collect them.

    Each rank saves its results to ``out/rank{N}.pt``. Ranks still running after
    ``deadline_s`` seconds fail the test (a hang) and are killed. ``extra`` travels to
    the ranks as ``torch.multiprocessing`` pickles it (tensors in shared memory).
    """
    context = mp.start_processes(
        entry,
        args=(str(out / "init"), str(out), *extra),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the {world_size} DDP ranks did not finish within {deadline_s} s: a hang"
                )
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def run_rank(
    rank: int, init_file: str, out_dir: str, world_size: int, scenarios: Mapping[str, Scenario]
) -> None:
    """The body of each spawned rank: join the gloo group, run the scenarios, save the results.

    Saves ``{name: scenario(rank)}`` to ``out_dir/rank{N}.pt`` for :func:`spawn_ranks`. A
    scenario that raises is recorded as ``{"error_type", "error", "traceback"}`` instead of
    killing the rank; the ranks meet at a barrier after each scenario.
    """
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    results: dict[str, Any] = {}
    try:
        for name, scenario in scenarios.items():
            try:
                results[name] = scenario(rank)
            except Exception as error:
                results[name] = {
                    "error_type": type(error).__name__,
                    "error": str(error),
                    "traceback": traceback.format_exc(),
                }
            dist.barrier()
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


def scenario_result(
    ranks: list[dict[str, Any]], name: str, *, raises: bool = False
) -> list[dict[str, Any]]:
    """One scenario's record on every rank; fails if it raised, or, if ``raises``, did not.

    ``ranks`` is what :func:`spawn_ranks` returned for workers that record each scenario
    under its name, with a ``"traceback"`` entry when it raised.
    """
    records = [rank_results[name] for rank_results in ranks]
    for rank, record in enumerate(records):
        if ("traceback" in record) != raises:
            what = record.get("traceback", "no error")
            pytest.fail(f"scenario {name!r} on rank {rank}: {what}")
    return records
