"""recursify: a stack of distinct layers into a shared RepeatedBlock with per-repeat deltas."""

from __future__ import annotations

import copy
import io
import itertools
import re

import pytest
import torch
from hypothesis import given
from torch import Tensor, nn

from stochdepth import RecursifyReport, RepeatedBlock, UniformDepth, recursify
from stochdepth.conversion._deltas import DenseDelta, LowRankDelta
from stochdepth.conversion._shared import SharedLayers

from support.strategies import recursify_cases

WIDTH = 8


class Layer(nn.Module):
    """A residual pre-norm layer: linear weights, biases and a norm, as a transformer's."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.up = nn.Linear(WIDTH, 2 * WIDTH)
        self.down = nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
        return x + scale * self.down(torch.tanh(self.up(self.norm(x))))


def stack(count: int = 6, seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    layers = nn.ModuleList(Layer() for _ in range(count)).double()
    with torch.no_grad():  # norms that differ, as trained ones do
        for layer in layers:
            layer.norm.weight.uniform_(0.5, 1.5)
            layer.norm.bias.normal_()
    return layers


def run(layers: nn.ModuleList, x: Tensor) -> Tensor:
    for layer in layers:
        x = layer(x)
    return x


def inputs(rows: int = 5) -> Tensor:
    return torch.randn(rows, WIDTH, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def block_of(converted: nn.ModuleList) -> RepeatedBlock:
    blocks = [layer for layer in converted if isinstance(layer, RepeatedBlock)]
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.parametrize("init", ["average", "first"])
@pytest.mark.parametrize(
    ("core", "block_size"),
    [
        (slice(0, 6), 1),
        (slice(0, 6), 2),
        (slice(0, 6), 3),
        (slice(0, 6), 6),
        (slice(1, 5), 1),
        (slice(1, 5), 2),
        (slice(1, 5), 4),
        (slice(2, None), 2),
    ],
)
def test_full_rank_equals_the_original_in_float64(core: slice, block_size: int, init: str) -> None:
    layers = stack()
    x = inputs()
    expected = run(layers, x)
    converted = recursify(
        layers, core=core, block_size=block_size, init=init, lora_rank="full", check=x
    )
    converted.eval()
    with torch.no_grad():
        got = run(converted, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    report = converted.report
    assert report.max_difference is not None
    assert report.max_difference < 1e-12
    start, stop, _ = core.indices(len(layers))
    assert report.repeats * block_size == stop - start
    assert len(converted) == len(layers) - (stop - start) + 1
    assert block_of(converted).eval_depth == report.repeats


@given(recursify_cases())
def test_full_rank_equals_the_original_for_any_stack(case: dict[str, object]) -> None:
    width = case["width"]
    assert isinstance(width, int)
    torch.manual_seed(case["seed"])
    layers = nn.ModuleList(
        nn.Sequential(nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, width))
        for _ in range(case["count"])
    ).double()
    x = torch.randn(3, width, dtype=torch.float64)
    converted = recursify(
        layers,
        core=case["core"],
        block_size=case["block_size"],
        init=case["init"],
        lora_rank="full",
        check=x,
    )
    assert converted.report.max_difference < 1e-12
    core = case["core"]
    assert isinstance(core, slice)
    assert len(converted) == case["count"] - (core.stop - core.start) + 1


def test_an_int_rank_of_min_out_in_is_exact_too() -> None:
    layers = stack()
    x = inputs()
    converted = recursify(
        layers, core=slice(1, 5), lora_rank=WIDTH, per_repeat_copies=True, check=x
    )
    assert converted.report.max_difference < 1e-12
    assert set(converted.report.ranks.values()) == {WIDTH}


def test_the_input_stack_is_left_as_it_was() -> None:
    layers = stack()
    before = {k: v.clone() for k, v in layers.state_dict().items()}
    converted = recursify(layers, core=slice(1, 5), init="average", lora_rank=2)
    assert len(layers) == 6
    after = layers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert converted[0] is layers[0]
    assert converted[2] is layers[5]


def weight_error(converted: nn.ModuleList, layers: nn.ModuleList, core: range) -> float:
    """The Frobenius norm of (original - converted) over every weight of every repeat."""
    shared = block_of(converted).layer
    assert isinstance(shared, SharedLayers)
    total = 0.0
    for repeat, index in enumerate(core):
        shared.select_repeat(repeat)
        for name, param in layers[index].named_parameters():
            path, _, attr = name.rpartition(".")
            value = getattr(shared.layers[0].get_submodule(path), attr)
            total += float((value - param).pow(2).sum())
    return total**0.5


def test_error_is_non_increasing_in_the_rank() -> None:
    """The weights' error falls with the rank (Eckart-Young); the outputs' reaches 0.

    Only the weights' error is a law: the outputs' largest difference usually falls with
    the rank too, but a nonlinear layer does not promise it from one rank to the next.
    """
    layers = stack()
    x = inputs(16)
    weights, outputs = [], []
    for rank in [None, 1, 2, 3, 4, 6, WIDTH, "full"]:
        converted = recursify(
            layers, core=slice(1, 5), lora_rank=rank, per_repeat_copies=True, check=x
        )
        with torch.no_grad():
            weights.append(weight_error(converted, layers, range(1, 5)))
        outputs.append(converted.report.max_difference)
    for lower, higher in itertools.pairwise(weights):
        assert higher <= lower + 1e-12, weights
    assert weights[0] > 1.0
    assert weights[-1] < 1e-12
    assert weights[-2] < 1e-12
    assert outputs[0] > 1e-2
    assert max(outputs) == outputs[0]
    assert outputs[-1] < 1e-12
    assert outputs[-2] < 1e-12


def test_the_delta_of_each_weight_is_its_truncated_svd() -> None:
    """Eckart-Young: the residual's best rank-r approximation, so its error falls with r."""
    layers = stack()
    previous = None
    for rank in range(1, WIDTH + 1):
        converted = recursify(layers, core=slice(1, 5), lora_rank=rank)
        shared = block_of(converted).layer
        assert isinstance(shared, SharedLayers)
        up = shared.layers[0].up
        delta = up.parametrizations.weight[0]
        assert isinstance(delta, LowRankDelta)
        base = up.parametrizations.weight.original
        errors = []
        for repeat in range(4):
            residual = layers[1 + repeat].up.weight - base
            approx = delta.up[repeat] @ delta.down[repeat]
            s = torch.linalg.svdvals(residual)
            error = torch.linalg.matrix_norm(residual - approx, ord=2)
            bound = s[rank] if rank < len(s) else torch.zeros(())
            torch.testing.assert_close(error, bound.to(error.dtype), rtol=1e-9, atol=1e-9)
            errors.append(float(error.detach()))
        if previous is not None:
            assert all(e <= p + 1e-12 for e, p in zip(errors, previous, strict=False))
        previous = errors


