"""Run ``stochdepth train`` and park it at a chosen point, for a test to kill it there.

    python park.py step N -- train ARGS...   stop inside step N's forward pass
    python park.py save N -- train ARGS...   stop in the N-th checkpoint save (from 1),
                                             half of the temporary file written

Once parked, it writes ``PARKED`` on stderr and sleeps; the test then sends SIGKILL.
Nothing else about the run changes: the hooks neither draw random numbers nor touch
the model's arithmetic, so the steps before the park are those of a normal run.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

from torch import nn

import stochdepth.training._checkpoint
from stochdepth import DynamicNet
from stochdepth._cli import main


def park() -> None:
    sys.stdout.flush()
    sys.stderr.write("PARKED\n")  # one write: the lines of two parked ranks stay whole
    sys.stderr.flush()
    time.sleep(600)  # the test kills us long before
    os._exit(3)


def park_in_step(step: int) -> None:
    calls = 0

    def hook(module: nn.Module, args: Any) -> None:
        nonlocal calls
        if isinstance(module, DynamicNet):
            if calls == step:
                park()
            calls += 1

    nn.modules.module.register_module_forward_pre_hook(hook)


def park_in_save(number: int) -> None:
    calls = 0
    write_all = stochdepth.training._checkpoint._write_all

    def stalled(file: IO[bytes], data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls < number:
            write_all(file, data)
            return
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        park()

    stochdepth.training._checkpoint._write_all = stalled


if __name__ == "__main__":
    mode, count, dashes, *argv = sys.argv[1:]
    assert dashes == "--", sys.argv
    {"step": park_in_step, "save": park_in_save}[mode](int(count))
    sys.exit(main(argv))
