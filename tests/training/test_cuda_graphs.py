"""`CUDAGraphStep` and ``train(cuda_graphs=True)``: a graph per depth, replayed like eager.

The refusals (a CPU model, bad arguments, blocks and optimizers that cannot be captured)
and the pieces that make a captured step equal an eager one (running a block at a given
depth without touching its telemetry; drawing a masked block's depth outside the graph as
its forward pass would, and running it at a depth tensor that it does not read on the
host; undoing the warm-up, with the optimizer state it created zero-filled) are checked
on the CPU. The equivalence of graph and eager training
(the same depths, losses and weights within float32 rounding, ``.grad`` ``None`` at
depth 0 as in eager training) needs a CUDA device: those tests use the ``cuda_device``
fixture of tests/conftest.py, which skips them, saying why, on a machine without one.
"""

from __future__ import annotations

import copy
import io
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from stochdepth import (
    CUDAGraphStep,
    DynamicNet,
    FixedDepth,
    LayerDropList,
    RepeatedBlock,
    SeededDepth,
    UniformDepth,
    train,
)
from stochdepth._cli import main
from stochdepth.training._cuda_graphs import _checked_outside, _draw, _forced_depths, _restore

MSE = nn.MSELoss(reduction="sum")
# float32 rounding: the graphs replay the eager step's kernels, but a library may pick
# another algorithm under capture; what differs is rounding, compounded over the steps.
CLOSE = {"rtol": 1e-4, "atol": 1e-5}


def sgd(model: nn.Module, **options: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, **options)


# --------------------------------------------------------------------------- refusals


def test_a_cpu_model_is_refused_in_one_line_saying_why() -> None:
    model = DynamicNet(5, 4, 2)
    with pytest.raises(ValueError, match="CUDA device") as caught:
        CUDAGraphStep(model, sgd(model), MSE)
    message = str(caught.value)
    assert "\n" not in message
    assert "CUDA graphs record and replay GPU kernels" in message
    assert "parameters are on cpu" in message


def test_a_model_without_parameters_is_refused() -> None:
    model = nn.Sequential(RepeatedBlock(nn.ReLU(), FixedDepth(1)))
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="no parameters at all"):
        CUDAGraphStep(model, optimizer, MSE)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"model": "net"}, TypeError, "model must be a torch.nn.Module, got 'net' of type str"),
        ({"optimizer": None}, TypeError, "optimizer must be a torch.optim.Optimizer, got None"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable"),
        ({"max_graphs": 0}, ValueError, "max_graphs must be an int >= 1, got 0"),
        ({"max_graphs": 2.5}, TypeError, "max_graphs"),
    ],
    ids=["model", "optimizer", "loss_fn", "max_graphs=0", "max_graphs=2.5"],
)
def test_bad_arguments_name_themselves(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    model = DynamicNet(5, 4, 2)
    given: dict[str, Any] = {"model": model, "optimizer": sgd(model), "loss_fn": MSE}
    given.update(arguments)
    max_graphs = given.pop("max_graphs", 16)
    with pytest.raises(error, match=message):
        CUDAGraphStep(given["model"], given["optimizer"], given["loss_fn"], max_graphs=max_graphs)


@pytest.mark.parametrize(
    ("block_options", "named"),
    [
        ({"per_sample": True}, "per_sample=True in skip mode"),
        ({"checkpoint": True}, "checkpoint=True"),
        ({"checkpoint": 2}, "checkpoint=2"),
        ({"mode": "masked", "checkpoint": True}, "checkpoint=True"),
        ({"mode": "masked", "per_sample": True, "checkpoint": 3}, "checkpoint=3"),
    ],
)
def test_blocks_that_no_graph_replays_are_refused(
    block_options: dict[str, Any], named: str
) -> None:
    layer = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(RepeatedBlock(layer, UniformDepth(0, 3), **block_options))
    with pytest.raises(ValueError, match="skip mode with one depth per batch") as caught:
        CUDAGraphStep(model, sgd(model), MSE)
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "block_options", [{"mode": "masked"}, {"mode": "masked", "per_sample": True}]
)
def test_masked_blocks_pass_the_block_check(block_options: dict[str, Any]) -> None:
    # One graph serves all their depths: only the CPU stops them here.
    layer = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(RepeatedBlock(layer, UniformDepth(0, 3), **block_options))
    with pytest.raises(ValueError, match="CUDA device"):
        CUDAGraphStep(model, sgd(model), MSE)


