"""linear_drop_rates: the per-layer drop rates of a linear schedule."""

from __future__ import annotations

import pytest
import torch

from stochdepth import linear_drop_rates


def test_linear_drop_rates_follow_timm() -> None:
    assert linear_drop_rates(0.1, 12) == pytest.approx(torch.linspace(0, 0.1, 12).tolist())
    assert linear_drop_rates(0.5, 1) == [0.0]
    assert linear_drop_rates(0.3, 4)[-1] == 0.3
