"""The trainer's SGD step: bitwise ``optimizer.step()``, state included."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from stochdepth.training._sgd import sgd_step

OPTIONS = [
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2},
    {"lr": 1e-2, "momentum": 0.5, "dampening": 0.1, "weight_decay": 1e-3},
    {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "maximize": True},
]


def twins(options: dict[str, Any]) -> tuple[nn.Module, Any, nn.Module, Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.Linear(3, 2))
    twin = copy.deepcopy(model)
    return (
        model,
        torch.optim.SGD(model.parameters(), **options),
        twin,
        torch.optim.SGD(twin.parameters(), **options),
    )


def assert_same_parameters(model: nn.Module, twin: nn.Module) -> None:
    for mine, theirs in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def backward(model: nn.Module, x: torch.Tensor, skip_last: bool) -> None:
    for param in model.parameters():
        param.grad = None
    h = model[2](model[1](model[0](x)))  # the last Linear gets no gradient, on some steps
    out = h if skip_last else model[3](h)
    out.square().sum().backward()


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o))
def test_sgd_step_is_optimizer_step_bitwise(options: dict[str, Any]) -> None:
    model, optimizer, twin, reference = twins(options)
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(8, 5, generator=generator)
        skip_last = step in (0, 3)  # a parameter without a gradient has no buffer yet
        backward(model, x, skip_last)
        backward(twin, x, skip_last)
        sgd_step(optimizer)
        reference.step()
        assert_same_parameters(model, twin)
        mine_state, their_state = optimizer.state_dict(), reference.state_dict()
        assert mine_state["param_groups"] == their_state["param_groups"]
        assert mine_state["state"].keys() == their_state["state"].keys()
        for key, value in their_state["state"].items():
            buffer = value.get("momentum_buffer")
            assert (buffer is None) == (mine_state["state"][key].get("momentum_buffer") is None)
            if buffer is not None:
                assert torch.equal(mine_state["state"][key]["momentum_buffer"], buffer)


def test_sgd_step_reads_a_loaded_state() -> None:
    # Resuming a checkpoint replaces the optimizer's groups and state: the step uses them.
    model, optimizer, twin, reference = twins({"lr": 1e-2, "momentum": 0.9})
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    backward(twin, x, False)
    reference.step()
    reference.param_groups[0]["lr"] = 5e-3
    model.load_state_dict(twin.state_dict())
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # no shared buffers
    for _ in range(2):
        backward(model, x, False)
        backward(twin, x, False)
        sgd_step(optimizer)
        reference.step()
    assert_same_parameters(model, twin)