@pytest.mark.parametrize(
    "list_options", [{}, {"per_sample": True}, {"mode": "masked"}, {"drop_rate": 0.0}]
)
def test_a_layer_drop_list_is_refused(list_options: dict[str, Any]) -> None:
    # Its drops are drawn in Python, which a replay skips: every step would drop the
    # captured step's layers. Refused before the device check, so the CPU sees it.
    options = {"drop_rate": 0.5, **list_options}
    layers = LayerDropList(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), **options)
    model = nn.Sequential(layers, RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 3)))
    with pytest.raises(ValueError, match="cannot replay a LayerDropList") as caught:
        CUDAGraphStep(model, sgd(model), MSE)
    assert "\n" not in str(caught.value)


def test_train_refuses_cuda_graphs_for_a_layer_drop_list() -> None:
    model = nn.Sequential(LayerDropList([nn.Linear(4, 4)], 0.5), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="cannot replay a LayerDropList"):
        train(model, torch.randn(4, 4), torch.randn(4, 2), steps=1, cuda_graphs=True)


def test_a_grad_depth_sampler_is_refused_and_an_int_is_not() -> None:
    layer = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    drawn = nn.Sequential(RepeatedBlock(layer, UniformDepth(0, 3), grad_depth=UniformDepth(0, 2)))
    with pytest.raises(ValueError, match="grad_depth drawn by a sampler"):
        CUDAGraphStep(drawn, sgd(drawn), MSE)
    fixed = nn.Sequential(RepeatedBlock(layer, UniformDepth(0, 3), grad_depth=1))
    with pytest.raises(ValueError, match="CUDA device"):  # only the CPU stops it here
        CUDAGraphStep(fixed, sgd(fixed), MSE)


def test_a_block_inside_a_blocks_layer_is_refused() -> None:
    inner = RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 2))
    model = RepeatedBlock(nn.Sequential(inner, nn.ReLU()), UniformDepth(0, 2))
    with pytest.raises(ValueError, match="a RepeatedBlock inside its layer"):
        CUDAGraphStep(model, sgd(model), MSE)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda m: sgd(m, dampening=0.1), "dampening=0.1 .* needs dampening=0"),
        (lambda m: torch.optim.Adam(m.parameters()), "Adam must be built with capturable=True"),
        (lambda m: torch.optim.AdamW(m.parameters()), "AdamW must be built with capturable=True"),
        (lambda m: torch.optim.Adagrad(m.parameters()), "SGD, Adam or AdamW .* got Adagrad"),
    ],
    ids=["sgd-dampening", "adam", "adamw", "adagrad"],
)
def test_optimizers_that_cannot_be_captured_like_eager_are_refused(
    make: Callable[[nn.Module], torch.optim.Optimizer], message: str
) -> None:
    model = DynamicNet(5, 4, 2)
    with pytest.raises(ValueError, match=message):
        CUDAGraphStep(model, make(model), MSE)


def test_sgd_without_momentum_and_capturable_adam_pass_the_optimizer_check() -> None:
    # They get as far as the device check: only the CPU stops them here.
    model = DynamicNet(5, 4, 2)
    for optimizer in (
        torch.optim.SGD(model.parameters(), lr=0.1, dampening=0.5),
        torch.optim.Adam(model.parameters(), capturable=True),
        torch.optim.AdamW(model.parameters(), capturable=True),
    ):
        with pytest.raises(ValueError, match="CUDA device"):
            CUDAGraphStep(model, optimizer, MSE)