def test_each_repeat_uses_its_own_delta() -> None:
    layers = stack()
    x = inputs()
    converted = recursify(layers, core=slice(1, 5), lora_rank="full")
    shared = block_of(converted).layer
    assert isinstance(shared, SharedLayers)
    with torch.no_grad():
        for repeat in range(4):
            shared.select_repeat(repeat)
            torch.testing.assert_close(shared(x), layers[1 + repeat](x), rtol=0, atol=1e-12)


def test_swapping_two_repeats_deltas_changes_the_output() -> None:
    layers = stack()
    x = inputs()
    converted = recursify(layers, core=slice(1, 5), lora_rank=3, per_repeat_copies=True).eval()
    with torch.no_grad():
        before = run(converted, x)
        deltas = [m for m in converted.modules() if isinstance(m, (DenseDelta, LowRankDelta))]
        assert deltas
        for delta in deltas:
            for param in delta.parameters():
                param[[0, 1]] = param[[1, 0]].clone()
        swapped = run(converted, x)
        assert (swapped - before).abs().max() > 1e-3
        for delta in deltas:
            for param in delta.parameters():
                param[[0, 1]] = param[[1, 0]].clone()
        torch.testing.assert_close(run(converted, x), before, rtol=0, atol=0)


def test_init_picks_the_group_that_the_shared_weights_copy() -> None:
    layers = stack()
    converted = recursify(layers, core=slice(1, 5), block_size=2, init=1)
    shared = block_of(converted).layer
    assert isinstance(shared, SharedLayers)
    for j in range(2):
        assert torch.equal(shared.layers[j].up.weight, layers[1 + 2 + j].up.weight)
    average = recursify(layers, core=slice(1, 5), init="average")
    mean = torch.stack([layer.norm.bias for layer in layers[1:5]]).mean(0)
    torch.testing.assert_close(block_of(average).layer.layers[0].norm.bias, mean)


