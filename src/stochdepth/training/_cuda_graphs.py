"""`CUDAGraphStep`: a whole training step replayed from one CUDA graph per depth."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from stochdepth._block import RepeatedBlock
from stochdepth._depth import unread_depth_tensors
from stochdepth._validation import check_int, describe
from stochdepth.layer_drop._list import LayerDropList

LossFn = Callable[[Tensor, Tensor], Tensor]
"""A loss: ``loss_fn(output, target)`` returns a scalar tensor."""

Key = tuple[int | None, ...]
"""A graph's key: each block's depth in call order, ``None`` for a masked-mode block."""

DEFAULT_MAX_GRAPHS = 16
"""How many depths (or combinations of depths) get a graph, unless told otherwise."""

_WARMUP_STEPS = 3  # as PyTorch's CUDA Graphs notes do before a whole-network capture


class CUDAGraphStep:
    """One training step (forward, loss, backward, optimizer step) replayed from a CUDA graph.

    Each call draws the blocks' depths in Python, outside any graph, exactly as the eager
    forward pass draws them (:meth:`~stochdepth.RepeatedBlock.draw_depth`, recorded in
    ``last_depth`` and ``depth_histogram``), and replays the graph of the whole step
    captured for those depths, capturing it on first use. Losses and weights equal eager
    training's on the same depths within float32 rounding; at depth 0 the layer's
    parameters get no gradient, as in eager training. The first call runs eagerly and
    learns the order in which the forward pass calls the blocks. A masked block needs
    one graph for every depth (its depth is copied into a static tensor; its entry in
    :attr:`graphs` is ``None``). At most ``max_graphs`` depths get a graph; a step at
    another depth runs eagerly (counted in ``eager_steps``).

    Supported: ``torch.optim.SGD`` (``dampening=0`` with momentum) and Adam / AdamW with
    ``capturable=True``; every parameter on one CUDA device; blocks in skip mode with one
    depth per batch or in masked mode, without ``checkpoint`` or a ``grad_depth`` sampler,
    each called once per forward pass and drawing its own depth. A replay runs no
    Python, and changed hyperparameters (``lr``) make every graph be captured anew; call
    :meth:`reset` after loading another state into the model or the optimizer. How it
    works, what it costs and what it refuses:
    [CUDA graphs](../performance.md#cuda-graphs-for-a-random-depth-training-step).

    Args:
        model: The model to train, its parameters on a CUDA device.
        optimizer: Its optimizer (see above for the supported ones).
        loss_fn: ``loss_fn(output, target)``, a scalar loss tensor.
        max_graphs: The most depths that get a graph, an int >= 1 (default 16); other
            depths run eagerly.

    Attributes:
        model: The model.
        optimizer: The optimizer.
        loss_fn: The loss function.
        max_graphs: The bound on the number of graphs.
        eager_steps: How many steps ran eagerly (the first one, and those at depths beyond
            the bound).
        captures: How many graphs were captured (more than :attr:`graphs` holds once the
            hyperparameters changed).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``optimizer`` not a
            ``torch.optim.Optimizer``, ``loss_fn`` not callable, or ``max_graphs`` not
            an int.
        ValueError: ``max_graphs`` is below 1; the model holds a
            :class:`~stochdepth.LayerDropList` (its drops are drawn in Python); a
            ``RepeatedBlock`` has ``per_sample=True`` in skip mode, ``checkpoint`` or a
            ``grad_depth`` sampler, or sits inside another one's layer; the
            optimizer is not one of the supported ones or is not set up for capture; or the
            model has no parameters on a CUDA device (CUDA graphs record GPU kernels: a
            CPU model is refused).

    Example:
        ```python
        import torch
        from stochdepth import CUDAGraphStep, DynamicNet

        model = DynamicNet(1000, 100, 10).cuda()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        step = CUDAGraphStep(model, optimizer, torch.nn.MSELoss(reduction="sum"))
        x, y = torch.randn(64, 1000, device="cuda"), torch.randn(64, 10, device="cuda")
        for t in range(500):
            loss = step(x, y)  # a graph per depth 0..3, replayed
        ```
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    max_graphs: int
    eager_steps: int
    captures: int

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        *,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {describe(optimizer)}")
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable, loss_fn(output, target), got {describe(loss_fn)}"
            )
        self.max_graphs = check_int("max_graphs", max_graphs, minimum=1)
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self._blocks = _graphable_blocks(model)
        _check_optimizer(optimizer)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self.device = _cuda_device(model)
        self._order: list[RepeatedBlock] | None = None  # the blocks in call order
        # Per block in call order, masked mode only: the depth tensor the graphs read
        # (on the device) and a CPU tensor of its shape to draw with; None in skip mode.
        self._static_depths: list[Tensor | None] = []
        self._stubs: list[Tensor | None] = []
        self._graphs: dict[Key, _Graph] = {}
        self._pool: Any = None
        self._stream: torch.cuda.Stream | None = None
        self._static: tuple[Tensor, Tensor] | None = None
        self._hyper: list[dict[str, object]] | None = None
        self.eager_steps = 0
        self.captures = 0

    @property
    def graphs(self) -> list[Key]:
        """The depths that have a graph: one tuple per graph, a depth per block, in call order.

        A masked-mode block's entry is ``None``: one graph serves all its depths.
        """
        return list(self._graphs)

    def reset(self) -> None:
        """Forget every graph (and their memory); the next steps capture anew."""
        self._graphs = {}
        self._pool = None
        self._hyper = None

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Run one training step on ``x`` and ``y``.

        Args:
            x: The input batch. After the first step, every call must give the same
                shape and dtype (it is copied into the graphs' static input).
            y: The target batch, likewise.

        Returns:
            This step's loss, a new detached tensor on the model's device.

        Raises:
            TypeError: ``x`` or ``y`` is not a tensor.
            ValueError: The model is in eval mode, a ``RepeatedBlock`` is not called
                exactly once per forward pass or is given a depth by the model, or
                ``x`` or ``y`` differs in shape or dtype from the first step's.
        """
        if not self.model.training:
            raise ValueError(
                "CUDAGraphStep runs training steps, but the model is in eval mode: "
                "call model.train()"
            )
        order = self._order
        if order is None:
            return self._first_step(x, y)
        static_x, static_y = self._static_buffers(x, y)
        if self._hyper is not None and self._hyper != _hyperparameters(self.optimizer):
            self.reset()  # the graphs hold the old lr, momentum, ...: capture anew
        drawn = [_draw(block, stub) for block, stub in zip(order, self._stubs, strict=True)]
        key = tuple([None if isinstance(depth, Tensor) else depth for depth in drawn])
        graph = self._graphs.get(key)
        with torch.cuda.device(self.device):  # copies and replay on the current device's stream
            self._copy_depths(drawn)
            if graph is None and len(self._graphs) >= self.max_graphs:
                return self._eager_step(x, y, key)
            static_x.copy_(x)
            static_y.copy_(y)
            if graph is None:
                graph = self._capture(key, static_x, static_y)
            graph.graph.replay()
        for param, grad in graph.grads:
            param.grad = grad
        return graph.loss.clone()

    # ------------------------------------------------------------------ eager steps

    def _run_eager(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        _uncaptured_step(self.optimizer)
        return loss.detach()

    def _first_step(self, x: Tensor, y: Tensor) -> Tensor:
        """An eager step that draws as eager training does and records the call order."""
        self._static_buffers(x, y)
        order: list[RepeatedBlock] = []
        rows: list[int] = []  # each block input's rows (dimension 0)

        def record(block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if not args:  # a call that forward refuses itself, right after this hook
                return
            if kwargs.get("depth") is not None:  # forward's depth is keyword-only
                raise ValueError(_given_depth_message(block))
            order.append(block)  # type: ignore[arg-type]
            x_in = args[0]
            rows.append(x_in.shape[0] if isinstance(x_in, Tensor) and x_in.ndim else 0)

        handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in self._blocks]
        try:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
        finally:
            for handle in handles:
                handle.remove()
        _check_called_once(self._blocks, order)
        loss.backward()  # type: ignore[no-untyped-call]
        _uncaptured_step(self.optimizer)
        self._static_depths, self._stubs = [], []
        for block, count in zip(order, rows, strict=True):
            static = stub = None
            if block.mode == "masked":  # the depth tensor that masked mode reads, per row or not
                shape = (count,) if block.per_sample else ()
                static = torch.zeros(shape, dtype=torch.int64, device=self.device)
                stub = torch.empty(shape, dtype=torch.int64)
            self._static_depths.append(static)
            self._stubs.append(stub)
        self._order = order
        self.eager_steps += 1
        return loss.detach()

    def _eager_step(self, x: Tensor, y: Tensor, key: Key) -> Tensor:
        """A step at depths beyond the bound: eagerly, at the depths already drawn."""
        with _forced_depths(self._order or [], self._forced(key)):
            loss = self._run_eager(x, y)
        self.eager_steps += 1
        return loss

    # ------------------------------------------------------------------ depths

    def _forced(self, key: Key) -> list[int | Tensor]:
        """What each block runs at: its drawn depth, or (masked mode) its static depth tensor."""
        forced: list[int | Tensor] = []
        for depth, static in zip(key, self._static_depths, strict=True):
            if depth is None:
                assert static is not None  # masked blocks have one, from the first step
                forced.append(static)
            else:
                forced.append(depth)
        return forced

    def _copy_depths(self, drawn: list[int | Tensor]) -> None:
        """Copy the masked blocks' drawn depths into the tensors that the graphs read.

        From pinned memory, without waiting: the caching host allocator keeps the pinned
        copy until the device has read it, and the replay follows on the same stream.
        """
        for static, depth in zip(self._static_depths, drawn, strict=True):
            if static is not None and isinstance(depth, Tensor):
                static.copy_(depth.pin_memory(), non_blocking=True)

    # ------------------------------------------------------------------ capture

    def _static_buffers(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_tensors(x, y)
        static = self._static
        if static is None:
            static = self._static = (
                torch.empty_like(x, device=self.device),
                torch.empty_like(y, device=self.device),
            )
        for name, given, kept in (("x", x, static[0]), ("y", y, static[1])):
            if given.shape != kept.shape or given.dtype != kept.dtype:
                raise ValueError(
                    f"{name} must keep the shape and dtype of the first step's, "
                    f"{tuple(kept.shape)} {kept.dtype}, since the CUDA graphs read it from a "
                    f"static buffer; got {tuple(given.shape)} {given.dtype}"
                )
        return static

    def _capture(self, key: Key, static_x: Tensor, static_y: Tensor) -> _Graph:
        """Warm up the step at ``key``'s depths on a side stream, restore, and capture it.

        Masked-mode blocks run at their static depth tensor, which the graph reads on
        every replay: one graph for all their depths.
        """
        order = self._order or []
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._hyper = _hyperparameters(self.optimizer)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        stream = self._stream
        params, optimizer = self._params, self.optimizer
        # What the warm-up changes: parameters, buffers (running statistics), optimizer state.
        tensors = [*params, *self.model.buffers()]
        with torch.no_grad():
            saved_tensors = [t.detach().clone() for t in tensors]
            saved_state = {
                id(p): {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
                for p, s in optimizer.state.items()
            }
        current = torch.cuda.current_stream(self.device)
        with _forced_depths(order, self._forced(key)):
            try:
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    for _ in range(_WARMUP_STEPS):
                        self._run_eager(static_x, static_y)
                current.wait_stream(stream)
            finally:
                _restore(tensors, saved_tensors, optimizer, saved_state)
            graph = torch.cuda.CUDAGraph()
            optimizer.zero_grad(set_to_none=True)
            with (
                _checked_outside(order),
                torch.cuda.graph(graph, pool=self._pool, stream=stream),
            ):
                loss = self.loss_fn(self.model(static_x), static_y)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
        captured = _Graph(graph, loss.detach(), [(p, p.grad) for p in params])
        self._graphs[key] = captured
        self.captures += 1
        return captured


class _Graph:
    """One captured step: the graph, its static loss and its parameters' gradients."""

    __slots__ = ("grads", "graph", "loss")

    def __init__(
        self, graph: torch.cuda.CUDAGraph, loss: Tensor, grads: list[tuple[Tensor, Tensor | None]]
    ) -> None:
        self.graph, self.loss, self.grads = graph, loss, grads


def _draw(block: RepeatedBlock, stub: Tensor | None) -> int | Tensor:
    """Draw a block's depth as its eager forward pass would, outside any graph.

    The same sampler calls and telemetry (``last_depth``, ``depth_histogram``) as eager,
    through :meth:`~stochdepth.RepeatedBlock.draw_depth` and
    :meth:`~stochdepth.RepeatedBlock.record_depth`. In masked mode ``stub`` is a CPU
    tensor of the block input's rows, and the depth (0-d, or the rows' depths) comes
    back as a CPU int64 tensor, checked against ``max_depth``.
    """
    depth = block.draw_depth(_NO_ROWS if stub is None else stub)
    block.record_depth(depth)
    if stub is None or isinstance(depth, Tensor):
        return depth
    return torch.tensor(depth, dtype=torch.int64)


_NO_ROWS = torch.empty(0)
"""The input a skip-mode block draws on: one depth for the batch reads no rows."""


def _checked_outside(blocks: list[RepeatedBlock]) -> contextlib.AbstractContextManager[None]:
    """Let masked blocks take their static depth tensors unread during a capture.

    Masked mode checks a given depth tensor by value, which reads it on the host: a
    synchronisation, which a CUDA graph capture refuses. The tensor given during a
    capture is the static depth tensor, whose values were drawn and checked outside the
    graph (and change at every replay): it is used as it is.
    """
    return unread_depth_tensors()


@contextmanager
def _forced_depths(blocks: list[RepeatedBlock], depths: Sequence[int | Tensor]) -> Iterator[None]:
    """Make each block run at its given depth (an int, or a depth tensor), unrecorded.

    Each block's ``forward`` runs :meth:`~stochdepth.RepeatedBlock.run` at its depth
    meanwhile, which leaves ``last_depth`` and the histogram to the draw.
    """
    for block, depth in zip(blocks, depths, strict=True):
        block.forward = _run_at(block, depth)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def _run_at(block: RepeatedBlock, depth: int | Tensor) -> Callable[..., Tensor]:
    def forward(x: Tensor, /, *args: Any, **kwargs: Any) -> Tensor:
        kwargs.pop("depth", None)  # the forced depth replaces a given one
        return block.run(x, *args, depth=depth, **kwargs)

    return forward


def _uncaptured_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` outside a graph, without torch's ``capturable=True`` warning.

    Torch warns that uncaptured steps of a capturable optimizer are slower, for optimizers
    that are never captured; the other steps of this one are captured.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")
        optimizer.step()


def _given_depth_message(block: nn.Module) -> str:
    return (
        f"CUDAGraphStep draws every RepeatedBlock's depth itself, outside the graphs, but the "
        f"model gave {type(block).__name__} a depth in its forward pass: let the block draw"
    )


def _check_called_once(blocks: list[RepeatedBlock], order: list[RepeatedBlock]) -> None:
    for block in blocks:
        calls = sum(1 for called in order if called is block)
        if calls != 1:
            raise ValueError(
                f"CUDAGraphStep needs every RepeatedBlock called exactly once per forward pass "
                f"(it draws each block's depth once, before replaying the step), but one was "
                f"called {calls} times: {block.extra_repr()}"
            )


def _check_tensors(x: object, y: object) -> None:
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {describe(value)}")


def _graphable_blocks(model: nn.Module) -> list[RepeatedBlock]:
    """The model's blocks, each refused unless a graph can replay it.

    Skip mode with one depth per batch (a graph per depth), or masked mode, with or
    without ``per_sample`` (one graph for every depth, read from a tensor); never
    checkpointed, never nested.
    """
    for module in model.modules():
        if isinstance(module, LayerDropList):
            raise ValueError(
                f"CUDAGraphStep cannot replay a LayerDropList: it draws which layers to drop "
                f"in Python at every forward pass (with mode={module.mode!r}, per_sample="
                f"{module.per_sample!r} too), which a replay does not run, so every step would "
                f"drop the layers of the captured one; train this model without CUDA graphs"
            )
    blocks = [m for m in model.modules() if isinstance(m, RepeatedBlock)]
    for block in blocks:
        problem = None
        if block.mode == "skip" and block.per_sample:
            problem = (
                "per_sample=True in skip mode (its row counts change with every draw; "
                "mode='masked' with per_sample=True has one graph)"
            )
        elif block.checkpoint is not False:
            problem = f"checkpoint={block.checkpoint!r}"
        elif _draws_grad_depth(block):
            problem = (
                "grad_depth drawn by a sampler (drawn in the forward pass, which a replay "
                "does not run; an int grad_depth is accepted)"
            )
        elif any(isinstance(m, RepeatedBlock) for m in block.layer.modules()):
            problem = "a RepeatedBlock inside its layer"
        if problem is not None:
            raise ValueError(
                f"CUDAGraphStep captures RepeatedBlocks in skip mode with one depth per batch "
                f"(a graph per depth) or in masked mode (one graph for every depth), without "
                f"checkpoint, but the model has one with {problem}"
            )
    return blocks


def _draws_grad_depth(block: RepeatedBlock) -> bool:
    """Whether the block draws its ``grad_depth`` at every forward pass (a sampler)."""
    value = block.grad_depth
    return value is not None and not isinstance(value, int)


def _check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse an optimizer whose step cannot be captured, or not like eager's."""
    name = type(optimizer).__name__
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            if group["momentum"] and group["dampening"]:
                raise ValueError(
                    f"optimizer: SGD with momentum and dampening={group['dampening']} starts its "
                    f"momentum from the first gradient undamped, which a captured step does not "
                    f"reproduce; CUDAGraphStep needs dampening=0"
                )
        return
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        if not all(group["capturable"] for group in optimizer.param_groups):
            raise ValueError(
                f"optimizer: {name} must be built with capturable=True to be captured in a "
                f"CUDA graph (its step count then lives on the GPU), got capturable=False"
            )
        return
    raise ValueError(
        f"optimizer must be torch.optim.SGD, Adam or AdamW (whose steps CUDAGraphStep knows "
        f"how to capture like eager ones), got {name}"
    )


def _cuda_device(model: nn.Module) -> torch.device:
    devices = {p.device for p in model.parameters()}
    if len(devices) == 1 and (device := next(iter(devices))).type == "cuda":
        return device
    where = ", ".join(sorted(str(d) for d in devices)) or "no parameters at all"
    raise ValueError(
        f"model must have its parameters on one CUDA device, since CUDA graphs record and "
        f"replay GPU kernels; its parameters are on {where} (move it with model.to('cuda'))"
    )


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, object]]:
    return [
        {k: v for k, v in group.items() if k != "params" and not isinstance(v, Tensor)}
        for group in optimizer.param_groups
    ]


def _restore(
    tensors: list[Tensor],
    saved_tensors: list[Tensor],
    optimizer: torch.optim.Optimizer,
    saved_state: dict[int, dict[str, Any]],
) -> None:
    """Undo the warm-up: tensors and old state copied back, new state zero-filled."""
    with torch.no_grad():
        for tensor, saved in zip(tensors, saved_tensors, strict=True):
            tensor.copy_(saved)
        for param, state in optimizer.state.items():
            before = saved_state.get(id(param), {})
            for key, value in state.items():
                if not isinstance(value, Tensor):
                    continue
                if key in before:
                    value.copy_(before[key])
                else:
                    value.zero_()
    optimizer.zero_grad(set_to_none=True)
