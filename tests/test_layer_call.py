"""Real layers: extra arguments, row-aligned arguments, the repeat index, tuple outputs,
truncated backprop (``grad_depth``) and per-repeat states (``iterate``).

Every property compares a :class:`RepeatedBlock` with a hand-written loop over the same
layer, in float64, in every mode (skip, checkpointed, masked, per row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import FixedDepth, RepeatedBlock, SeededDepth, UniformDepth

from support.strategies import LAYERS

MAX = 5
N = 4
TOL = {"rtol": 1e-9, "atol": 1e-10}


class Injected(nn.Module):
    """A layer with every kind of extra argument a user passes.

    ``layer(x, e, *, mask=None, pair=None, scale=1.0, step=None)``: input injection of
    ``e`` through an adapter on ``cat([x, e])``, a row-aligned ``mask``, a rotary-style
    ``(cos, sin)`` pair, a Python float, the repeat index as a per-step embedding, and
    optionally a Hugging Face style tuple output.
    """

    def __init__(self, core: str, tuple_out: bool) -> None:
        super().__init__()
        self.adapter = nn.Linear(2 * N, N)
        self.core = LAYERS[core](N)
        self.time = nn.Embedding(MAX + 1, N)
        self.tuple_out = tuple_out

    def forward(
        self,
        x: Tensor,
        e: Tensor,
        *,
        mask: Tensor | None = None,
        pair: tuple[Tensor, Tensor] | None = None,
        scale: float = 1.0,
        step: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        h = self.adapter(torch.cat([x, e], dim=-1))
        if step is not None:
            assert type(step) is int
            h = h + self.time.weight[step]
        if mask is not None:
            h = h * mask
        if pair is not None:
            cos, sin = pair
            h = h * cos + sin
        h = self.core(h) * scale
        return (h, h.detach().sum()) if self.tuple_out else h


MODES: dict[str, dict[str, Any]] = {
    "skip": {},
    "skip-checkpoint": {"checkpoint": True},
    "skip-checkpoint-1": {"checkpoint": 1},
    "masked": {"mode": "masked"},
    "masked-checkpoint": {"mode": "masked", "checkpoint": 2},
    "per-row": {"per_sample": True},
    "per-row-checkpoint": {"per_sample": True, "checkpoint": True},
    "masked-per-row": {"mode": "masked", "per_sample": True},
}
PER_ROW = {"per-row", "per-row-checkpoint", "masked-per-row"}


@st.composite
def setups(draw: st.DrawFn) -> dict[str, Any]:
    """A layer, its arguments and a depth (one per row in the per-row modes), float64."""
    core = draw(st.sampled_from(sorted(LAYERS)))
    tuple_out = draw(st.booleans())
    steps = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**32 - 1)))
    layer = Injected(core, tuple_out).double()
    rows = draw(st.integers(1, 5))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    kwargs: dict[str, Any] = {"scale": draw(st.floats(0.5, 1.5))}
    if draw(st.booleans()):
        kwargs["mask"] = (randn(rows, N) > 0).double()
    if draw(st.booleans()):
        kwargs["pair"] = (randn(rows, N), randn(rows, N))
    return {
        "layer": layer,
        "x": randn(rows, N),
        "e": randn(rows, N),
        "kwargs": kwargs,
        "steps": steps,
        "output": 0 if tuple_out else None,
        "depths": draw(st.lists(st.integers(0, MAX), min_size=rows, max_size=rows)),
        "weight": randn(rows, N),
    }


def hand(
    layer: nn.Module,
    x: Tensor,
    e: Tensor,
    kwargs: dict[str, Any],
    depth: int,
    steps: bool,
    frozen: int = 0,
) -> Tensor:
    """The loop a user writes: ``depth`` repeats, the first ``frozen`` without autograd."""
    for i in range(depth):
        extra = {"step": i} if steps else {}
        with torch.no_grad() if i < frozen else contextlib.nullcontext():
            out = layer(x, e, **kwargs, **extra)
        x = out[0] if isinstance(out, tuple) else out
    return x


def rows_of(kwargs: dict[str, Any], r: int) -> dict[str, Any]:
    """The keyword arguments of row ``r`` alone (masks and pairs are row-aligned)."""
    out = dict(kwargs)
    if "mask" in out:
        out["mask"] = out["mask"][r : r + 1]
    if "pair" in out:
        out["pair"] = tuple(t[r : r + 1] for t in out["pair"])
    return out


def block_for(s: dict[str, Any], options: dict[str, Any], **more: Any) -> RepeatedBlock:
    return RepeatedBlock(
        s["layer"],
        SeededDepth(0, MAX, seed=0),
        row_args=(0, "mask", "pair"),
        step_kwarg="step" if s["steps"] else None,
        output=s["output"],
        **options,
        **more,
    )


def grads(tensors: list[Tensor]) -> list[Tensor | None]:
    return [None if t.grad is None else t.grad.clone() for t in tensors]


def run_backward(
    forward: Callable[[Tensor, Tensor], Tensor], s: dict[str, Any]
) -> tuple[Tensor, list[Tensor | None]]:
    """Output and gradients (x, e, then the layer's parameters) of ``forward(x, e)``."""
    layer: nn.Module = s["layer"]
    layer.zero_grad(set_to_none=True)
    x = s["x"].clone().requires_grad_()
    e = s["e"].clone().requires_grad_()
    out = forward(x, e)
    if out.requires_grad:  # not when grad_depth=0 froze every repeat
        (out * s["weight"]).sum().backward()
    return out.detach(), grads([x, e, *layer.parameters()])


def assert_grads_equal(got: list[Tensor | None], want: list[Tensor | None]) -> None:
    for have, expected in zip(got, want, strict=True):
        if expected is None:  # unused: masked mode gives exact zeros instead of None
            assert have is None or not have.any()
        else:
            assert have is not None
            torch.testing.assert_close(have, expected, **TOL)


@pytest.mark.parametrize("mode", sorted(MODES))
@given(s=setups())
def test_extra_arguments_reach_the_layer_at_every_repeat(mode: str, s: dict[str, Any]) -> None:
    block = block_for(s, MODES[mode])
    kwargs = s["kwargs"]
    if mode in PER_ROW:
        depth: int | Tensor = torch.tensor(s["depths"])

        def want_forward(x: Tensor, e: Tensor) -> Tensor:
            return torch.cat(
                [
                    hand(s["layer"], x[r : r + 1], e[r : r + 1], rows_of(kwargs, r), d, s["steps"])
                    for r, d in enumerate(s["depths"])
                ]
            )
    else:
        depth = s["depths"][0]

        def want_forward(x: Tensor, e: Tensor) -> Tensor:
            return hand(s["layer"], x, e, kwargs, s["depths"][0], s["steps"])

    got, got_grads = run_backward(lambda x, e: block(x, e, depth=depth, **kwargs), s)
    want, want_grads = run_backward(want_forward, s)
    torch.testing.assert_close(got, want, **TOL)
    assert_grads_equal(got_grads, want_grads)


@pytest.mark.parametrize("mode", ["skip", "skip-checkpoint", "per-row", "per-row-checkpoint"])
@given(s=setups(), k=st.integers(0, MAX))
def test_grad_depth_records_only_the_last_k_repeats(mode: str, s: dict[str, Any], k: int) -> None:
    block = block_for(s, MODES[mode], grad_depth=k)
    kwargs = s["kwargs"]
    per_row = mode in PER_ROW
    depths = s["depths"] if per_row else [s["depths"][0]] * len(s["depths"])

    def want_forward(x: Tensor, e: Tensor) -> Tensor:
        return torch.cat(
            [
                hand(
                    s["layer"],
                    x[r : r + 1],
                    e[r : r + 1],
                    rows_of(kwargs, r),
                    d,
                    s["steps"],
                    frozen=max(d - k, 0),
                )
                for r, d in enumerate(depths)
            ]
        )

    depth = torch.tensor(depths) if per_row else depths[0]
    got, got_grads = run_backward(lambda x, e: block(x, e, depth=depth, **kwargs), s)
    want, want_grads = run_backward(want_forward, s)
    torch.testing.assert_close(got, want, **TOL)
    x_grad, *rest = got_grads
    assert_grads_equal(rest, want_grads[1:])
    # The input gets no gradient through rows deeper than k (and no graph at all).
    frozen_rows = [r for r, d in enumerate(depths) if d > k]
    if x_grad is None:
        assert len(frozen_rows) == len(depths)
    else:
        assert not x_grad[frozen_rows].any()
    assert_grads_equal([x_grad], want_grads[:1])
    assert block.last_depth == depth if not per_row else torch.equal(block.last_depth, depth)


@given(s=setups(), k=st.integers(0, MAX), grad_enabled=st.booleans())
def test_iterate_yields_the_hand_loops_successive_states(
    s: dict[str, Any], k: int, grad_enabled: bool
) -> None:
    block = block_for(s, {}, grad_depth=k)
    depth = s["depths"][0]
    x, e, kwargs = s["x"].requires_grad_(), s["e"], s["kwargs"]
    with torch.set_grad_enabled(grad_enabled):
        states = list(block.iterate(x, e, depth=depth, **kwargs))
        assert block.last_depth == depth
        assert len(states) == depth
        for i, state in enumerate(states, start=1):
            want = hand(s["layer"], x, e, kwargs, i, s["steps"])
            torch.testing.assert_close(state, want, **TOL)
            assert state.requires_grad == (grad_enabled and i > depth - k)


def test_iterate_draws_one_depth_for_the_batch_when_first_asked() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 4, seed=1), per_sample=True)
    twin = SeededDepth(0, 4, seed=1)
    states = block.iterate(torch.randn(5, 3))
    assert block.last_depth is None  # nothing runs before the first state is asked for
    assert len(list(states)) == twin.sample() == block.last_depth
    block.eval()
    assert len(list(block.iterate(torch.randn(5, 3)))) == 4  # eval_depth="max"
    with pytest.raises(TypeError, match="depth must be an int in iterate"):
        list(block.iterate(torch.randn(5, 3), depth=torch.tensor([1, 2, 3, 4, 0])))


