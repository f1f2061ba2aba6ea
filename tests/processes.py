"""Running Python in a subprocess, as a user would from a shell, or as spawned DDP ranks."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

# torch 2.13 warns on stderr at import when NumPy is absent; stochdepth does not use
# NumPy, and the tests check that stderr holds nothing else.
QUIET_ENV = {**os.environ, "PYTHONWARNINGS": "ignore:Failed to initialize NumPy:UserWarning"}

TIMEOUT = 300  # seconds: a hang fails the test instead of stalling the run


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
    entry: Callable[[int, str, str], None], world_size: int, out: Path, deadline_s: float
) -> list[dict[str, Any]]:
    """Spawn ``world_size`` ranks of ``entry(rank, init_file, out_dir)``; return what each saved.

    Each rank saves its results to ``out/rank{N}.pt``. Ranks still running after
    ``deadline_s`` seconds fail the test (a hang) and are killed.
    """
    context = mp.start_processes(
        entry,
        args=(str(out / "init"), str(out)),
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
