"""The other ways a `RepeatedBlock` runs: masked, per-sample depth, checkpointed repeats.

Laws: masked mode and checkpointed repeats give the outputs and gradients of the
default skip mode exactly (``torch.equal``); per-sample depth gives every row what the
layer applied to that row alone, its depth times, gives it. (The built-in samplers'
batched draws are tested in samplers/test_builtin.py.)
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import (
    DynamicNet,
    FixedDepth,
    RepeatedBlock,
    SeededDepth,
    train,
)

from support.fakes import CountingSampler
from support.strategies import LAYERS, MAX_DEPTH, depths, features, layer_names, seeds

torch_seeds = st.integers(min_value=0, max_value=2**32 - 1)
rows = st.integers(min_value=1, max_value=9)
checkpoints = st.one_of(st.just(True), st.integers(min_value=1, max_value=4))


def make_layer(name: str, n: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LAYERS[name](n).to(dtype)


def backward(
    block: RepeatedBlock, x: Tensor, weight: Tensor, depth: object = None
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """Output, grad of x and grads of the parameters of ``(block(x) * weight).sum()``."""
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = block(x) if depth is None else block(x, depth=depth)
    (out * weight).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad, [p.grad for p in block.parameters()]


def assert_bitwise_equal(
    got: tuple[Tensor, Tensor, list[Tensor | None]],
    want: tuple[Tensor, Tensor, list[Tensor | None]],
) -> None:
    """Two results of :func:`backward` are equal bit for bit, ``None`` grads included."""
    assert torch.equal(got[0], want[0])
    assert torch.equal(got[1], want[1])
    for have, expected in zip(got[2], want[2], strict=True):
        assert (have is None) == (expected is None)
        if have is not None and expected is not None:
            assert torch.equal(have, expected)


def by_hand(layer: nn.Module, x: Tensor, times: int) -> Tensor:
    for _ in range(times):
        x = layer(x)
    return x


# --------------------------------------------------------------------------- masked


@given(n=features, batch=rows, depth=depths, name=layer_names, seed=torch_seeds)
def test_masked_mode_equals_skip_mode_exactly(
    n: int, batch: int, depth: int, name: str, seed: int
) -> None:
    layer = make_layer(name, n, seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, generator=generator)
    weight = torch.randn(batch, n, generator=generator)
    skip = RepeatedBlock(layer, FixedDepth(MAX_DEPTH))
    masked = RepeatedBlock(layer, FixedDepth(MAX_DEPTH), mode="masked")

    out, x_grad, grads = backward(skip, x, weight, depth)
    for given_depth in (depth, torch.tensor(depth)):
        got, got_x_grad, got_grads = backward(masked, x, weight, given_depth)
        assert torch.equal(got, out)
        assert torch.equal(got_x_grad, x_grad)
        for want, have in zip(grads, got_grads, strict=True):
            assert have is not None  # masked mode always uses the layer...
            if want is None:  # ...but an unused layer's gradient is exactly zero
                assert depth == 0
                assert not have.any()
            else:
                assert torch.equal(have, want)


@given(seed=seeds, n=features, count=st.integers(min_value=1, max_value=12))
def test_masked_mode_draws_the_same_depths_and_outputs_as_skip_mode(
    seed: int, n: int, count: int
) -> None:
    layer = make_layer("linear-tanh", n, seed % 2**32)
    skip = RepeatedBlock(layer, SeededDepth(0, 4, seed=seed))
    masked = RepeatedBlock(layer, SeededDepth(0, 4, seed=seed), mode="masked")
    x = torch.randn(3, n)
    for _ in range(count):
        assert torch.equal(masked(x), skip(x))
        assert masked.last_depth == skip.last_depth
    assert masked.depth_histogram == skip.depth_histogram
    masked.eval()
    assert torch.equal(masked(x), by_hand(layer, x, 4))


def test_masked_mode_rejects_depths_it_cannot_hold() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 2, seed=0), mode="masked")
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"depth must be <= sampler.max_depth=2 .*got 3"):
        block(x, depth=3)
    with pytest.raises(ValueError, match=r"depth must be <= sampler.max_depth=2 .*got 5"):
        block(x, depth=torch.tensor(5))
    with pytest.raises(ValueError, match=r"depth must be >= 0, got a tensor holding -1"):
        block(x, depth=torch.tensor(-1))
    with pytest.raises(TypeError, match=r"integer tensor of shape \(\).*torch.float32"):
        block(x, depth=torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"integer tensor of shape \(\).*shape \(2,\)"):
        block(x, depth=torch.tensor([1, 1]))
    block.eval_depth = 4
    block.eval()
    with pytest.raises(ValueError, match=r"got 4"):
        block(x)
    # and the constructor refuses such an eval_depth at once
    with pytest.raises(ValueError, match=r"^eval_depth must be <= sampler.max_depth=2 in mode="):
        RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 2, seed=0), mode="masked", eval_depth=3)
    assert RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 2, seed=0), mode="masked", eval_depth=2)


def test_a_depth_tensor_given_to_masked_mode_is_last_depth_and_not_counted() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), mode="masked")
    depth = torch.tensor(1)
    block(torch.randn(2, 3), depth=depth)
    assert block.last_depth is depth
    assert block.depth_histogram == {}
    block(torch.randn(2, 3), depth=1)
    assert block.depth_histogram == {1: 1}


# --------------------------------------------------------------------------- per sample


@given(
    n=features,
    batch=rows,
    name=st.sampled_from(["linear-relu", "linear-tanh", "linear"]),
    seed=torch_seeds,
    mode=st.sampled_from(["skip", "masked"]),
)
def test_every_row_gets_the_layer_applied_to_it_alone_its_depth_times(
    n: int, batch: int, name: str, seed: int, mode: str
) -> None:
    layer = make_layer(name, n, seed, torch.float64)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dtype=torch.float64, generator=generator)
    weight = torch.randn(batch, n, dtype=torch.float64, generator=generator)
    block = RepeatedBlock(layer, SeededDepth(0, 5, seed=seed), per_sample=True, mode=mode)

    out, x_grad, grads = backward(block, x, weight)
    row_depths = block.last_depth
    assert isinstance(row_depths, Tensor)
    assert row_depths.dtype == torch.int64
    assert row_depths.shape == (batch,)

    reference = make_layer(name, n, seed, torch.float64)
    tight = {"rtol": 1e-12, "atol": 1e-12}
    for row, depth in enumerate(row_depths.tolist()):
        x_row = x[row : row + 1].clone().requires_grad_()
        want = by_hand(reference, x_row, depth)
        (want * weight[row : row + 1]).sum().backward()
        torch.testing.assert_close(out[row : row + 1], want.detach(), **tight)
        torch.testing.assert_close(x_grad[row : row + 1], x_row.grad, **tight)
    # The parameters' gradients are the sum over the rows of each row's gradient.
    for got, want in zip(grads, reference.parameters(), strict=True):
        if want.grad is None:
            assert got is None or not got.any()
        else:
            assert got is not None
            torch.testing.assert_close(got, want.grad, **tight)


@given(depth_list=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=9))
def test_per_sample_skip_and_masked_modes_agree_on_given_depths(depth_list: list[int]) -> None:
    layer = make_layer("linear-tanh", 4, 0, torch.float64)
    x = torch.randn(len(depth_list), 4, dtype=torch.float64)
    given_depths = torch.tensor(depth_list)
    skip = RepeatedBlock(layer, FixedDepth(5), per_sample=True)
    masked = RepeatedBlock(layer, FixedDepth(5), per_sample=True, mode="masked")
    torch.testing.assert_close(
        skip(x, depth=given_depths), masked(x, depth=given_depths), rtol=0, atol=1e-12
    )
    assert torch.equal(skip.last_depth, given_depths)  # type: ignore[arg-type]
    if max(depth_list) == 0:
        assert skip(x, depth=given_depths) is x


def test_per_sample_telemetry_counts_rows() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), SeededDepth(0, 3, seed=1), per_sample=True)
    x = torch.randn(7, 3)
    seen: list[int] = []
    for _ in range(5):
        block(x)
        assert isinstance(block.last_depth, Tensor)
        seen += block.last_depth.tolist()
    histogram = block.depth_histogram
    assert sum(histogram.values()) == 35
    assert histogram == {d: seen.count(d) for d in sorted(set(seen))}
    block.eval()
    block(x)
    assert torch.equal(block.last_depth, torch.full((7,), 3))  # type: ignore[arg-type]
    assert sum(block.depth_histogram.values()) == 35  # eval mode does not count


def test_an_int_depth_applies_to_every_row() -> None:
    layer = nn.Linear(3, 3)
    block = RepeatedBlock(layer, FixedDepth(4), per_sample=True)
    x = torch.randn(5, 3)
    assert torch.equal(block(x, depth=2), by_hand(layer, x, 2))
    assert torch.equal(block.last_depth, torch.full((5,), 2))  # type: ignore[arg-type]


@given(seed=st.integers(min_value=0, max_value=2**32 - 1), batch=rows)
def test_a_sampler_without_sample_batch_is_asked_once_per_row(seed: int, batch: int) -> None:
    block = RepeatedBlock(nn.Linear(2, 2), CountingSampler(0, 3, seed), per_sample=True)
    block(torch.randn(batch, 2))
    twin = CountingSampler(0, 3, seed)
    assert block.last_depth.tolist() == [twin.sample() for _ in range(batch)]  # type: ignore[union-attr]


class BadBatch:
    min_depth = 0
    max_depth = 3

    def __init__(self, result: object) -> None:
        self.result = result

    def sample(self) -> int:
        return 0

    def sample_batch(self, n: int) -> object:
        return self.result

    def __repr__(self) -> str:
        return "BadBatch()"


@pytest.mark.parametrize(
    ("result", "error", "match"),
    [
        ([1, 2], TypeError, r"returned \[1, 2\] of type list from sample_batch\(2\)"),
        (torch.ones(3, dtype=torch.int64), TypeError, r"shape \(3,\) from sample_batch\(2\)"),
        (torch.ones(2), TypeError, r"dtype torch.float32"),
        (torch.tensor([1, 4]), ValueError, r"returned depth 4 from sample_batch\(2\), outside"),
    ],
)
def test_a_bad_batched_draw_raises(result: object, error: type, match: str) -> None:
    block = RepeatedBlock(nn.Linear(2, 2), BadBatch(result), per_sample=True)
    with pytest.raises(error, match=match):
        block(torch.randn(2, 2))


def test_bad_per_sample_depths_raise() -> None:
    block = RepeatedBlock(nn.Linear(2, 2), FixedDepth(2), per_sample=True)
    with pytest.raises(TypeError, match=r"integer tensor of shape \(3,\).*shape \(2,\)"):
        block(torch.randn(3, 2), depth=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"depth must be >= 0"):
        block(torch.randn(2, 2), depth=torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"0-d tensor"):
        block(torch.tensor(1.0))


def test_a_layer_changing_the_shape_of_the_active_rows_raises() -> None:
    block = RepeatedBlock(nn.Linear(2, 3), FixedDepth(2), per_sample=True)
    with pytest.raises(ValueError, match=r"\(1, 2\) into \(1, 3\) at repeat 1"):
        block(torch.randn(2, 2), depth=torch.tensor([0, 1]))


def test_training_a_per_sample_model_records_the_deepest_row() -> None:
    model = DynamicNet(4, 3, 2)
    model.middle = RepeatedBlock(model.middle.layer, SeededDepth(0, 3, seed=0), per_sample=True)
    x, y = torch.randn(6, 4), torch.randn(6, 2)
    history = train(model, x, y, steps=5, log_every=None, file=io.StringIO())
    assert all(type(record.depth) is int for record in history)
    assert sum(model.middle.depth_histogram.values()) == 5 * 6


# --------------------------------------------------------------------------- checkpoint


@given(
    n=features,
    depth=st.integers(min_value=0, max_value=9),
    name=layer_names,
    seed=torch_seeds,
    every=checkpoints,
    mode=st.sampled_from(["skip", "masked"]),
)
def test_checkpointed_gradients_equal_plain_gradients_bitwise(
    n: int, depth: int, name: str, seed: int, every: bool | int, mode: str
) -> None:
    layer = make_layer(name, n, seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, generator=generator)
    weight = torch.randn(3, n, generator=generator)
    plain = RepeatedBlock(layer, FixedDepth(9), mode=mode)  # type: ignore[arg-type]
    checkpointed = RepeatedBlock(layer, FixedDepth(9), mode=mode, checkpoint=every)  # type: ignore[arg-type]
    want = backward(plain, x, weight, depth)
    got = backward(checkpointed, x, weight, depth)
    assert_bitwise_equal(got, want)


@given(
    depth_list=st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=8),
    name=layer_names,
    seed=torch_seeds,
    every=checkpoints,
    mode=st.sampled_from(["skip", "masked"]),
)
def test_checkpointed_per_row_gradients_equal_plain_gradients_bitwise(
    depth_list: list[int], name: str, seed: int, every: bool | int, mode: str
) -> None:
    layer = make_layer(name, 5, seed)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(depth_list), 5, generator=generator)
    weight = torch.randn(len(depth_list), 5, generator=generator)
    given_depths = torch.tensor(depth_list)
    plain = RepeatedBlock(layer, FixedDepth(9), mode=mode, per_sample=True)  # type: ignore[arg-type]
    checkpointed = RepeatedBlock(
        layer,
        FixedDepth(9),
        mode=mode,  # type: ignore[arg-type]
        per_sample=True,
        checkpoint=every,
    )
    want = backward(plain, x, weight, given_depths)
    got = backward(checkpointed, x, weight, given_depths)
    assert_bitwise_equal(got, want)


def count_saved_bytes(block: RepeatedBlock, x: Tensor, depth: int | Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward pass, outside checkpoints."""
    saved = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = block(x.requires_grad_(), depth=depth)
    out.sum().backward()
    return saved