def test_parameter_counts() -> None:
    layers = stack()
    per_layer = sum(p.numel() for p in layers[0].parameters())
    linear_weights = 2 * WIDTH * 2 * WIDTH
    plain = recursify(layers, core=slice(1, 5))
    report = plain.report
    assert isinstance(report, RecursifyReport)
    assert (report.core_before, report.shared, report.deltas, report.copies) == (
        4 * per_layer,
        per_layer,
        0,
        0,
    )
    assert report.total_after == 3 * per_layer == sum(p.numel() for p in plain.parameters())
    assert report.unrelaxed  # every parameter is shared as is
    low = recursify(layers, core=slice(1, 5), lora_rank=2).report
    assert low.deltas == 4 * 2 * ((2 * WIDTH + WIDTH) + (WIDTH + 2 * WIDTH))
    assert low.copies == 0
    full = recursify(layers, core=slice(1, 5), lora_rank="full").report
    assert full.deltas == 4 * linear_weights
    assert full.copies == 4 * (per_layer - linear_weights)
    assert full.unrelaxed == ()
    assert full.core_after == per_layer + 4 * per_layer
    assert "core parameters" in str(full)


def test_trains_with_a_random_depth_and_grad_depth() -> None:
    layers = stack()
    converted = recursify(
        layers, core=slice(1, 5), lora_rank=2, sampler=UniformDepth(1, 6), grad_depth=2
    )
    block = block_of(converted)
    optimizer = torch.optim.SGD(converted.parameters(), lr=1e-2)
    x, y = inputs(), torch.zeros(5, WIDTH, dtype=torch.float64)
    for _ in range(10):
        optimizer.zero_grad()
        loss = (run(converted, x) - y).pow(2).mean()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert set(block.depth_histogram) <= set(range(1, 7))
    assert sum(block.depth_histogram.values()) == 10
    deltas = [m for m in converted.modules() if isinstance(m, LowRankDelta)]
    assert any(d.up.grad is not None and d.up.grad.abs().sum() > 0 for d in deltas)


@pytest.mark.parametrize(
    "options", [{"mode": "masked"}, {"per_sample": True}, {"checkpoint": True}]
)
def test_block_options_keep_the_full_rank_equality(options: dict[str, object]) -> None:
    layers = stack()
    x = inputs()
    converted = recursify(layers, core=slice(1, 5), lora_rank="full", **options)
    converted.train()
    x.requires_grad_(True)
    got = run(converted, x)
    torch.testing.assert_close(got, run(layers, x), rtol=0, atol=1e-12)
    got.sum().backward()
    assert x.grad is not None


def test_extra_arguments_and_step_kwarg_reach_every_layer() -> None:
    class Stepped(Layer):
        def forward(self, x: Tensor, scale: float = 1.0, step: int = -1) -> Tensor:
            seen.append(step)
            return super().forward(x, scale)

    seen: list[int] = []
    torch.manual_seed(0)
    layers = nn.ModuleList(Stepped() for _ in range(4)).double()
    x = inputs()
    converted = recursify(
        layers, core=slice(0, 4), block_size=2, lora_rank="full", step_kwarg="step", check=(x, 0.5)
    )
    assert converted.report.max_difference < 1e-12
    seen.clear()
    with torch.no_grad():
        converted[0](x, 0.5)
    assert seen == [0, 0, 1, 1]


