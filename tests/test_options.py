"""Every constructor option of RepeatedBlock and LayerDropList reads back, and assigning one
either takes effect with the constructor's checks or raises a clear error."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

from stochdepth import FixedDepth, LayerDropList, NestedDrop, RepeatedBlock, SeededDepth


class Timed(nn.Module):
    """A layer that adds its repeat index, and returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, *, step: int = 0) -> tuple[torch.Tensor, int]:
        return self.linear(x) + step, step


def test_every_constructor_option_of_repeated_block_reads_back() -> None:
    sampler, grad = SeededDepth(0, 3, seed=0), SeededDepth(0, 1, seed=1)
    given: dict[str, Any] = {
        "sampler": sampler,
        "eval_depth": 2,
        "depth_limit": 50,
        "mode": "skip",
        "per_sample": True,
        "per_token": False,  # it refuses per_sample=True
        "checkpoint": 2,
        "row_args": ("mask", 0),
        "step_kwarg": "step",
        "output": 0,
        "grad_depth": grad,
        "row_draws": "local",
    }
    layer = Timed()
    block = RepeatedBlock(layer, **given)
    parameters = set(inspect.signature(RepeatedBlock).parameters) - {"layer"}
    assert parameters == set(given)
    assert block.layer is layer
    for name, value in given.items():
        if name == "row_args":  # read back normalized: positions first, then names
            assert block.row_args == (0, "mask")
        else:
            assert getattr(block, name) == value, name


def test_every_constructor_option_of_layer_drop_list_reads_back() -> None:
    layers = [nn.Linear(2, 2) for _ in range(3)]
    rule = NestedDrop()
    given: dict[str, Any] = {
        "drop_rate": (0.1, 0.2, 0.3),
        "mode": "masked",
        "per_sample": True,
        "residual": True,
        "scale": "eval",
        "seed": 7,
        "rule": rule,
        "eval_layers": (0, 2),
        "row_args": ("mask",),
        "output": 0,
        "row_draws": "local",
    }
    stack = LayerDropList(layers, **given)
    # masked= is a deprecated spelling of mode="masked"; reading .masked warns (issue 19)
    parameters = set(inspect.signature(LayerDropList).parameters) - {"layers", "masked"}
    assert parameters == set(given)
    assert list(stack.children()) == layers
    for name, value in given.items():
        assert getattr(stack, name) == value, name


def test_grad_depth_assigned_takes_effect() -> None:
    """It used to be silently ignored."""
    torch.manual_seed(0)
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(4))
    x = torch.randn(2, 3, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None
    block.grad_depth = 1  # only the last of 4 repeats is recorded: x gets no gradient
    assert block.grad_depth == 1
    x.grad = None
    block(x).sum().backward()
    assert x.grad is None
    assert block.layer.weight.grad is not None
    block.grad_depth = None
    block(x).sum().backward()
    assert x.grad is not None


def test_step_kwarg_output_and_row_args_assigned_take_effect() -> None:
    torch.manual_seed(0)
    layer = Timed()
    block = RepeatedBlock(layer, FixedDepth(2), output=0)
    x = torch.randn(4, 3)
    plain = block(x)
    block.step_kwarg = "step"  # repeat 1 adds 1
    want = layer(layer(x, step=0)[0], step=1)[0]
    torch.testing.assert_close(block(x), want)
    assert not torch.allclose(block(x), plain)
    block.output = lambda result: result[0]
    torch.testing.assert_close(block(x), want)
    block.row_args = "mask"
    assert block.row_args == ("mask",)
    with pytest.raises(ValueError, match="a row per row of x"):
        block(x, mask=torch.ones(3, 1))  # 3 rows for an input of 4: checked now


def test_checkpoint_and_per_sample_assigned_take_effect() -> None:
    torch.manual_seed(0)
    block = RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 4, seed=0))
    x = torch.randn(5, 3)
    block.per_sample = True
    block(x)
    assert isinstance(block.last_depth, torch.Tensor)
    assert block.last_depth.shape == (5,)
    block.checkpoint = True
    depths = block.last_depth
    out = block(x, depth=depths)
    block.checkpoint = False
    torch.testing.assert_close(block(x, depth=depths), out)
    assert block.checkpoint is False


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("grad_depth", -1, ValueError, "grad_depth must be an int >= 0"),
        ("grad_depth", "1", TypeError, "grad_depth must be None, an int"),
        ("step_kwarg", "not a name", ValueError, "step_kwarg"),
        ("output", 1.5, TypeError, "output"),
        ("row_args", [0, 0], ValueError, "row_args"),
        ("checkpoint", 0, ValueError, "checkpoint must be an int >= 1"),
        ("per_sample", 1, TypeError, "per_sample"),
        ("mode", "masked", AttributeError, r"RepeatedBlock\.mode is fixed at construction"),
        ("depth_limit", 5, AttributeError, r"RepeatedBlock\.depth_limit is fixed"),
        ("layer", 3, TypeError, "layer must be a torch.nn.Module"),
    ],
)
def test_a_bad_assignment_to_a_block_raises_and_changes_nothing(
    name: str, value: object, error: type[Exception], match: str
) -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), step_kwarg=None)
    before = getattr(block, name)
    with pytest.raises(error, match=match):
        setattr(block, name, value)
    assert getattr(block, name) is before or getattr(block, name) == before