@pytest.mark.parametrize("per_sample", [False, True])
def test_checkpointing_keeps_about_sqrt_depth_activations(per_sample: bool) -> None:
    layer = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    x = torch.randn(4, 8)
    row = x.numel() * x.element_size()
    # per_sample: one row at depth 64 and three at depth 0 in the same batch
    depth = torch.tensor([64, 0, 0, 0]) if per_sample else 64
    rows = 1 if per_sample else 4
    plain = RepeatedBlock(layer, FixedDepth(64), per_sample=per_sample)
    saving = RepeatedBlock(layer, FixedDepth(64), per_sample=per_sample, checkpoint=True)
    kept_plain = count_saved_bytes(plain, x.clone(), depth)  # type: ignore[arg-type]
    kept_saving = count_saved_bytes(saving, x.clone(), depth)  # type: ignore[arg-type]
    assert kept_plain >= 2 * 64 * row * rows // 4  # every Linear's input, every ReLU's output
    assert kept_saving <= 2 * 8 * row * rows // 4 + 2 * row  # 8 segments' inputs, about


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "fast"}, ValueError, r"mode must be one of 'skip', 'masked', got 'fast'"),
        ({"mode": 1}, TypeError, r"mode must be one of .* got 1 of type int"),
        ({"per_sample": 1}, TypeError, r"per_sample must be a bool, got 1 of type int"),
        ({"checkpoint": 0}, ValueError, r"checkpoint must be an int >= 1, got 0"),
        ({"checkpoint": "sqrt"}, TypeError, r"checkpoint must be a bool or an int >= 1"),
    ],
)
def test_bad_mode_options_raise_at_construction(
    kwargs: dict[str, object], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        RepeatedBlock(nn.Linear(2, 2), **kwargs)  # type: ignore[arg-type]


def test_repr_shows_the_options_that_are_not_the_default() -> None:
    block = RepeatedBlock(
        nn.Linear(2, 2), FixedDepth(2), mode="masked", per_sample=True, checkpoint=2
    )
    assert "mode='masked', per_sample=True, checkpoint=2" in repr(block)
    assert (block.mode, block.per_sample, block.checkpoint) == ("masked", True, 2)
    assert "mode=" not in repr(RepeatedBlock(nn.Linear(2, 2)))


# --------------------------------------------------------------------------- CUDA


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "masked"},
        {"per_sample": True},
        {"per_sample": True, "mode": "masked"},
        {"per_sample": True, "checkpoint": True},
        {"checkpoint": True},
        {"checkpoint": 2, "mode": "masked"},
    ],
    ids=str,
)
def test_every_mode_gives_the_cpus_results_on_cuda(
    cuda_device: torch.device, options: dict[str, object]
) -> None:
    layer = make_layer("linear-tanh", 6, 0)
    on_cpu = RepeatedBlock(layer, SeededDepth(0, 5, seed=3), **options)  # type: ignore[arg-type]
    on_dev = RepeatedBlock(
        make_layer("linear-tanh", 6, 0).to(cuda_device), SeededDepth(0, 5, seed=3), **options
    )  # type: ignore[arg-type]
    x = torch.randn(7, 6)
    weight = torch.randn(7, 6)
    for step in range(4):
        want = backward(on_cpu, x, weight)
        got = backward(on_dev, x.to(cuda_device), weight.to(cuda_device))
        if isinstance(on_cpu.last_depth, Tensor):
            assert torch.equal(on_dev.last_depth.cpu(), on_cpu.last_depth)  # type: ignore[union-attr]
        else:
            assert on_dev.last_depth == on_cpu.last_depth, step
        for have, expected in zip(
            [got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True
        ):
            assert (have is None) == (expected is None), step
            if have is not None and expected is not None:
                assert have.device.type == cuda_device.type
                torch.testing.assert_close(have.cpu(), expected, rtol=1e-4, atol=1e-5)


def test_the_depth_limit_holds_in_every_mode() -> None:
    x = torch.randn(3, 2)
    rows = RepeatedBlock(nn.Linear(2, 2), FixedDepth(2), per_sample=True, depth_limit=4)
    with pytest.raises(ValueError, match=r"depth_limit=4, got 5"):
        rows(x, depth=torch.tensor([1, 5, 0]))
    with pytest.raises(ValueError, match=r"depth_limit=4, got 6"):
        rows(x, depth=6)
    masked = RepeatedBlock(nn.Linear(2, 2), FixedDepth(2), mode="masked", depth_limit=4)
    with pytest.raises(ValueError, match=r"depth_limit=4, got 9"):
        masked.sampler = FixedDepth(9)  # replaced after construction: checked as it is assigned
    growing = SimpleNamespace(min_depth=0, max_depth=2, sample=lambda: 0)
    masked.sampler = growing
    growing.max_depth = 9  # bounds that change after assignment: checked at the forward pass
    with pytest.raises(ValueError, match=r"depth_limit=4, got 9"):
        masked(x)
    saving = RepeatedBlock(nn.Linear(2, 2), FixedDepth(2), checkpoint=True, depth_limit=4)
    with pytest.raises(ValueError, match=r"depth_limit=4, got 7"):
        saving(x, depth=7)
    assert "depth_limit=4, checkpoint=True" in repr(saving)


def batch_norm_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.ReLU())