def test_state_dict_round_trip_into_a_model_rebuilt_the_same_way() -> None:
    layers = stack()
    x = inputs()
    converted = recursify(layers, core=slice(1, 5), lora_rank=2, per_repeat_copies=True)
    with torch.no_grad():  # train a little, so the reload has something to restore
        for param in converted.parameters():
            param.add_(0.01 * torch.randn_like(param))
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    rebuilt = recursify(stack(seed=5), core=slice(1, 5), lora_rank=2, per_repeat_copies=True)
    buffer.seek(0)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    converted.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(run(rebuilt, x), run(converted, x), rtol=0, atol=0)


def test_converting_in_eval_mode_keeps_eval_mode() -> None:
    layers = stack().eval()
    converted = recursify(layers, core=slice(1, 5), sampler=UniformDepth(0, 8))
    block = block_of(converted)
    assert not block.training
    run(converted, inputs())
    assert block.last_depth == 4


def test_transformer_encoder_layers_full_rank() -> None:
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(WIDTH, 2, 16, dropout=0.0, batch_first=True),
        num_layers=4,
        enable_nested_tensor=False,
    ).double()
    for layer in encoder.layers:  # distinct layers (TransformerEncoder copies one)
        for param in layer.parameters():
            nn.init.normal_(param, std=0.3)
    x = torch.randn(2, 3, WIDTH, dtype=torch.float64)
    converted = recursify(encoder.layers, core=slice(0, 4), lora_rank="full", check=x)
    assert converted.report.max_difference < 1e-12
    # in_proj_weight is a raw parameter of MultiheadAttention, not an nn.Linear:
    # a low-rank delta cannot reach it, so it is listed as shared as is.
    low = recursify(encoder.layers, core=slice(0, 4), lora_rank=2)
    assert "layers.0.self_attn.in_proj_weight" in low.report.unrelaxed
    assert "layers.0.self_attn.out_proj.weight" in low.report.ranks


def test_refusals_name_the_argument() -> None:
    layers = stack()
    with pytest.raises(ValueError, match=r"block_size must divide .* 4 layers.*block_size=3"):
        recursify(layers, core=slice(1, 5), block_size=3)
    with pytest.raises(TypeError, match="core must be a slice"):
        recursify(layers, core=(1, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="core must select at least one"):
        recursify(layers, core=slice(4, 2))
    with pytest.raises(ValueError, match="core must be a slice of consecutive"):
        recursify(layers, core=slice(0, 6, 2))
    with pytest.raises(TypeError, match="block_size must be an int"):
        recursify(layers, core=slice(1, 5), block_size=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"init must be an int in \[0, 4\)"):
        recursify(layers, core=slice(1, 5), init=4)
    with pytest.raises(ValueError, match="init must be 'average', 'first'"):
        recursify(layers, core=slice(1, 5), init="last")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lora_rank must be an int >= 1"):
        recursify(layers, core=slice(1, 5), lora_rank=0)
    with pytest.raises(ValueError, match="lora_rank must be"):
        recursify(layers, core=slice(1, 5), lora_rank="half")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="per_repeat_copies must be a bool"):
        recursify(layers, core=slice(1, 5), per_repeat_copies=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unknown keyword argument.*'sampler_'"):
        recursify(layers, core=slice(1, 5), sampler_=None)
    with pytest.raises(ValueError, match="check_kwargs is given without check"):
        recursify(layers, core=slice(1, 5), check_kwargs={"scale": 1.0})
    with pytest.raises(TypeError, match="check must be a tensor"):
        recursify(layers, core=slice(1, 5), check=[inputs()])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"layers must hold modules only, but layers\[1\]"):
        recursify([nn.Linear(2, 2), 3], core=slice(0, 2))  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"layers must be an nn.ModuleList"):
        recursify(nn.Linear(2, 2), core=slice(0, 2))  # type: ignore[arg-type]


