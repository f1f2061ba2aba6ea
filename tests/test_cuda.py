"""CPU/CUDA parity: the same weights, input and depths give the same results on both.

Each test builds a model on the CPU, copies it to a CUDA device, runs both on the same
input at the same depths, and compares outputs and gradients (of the input and of
every parameter) with ``torch.testing.assert_close`` at these tolerances:

* float64: ``rtol=1e-10, atol=1e-12``;
* float32: ``rtol=1e-4, atol=1e-5`` (CUDA kernels may sum in another order).

Depths, parameters that get no gradient (``.grad is None`` at depth 0), sampler
sequences and state_dict contents must match exactly.

The ``cuda_device`` fixture (tests/conftest.py) yields every CUDA device in turn and
is skipped, with its reason, on a machine without one.
"""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from stochdepth import (
    BernoulliDepth,
    DynamicNet,
    GeometricDepth,
    RepeatedBlock,
    ScheduledDepth,
    SeededDepth,
    train,
)
from stochdepth._extra_state import decode_state

from support.strategies import (
    LAYERS,
    bounds,
    depths,
    features,
    inputs,
    leading_dims,
    make_layer,
    seeds,
)

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-12},
    torch.float32: {"rtol": 1e-4, "atol": 1e-5},
}
dtypes = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
torch_seeds = st.integers(min_value=0, max_value=2**32 - 1)
draw_counts = st.integers(min_value=0, max_value=8)

# Hypothesis warns when a function-scoped fixture meets @given, because the fixture is
# not re-run between examples. `cuda_device` only returns a constant torch.device for
# its parameter and holds no state, so sharing it across the examples is safe.
# No deadline: the first CUDA call of a process can take seconds.
on_device = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)


def assert_matches_cpu(got: Tensor | None, want: Tensor | None, what: str) -> None:
    """``got`` (on the device) equals ``want`` (on the CPU) within the dtype's tolerance."""
    if want is None:
        assert got is None, what
        return
    assert got is not None, what
    assert got.device.type == "cuda", what
    # Rounding differs relative to the largest terms summed, not to each element: an
    # element that cancels to near zero still carries their absolute error. So the
    # absolute tolerance grows with the tensor's largest magnitude.
    tolerance = TOLERANCES[want.dtype]
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    atol = tolerance["atol"] + tolerance["rtol"] * scale
    torch.testing.assert_close(got.cpu(), want, msg=what, rtol=tolerance["rtol"], atol=atol)


