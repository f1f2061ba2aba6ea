"""Running Python in a subprocess, as a user would from a shell."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

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