def test_progressive_loss_over_the_last_states_backpropagates_through_each() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    block = RepeatedBlock(layer, FixedDepth(4))
    x = torch.randn(2, 3)
    loss = sum(state.square().sum() for state in list(block.iterate(x))[-2:])
    assert isinstance(loss, Tensor)
    loss.backward()
    want = hand_plain(layer, x, 3).square().sum() + hand_plain(layer, x, 4).square().sum()
    expected = torch.autograd.grad(want, list(layer.parameters()))
    for param, grad in zip(layer.parameters(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad)


def hand_plain(layer: nn.Module, x: Tensor, depth: int) -> Tensor:
    for _ in range(depth):
        x = layer(x)
    return x


# --- row_args, step_kwarg, output: checks and errors ---------------------------------------


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        out: Tensor = self.linear(x)
        return out if mask is None else out * mask


def test_a_row_aligned_argument_without_a_row_per_row_is_a_clear_error() -> None:
    block = RepeatedBlock(Masked(), FixedDepth(2), row_args="mask", per_sample=True)
    x = torch.randn(4, 3)
    with pytest.raises(
        ValueError,
        match=r"row_args names keyword argument 'mask' as row-aligned.*x has shape \(4, 3\)"
        r".*got a tensor of shape \(3, 3\)",
    ):
        block(x, mask=torch.ones(3, 3))
    positional = RepeatedBlock(Masked(), FixedDepth(2), row_args=0)
    with pytest.raises(ValueError, match=r"positional argument 0.*shape \(\)"):
        positional(x, torch.tensor(1.0))
    assert block(x, mask=None).shape == x.shape  # an absent argument is fine


@pytest.mark.parametrize(
    ("row_args", "error", "match"),
    [
        (1.0, TypeError, "row_args must be an int, a str, or a sequence"),
        ([0, 0], ValueError, "must not repeat"),
        ([-1], ValueError, "row_args positions must be >= 0"),
        (["depth"], ValueError, "other than 'depth'"),
        (["not a name"], ValueError, "keyword argument names"),
        ([None], TypeError, "row_args entries must be ints"),
    ],
)
def test_bad_row_args_are_refused(row_args: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        RepeatedBlock(nn.Linear(3, 3), row_args=row_args)  # type: ignore[arg-type]


def test_step_kwarg_is_checked_and_never_passed_twice() -> None:
    with pytest.raises(TypeError, match="step_kwarg must be a keyword name"):
        RepeatedBlock(nn.Linear(3, 3), step_kwarg=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_kwarg must be a keyword name other than"):
        RepeatedBlock(nn.Linear(3, 3), step_kwarg="depth")
    block = RepeatedBlock(Injected("linear", False).double(), FixedDepth(2), step_kwarg="step")
    x = torch.randn(2, N, dtype=torch.float64)
    with pytest.raises(TypeError, match="'step' is passed to the layer by the block"):
        block(x, x, step=3)


def test_output_reads_the_state_and_its_shape_is_checked() -> None:
    class Pair(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return x + 1, x.sum(dim=-1)

    x = torch.zeros(2, 3)
    assert torch.equal(RepeatedBlock(Pair(), FixedDepth(3), output=0)(x), x + 3)
    by_callable = RepeatedBlock(Pair(), FixedDepth(2), output=lambda out: out[0] * 2)
    assert torch.equal(by_callable(x), torch.full((2, 3), 6.0))
    with pytest.raises(TypeError, match=r"pass output=0 .* to RepeatedBlock"):
        RepeatedBlock(Pair(), FixedDepth(1))(x)
    with pytest.raises(ValueError, match=r"output=1 reads.*shape \(2, 3\).*shape \(2,\)"):
        RepeatedBlock(Pair(), FixedDepth(1), output=1)(x)
    with pytest.raises(TypeError, match=r"output=2 takes element 2.*a tuple of length 2"):
        RepeatedBlock(Pair(), FixedDepth(1), output=2)(x)
    with pytest.raises(TypeError, match="output must be None, an int"):
        RepeatedBlock(Pair(), output="hidden")  # type: ignore[arg-type]


def test_a_positional_depth_gets_a_note_that_depth_is_keyword_only() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2))
    with pytest.raises(TypeError) as caught:
        block(torch.randn(2, 3), 2)
    assert "depth is keyword-only, block(x, depth=2)" in "".join(
        getattr(caught.value, "__notes__", [])
    )


def test_repr_shows_the_new_options() -> None:
    block = RepeatedBlock(
        Masked(), UniformDepth(0, 2), row_args=["mask"], step_kwarg="t", output=0, grad_depth=1
    )
    text = repr(block)
    for part in ("row_args=('mask',)", "step_kwarg='t'", "output=0", "grad_depth=1"):
        assert part in text


def test_a_replaced_layer_is_the_one_that_runs_and_copies_run_their_own() -> None:
    import copy

    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2))
    x = torch.randn(2, 3)
    block.layer = nn.Identity()
    assert torch.equal(block(x), x)
    block.layer = nn.Linear(3, 3)
    twin = copy.deepcopy(block)
    with torch.no_grad():
        twin.layer.weight.zero_()
        twin.layer.bias.fill_(1.0)
    assert torch.equal(twin(x), torch.ones(2, 3))
    assert torch.equal(block(x), hand_plain(block.layer, x, 2))