def run_backward(
    model: nn.Module, x: Tensor, weight: Tensor, **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """Return ``model(x)`` and the gradient of ``(model(x) * weight).sum()`` for ``x``."""
    x = x.detach().clone().requires_grad_()
    out = model(x, **kwargs)
    (out * weight.to(out.device)).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad


def assert_parameter_grads_match(on_device_: nn.Module, on_cpu: nn.Module) -> None:
    pairs = zip(on_device_.named_parameters(), on_cpu.named_parameters(), strict=True)
    for (name, got), (_, want) in pairs:
        assert_matches_cpu(got.grad, want.grad, f"grad of {name}")


def as_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (nested) state with every tensor moved to the CPU."""
    return {
        key: as_cpu(value)
        if isinstance(value, dict)
        else value.cpu()
        if isinstance(value, Tensor)
        else value
        for key, value in state.items()
    }


@on_device
@dtypes
@pytest.mark.parametrize("name", sorted(LAYERS))
@given(data=st.data(), n=features, depth=depths, seed=torch_seeds)
def test_repeated_block_outputs_and_gradients_match_cpu(
    cuda_device: torch.device,
    dtype: torch.dtype,
    name: str,
    data: st.DataObject,
    n: int,
    depth: int,
    seed: int,
) -> None:
    on_cpu = RepeatedBlock(make_layer(name, n, seed, dtype))
    on_dev = copy.deepcopy(on_cpu).to(cuda_device)
    exact = copy.deepcopy(on_cpu).double()
    x = data.draw(inputs(n, dtype))
    weight = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))

    want, want_grad = run_backward(on_cpu, x, weight, depth=depth)
    got, got_grad = run_backward(on_dev, x.to(cuda_device), weight, depth=depth)
    truth, truth_grad = run_backward(exact, x.double(), weight.double(), depth=depth)

    assert on_cpu.last_depth == on_dev.last_depth == depth
    if dtype == torch.float64:
        assert_matches_cpu(got, want, "output")
        assert_matches_cpu(got_grad, want_grad, "grad of x")
        assert_parameter_grads_match(on_dev, on_cpu)
        return
    # float32: a chain of repeats of an ill-conditioned layer (LayerNorm over 3 features
    # of rows with a small spread) amplifies rounding, and CPU and CUDA kernels round
    # differently. The device must then be about as close to the float64 result as the
    # CPU's own float32 is.
    assert_as_close_as_cpu(got, want, truth, "output")
    assert_as_close_as_cpu(got_grad, want_grad, truth_grad, "grad of x")
    pairs = zip(
        on_dev.named_parameters(), on_cpu.named_parameters(), exact.parameters(), strict=True
    )
    for (label, on_device_), (_, on_host), reference in pairs:
        assert_as_close_as_cpu(on_device_.grad, on_host.grad, reference.grad, f"grad of {label}")


def assert_as_close_as_cpu(
    got: Tensor | None, want: Tensor | None, truth: Tensor | None, what: str
) -> None:
    """``got`` (float32, on the device) is within 10 times the CPU's float32 error of ``truth``."""
    if want is None or truth is None:
        assert got is None, what
        assert want is None, what
        assert truth is None, what
        return
    assert got is not None, what
    assert got.device.type == "cuda", what
    truth = truth.detach()
    cpu_error = (want.detach().double() - truth).abs()
    tolerance = TOLERANCES[torch.float32]
    scale = float(truth.abs().max()) if truth.numel() else 0.0
    bound = tolerance["atol"] + tolerance["rtol"] * scale + 10 * cpu_error
    device_error = (got.detach().cpu().double() - truth).abs()
    worst = float((device_error - bound).max()) if truth.numel() else 0.0
    assert worst <= 0, f"{what}: the device is {worst:.3g} beyond 10 times the CPU's float32 error"


@on_device
@dtypes
@given(
    sizes=st.tuples(features, features, features),
    lead=leading_dims,
    batch=st.integers(min_value=1, max_value=5),
    depth=depths,
    seed=torch_seeds,
)
def test_dynamic_net_outputs_and_gradients_match_cpu(
    cuda_device: torch.device,
    dtype: torch.dtype,
    sizes: tuple[int, int, int],
    lead: tuple[int, ...],
    batch: int,
    depth: int,
    seed: int,
) -> None:
    d_in, hidden, d_out = sizes
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        on_cpu = DynamicNet(d_in, hidden, d_out).to(dtype)
    on_dev = copy.deepcopy(on_cpu).to(cuda_device)
    x = torch.randn(*lead, batch, d_in, dtype=dtype, generator=generator)
    weight = torch.randn(*lead, batch, d_out, dtype=dtype, generator=generator)

    want, want_grad = run_backward(on_cpu, x, weight, depth=depth)
    got, got_grad = run_backward(on_dev, x.to(cuda_device), weight, depth=depth)

    assert got.shape == want.shape == (*lead, batch, d_out)
    assert on_cpu.middle.last_depth == on_dev.middle.last_depth == depth
    assert_matches_cpu(got, want, "output")
    assert_matches_cpu(got_grad, want_grad, "grad of x")
    assert_parameter_grads_match(on_dev, on_cpu)


@on_device
@dtypes
@given(seed=seeds, weight_seed=torch_seeds, bound=bounds(), count=draw_counts, n=features)
def test_seeded_depth_sequence_is_the_same_on_cpu_and_cuda(
    cuda_device: torch.device,
    dtype: torch.dtype,
    seed: int,
    weight_seed: int,
    bound: tuple[int, int],
    count: int,
    n: int,
) -> None:
    layer = make_layer("linear-tanh", n, weight_seed, dtype)
    on_cpu = RepeatedBlock(layer, SeededDepth(*bound, seed=seed))
    on_dev = RepeatedBlock(copy.deepcopy(layer), SeededDepth(*bound, seed=seed)).to(cuda_device)
    twin = SeededDepth(*bound, seed=seed)
    x = torch.randn(2, n, dtype=dtype, generator=torch.Generator().manual_seed(weight_seed))
    x_dev = x.to(cuda_device)
    for step in range(count):
        want, got = on_cpu(x), on_dev(x_dev)
        assert on_dev.last_depth == on_cpu.last_depth == twin.sample(), step
        assert_matches_cpu(got, want, f"output of step {step}")
    extra_state = on_dev.state_dict()["_extra_state"]
    assert extra_state.device.type == "cpu"
    assert decode_state(extra_state)["sampler"]["generator_state"].device.type == "cpu"


@on_device
@dtypes
@given(seed=seeds, bound=bounds(), count=draw_counts, sizes=st.tuples(features, features))
def test_dynamic_net_with_seeded_depth_trains_the_same_on_cpu_and_cuda(
    cuda_device: torch.device,
    dtype: torch.dtype,
    seed: int,
    bound: tuple[int, int],
    count: int,
    sizes: tuple[int, int],
) -> None:
    d_in, hidden = sizes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**32)
        on_cpu = DynamicNet(d_in, hidden, 2, sampler=SeededDepth(*bound, seed=seed)).to(dtype)
    on_dev = copy.deepcopy(on_cpu).to(cuda_device)
    x = torch.randn(3, d_in, dtype=dtype, generator=torch.Generator().manual_seed(seed % 2**32))
    weight = torch.ones(3, 2, dtype=dtype)
    for step in range(count):
        on_cpu.zero_grad(set_to_none=True)
        on_dev.zero_grad(set_to_none=True)
        want, want_grad = run_backward(on_cpu, x, weight)
        got, got_grad = run_backward(on_dev, x.to(cuda_device), weight)
        assert on_cpu.middle.last_depth == on_dev.middle.last_depth, step
        assert_matches_cpu(got, want, f"output of step {step}")
        assert_matches_cpu(got_grad, want_grad, f"grad of x at step {step}")
        assert_parameter_grads_match(on_dev, on_cpu)