def test_train_refuses_cuda_graphs_for_a_cpu_model() -> None:
    x, y = torch.randn(8, 5), torch.randn(8, 2)
    with pytest.raises(ValueError, match="one CUDA device, since CUDA graphs"):
        train(DynamicNet(5, 4, 2), x, y, steps=2, log_every=None, cuda_graphs=True)


def test_train_checks_the_cuda_graphs_flag() -> None:
    x, y = torch.randn(8, 5), torch.randn(8, 2)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        train(DynamicNet(5, 4, 2), x, y, steps=2, cuda_graphs="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cuda_graphs=True cannot be combined with distributed"):
        train(DynamicNet(5, 4, 2), x, y, steps=2, cuda_graphs=True, distributed=True)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA: --cuda-graphs trains here"
)
def test_the_command_line_refuses_cuda_graphs_without_cuda(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["train", "--cuda-graphs", "--steps", "2"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("stochdepth train: error: --cuda-graphs needs a CUDA device")


def test_the_command_line_refuses_cuda_graphs_with_distributed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["train", "--cuda-graphs", "--distributed", "--steps", "2"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "stochdepth train: error: --cuda-graphs cannot be combined with --distributed yet\n"
    )


# --------------------------------------------------------------------------- the pieces, on the CPU


def test_forced_depths_run_the_block_at_its_depth_and_leave_its_telemetry() -> None:
    layer = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    block = RepeatedBlock(layer, SeededDepth(0, 3, seed=0))
    x = torch.randn(2, 4)
    block(x)
    histogram, last = block.depth_histogram, block.last_depth
    state = block.sampler.state_dict()["generator_state"].clone()
    with _forced_depths([block], (2,)):
        got = block(x)
        got_keyword = block(x, depth=None)
    torch.testing.assert_close(got, layer(layer(x)), rtol=0, atol=0)
    torch.testing.assert_close(got_keyword, got, rtol=0, atol=0)
    assert block.depth_histogram == histogram
    assert block.last_depth == last
    assert torch.equal(block.sampler.state_dict()["generator_state"], state)  # no draw
    block(x)  # the hook is gone: the block draws again
    assert sum(block.depth_histogram.values()) == 2


def test_a_forced_depth_replaces_one_given_to_the_block() -> None:
    # The hook finds depth by forward's signature, not by where it sits in the call.
    layer = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    block = RepeatedBlock(layer, FixedDepth(3))
    x = torch.randn(2, 4)
    with _forced_depths([block], [2]):
        got = block(x, depth=0)
    assert torch.equal(got, layer(layer(x)))


def masked_block(seed: int, per_sample: bool, width: int = 4) -> RepeatedBlock:
    layer = nn.Sequential(nn.Linear(width, width), nn.Tanh())
    return RepeatedBlock(layer, SeededDepth(0, 3, seed=seed), mode="masked", per_sample=per_sample)


def plain(depth: object) -> object:
    """A depth as a comparable value: an int, or a tensor's list of values."""
    return depth.tolist() if isinstance(depth, Tensor) else depth


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "rows"])
def test_drawing_a_masked_depth_outside_draws_as_the_forward_pass(per_sample: bool) -> None:
    # The same sampler calls, last_depth and histogram as the eager forward pass, and the
    # depth as a CPU int64 tensor of the block input's rows (0-d without per_sample).
    torch.manual_seed(0)
    eager = masked_block(11, per_sample)
    drawing = copy.deepcopy(eager)
    x = torch.randn(6, 5, 4)  # rows along dimension 0, as the block's input has them
    stub = torch.empty((6,) if per_sample else (), dtype=torch.int64)
    for _ in range(25):
        eager(x)
        depth = _draw(drawing, stub)
        assert isinstance(depth, Tensor)
        assert (depth.dtype, depth.device, depth.shape) == (torch.int64, stub.device, stub.shape)
        assert plain(depth) == plain(eager.last_depth)
        assert plain(drawing.last_depth) == plain(eager.last_depth)
    assert drawing.depth_histogram == eager.depth_histogram
    assert sum(eager.depth_histogram.values()) == 25 * (6 if per_sample else 1)


