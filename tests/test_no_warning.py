"""A plain run prints no warning: torch's "Failed to initialize NumPy" included.

torch warns on stderr at import when NumPy is absent; stochdepth depends on NumPy so that
its users never see that warning (docs/changelog.md says why a dependency, not a filter).
tests/test_public_api.py checks the dependency. These runs are a user's: a subprocess with
no warning filter of the tests' own (``processes.QUIET_ENV`` hides that warning; these runs
do not use it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.processes import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
USER_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}


@pytest.mark.parametrize(
    "args",
    [
        ("-m", "stochdepth", "train", "--help"),
        ("-m", "stochdepth", "train", "--steps", "5"),
        (str(ROOT / "examples" / "tutorial9.py"), "--seed", "0"),
    ],
    ids=["train --help", "train --steps 5", "tutorial9.py --seed 0"],
)
def test_a_plain_run_prints_no_warning(args: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
        env=USER_ENV,
        cwd=ROOT,
    )
    assert "Warning" not in result.stderr, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr
    if args[-1] == "--help":
        assert result.stderr == ""
    if "tutorial9.py" in args[0]:
        assert result.stderr == ""
        assert len(result.stdout.splitlines()) == 5
