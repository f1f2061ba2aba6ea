"""Hypothesis profiles and shared fixtures.

Profiles: ``quick`` (the default here, 25 examples a test), ``thorough`` (500),
``random`` (as ``quick``, with no example database, so that a run depends on its
``--hypothesis-seed`` alone: ``.ci/run`` uses it with a fresh seed), and Hypothesis's own
``ci`` profile, which loads itself when the ``CI`` environment variable is set and is not
overridden here. Choose one with ``HYPOTHESIS_PROFILE``:

    HYPOTHESIS_PROFILE=thorough python -m pytest
    HYPOTHESIS_PROFILE=random python -m pytest --hypothesis-seed=12345
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

settings.register_profile("quick", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.register_profile(
    "random", max_examples=25, deadline=None, database=None, derandomize=False
)

if "HYPOTHESIS_PROFILE" in os.environ:
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif not os.environ.get("CI"):
    settings.load_profile("quick")

# Small tensors: more threads only add noise and start-up time on 2-core machines.
torch.set_num_threads(1)

CUDA_DEVICES = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
NO_CUDA_REASON = (
    "no CUDA device: torch.cuda.is_available() is False on this machine, so there is "
    "nothing to compare the CPU against"
)


@pytest.fixture(params=CUDA_DEVICES or [pytest.param(None, marks=pytest.mark.skip(NO_CUDA_REASON))])
def cuda_device(request: pytest.FixtureRequest) -> torch.device:
    """Every CUDA device in turn; skipped, with the reason, where there is none."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _restore_global_rngs() -> Iterator[None]:
    """Leave torch's and Python's global generators as each test found them.

    ``train --seed`` and many tests seed them; no test should see another's seed.
    """
    torch_state = torch.get_rng_state()
    random_state = random.getstate()
    yield
    torch.set_rng_state(torch_state)
    random.setstate(random_state)