def test_drawing_a_skip_depth_outside_is_an_int_as_the_forward_pass_draws() -> None:
    eager = RepeatedBlock(nn.Linear(4, 4), UniformDepth(0, 3))
    drawing = copy.deepcopy(eager)
    x = torch.randn(2, 4)
    random.seed(3)
    want = []
    for _ in range(20):
        eager(x)
        want.append(eager.last_depth)
    random.seed(3)
    assert [_draw(drawing, None) for _ in range(20)] == want
    assert drawing.depth_histogram == eager.depth_histogram


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "rows"])
def test_a_masked_block_runs_at_a_forced_depth_tensor(per_sample: bool) -> None:
    torch.manual_seed(1)
    block = masked_block(2, per_sample)
    x = torch.randn(5, 4)
    block(x)
    histogram, last = block.depth_histogram, plain(block.last_depth)
    static = torch.tensor([0, 3, 1, 2, 3] if per_sample else 2)
    with _forced_depths([block], [static]):
        got = block(x)
    assert block.depth_histogram == histogram
    assert plain(block.last_depth) == last
    want = block(x, depth=static)  # a given depth tensor, as masked mode takes it
    assert torch.equal(got, want)
    if per_sample:  # row 0 at depth 0 is its input, row 1 three repeats of the layer
        assert torch.equal(got[0], x[0])
        alone = block.layer(block.layer(block.layer(x[1:2])))  # one row: float rounding
        torch.testing.assert_close(got[1:2], alone)


