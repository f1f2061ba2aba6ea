"""Run ``examples/halting.py`` and park it inside a chosen training step, for a test to kill.

    python park_halting.py N -- ARGS...   stop inside supervision step N (from 1), after
                                          its rows were drawn, before its end()

Once parked, it writes ``PARKED`` on stderr and sleeps; the test then sends SIGKILL.
The hook draws no random numbers and leaves the arithmetic alone.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from torch import nn

from stochdepth import ACTHalting

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "halting.py"


def main() -> None:
    step = int(sys.argv[1])
    assert sys.argv[2] == "--"
    calls = 0

    def hook(module: nn.Module, args: Any) -> None:
        nonlocal calls
        if isinstance(module, ACTHalting) and module.training:
            calls += 1
            if calls == step:
                sys.stdout.flush()
                sys.stderr.write("PARKED\n")
                sys.stderr.flush()
                time.sleep(600)  # the test kills us long before
                os._exit(3)

    nn.modules.module.register_module_forward_pre_hook(hook)
    spec = importlib.util.spec_from_file_location("halting_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    module.main(sys.argv[3:])


if __name__ == "__main__":
    main()