def test_masked_mode_checks_what_is_assigned_as_at_construction() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), mode="masked")
    with pytest.raises(ValueError, match="grad_depth is not supported with mode='masked'"):
        block.grad_depth = 1
    with pytest.raises(ValueError, match="running statistics"):
        block.layer = nn.BatchNorm1d(3)
    assert isinstance(block.layer, nn.Linear)


def test_a_module_valued_option_goes_to_its_property() -> None:
    class ModuleOutput(nn.Module):
        def forward(self, result: tuple[torch.Tensor, int]) -> torch.Tensor:
            return result[0]

    block = RepeatedBlock(Timed(), FixedDepth(1), output=0)
    reader = ModuleOutput()
    block.output = reader
    assert block.output is reader
    assert "output" not in dict(block.named_children())
    block(torch.randn(2, 3))


class MaskedLinear(nn.Linear):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(x)
        return out if mask is None else out * mask


def test_layer_drop_list_options_assigned_take_effect() -> None:
    layers = [MaskedLinear(2, 2) for _ in range(4)]
    stack = LayerDropList(layers, 0.5, seed=0)
    stack.drop_rate = 0.0
    assert stack.drop_rates == (0.0,) * 4
    stack(torch.randn(3, 2))
    assert stack.last_keep is not None
    assert stack.last_keep.all()
    stack.drop_rate = 1.0
    stack.per_sample = True
    stack.row_args = ["mask"]
    stack(torch.randn(3, 2), mask=torch.ones(3, 1))
    assert stack.last_keep is not None
    assert tuple(stack.last_keep.shape) == (4, 3)
    assert not stack.last_keep.any()
    stack.residual = True
    stack.scale = "eval"
    stack.eval()
    x = torch.randn(3, 2)
    want = x
    for layer in layers:
        want = want + 0.0 * layer(want)
    torch.testing.assert_close(stack(x, mask=None), want)
    stack.rule = "nested"
    assert isinstance(stack.rule, NestedDrop)
    stack.output = 0
    assert stack.output == 0


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("per_sample", False, ValueError, "row_args names arguments cut to the kept rows"),
        ("per_sample", "yes", TypeError, "per_sample"),
        ("mode", "row", ValueError, "mode must be one of 'skip', 'masked'"),
        ("residual", False, ValueError, "scale='eval' .* needs residual=True"),
        ("scale", "both", ValueError, "scale must be one of"),
        ("rule", "no-such-rule", ValueError, "no-such-rule"),
        ("row_args", [1.5], TypeError, "row_args entries must be ints"),
        ("output", "0", TypeError, "output must be None, an int"),
        ("drop_rate", 1.5, ValueError, "drop_rate"),
        ("seed", 3, AttributeError, r"LayerDropList\.seed is the seed the generator started"),
    ],
)
def test_a_bad_assignment_to_a_list_raises_and_changes_nothing(
    name: str, value: object, error: type[Exception], match: str
) -> None:
    stack = LayerDropList(
        [nn.Linear(2, 2)] * 2, 0.5, per_sample=True, row_args=["m"], residual=True, scale="eval"
    )
    before = getattr(stack, name)
    with pytest.raises(error, match=match):
        setattr(stack, name, value)
    assert getattr(stack, name) is before or getattr(stack, name) == before


@pytest.mark.parametrize(
    "make",
    [
        lambda: RepeatedBlock(nn.Linear(2, 2), per_sample=True),
        lambda: LayerDropList([nn.Linear(2, 2)] * 2, 0.5, per_sample=True),
    ],
)
def test_row_draws_assigned_takes_effect_with_the_constructors_check(make: Any) -> None:
    module = make()
    assert module.row_draws == "global"
    module.row_draws = "local"
    assert module.row_draws == "local"
    with pytest.raises(ValueError, match="row_draws"):
        module.row_draws = "everywhere"
    assert module.row_draws == "local"


def test_a_per_token_block_refuses_per_sample_and_grad_depth_assigned() -> None:
    """As its constructor does (the setters used to swap in the per-row strategy)."""
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), per_token=True)
    with pytest.raises(ValueError, match="choose one"):
        block.per_sample = True
    with pytest.raises(ValueError, match="grad_depth is not supported with per_token=True"):
        block.grad_depth = 1
    assert block.per_sample is False
    assert block.grad_depth is None
    out = block(torch.randn(2, 4, 3), depth=torch.ones(2, 4, dtype=torch.int64))
    assert out.shape == (2, 4, 3)


def test_checkpoint_assigned_recomputes_the_repeats_in_backward() -> None:
    calls: list[int] = []
    layer = nn.Linear(3, 3)
    layer.register_forward_hook(lambda *_: calls.append(1))
    block = RepeatedBlock(layer, FixedDepth(2))
    x = torch.randn(2, 3, requires_grad=True)
    block(x).sum().backward()
    assert len(calls) == 2
    block.checkpoint = True
    calls.clear()
    block(x).sum().backward()
    assert len(calls) > 2  # the backward pass ran the layer again