def test_skipped_layer_tie_ties_a_layer_that_grad_depth_left_unrecorded() -> None:
    from stochdepth import SkippedLayerTie

    torch.manual_seed(0)
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), grad_depth=SeededDepth(0, 1, seed=3))
    tie = SkippedLayerTie(block)
    twin = SeededDepth(0, 1, seed=3)
    x = torch.randn(2, 3, requires_grad=True)
    drawn = set()
    for _ in range(8):
        k = twin.sample()
        drawn.add(k)
        block.zero_grad(set_to_none=True)
        x.grad = None
        block(x).sum().backward()
        restored = tie.restore_skipped_grads()
        if k == 0:  # every repeat ran without autograd: tied, as at depth 0
            assert restored == ["layer.weight", "layer.bias"]
            assert block.layer.weight.grad is None
        else:
            assert restored == []
            assert block.layer.weight.grad is not None
    assert drawn == {0, 1}
    tie.remove()


@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    depths=st.lists(st.integers(0, 4), min_size=4, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_padding_changes_no_real_tokens_output_under_per_sample(
    lengths: list[int], depths: list[int], seed: int
) -> None:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    block = RepeatedBlock(
        layer.double(), FixedDepth(4), per_sample=True, row_args="src_key_padding_mask"
    )
    rows = len(lengths)
    x = torch.randn(rows, 6, 8, dtype=torch.float64)
    padded = torch.arange(6) >= torch.tensor(lengths)[:, None]
    depth = torch.tensor(depths[:rows])
    out = block(x, src_key_padding_mask=padded, depth=depth)
    noise = x.clone()
    noise[padded] = 50 * torch.randn(int(padded.sum()), 8, dtype=torch.float64)
    again = block(noise, src_key_padding_mask=padded, depth=depth)
    torch.testing.assert_close(out[~padded], again[~padded], **TOL)
    for r in range(rows):
        alone = block(x[r : r + 1], src_key_padding_mask=padded[r : r + 1], depth=depth[r : r + 1])
        torch.testing.assert_close(out[r : r + 1], alone, **TOL)


@pytest.mark.parametrize("spec", [{0: 1, "mask": 2}, {0, 1}])
def test_row_args_refuses_a_mapping_or_a_set(spec: object) -> None:
    # A dict would be read as its keys and a set in no fixed order: neither is a spec.
    with pytest.raises(TypeError, match=r"row_args must be an int, a str, or a sequence"):
        RepeatedBlock(nn.Linear(4, 4), FixedDepth(1), row_args=spec)