class HostReads(TorchDispatchMode):
    """Counts ``aten._local_scalar_dense``: a tensor's value read on the host.

    On a CUDA device such a read waits for the device, which a graph capture refuses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "rows"])
def test_under_capture_a_masked_block_does_not_read_its_depth_tensor(per_sample: bool) -> None:
    # Outside a capture masked mode checks a given depth tensor by value (a host read);
    # CUDAGraphStep checks the drawn depths before copying them in, and the capture
    # (_checked_outside) uses the static tensor unread, with the same output.
    torch.manual_seed(2)
    block = masked_block(3, per_sample)
    x = torch.randn(4, 4)
    static = torch.tensor([3, 0, 2, 1] if per_sample else 1)
    choice = block._choice
    with HostReads() as eager_reads:
        want = block(x, depth=static)
    assert eager_reads.reads > 0
    with _forced_depths([block], [static]), _checked_outside([block]), HostReads() as reads:
        got = block(x)
    assert reads.reads == 0
    assert torch.equal(got, want)
    assert block._choice is choice  # the block's own choice again, after the capture


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "rows"])
def test_a_step_at_a_static_depth_tensor_trains_as_eager_bitwise(per_sample: bool) -> None:
    # What a replay does, on the CPU: draw outside, copy into the one static tensor, run
    # the step at it (as captured: unread); against eager training, step for step.
    torch.manual_seed(4)
    eager = nn.Sequential(nn.Linear(3, 4), masked_block(5, per_sample), nn.Linear(4, 2))
    graphed = copy.deepcopy(eager)
    block = graphed[1]
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    static = torch.zeros((6,) if per_sample else (), dtype=torch.int64)
    eager_opt, graphed_opt = sgd(eager), sgd(graphed)
    for _ in range(15):
        eager_opt.zero_grad(set_to_none=True)
        want = MSE(eager(x), y)
        want.backward()
        eager_opt.step()
        static.copy_(_draw(block, static))
        with _forced_depths([block], [static]), _checked_outside([block]):
            graphed_opt.zero_grad(set_to_none=True)
            got = MSE(graphed(x), y)
            got.backward()
            graphed_opt.step()
        assert torch.equal(got, want)
        assert plain(block.last_depth) == plain(eager[1].last_depth)
        for a, b in zip(eager.parameters(), graphed.parameters(), strict=True):
            assert torch.equal(a, b)
    assert block.depth_histogram == eager[1].depth_histogram


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9),
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9, nesterov=True),
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1),
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
        lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2),
    ],
    ids=["sgd", "sgd-nesterov", "sgd-weight-decay", "adam", "adamw"],
)
def test_undoing_the_warm_up_gives_eager_training_bitwise(
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> None:
    # The warm-up before a capture takes real steps; afterwards the parameters are copied
    # back and the optimizer state it created is zero-filled. Zero state must train
    # exactly as no state (eager's first step), including the repeated layer that depth 0
    # leaves without a gradient (SGD and Adam skip it, state or none).
    torch.manual_seed(0)
    eager = DynamicNet(6, 5, 3, sampler=FixedDepth(0))
    graphed = copy.deepcopy(eager)
    eager_opt, graphed_opt = make_optimizer(eager), make_optimizer(graphed)
    x, y = torch.randn(4, 6), torch.randn(4, 3)

    def step(model: DynamicNet, optimizer: torch.optim.Optimizer, depth: int) -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = MSE(model(x, depth=depth), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    params = [p for group in graphed_opt.param_groups for p in group["params"]]
    saved_params = [p.detach().clone() for p in params]
    for depth in (2, 3, 2):  # the warm-up creates every parameter's state
        step(graphed, graphed_opt, depth)
    assert len(graphed_opt.state) == len(params)
    _restore(params, saved_params, graphed_opt, {})
    assert all(p.grad is None for p in params)
    for a, b in zip(eager.parameters(), graphed.parameters(), strict=True):
        assert torch.equal(a, b)
    for depth in (0, 2, 0, 1, 3, 0, 2):
        assert torch.equal(step(eager, eager_opt, depth), step(graphed, graphed_opt, depth))
        for a, b in zip(eager.parameters(), graphed.parameters(), strict=True):
            assert torch.equal(a, b)
            assert (a.grad is None) == (b.grad is None)
        assert (graphed.middle_linear.weight.grad is None) == (depth == 0)


def test_undoing_the_warm_up_restores_state_that_existed_before() -> None:
    model = DynamicNet(6, 5, 3, sampler=FixedDepth(1))
    optimizer = sgd(model)
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    MSE(model(x), y).backward()
    optimizer.step()
    params = list(model.parameters())
    saved_params = [p.detach().clone() for p in params]
    saved_state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    optimizer.zero_grad()
    MSE(model(x), y).backward()
    optimizer.step()
    _restore(params, saved_params, optimizer, saved_state)
    for param, saved in zip(params, saved_params, strict=True):
        assert torch.equal(param, saved)
        buffer = optimizer.state[param]["momentum_buffer"]
        assert torch.equal(buffer, saved_state[id(param)]["momentum_buffer"])


# --------------------------------------------------------------------------- on a CUDA device


def eager_run(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int
) -> tuple[list[Tensor], list[object], list[list[Tensor | None]]]:
    """The eager loop: losses, each step's depths, each step's gradients."""
    losses, depths, grads = [], [], []
    blocks = [m for m in model.modules() if isinstance(m, RepeatedBlock)]
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = MSE(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        depths.append(tuple(b.last_depth for b in blocks))
        grads.append([None if p.grad is None else p.grad.clone() for p in model.parameters()])
    return losses, depths, grads


def graph_run(
    step: CUDAGraphStep, x: Tensor, y: Tensor, steps: int
) -> tuple[list[Tensor], list[object], list[list[Tensor | None]]]:
    losses, depths, grads = [], [], []
    blocks = [m for m in step.model.modules() if isinstance(m, RepeatedBlock)]
    for _ in range(steps):
        losses.append(step(x, y))
        depths.append(tuple(b.last_depth for b in blocks))
        grads.append([None if p.grad is None else p.grad.clone() for p in step.model.parameters()])
    return losses, depths, grads


def assert_same_training(
    eager: tuple[list[Tensor], list[object], list[list[Tensor | None]]],
    graphed: tuple[list[Tensor], list[object], list[list[Tensor | None]]],
) -> None:
    def depths(run: tuple[list[Tensor], list[object], Any]) -> list[object]:
        return [tuple(plain(d) for d in step) for step in run[1]]  # type: ignore[attr-defined]

    assert depths(graphed) == depths(eager), "the depth sequences differ"
    torch.testing.assert_close(torch.stack(graphed[0]), torch.stack(eager[0]), **CLOSE)
    for t, (got, want) in enumerate(zip(graphed[2], eager[2], strict=True)):
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            assert (g is None) == (w is None), f"step {t}, parameter {index}: grad None in one"
            if g is not None and w is not None:
                scale = float(w.abs().max())
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5 + 1e-4 * scale)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q, p, msg=name, **CLOSE)


def article_data(device: torch.device, n: int = 64) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1000, generator=generator)
    y = torch.randn(n, 10, generator=generator)
    return x.to(device), y.to(device)


def test_graphs_train_like_eager_with_a_seeded_sampler(cuda_device: torch.device) -> None:
    torch.manual_seed(0)
    eager = DynamicNet(1000, 100, 10, sampler=SeededDepth(0, 3, seed=7)).to(cuda_device)
    graphed = copy.deepcopy(eager)
    x, y = article_data(cuda_device)
    step = CUDAGraphStep(graphed, sgd(graphed), MSE)
    want = eager_run(eager, sgd(eager), x, y, 60)
    got = graph_run(step, x, y, 60)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)
    assert {d for (d,) in got[1]} == {0, 1, 2, 3}
    assert sorted(step.graphs) == [(0,), (1,), (2,), (3,)]
    assert (step.captures, step.eager_steps) == (4, 1)
    assert graphed.middle.depth_histogram == eager.middle.depth_histogram
    # At depth 0 the repeated layer has no gradient, as in eager training.
    zero = [t for t, (d,) in enumerate(got[1]) if d == 0]
    assert zero
    assert all(got[2][t][2] is None for t in zero)


def test_the_article_model_trains_like_eager_through_train(cuda_device: torch.device) -> None:
    # UniformDepth draws from Python's random, as the article's random.randint(0, 3).
    torch.manual_seed(0)
    eager = DynamicNet(1000, 100, 10).to(cuda_device)
    graphed = copy.deepcopy(eager)
    x, y = article_data(cuda_device)
    random.seed(0)
    want = train(eager, x, y, steps=80, log_every=20, file=io.StringIO())
    random.seed(0)
    printed = io.StringIO()
    got = train(graphed, x, y, steps=80, log_every=20, file=printed, cuda_graphs=True)
    assert [r.depth for r in got] == [r.depth for r in want]
    torch.testing.assert_close(
        torch.tensor([r.loss for r in got]), torch.tensor([r.loss for r in want]), **CLOSE
    )
    assert_same_weights(eager, graphed)
    assert len(printed.getvalue().splitlines()) == 4


def test_depths_beyond_the_bound_run_eagerly(cuda_device: torch.device) -> None:
    torch.manual_seed(1)
    eager = DynamicNet(1000, 100, 10, sampler=SeededDepth(0, 3, seed=3)).to(cuda_device)
    graphed = copy.deepcopy(eager)
    x, y = article_data(cuda_device)
    step = CUDAGraphStep(graphed, sgd(graphed), MSE, max_graphs=2)
    want = eager_run(eager, sgd(eager), x, y, 40)
    got = graph_run(step, x, y, 40)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)
    assert len(step.graphs) == 2
    beyond = sum(1 for depths in got[1][1:] if depths not in step.graphs)
    assert beyond > 0
    assert step.eager_steps == 1 + beyond


# Eager steps of a capturable Adam make torch warn that capturable=True slows them down.
@pytest.mark.filterwarnings("ignore:This instance was constructed with capturable=True")
def test_capturable_adam_trains_like_eager(cuda_device: torch.device) -> None:
    torch.manual_seed(2)
    eager = DynamicNet(1000, 100, 10, sampler=SeededDepth(0, 3, seed=5)).to(cuda_device)
    graphed = copy.deepcopy(eager)
    x, y = article_data(cuda_device)

    def adam(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)

    want = eager_run(eager, adam(eager), x, y, 40)
    got = graph_run(CUDAGraphStep(graphed, adam(graphed), MSE), x, y, 40)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)


def test_running_statistics_advance_as_in_eager_training(cuda_device: torch.device) -> None:
    # The warm-up before each capture runs forward passes: BatchNorm's running statistics
    # must be restored after it, as the parameters are.
    torch.manual_seed(5)
    layer = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU())
    eager = nn.Sequential(
        nn.Linear(8, 16), RepeatedBlock(layer, SeededDepth(0, 3, seed=2)), nn.Linear(16, 4)
    ).to(cuda_device)
    graphed = copy.deepcopy(eager)
    x = torch.randn(32, 8, device=cuda_device)
    y = torch.randn(32, 4, device=cuda_device)
    want = eager_run(eager, sgd(eager), x, y, 30)
    got = graph_run(CUDAGraphStep(graphed, sgd(graphed), MSE), x, y, 30)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)
    for (name, a), b in zip(eager.named_buffers(), graphed.buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name, **CLOSE)


class TwoBlocks(nn.Module):
    """Two blocks drawing from Python's random, called in the reverse of their order."""

    def __init__(self) -> None:
        super().__init__()
        self.first = RepeatedBlock(nn.Sequential(nn.Linear(32, 32), nn.Tanh()), UniformDepth(0, 2))
        self.second = RepeatedBlock(nn.Sequential(nn.Linear(32, 32), nn.ReLU()), UniformDepth(0, 3))
        self.head = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.first(self.second(x)))
        return out


