"""The drop rules: the built-ins' draws, and the check of what a rule returns."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from stochdepth import BernoulliDrop, LayerDropList, NestedDrop


def test_a_rule_that_returns_the_wrong_mask_is_named() -> None:
    class Wrong:
        def draw(self, drop_rates: Tensor, rows: int | None, generator: torch.Generator) -> Tensor:
            return torch.ones(len(drop_rates))

        def __repr__(self) -> str:
            return "Wrong()"

    stack = LayerDropList([nn.Identity()] * 2, 0.5, rule=Wrong())
    with pytest.raises(
        TypeError, match=r"drop rule Wrong\(\) must return a bool tensor of shape \(2,\)"
    ):
        stack(torch.zeros(1))


def test_bernoulli_drops_independently_and_nested_drops_nested_sets() -> None:
    drop = torch.tensor([0.5, 0.5], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    nested = NestedDrop().draw(drop, 2000, generator)
    assert torch.equal(nested[0], nested[1])  # equal rates: dropped together, always
    independent = BernoulliDrop().draw(drop, 2000, generator)
    both = int((independent[0] & independent[1]).sum())
    assert 400 < both < 600  # about a quarter, far from the half that equality gives