@pytest.mark.parametrize("checkpoint", [True, 1, 2])
def test_checkpointing_updates_running_statistics_once(checkpoint: bool | int) -> None:
    # The backward pass recomputes the repeats; BatchNorm must not count them twice.
    plain_layer, saving_layer = batch_norm_layer(), batch_norm_layer()
    x = torch.randn(8, 6)
    RepeatedBlock(plain_layer, FixedDepth(4))(x).sum().backward()
    RepeatedBlock(saving_layer, FixedDepth(4), checkpoint=checkpoint)(x).sum().backward()
    for name, buffer in plain_layer.named_buffers():
        assert torch.equal(dict(saving_layer.named_buffers())[name], buffer), name
    assert int(saving_layer[1].num_batches_tracked) == 4
    for plain, saving in zip(plain_layer.parameters(), saving_layer.parameters(), strict=True):
        assert torch.equal(plain.grad, saving.grad)


def test_masked_mode_refuses_a_layer_with_running_statistics() -> None:
    # Its discarded repeats would still move the running mean and variance.
    with pytest.raises(ValueError, match=r"^mode='masked' runs the layer .* but '1' of the layer"):
        RepeatedBlock(batch_norm_layer(), FixedDepth(4), mode="masked")
    untracked = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6, track_running_stats=False))
    assert RepeatedBlock(untracked, FixedDepth(4), mode="masked").mode == "masked"


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_masked_depth_too_deep_is_refused_before_it_is_counted(per_sample: bool) -> None:
    block = RepeatedBlock(nn.Linear(3, 3), FixedDepth(2), mode="masked", per_sample=per_sample)
    with pytest.raises(ValueError, match=r"depth must be <= sampler.max_depth=2"):
        block(torch.randn(2, 3), depth=5)
    assert (block.last_depth, block.depth_histogram) == (None, {})