def test_blocks_draw_in_the_order_the_forward_pass_calls_them(cuda_device: torch.device) -> None:
    torch.manual_seed(3)
    eager = TwoBlocks().to(cuda_device)
    graphed = copy.deepcopy(eager)
    x = torch.randn(16, 32, device=cuda_device)
    y = torch.randn(16, 4, device=cuda_device)
    random.seed(4)
    want = eager_run(eager, sgd(eager), x, y, 50)
    random.seed(4)
    step = CUDAGraphStep(graphed, sgd(graphed), MSE)
    got = graph_run(step, x, y, 50)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)
    assert all(len(key) == 2 for key in step.graphs)


def test_a_changed_learning_rate_is_captured_anew(cuda_device: torch.device) -> None:
    torch.manual_seed(4)
    eager = DynamicNet(1000, 100, 10, sampler=SeededDepth(0, 3, seed=9)).to(cuda_device)
    graphed = copy.deepcopy(eager)
    x, y = article_data(cuda_device)
    eager_opt, graphed_opt = sgd(eager), sgd(graphed)
    step = CUDAGraphStep(graphed, graphed_opt, MSE)
    want = eager_run(eager, eager_opt, x, y, 20)
    got = graph_run(step, x, y, 20)
    captured = step.captures
    for group in (*eager_opt.param_groups, *graphed_opt.param_groups):
        group["lr"] = 5e-5
    want2 = eager_run(eager, eager_opt, x, y, 20)
    got2 = graph_run(step, x, y, 20)
    assert_same_training(want, got)
    assert_same_training(want2, got2)
    assert_same_weights(eager, graphed)
    assert step.captures > captured


