"""LayerDropList against hand-written loops: which layers run, on which rows, with what result."""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from torch._dynamo.testing import CompileCounter

import stochdepth
from stochdepth import (
    LayerDropList,
    linear_drop_rates,
)
from stochdepth._extra_state import decode_state

from support.stats import assert_follows

rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
seeds = st.integers(min_value=0, max_value=2**64 - 1)


class Recording(nn.Module):
    """A residual-free layer that records its index and how many rows it saw, in ``log``."""

    def __init__(self, index: int, width: int, log: list[tuple[int, int]]) -> None:
        super().__init__()
        self.index = index
        self.linear = nn.Linear(width, width, dtype=torch.float64)
        self.log = log

    def forward(self, h: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.log.append((self.index, h.shape[0]))
        return torch.tanh(self.linear(h))


def recording_stack(
    count: int, width: int = 3, **options: Any
) -> tuple[LayerDropList, list[tuple[int, int]]]:
    log: list[tuple[int, int]] = []
    layers = [Recording(i, width, log) for i in range(count)]
    return LayerDropList(layers, options.pop("drop_rate", 0.5), **options), log


def hand_step(h: Tensor, out: Tensor, rate: float, residual: bool, scale: str) -> Tensor:
    """A kept layer's new state in training, written out."""
    if not residual:
        return out
    if scale == "train" and rate:
        return h + out / (1.0 - rate)
    return h + out


# --------------------------------------------------------------------------- the law


@pytest.mark.parametrize("rule", ["bernoulli", "nested"])
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_each_layer_runs_with_probability_one_minus_its_rate(rule: str, mode: str) -> None:
    drop = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]
    stack = LayerDropList(
        [nn.Identity() for _ in drop],
        drop,
        per_sample=mode == "row",
        residual=True,
        seed=7,
        rule=rule,
    )
    rows = 1 if mode == "batch" else 25
    masks = [stack.draw_keep(None if mode == "batch" else rows) for _ in range(4000 // rows)]
    keep = torch.stack([m.reshape(len(drop), -1) for m in masks], dim=1).reshape(len(drop), -1)
    for layer, rate in enumerate(drop):
        assert_follows(keep[layer].long().tolist(), {1: 1.0 - rate, 0: rate})
    assert stack.draws == keep.shape[1]
    assert stack.layer_runs == keep.sum(dim=1).tolist()


def test_the_law_check_rejects_a_wrong_rate() -> None:
    stack = LayerDropList([nn.Identity()], 0.3, seed=0)
    keep = [int(stack.draw_keep()[0]) for _ in range(4000)]
    with pytest.raises(AssertionError, match="chi-square"):
        assert_follows(keep, {1: 0.6, 0: 0.4})


# --------------------------------------------------------------------------- batch mode


@given(
    count=st.integers(min_value=1, max_value=6),
    drop=rates,
    residual=st.booleans(),
    scale_eval=st.booleans(),
    seed=seeds,
)
def test_batch_mode_calls_exactly_the_kept_layers_in_order_and_equals_the_hand_loop(
    count: int, drop: float, residual: bool, scale_eval: bool, seed: int
) -> None:
    scale = "eval" if residual and scale_eval else "train"
    torch.manual_seed(0)
    stack, log = recording_stack(count, drop_rate=drop, residual=residual, scale=scale, seed=seed)
    x = torch.randn(4, 3, dtype=torch.float64)
    got = stack(x)
    keep = stack.last_keep
    assert keep is not None
    assert keep.shape == (count,)
    kept = [i for i in range(count) if keep[i]]
    assert [index for index, _ in log] == kept
    h = x
    for i in kept:
        h = hand_step(h, stack[i](h), drop, residual, scale)
    assert torch.equal(got, h)


def test_a_dropped_layer_gets_no_gradient() -> None:
    stack = LayerDropList([nn.Linear(3, 3) for _ in range(3)], 0.5, seed=2)
    keep = torch.tensor([True, False, True])
    stack(torch.randn(2, 3), keep=keep).sum().backward()
    assert stack[1].weight.grad is None
    assert stack[0].weight.grad is not None
    assert stack[2].weight.grad is not None


# --------------------------------------------------------------------------- row mode


@given(
    count=st.integers(min_value=1, max_value=5),
    rows=st.integers(min_value=1, max_value=6),
    drop=rates,
    residual=st.booleans(),
    seed=seeds,
)
def test_row_mode_equals_the_hand_per_row_result_and_runs_layers_on_kept_rows_only(
    count: int, rows: int, drop: float, residual: bool, seed: int
) -> None:
    torch.manual_seed(0)
    stack, log = recording_stack(
        count, drop_rate=drop, residual=residual, per_sample=True, seed=seed
    )
    x = torch.randn(rows, 3, dtype=torch.float64)
    got = stack(x)
    keep = stack.last_keep
    assert keep is not None
    assert keep.shape == (count, rows)
    ran = [(i, int(keep[i].sum())) for i in range(count) if keep[i].any()]
    assert log == ran  # each layer once, on its kept rows only, never on zero rows
    for row in range(rows):
        h = x[row : row + 1]
        for i in range(count):
            if keep[i, row]:
                h = hand_step(h, stack[i](h), drop, residual, "train")
        torch.testing.assert_close(got[row : row + 1], h, rtol=1e-12, atol=1e-12)


class Masked(nn.Module):
    """A layer with row-aligned extra arguments: a mask, and a nested (scale, shift) pair."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3, dtype=torch.float64)

    def forward(
        self, h: Tensor, mask: Tensor, pair: tuple[Tensor, Tensor], *, bias: dict[str, Tensor]
    ) -> Tensor:
        scale, shift = pair
        return self.linear(h) * mask * scale + shift + bias["b"] * bias["shared"][:, None]


def test_row_args_are_cut_to_the_kept_rows_by_position_and_keyword() -> None:
    torch.manual_seed(0)
    stack = LayerDropList(
        [Masked() for _ in range(4)],
        0.5,
        per_sample=True,
        residual=True,
        seed=3,
        row_args=(0, 1, "bias"),
    )
    rows = 6
    x = torch.randn(rows, 3, dtype=torch.float64)
    mask = (torch.rand(rows, 3) > 0.3).double()
    pair = (torch.randn(rows, 1, dtype=torch.float64), torch.randn(rows, 3, dtype=torch.float64))
    bias = {"b": torch.randn(rows, 3, dtype=torch.float64), "shared": torch.randn(rows)}
    got = stack(x, mask, pair, bias=bias)
    keep = stack.last_keep
    assert keep is not None
    assert not keep.all()
    assert keep.any()
    for row in range(rows):
        h = x[row : row + 1]
        one = slice(row, row + 1)
        for i in range(4):
            if keep[i, row]:
                out = stack[i](
                    h,
                    mask[one],
                    (pair[0][one], pair[1][one]),
                    bias={"b": bias["b"][one], "shared": bias["shared"][one]},
                )
                h = hand_step(h, out, 0.5, True, "train")
        torch.testing.assert_close(got[one], h, rtol=1e-12, atol=1e-12)


def test_a_row_argument_with_other_rows_is_refused_with_its_name() -> None:
    stack = LayerDropList([Masked()], 0.5, per_sample=True, seed=0, row_args=("bias",))
    x = torch.randn(4, 3, dtype=torch.float64)
    keep = torch.tensor([[True, False, True, True]])
    pair = (torch.ones(4, 1, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))
    bad = {"b": torch.zeros(5, 3, dtype=torch.float64), "shared": torch.zeros(1)}
    with pytest.raises(
        ValueError, match=r"keyword argument 'bias' as row-aligned.*h has 4 rows.*shape \(5, 3\)"
    ):
        stack(x, torch.ones(4, 3), pair, bias=bad, keep=keep)
    with pytest.raises(TypeError, match="argument 'bias' as row-aligned, so it must hold tensors"):
        stack(x, torch.ones(4, 3), pair, bias="no", keep=keep)


# --------------------------------------------------------------------------- expectations


def linear_branches(count: int, width: int) -> list[nn.Module]:
    torch.manual_seed(1)
    return [nn.Linear(width, width, bias=False, dtype=torch.float64) for _ in range(count)]


@pytest.mark.parametrize("scale", ["train", "eval"])
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_the_training_output_averages_exactly_to_the_evaluation_output(
    scale: str, mode: str
) -> None:
    """Over every keep pattern, weighted by its probability (linear branches: exact).

    With ``scale="eval"`` (the paper's), training keeps branches unscaled, and the mean
    is what evaluation computes with every branch times ``1 - p``.
    """
    drop = [0.2, 0.5, 0.7]
    stack = LayerDropList(
        linear_branches(3, 4), drop, per_sample=mode == "row", residual=True, scale=scale
    )
    x = torch.randn(2, 4, dtype=torch.float64)
    mean = torch.zeros_like(x)
    for pattern in itertools.product([False, True], repeat=3):
        weight = 1.0
        for kept, rate in zip(pattern, drop, strict=True):
            weight *= (1 - rate) if kept else rate
        keep = torch.tensor(pattern)
        if mode == "row":
            keep = keep[:, None].expand(3, 2)
        mean += weight * stack(x, keep=keep)
    stack.eval()
    torch.testing.assert_close(mean, stack(x), rtol=1e-12, atol=1e-12)


def test_row_mode_draws_average_to_the_evaluation_output() -> None:
    """Many identical rows through drawn masks: their mean is the evaluation output."""
    stack = LayerDropList(
        linear_branches(3, 2), [0.1, 0.4, 0.6], per_sample=True, residual=True, seed=5
    )
    rows = 20_000
    x = torch.randn(1, 2, dtype=torch.float64).expand(rows, 2).contiguous()
    with torch.no_grad():
        train = stack(x)
        stack.eval()
        want = stack(x[:1])
    error = train.std(dim=0) / rows**0.5
    assert ((train.mean(dim=0) - want[0]).abs() < 5 * error).all()


def test_evaluation_runs_every_layer_unscaled_or_the_chosen_subset() -> None:
    torch.manual_seed(0)
    stack, log = recording_stack(4, drop_rate=0.9, residual=True, seed=0)
    x = torch.randn(2, 3, dtype=torch.float64)
    stack.eval()
    h = x
    for i in range(4):
        h = h + stack[i](h)
    log.clear()
    assert torch.equal(stack(x), h)
    assert [i for i, _ in log] == [0, 1, 2, 3]
    stack.eval_layers = [3, 0]  # fairseq's layers-to-keep: applied in the stack's order
    h = x + stack[0](x)
    h = h + stack[3](h)
    log.clear()
    assert torch.equal(stack(x), h)
    assert [i for i, _ in log] == [0, 3]
    assert stack.layer_runs == [0, 0, 0, 0]  # evaluation is not counted


def test_the_papers_convention_scales_branches_at_evaluation() -> None:
    torch.manual_seed(0)
    stack, _ = recording_stack(2, drop_rate=[0.25, 0.5], residual=True, scale="eval", seed=0)
    x = torch.randn(2, 3, dtype=torch.float64)
    keep = torch.tensor([True, True])
    h = x + stack[0](x)
    assert torch.equal(stack(x, keep=keep), h + stack[1](h))  # training: unscaled
    stack.eval()
    h = x + 0.75 * stack[0](x)
    torch.testing.assert_close(stack(x), h + 0.5 * stack[1](h), rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- masked variant


@pytest.mark.parametrize("mode", ["batch", "row"])
@pytest.mark.parametrize("residual", [False, True])
def test_the_masked_variant_equals_skipping(mode: str, residual: bool) -> None:
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(3, 3, dtype=torch.float64), nn.Tanh()) for _ in range(4)]
    skip = LayerDropList(layers, 0.5, per_sample=mode == "row", residual=residual, seed=9)
    masked = LayerDropList(
        layers, 0.5, per_sample=mode == "row", residual=residual, seed=9, mode="masked"
    )
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    for _ in range(5):
        want = skip(x)
        got = masked(x)
        assert masked.last_keep is not None
        assert skip.last_keep is not None
        assert torch.equal(masked.last_keep, skip.last_keep)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        (want_grad,) = torch.autograd.grad(want.sum(), x)
        (got_grad,) = torch.autograd.grad(got.sum(), x)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)
    assert masked.layer_runs == skip.layer_runs


def test_a_layer_that_is_always_dropped_gives_finite_gradients_in_masked_mode() -> None:
    torch.manual_seed(0)
    stack = LayerDropList(
        [nn.Linear(3, 3) for _ in range(2)],
        [0.0, 1.0],
        per_sample=True,
        residual=True,
        mode="masked",
    )
    x = torch.randn(4, 3, requires_grad=True)
    stack(x).sum().backward()
    assert stack.layer_runs == [4, 0]
    assert all(torch.isfinite(p.grad).all() for p in stack.parameters() if p.grad is not None)
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- state


def test_a_state_round_trip_continues_the_sequence_of_drops() -> None:
    stack = LayerDropList([nn.Linear(2, 2) for _ in range(5)], 0.5, per_sample=True, seed=11)
    x = torch.randn(7, 2)
    for _ in range(3):
        stack(x)
    buffer = io.BytesIO()
    torch.save(stack.state_dict(), buffer)
    after = [stack(x) is not None and stack.last_keep for _ in range(4)]
    other = LayerDropList([nn.Linear(2, 2) for _ in range(5)], 0.5, per_sample=True, seed=99)
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert other.seed == 11
    assert other.draws == 3 * 7
    assert other.layer_runs == [
        int(c)
        for c in decode_state(torch.load(io.BytesIO(buffer.getvalue()))["_extra_state"])[
            "layer_runs"
        ]
    ]
    again = [other(x) is not None and other.last_keep for _ in range(4)]
    for want, got in zip(after, again, strict=True):
        assert isinstance(want, Tensor)
        assert isinstance(got, Tensor)
        assert torch.equal(want, got)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_the_sequence(how: str) -> None:
    stack = LayerDropList([nn.Identity() for _ in range(6)], 0.5, seed=4)
    stack.draw_keep()
    twin = copy.deepcopy(stack) if how == "deepcopy" else pickle.loads(pickle.dumps(stack))
    for _ in range(5):
        assert torch.equal(stack.draw_keep(), twin.draw_keep())


def test_same_seed_same_drops_and_no_seed_follows_torch_manual_seed() -> None:
    def keeps(stack: LayerDropList) -> list[list[bool]]:
        return [stack.draw_keep().tolist() for _ in range(10)]

    layers = [nn.Identity() for _ in range(8)]
    assert keeps(LayerDropList(layers, 0.5, seed=1)) == keeps(LayerDropList(layers, 0.5, seed=1))
    assert keeps(LayerDropList(layers, 0.5, seed=1)) != keeps(LayerDropList(layers, 0.5, seed=2))
    torch.manual_seed(5)
    first = LayerDropList(layers, 0.5)
    torch.manual_seed(5)
    assert keeps(first) == keeps(LayerDropList(layers, 0.5))


def test_weights_of_a_plain_stack_load_strictly_and_keep_their_keys() -> None:
    torch.manual_seed(0)
    blocks = nn.Sequential(*[nn.Linear(3, 3) for _ in range(3)])
    stack = LayerDropList(copy.deepcopy(blocks), 0.2, seed=0)
    stack.draw_keep()
    generator_state = stack.generator.get_state()
    assert set(stack.state_dict()) == set(blocks.state_dict()) | {"_extra_state"}
    for layer in stack.children():  # iterating in training mode would draw
        nn.init.zeros_(layer.weight)
    stack.load_state_dict(blocks.state_dict())  # strict, without the list's own state
    assert torch.equal(stack[2].weight, blocks[2].weight)
    assert torch.equal(stack.generator.get_state(), generator_state)


def test_a_bad_extra_state_is_refused_naming_the_key() -> None:
    stack = LayerDropList([nn.Identity(), nn.Identity()], 0.5, seed=0)
    state = stack.state_dict()
    extra = decode_state(state["_extra_state"])
    del extra["draws"]
    state["_extra_state"] = extra
    with pytest.raises(ValueError, match="lacks 'draws'"):
        stack.load_state_dict(state)
    state = LayerDropList([nn.Identity()] * 3, 0.5, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"layer_runs'\] must be a tensor of shape \(2,\)"):
        stack.load_state_dict(state)


def test_a_bad_generator_state_is_refused_as_a_seeded_samplers_is() -> None:
    stack = LayerDropList([nn.Identity(), nn.Identity()], 0.5, seed=0)
    before = stack.generator.get_state()
    extra = decode_state(stack.get_extra_state())
    for bad, error, match in [
        (extra["generator_state"].float(), ValueError, r"ByteTensor \(dtype torch\.uint8\)"),
        ([0, 1], TypeError, r"generator_state'\] must be a torch\.ByteTensor, got \[0, 1\]"),
        (torch.zeros(3, dtype=torch.uint8), ValueError, "is not a CPU generator state"),
    ]:
        with pytest.raises(error, match=match):
            stack.set_extra_state({**extra, "generator_state": bad})
        assert torch.equal(stack.generator.get_state(), before)


# --------------------------------------------------------------------------- train()


def test_train_resumes_exactly_from_a_checkpoint(tmp_path: Any) -> None:
    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        blocks = [nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(4)]
        return nn.Sequential(
            nn.Linear(5, 6),
            LayerDropList(
                blocks, linear_drop_rates(0.6, 4), per_sample=True, residual=True, seed=3
            ),
            nn.Linear(6, 2),
        )

    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8, 2)
    whole = model(1)
    want = stochdepth.train(whole, x, y, steps=12, log_every=None)
    path = tmp_path / "run.ckpt"
    half = model(1)
    stochdepth.train(half, x, y, steps=6, log_every=None, checkpoint=path)
    resumed = model(1)
    resumed[1].generator.manual_seed(123)  # the checkpoint's state must replace this
    got = stochdepth.train(resumed, x, y, steps=12, log_every=None, checkpoint=path, resume=True)
    assert [r.loss for r in got] == [r.loss for r in want]
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed[1].layer_runs == whole[1].layer_runs
    assert resumed[1].draws == 12 * 8


# --------------------------------------------------------------------------- conversion


def test_a_transformer_encoders_layers_with_a_padding_mask() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    stack = LayerDropList(
        encoder.layers, 0.5, per_sample=True, seed=0, row_args=("src_key_padding_mask",)
    )
    x = torch.randn(5, 4, 8)
    pad = torch.zeros(5, 4, dtype=torch.bool)
    pad[:, 3] = True
    encoder.eval()
    stack.eval()
    torch.testing.assert_close(
        stack(x, src_key_padding_mask=pad), encoder(x, src_key_padding_mask=pad)
    )
    stack.train()
    out = stack(x, src_key_padding_mask=pad)
    keep = stack.last_keep
    assert keep is not None
    for row in range(5):  # each row equals its own run through its kept layers
        h = x[row : row + 1]
        for i in range(3):
            if keep[i, row]:
                h = stack[i](h, src_key_padding_mask=pad[row : row + 1])
        torch.testing.assert_close(out[row : row + 1], h)


def test_a_tuple_returning_layer_with_output() -> None:
    class TupleLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
            out = self.linear(h)
            return out, out.abs()

    layers = [TupleLayer(), TupleLayer()]
    with pytest.raises(
        TypeError, match=r"layer 0 \(TupleLayer\) returned a tuple of length 2 .*; pass output="
    ):
        LayerDropList(layers, 0.0)(torch.randn(2, 3))
    x = torch.randn(2, 3)
    got = LayerDropList(layers, 0.0, output=0)(x)
    assert torch.equal(got, layers[1](layers[0](x)[0])[0])
    got = LayerDropList(layers, 0.0, output=lambda result: result[1])(x)
    assert torch.equal(got, layers[1](layers[0](x)[1])[1])


def test_the_container_reads_like_a_module_list() -> None:
    layers = [nn.Linear(2, 2) for _ in range(3)]
    stack = LayerDropList(nn.ModuleList(layers), 0.1, seed=0)
    assert len(stack) == 3
    assert list(stack.children()) == layers
    stack.eval()  # in training mode, iterating draws (see tests/layer_drop/test_add.py)
    assert list(stack) == layers
    assert stack[-1] is layers[2]
    with pytest.raises(IndexError, match=r"index must be in \[-3, 2\], got 3"):
        stack[3]
    text = repr(stack)
    assert "drop_rate=0.1" in text
    assert "seed=0" in text
    assert "(2): Linear" in text


# --------------------------------------------------------------------------- telemetry


def test_layer_runs_count_kept_layers_and_rows() -> None:
    stack = LayerDropList(
        [nn.Identity() for _ in range(3)], [0.0, 1.0, 0.5], per_sample=True, seed=0
    )
    stack(torch.zeros(10, 2))
    stack(torch.zeros(6, 2))
    assert stack.draws == 16
    assert stack.layer_runs[:2] == [16, 0]
    assert stack.keep_frequencies[0] == 1.0
    stack.reset_layer_runs()
    assert stack.layer_runs == [0, 0, 0]
    assert stack.draws == 0
    assert stack.keep_frequencies == [0.0] * 3


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"layers": nn.Linear(2, 2)}, TypeError, "layers must be an nn.Sequential.*one Linear"),
        ({"layers": []}, ValueError, "layers must hold at least one module"),
        ({"layers": [nn.Identity(), 3]}, TypeError, r"layers\[1\] must be an nn.Module, got 3"),
        ({"drop_rate": 1.5}, ValueError, r"drop_rate must be a probability in \[0, 1\], got 1.5"),
        ({"drop_rate": "0.1"}, TypeError, "drop_rate must be a probability or a sequence"),
        ({"drop_rate": [0.1]}, ValueError, r"one probability per layer \(2\), got 1"),
        ({"drop_rate": [0.1, -0.1]}, ValueError, r"drop_rate\[1\] must be a probability"),
        ({"mode": "rows"}, ValueError, "mode must be one of 'skip', 'masked', got 'rows'"),
        ({"residual": 1}, TypeError, "residual must be a bool, got 1"),
        ({"scale": "eval"}, ValueError, "scale='eval' .* needs residual=True"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0, got -1"),
        ({"rule": 3}, TypeError, "rule must be a rule name or a DropRule"),
        (
            {"eval_layers": [2]},
            ValueError,
            r"eval_layers must hold layer indices in \[0, 1\], got 2",
        ),
        ({"eval_layers": [0, 0]}, ValueError, "eval_layers must not repeat an index"),
        ({"row_args": [0]}, ValueError, "row_args .* only per_sample=True"),
        ({"row_args": [1.5], "per_sample": True}, TypeError, "row_args entries must be ints"),
        ({"output": "first"}, TypeError, "output must be None, an int"),
    ],
)
def test_bad_arguments_are_refused_naming_them(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    options: dict[str, Any] = {"layers": [nn.Identity(), nn.Identity()], "drop_rate": 0.1}
    options.update(kwargs)
    with pytest.raises(error, match=message):
        LayerDropList(options.pop("layers"), options.pop("drop_rate"), **options)


def test_bad_forward_input_is_refused_naming_it() -> None:
    stack = LayerDropList([nn.Linear(2, 2), nn.Linear(2, 3)], 0.0, seed=0)
    with pytest.raises(TypeError, match=r"h must be a torch\.Tensor"):
        stack([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layer 1 \(Linear\) turned an input of shape \(4, 2\)"):
        stack(torch.zeros(4, 2))
    with pytest.raises(TypeError, match=r"keep must be a bool tensor of shape \(2,\)"):
        stack(torch.zeros(4, 2), keep=torch.ones(2))
    with pytest.raises(TypeError, match=r"rows must be None with per_sample=False"):
        stack.draw_keep(3)
    stack.eval()
    with pytest.raises(ValueError, match="keep= applies in training mode only"):
        stack(torch.zeros(4, 2), keep=torch.ones(2, dtype=torch.bool))
    rows = LayerDropList([nn.Identity()], 0.5, per_sample=True, seed=0)
    with pytest.raises(ValueError, match="h is a 0-d tensor"):
        rows(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"keep must be a bool tensor of shape \(1, 3\)"):
        rows(torch.zeros(3, 2), keep=torch.ones(1, 2, dtype=torch.bool))


# --------------------------------------------------------------------------- torch.compile


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_model(draw: str, **options: Any) -> nn.Module:
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(8)]
    return nn.Sequential(
        nn.Linear(4, 6),
        LayerDropList(blocks, 0.5, per_sample=draw == "row", residual=True, seed=21, **options),
        nn.Linear(6, 2),
    )


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_compile_keeps_the_draws_random_with_a_bounded_number_of_graphs(mode: str) -> None:
    model = compiled_model(mode)
    eager = copy.deepcopy(model)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter)
    x = torch.randn(12, 4)
    patterns = set()
    for step in range(40):
        got = compiled(x)
        got.sum().backward()
        want = eager(x)
        keep = model[1].last_keep
        assert torch.equal(keep, eager[1].last_keep), step  # the seeded eager sequence
        patterns.add(tuple(keep.flatten().tolist()))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert len(patterns) >= 35  # 2**8 (or 2**96) patterns: the draws were not frozen
    # One graph per kind of layer and input shape (the 8 layers share it), not one per pattern.
    assert counter.frame_count <= 5
    frames = counter.frame_count
    for _ in range(10):
        compiled(x)
    assert counter.frame_count == frames
    assert model[1].draws == eager[1].draws + 10 * (1 if mode == "batch" else 12)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.filterwarnings(
    "ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning"
)
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_the_residual_update_adds_no_compiled_frame_whatever_the_drop_rates(mode: str) -> None:
    # The skipping path runs eagerly under compile; a plain call to the residual update
    # there would compile it as a frame of its own, one per distinct drop rate.
    frames = {}
    for residual in (False, True):
        torch._dynamo.reset()
        torch.manual_seed(0)
        blocks = [nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(8)]
        rates = [0.1 * index for index in range(8)]  # 8 distinct rates, 0 included
        stack = LayerDropList(blocks, rates, per_sample=mode == "row", residual=residual, seed=3)
        counter = CompileCounter()
        compiled = torch.compile(stack, backend=counter)
        eager = copy.deepcopy(stack)
        h = torch.randn(12, 6)
        for _ in range(20):
            torch.testing.assert_close(compiled(h), eager(h), rtol=1e-5, atol=1e-6)
        frames[residual] = counter.frame_count
    assert frames[True] == frames[False]


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("mode", ["batch", "row"])
def test_the_masked_variant_compiles_to_one_graph_with_the_mask_as_an_argument(mode: str) -> None:
    model = compiled_model(mode, mode="masked")
    skip = compiled_model(mode)
    counter = CompileCounter()
    compiled = torch.compile(model[1], backend=counter, fullgraph=True)
    h = torch.randn(12, 6)
    for _ in range(10):
        keep = model[1].draw_keep(None if mode == "batch" else 12)
        torch.testing.assert_close(compiled(h, keep=keep), skip[1](h, keep=keep))
    assert counter.frame_count == 1


# --------------------------------------------------------------------------- CUDA


@pytest.mark.parametrize("mode", ["batch", "row"])
def test_on_a_gpu_the_list_equals_the_cpu_with_the_same_draws(
    cuda_device: torch.device, mode: str
) -> None:
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(4)]
    cpu = LayerDropList(layers, 0.5, per_sample=mode == "row", residual=True, seed=3).double()
    gpu = copy.deepcopy(cpu).to(cuda_device)
    x = torch.randn(16, 5, 8, dtype=torch.float64)
    for _ in range(5):
        want = cpu(x)
        got = gpu(x.to(cuda_device))
        assert cpu.last_keep is not None
        assert gpu.last_keep is not None
        assert torch.equal(cpu.last_keep, gpu.last_keep)  # the draws stay on the CPU
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize(
    ("old", "new", "hint"),
    [
        ({"mode": "row"}, {"per_sample": True}, "per_sample=True"),
        ({"mode": "batch"}, {}, "per_sample=False"),
        ({"masked": True}, {"mode": "masked"}, "mode='masked'"),
        ({"masked": False}, {}, "mode='skip'"),
        ({"mode": "row", "masked": True}, {"mode": "masked", "per_sample": True}, "deprecated"),
    ],
)
def test_the_old_spellings_warn_naming_the_new_one_and_draw_the_same(
    old: dict[str, Any], new: dict[str, Any], hint: str
) -> None:
    layers = [nn.Linear(3, 3) for _ in range(3)]
    with pytest.warns(FutureWarning, match=re.escape(hint)):
        legacy = LayerDropList(layers, 0.5, residual=True, seed=4, **old)
    current = LayerDropList(layers, 0.5, residual=True, seed=4, **new)
    assert (legacy.mode, legacy.per_sample) == (current.mode, current.per_sample)
    x = torch.randn(6, 3)
    for _ in range(4):
        assert torch.equal(legacy(x), current(x))
        assert torch.equal(legacy.last_keep, current.last_keep)


def test_the_masked_property_is_deprecated_and_says_the_mode() -> None:
    stack = LayerDropList([nn.Identity()], 0.5, mode="masked", per_sample=True, seed=0)
    assert (stack.mode, stack.per_sample) == ("masked", True)
    with pytest.warns(FutureWarning, match="mode == 'masked'"):
        assert stack.masked is True


def test_contradictory_old_and_new_spellings_are_refused() -> None:
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="masked=False contradicts"):
        LayerDropList([nn.Identity()], 0.5, mode="masked", masked=False)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="mode='batch'"):
        LayerDropList([nn.Identity()], 0.5, mode="batch", per_sample=True)