def test_layers_of_different_shapes_are_refused() -> None:
    layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)])
    layers[2] = nn.Linear(4, 4, bias=False)
    with pytest.raises(
        ValueError, match=re.escape("layers[0] and layers[2]") + ".*same parameters"
    ):
        recursify(layers, core=slice(0, 3))
    wide = nn.ModuleList([nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4))])
    with pytest.raises(ValueError, match="must be of one type, got Linear and Sequential"):
        recursify(wide, core=slice(0, 2))
    odd = stack(4)
    odd[3].up = nn.Linear(WIDTH, 3 * WIDTH).double()
    odd[3].down = nn.Linear(3 * WIDTH, WIDTH).double()
    with pytest.raises(ValueError, match=r"'up.weight' has shape \(16, 8\) in one and \(24, 8\)"):
        recursify(odd, core=slice(1, 4))


def test_layers_differ_across_a_block_but_not_between_its_repeats() -> None:
    """block_size=2 over alternating kinds of layer: each kind is shared with its own kind."""
    torch.manual_seed(0)
    kinds = [Layer, lambda: nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh())]
    layers = nn.ModuleList(kinds[i % 2]() for i in range(6)).double()
    x = inputs()
    converted = recursify(layers, core=slice(0, 6), block_size=2, lora_rank="full", check=x)
    assert converted.report.max_difference < 1e-12
    with pytest.raises(ValueError, match="must be of one type, got Layer and Sequential"):
        recursify(layers, core=slice(0, 6), block_size=3)


def test_what_cannot_be_shared_is_refused() -> None:
    norms = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)) for _ in range(2))
    norms[1][1].running_mean.fill_(1.0)
    with pytest.raises(ValueError, match=r"equal buffers.*'1.running_mean' differs"):
        recursify(norms, core=slice(0, 2))
    attention = nn.ModuleList(Layer() for _ in range(2))
    attention[0].sliding_window = 4
    attention[1].sliding_window = None
    with pytest.raises(ValueError, match=r"agree on 'sliding_window'.* 4 in one and None"):
        recursify(attention, core=slice(0, 2))


def test_a_stack_on_a_cuda_device_converts_there(cuda_device: torch.device) -> None:
    layers = stack().to(cuda_device)
    x = inputs().to(cuda_device)
    converted = recursify(layers, core=slice(1, 5), lora_rank=3, per_repeat_copies=True)
    assert {p.device for p in converted.parameters()} == {x.device}
    full = recursify(layers, core=slice(1, 5), lora_rank="full", check=x)
    assert full.report.max_difference < 1e-12


def test_a_deep_copy_selects_its_own_repeats() -> None:
    """The copy's deltas follow the copy's repeat index, not the original's."""
    layers = stack()
    x = inputs()
    converted = recursify(layers, core=slice(1, 5), lora_rank="full").eval()
    twin = copy.deepcopy(converted)
    with torch.no_grad():
        torch.testing.assert_close(run(twin, x), run(converted, x), rtol=0, atol=0)
        shared, twin_shared = block_of(converted).layer, block_of(twin).layer
        assert isinstance(shared, SharedLayers)
        assert isinstance(twin_shared, SharedLayers)
        shared.select_repeat(0)
        twin_shared.select_repeat(2)
        torch.testing.assert_close(twin_shared(x), layers[3](x), rtol=0, atol=1e-12)
        torch.testing.assert_close(shared(x), layers[1](x), rtol=0, atol=1e-12)


class Attention(nn.Module):
    """A layer that writes to a cache under its layer_idx, as Hugging Face attention does."""

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: Tensor, cache: FakeCache | None = None) -> Tensor:
        if cache is not None:
            cache.update(self.layer_idx)
        return x + torch.tanh(self.proj(x))