def test_inputs_must_keep_their_shape(cuda_device: torch.device) -> None:
    model = DynamicNet(10, 8, 2, sampler=FixedDepth(1)).to(cuda_device)
    step = CUDAGraphStep(model, sgd(model), MSE)
    x, y = torch.randn(4, 10, device=cuda_device), torch.randn(4, 2, device=cuda_device)
    step(x, y)
    step(x, y)
    with pytest.raises(ValueError, match=r"x must keep the shape and dtype .* \(4, 10\)"):
        step(torch.randn(5, 10, device=cuda_device), torch.randn(5, 2, device=cuda_device))
    model.eval()
    with pytest.raises(ValueError, match="eval mode"):
        step(x, y)


def test_a_block_called_twice_is_refused(cuda_device: torch.device) -> None:
    block = RepeatedBlock(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), UniformDepth(0, 2))
    model = nn.Sequential(block, block).to(cuda_device)
    weight = block.layer[0].weight.detach().clone()
    step = CUDAGraphStep(model, sgd(model), MSE)
    x = torch.randn(4, 8, device=cuda_device)
    with pytest.raises(ValueError, match=r"called exactly once per forward pass .* 2 times"):
        step(x, x)
    assert torch.equal(block.layer[0].weight, weight)  # refused before the optimizer step