@on_device
@dtypes
@given(
    seed=seeds,
    other_seed=seeds,
    weight_seeds=st.tuples(torch_seeds, torch_seeds),
    bound=bounds(),
    before=draw_counts,
    after=draw_counts,
    n=features,
)
def test_state_dict_after_to_device_round_trips(
    cuda_device: torch.device,
    dtype: torch.dtype,
    seed: int,
    other_seed: int,
    weight_seeds: tuple[int, int],
    bound: tuple[int, int],
    before: int,
    after: int,
    n: int,
) -> None:
    original = RepeatedBlock(
        make_layer("layernorm-linear", n, weight_seeds[0], dtype), SeededDepth(*bound, seed=seed)
    ).to(cuda_device)
    x = torch.randn(2, n, dtype=dtype, generator=torch.Generator().manual_seed(weight_seeds[1]))
    x_dev = x.to(cuda_device)
    for _ in range(before):
        original(x_dev)

    state = original.state_dict()
    for key, value in state.items():
        if isinstance(value, Tensor):
            assert value.device == cuda_device, key
    buffer = io.BytesIO()
    torch.save(state, buffer)
    saved = buffer.getvalue()

    continuation = []
    outputs = []
    for _ in range(after):
        outputs.append(original(x_dev))
        continuation.append(original.last_depth)

    def load(map_location: torch.device | None) -> dict[str, Any]:
        loaded: dict[str, Any] = torch.load(
            io.BytesIO(saved), weights_only=True, map_location=map_location
        )
        return loaded

    def fresh() -> RepeatedBlock:
        layer = make_layer("layernorm-linear", n, weight_seeds[1], dtype)
        return RepeatedBlock(layer, SeededDepth(*bound, seed=other_seed))

    on_dev = fresh().to(cuda_device)
    on_dev.load_state_dict(load(None))
    on_cpu = fresh()
    on_cpu.load_state_dict(load(None))
    # A state moved to the device as a whole (sampler state included) loads on the CPU too.
    on_cpu_from_device_state = fresh()
    on_cpu_from_device_state.load_state_dict(load(cuda_device))

    for name, value in as_cpu(original.state_dict()).items():
        if isinstance(value, Tensor):
            assert torch.equal(on_dev.state_dict()[name].cpu(), value), name
            assert torch.equal(on_cpu.state_dict()[name], value), name
    for copy_ in (on_dev, on_cpu, on_cpu_from_device_state):
        assert isinstance(copy_.sampler, SeededDepth)
        assert copy_.sampler.seed == seed
        for step, (depth, want) in enumerate(zip(continuation, outputs, strict=True)):
            got = copy_(x.to(next(copy_.parameters()).device))
            assert copy_.last_depth == depth, step
            torch.testing.assert_close(got.cpu(), want.cpu(), **TOLERANCES[dtype])


GENERATOR_SAMPLERS = {
    "bernoulli": lambda seed: BernoulliDepth(5, 0.6, seed=seed),
    "geometric": lambda seed: GeometricDepth(0.3, 6, seed=seed),
    "scheduled": lambda seed: ScheduledDepth(1, 5, 8, seed=seed),
}


@on_device
@pytest.mark.parametrize("kind", sorted(GENERATOR_SAMPLERS))
@given(seed=seeds, count=draw_counts)
def test_every_generator_sampler_trains_the_same_on_cpu_and_cuda(
    cuda_device: torch.device, kind: str, seed: int, count: int
) -> None:
    # The samplers draw on the CPU whatever the model's device, so a model on CUDA
    # sees the depths, the telemetry and (in float64) the losses of the same model
    # on the CPU.
    make = GENERATOR_SAMPLERS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed % 2**32)
        on_cpu = DynamicNet(4, 3, 2, sampler=make(seed)).double()
        x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    on_dev = copy.deepcopy(on_cpu).to(cuda_device)
    want = train(on_cpu, x, y, steps=count, lr=1e-3, log_every=None)
    got = train(on_dev, x.to(cuda_device), y.to(cuda_device), steps=count, lr=1e-3, log_every=None)
    assert got.depths == want.depths
    assert got.depth_histogram == want.depth_histogram == on_dev.middle.depth_histogram
    assert [r.loss for r in got] == pytest.approx([r.loss for r in want], rel=1e-10, abs=1e-12)
