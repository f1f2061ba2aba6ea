"""The example plugin package, examples/sampler-plugin, installed for real and removed again.

The module installs the package into the test environment with pip (as a user
would), uses its sampler by name from Python and from ``python -m stochdepth``, and
uninstalls it at the end, checking that it is gone.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from stochdepth import (
    DynamicNet,
    RepeatedBlock,
    UnknownPluginError,
    available_samplers,
    get_sampler,
    refresh_samplers,
    train,
)

from support.processes import QUIET_ENV, TIMEOUT, run_python

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "sampler-plugin"
DIST = "stochdepth-cyclic"

pytestmark = pytest.mark.skipif(
    sys.prefix == sys.base_prefix,
    reason=(
        "the tests install examples/sampler-plugin with pip and run outside a virtual "
        "environment, where they would change the system's Python"
    ),
)


def pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
        check=True,
        timeout=TIMEOUT,
        env=QUIET_ENV,
    )


def installed() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def _plugin_installed() -> Iterator[None]:
    """Install the example plugin for this module's tests; uninstall it afterwards."""
    assert not installed(), f"{DIST} is installed already; uninstall it before the tests"
    pip("install", "--no-deps", str(PLUGIN))
    refresh_samplers()
    try:
        yield
    finally:
        pip("uninstall", "--yes", DIST)
        sys.modules.pop("stochdepth_cyclic", None)
        refresh_samplers()
    assert not installed()
    assert "cyclic" not in available_samplers()
    with pytest.raises(UnknownPluginError):
        get_sampler("cyclic")


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "stochdepth", *args, check=False)


def test_the_plugin_is_installed_with_its_entry_point() -> None:
    (entry,) = importlib.metadata.distribution(DIST).entry_points
    assert (entry.group, entry.name, entry.value) == (
        "stochdepth.samplers",
        "cyclic",
        "stochdepth_cyclic:CyclicDepth",
    )


def test_the_plugin_is_usable_by_name_from_python() -> None:
    assert "cyclic" in available_samplers()
    sampler = get_sampler("cyclic:low=1,high=3")
    assert type(sampler).__module__ == "stochdepth_cyclic"
    assert [sampler.sample() for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]


def test_the_plugin_trains_and_saves_its_state_in_the_block() -> None:
    torch.manual_seed(0)
    model = DynamicNet(5, 4, 2, get_sampler("cyclic:low=0,high=2"))
    history = train(model, torch.randn(8, 5), torch.randn(8, 2), steps=7, log_every=None)
    assert history.depths == [0, 1, 2, 0, 1, 2, 0]
    assert history.depth_histogram == {0: 3, 1: 2, 2: 2}
    twin = DynamicNet(5, 4, 2, get_sampler("cyclic:low=0,high=2"))
    twin.load_state_dict(model.state_dict())
    assert isinstance(twin.middle, RepeatedBlock)
    assert twin.middle.sampler.sample() == 1  # the cycle continues where it was


def test_the_plugin_is_usable_from_the_command_line() -> None:
    listing = run_module("samplers")
    assert listing.returncode == 0, listing.stderr
    assert any(
        line.startswith("cyclic ") and line.endswith("[stochdepth_cyclic]")
        for line in listing.stdout.splitlines()
    ), listing.stdout
    result = run_module(
        "train", "--sampler", "cyclic:low=1,high=2", "--steps", "20", "--log-every", "10"
    )
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["9", "19"]
    assert result.stderr.endswith("mean depth 1.500, depths 1:10 2:10\n"), result.stderr


def test_the_plugins_own_errors_reach_the_command_line_as_one_line() -> None:
    result = run_module("train", "--sampler", "cyclic:low=3,high=1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1
    assert "argument --sampler: sampler 'cyclic': high must be >= low" in result.stderr