class FakeCache:
    """Counts the writes per layer_idx (``get_seq_length`` makes it a cache)."""

    def __init__(self) -> None:
        self.writes: list[int] = []

    def update(self, layer_idx: int) -> None:
        self.writes.append(layer_idx)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.writes.count(layer_idx)


class TrackingCache(FakeCache):
    """A cache that keeps a slot per repeat itself (as DepthCache says with tracks_block)."""

    def tracks_block(self, block: nn.Module) -> bool:
        return True


def test_layer_idx_per_repeat_for_an_ordinary_cache_only() -> None:
    torch.manual_seed(0)
    layers = nn.ModuleList(Attention(i) for i in range(6))
    converted = recursify(layers, core=slice(1, 5), block_size=2, init=1, lora_rank=2)
    shared = block_of(converted).layer
    assert isinstance(shared, SharedLayers)
    # each shared layer keeps the layer_idx of the first original layer it stands for
    assert [layer.layer_idx for layer in shared.layers] == [1, 2]
    x = torch.randn(3, WIDTH)
    ordinary = FakeCache()
    for _ in range(2):  # two steps: the second extends every slot the first wrote
        for layer in converted:
            x = layer(x, cache=ordinary)
    assert ordinary.writes == [0, 1, 2, 3, 4, 5] * 2  # one slot per original layer
    assert [layer.layer_idx for layer in shared.layers] == [1, 2]
    tracking = TrackingCache()
    for layer in converted:
        x = layer(x, cache=tracking)
    assert tracking.writes == [0, 1, 2, 1, 2, 5]  # the cache tells the repeats apart


def test_an_ordinary_cache_filled_at_another_depth_is_refused() -> None:
    torch.manual_seed(0)
    layers = nn.ModuleList(Attention(i) for i in range(4))
    converted = recursify(layers, core=slice(0, 4))
    block = block_of(converted)
    cache = FakeCache()
    x = torch.randn(3, WIDTH)
    block(x, cache=cache, depth=2)
    block(x, cache=cache, depth=2)
    with pytest.raises(
        ValueError, match=r"slot for repeat 3 .* holds 0 positions where repeat 1's held 2"
    ):
        block(x, cache=cache, depth=3)
    with pytest.raises(
        ValueError, match="runs repeat 5: with a cache, run at a depth of at most 4"
    ):
        block(x, cache=FakeCache(), depth=5)
    block(x, depth=5)  # without a cache any depth runs


def test_step_and_iterate_select_the_repeats_deltas() -> None:
    """The repeat hook reaches every path: one step as repeat r is original layer r."""
    layers = stack()
    x = inputs()
    converted = recursify(layers, core=slice(1, 5), lora_rank="full").eval()
    block = block_of(converted)
    with torch.no_grad():
        for repeat in range(4):
            torch.testing.assert_close(
                block.step(x, repeat=repeat), layers[1 + repeat](x), rtol=0, atol=1e-12
            )
        expected = x
        for state, layer in zip(block.iterate(x), layers[1:5], strict=True):
            expected = layer(expected)
            torch.testing.assert_close(state, expected, rtol=0, atol=1e-12)


def test_layers_that_return_tuples_with_output() -> None:
    class Pair(Layer):
        def forward(self, x: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:  # type: ignore[override]
            return super().forward(x, scale), x.sum()

    torch.manual_seed(0)
    layers = nn.ModuleList(Pair() for _ in range(4)).double()
    x = inputs()
    converted = recursify(
        layers, core=slice(0, 4), block_size=2, lora_rank="full", output=0, check=x
    )
    assert converted.report.max_difference < 1e-12
    assert isinstance(converted[0](x), Tensor)  # the block returns the state alone
    with pytest.raises(TypeError, match=r"output=2 takes element 2 .* Pair returns"):
        recursify(layers, core=slice(0, 4), output=2, check=x)
    wrong = recursify(layers, core=slice(0, 4), output=1)
    with pytest.raises(ValueError, match=r"keep the state's shape.*\(5, 8\) into \(\)"):
        wrong[0](x)