def masked_model(device: torch.device, per_sample: bool, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(32, 32), nn.Tanh())
    block = RepeatedBlock(layer, SeededDepth(0, 4, seed=seed), mode="masked", per_sample=per_sample)
    return nn.Sequential(nn.Linear(16, 32), block, nn.Linear(32, 4)).to(device)


@pytest.mark.parametrize("per_sample", [False, True], ids=["batch", "rows"])
def test_one_graph_trains_a_masked_block_like_eager(
    cuda_device: torch.device, per_sample: bool
) -> None:
    # The depth (or the rows' depths) drawn outside, copied into one static tensor that
    # the one captured graph reads: the eager run's depths, losses and weights.
    eager = masked_model(cuda_device, per_sample, seed=6)
    graphed = copy.deepcopy(eager)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(24, 10, 16, generator=generator).to(cuda_device)  # 24 rows of 10 x 16
    y = torch.randn(24, 10, 4, generator=generator).to(cuda_device)
    step = CUDAGraphStep(graphed, sgd(graphed), MSE)
    want = eager_run(eager, sgd(eager), x, y, 60)
    got = graph_run(step, x, y, 60)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)
    assert step.graphs == [(None,)]
    assert (step.captures, step.eager_steps) == (1, 1)
    assert graphed[1].depth_histogram == eager[1].depth_histogram
    drawn = [plain(d) for (d,) in got[1]]
    if per_sample:
        assert all(len(d) == 24 for d in drawn)  # type: ignore[arg-type]
        assert len({tuple(d) for d in drawn}) > 50  # type: ignore[arg-type]
        assert sum(graphed[1].depth_histogram.values()) == 60 * 24
    else:
        assert set(drawn) == {0, 1, 2, 3, 4}
    # Masked mode: the layer has a gradient at every step, zeros where no repeat counted.
    assert all(grads[2] is not None for grads in got[2])


class SkipAndMaskedRows(nn.Module):
    """A skip-mode block and a masked per-row block, both drawing from Python's random."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = RepeatedBlock(nn.Sequential(nn.Linear(32, 32), nn.Tanh()), UniformDepth(0, 2))
        self.rows = RepeatedBlock(
            nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
            UniformDepth(0, 3),
            mode="masked",
            per_sample=True,
        )
        self.head = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.skip(self.rows(x)))
        return out


def test_masked_and_skip_blocks_share_graphs_and_the_eager_fallback(
    cuda_device: torch.device,
) -> None:
    # A graph per depth of the skip block, each reading the masked block's depth tensor;
    # with max_graphs=2 the third skip depth runs eagerly, at the same static tensor.
    torch.manual_seed(7)
    eager = SkipAndMaskedRows().to(cuda_device)
    graphed = copy.deepcopy(eager)
    x = torch.randn(16, 32, device=cuda_device)
    y = torch.randn(16, 4, device=cuda_device)
    random.seed(8)
    want = eager_run(eager, sgd(eager), x, y, 50)
    random.seed(8)
    step = CUDAGraphStep(graphed, sgd(graphed), MSE, max_graphs=2)
    got = graph_run(step, x, y, 50)
    assert_same_training(want, got)
    assert_same_weights(eager, graphed)
    assert len(step.graphs) == 2
    assert all(key[0] is None and isinstance(key[1], int) for key in step.graphs)
    # got[1] lists the blocks in module order (skip, rows), the keys in call order (rows, skip).
    beyond = sum(1 for (depth, _) in got[1][1:] if (None, depth) not in step.graphs)
    assert beyond > 0
    assert step.eager_steps == 1 + beyond
    assert graphed.rows.depth_histogram == eager.rows.depth_histogram
