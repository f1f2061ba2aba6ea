"""Distributed data parallel training with random depth: ranks that agree, depth 0 under DDP.

Three pieces, usable in any ``DistributedDataParallel`` loop and put together by
``train(..., distributed=True)``:

- :class:`BroadcastDepth` wraps any sampler so that rank 0's draw is every rank's depth.
- :func:`check_depth_agreement` gathers every rank's depths and raises
  :class:`DepthMismatchError`, naming the ranks and their depths, when they differ.
- :class:`SkippedLayerTie` connects a :class:`~stochdepth.RepeatedBlock`'s layer to
  the graph on depth-0 steps, so that DDP with its default
  ``find_unused_parameters=False`` neither fails nor hangs, and then gives those
  parameters back the ``None`` gradient that single-process training leaves them.

Without the tie, PyTorch 2.13's DDP (gloo) reduces nothing on a depth-0 step, since the
bucket that holds the shared layer never becomes ready: every rank steps its optimizer
with its own unreduced gradients (the replicas silently diverge) and the next forward
pass raises "Expected to have finished reduction in the prior iteration before
starting a new one".
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ._block import RepeatedBlock
from ._errors import DepthMismatchError as DepthMismatchError
from ._validation import check_int, describe
from .samplers._protocol import DepthSampler, check_sampler, has_set_step, has_state


class BroadcastDepth:
    """A sampler whose depth is rank ``src``'s draw on every rank of a process group.

    Every rank draws from ``sampler`` (so that its random state advances the same way
    everywhere), then the depth drawn on rank ``src`` is broadcast and used by all.
    This makes samplers without a seed of their own, such as
    :class:`~stochdepth.UniformDepth` (Python's ``random``), agree across ranks. It
    costs one broadcast of one integer per draw, a collective: every rank must draw
    the same number of times, which DDP training does. Outside an initialized process
    group it is simply ``sampler``.

    The seeded samplers (:class:`~stochdepth.SeededDepth` and the others with a
    ``seed``) need no wrapper: the same seed gives the same depths on every rank.

    Args:
        sampler: The sampler to draw from.
        src: The global rank whose draw is used, an int >= 0 (default 0).
        group: The process group (default: the default group).

    Raises:
        TypeError: ``sampler`` does not satisfy :class:`~stochdepth.DepthSampler`, or
            ``src`` is not an int.
        ValueError: ``src`` is negative.

    Example:
        >>> import random
        >>> from stochdepth import BroadcastDepth, UniformDepth
        >>> sampler = BroadcastDepth(UniformDepth(0, 3))
        >>> random.seed(0)
        >>> [sampler.sample() for _ in range(5)]  # no process group: UniformDepth's own
        [3, 3, 0, 2, 3]
    """

    def __init__(
        self, sampler: DepthSampler, *, src: int = 0, group: dist.ProcessGroup | None = None
    ) -> None:
        self._sampler = check_sampler(sampler)
        self._src = check_int("src", src)
        self._group = group

    @property
    def sampler(self) -> DepthSampler:
        """The wrapped sampler."""
        return self._sampler

    @property
    def src(self) -> int:
        """The rank whose draw every rank uses."""
        return self._src

    @property
    def min_depth(self) -> int:
        """The wrapped sampler's ``min_depth``."""
        return self._sampler.min_depth

    @property
    def max_depth(self) -> int:
        """The wrapped sampler's ``max_depth``."""
        return self._sampler.max_depth

    def sample(self) -> int:
        """Draw a depth, and return rank ``src``'s draw on every rank.

        Returns:
            The depth, the same on every rank of the group.

        Raises:
            TypeError: The wrapped sampler returned something other than an int.
            ValueError: It returned a negative depth.
        """
        depth = self._sampler.sample()
        if not (dist.is_available() and dist.is_initialized()):
            return depth
        if type(depth) is not int:
            depth = check_int("the wrapped sampler's depth", depth)
        buffer = torch.tensor([depth], dtype=torch.int64, device=_comm_device(self._group))
        dist.broadcast(buffer, src=self._src, group=self._group)
        return int(buffer.item())

    def set_step(self, step: int) -> None:
        """Pass the training step on to the wrapped sampler, if it follows one.

        Args:
            step: The training step's index.
        """
        if has_set_step(self._sampler):
            self._sampler.set_step(step)

    def state_dict(self) -> dict[str, Any]:
        """Return the wrapped sampler's state (``{}`` when it keeps none).

        Returns:
            What the wrapped sampler's ``state_dict()`` returns, or ``{}``.
        """
        return self._sampler.state_dict() if has_state(self._sampler) else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict` into the wrapped sampler.

        Args:
            state: The mapping :meth:`state_dict` returned.

        Raises:
            TypeError: ``state`` is not a mapping.
            ValueError: ``state`` is not empty but the wrapped sampler keeps no state.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {describe(state)}")
        if has_state(self._sampler):
            self._sampler.load_state_dict(state)
        elif state:
            raise ValueError(
                f"state holds keys {sorted(map(str, state))}, but the wrapped sampler "
                f"{self._sampler!r} keeps no state"
            )

    def __repr__(self) -> str:
        return f"BroadcastDepth({self._sampler!r}, src={self._src})"


class _Tie(torch.autograd.Function):
    """Identity on ``x`` that makes ``params`` part of the graph with no gradient.

    Its backward returns ``None`` for the parameters: autograd still runs their
    gradient accumulators, so DDP's hooks fire and their bucket is reduced, but
    nothing is accumulated (outside DDP their ``.grad`` stays ``None``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, *params: Tensor) -> Tensor:
        ctx.parameter_count = len(params)
        # A copy, not a view: an in-place op after the block (ReLU(inplace=True))
        # may not modify a view returned by a custom Function.
        return x.clone()

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        return (grad_outputs[0], *([None] * ctx.parameter_count))


class SkippedLayerTie:
    """Lets DDP train a model whose :class:`~stochdepth.RepeatedBlock` may run at depth 0.

    At depth 0 a block skips its layer, whose parameters then take no part in the
    loss. ``DistributedDataParallel`` with its default ``find_unused_parameters=False``
    waits for their gradients, reduces nothing that step, and fails on the next
    forward pass ("Expected to have finished reduction in the prior iteration...").
    This tie registers a forward hook on every block of ``model``: on a training-mode
    forward pass at depth 0 (with gradients enabled), it passes the block's output
    through an identity that lists the layer's parameters as inputs and gives them no
    gradient. DDP's hooks then fire for them as for any used parameter, and their
    bucket is reduced; at depths above 0 the hook does nothing but note that the block
    ran. The cost at depth 0 is one copy of the block's output.

    DDP writes zeros into the ``.grad`` of parameters that it reduced without a
    gradient, where single-process training leaves ``.grad`` at ``None`` (after
    ``zero_grad()``, whose default sets it to ``None``), so that momentum SGD and Adam
    skip the parameter: no step, no decay of its momentum or moments, no weight decay.
    Call :meth:`restore_skipped_grads` after ``backward()`` and before
    ``optimizer.step()`` to set those gradients back to ``None`` and get the
    single-process update exactly.

    Install it on the model before wrapping it in DDP or after; it works without DDP
    too (where the skipped layer's gradients stay ``None`` anyway).

    Args:
        model: The model whose blocks to tie (the module inside DDP, not DDP).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch
        >>> from stochdepth import DynamicNet, FixedDepth, SkippedLayerTie
        >>> model = DynamicNet(5, 4, 2, FixedDepth(0))
        >>> tie = SkippedLayerTie(model)
        >>> model(torch.randn(3, 5)).sum().backward()
        >>> tie.restore_skipped_grads()  # the names of the parameters set back to None
        ['middle.layer.0.weight', 'middle.layer.0.bias']
        >>> model.middle_linear.weight.grad is None
        True
        >>> tie.remove()
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
        named_blocks = [
            (name, module)
            for name, module in model.named_modules(remove_duplicate=False)
            if isinstance(module, RepeatedBlock)
        ]
        prefixes = tuple(f"{name}.layer." if name else "layer." for name, _ in named_blocks)
        # A parameter registered anywhere outside a block's layer is also used there:
        # its gradient is never set back to None.
        names: dict[int, str] = {}
        outside: set[int] = set()
        for name, parameter in model.named_parameters(remove_duplicate=False):
            names.setdefault(id(parameter), name)
            if not name.startswith(prefixes):
                outside.add(id(parameter))
        self._names = names
        self._outside = outside
        self._blocks = list({id(block): block for _, block in named_blocks}.values())
        self._tied: dict[int, nn.Parameter] = {}
        self._ran: set[int] = set()
        self._handles = [block.register_forward_hook(self._hook) for block in self._blocks]

    def _hook(self, block: nn.Module, args: Any, output: Any) -> Any:
        if not (block.training and torch.is_grad_enabled() and isinstance(output, Tensor)):
            return None
        if not isinstance(block, RepeatedBlock) or not _skipped_its_layer(block):
            self._ran.add(id(block))
            return None
        params = [p for p in block.layer.parameters() if p.requires_grad]
        if not params:
            return None
        for parameter in params:
            self._tied[id(parameter)] = parameter
        return _Tie.apply(output, *params)  # type: ignore[no-untyped-call]

    def restore_skipped_grads(self) -> list[str]:
        """Set the gradients of the layers skipped since the last call back to ``None``.

        A parameter is restored when a block skipped its layer (depth 0) in a forward
        pass since the last call, no block that holds it ran its layer since, and it
        is registered nowhere in the model outside a block's layer. Call it once per
        optimizer step, after ``backward()`` and before ``optimizer.step()``; with
        gradient accumulation, once after the last micro-batch's ``backward()``.

        Returns:
            The names of the parameters whose ``.grad`` it set to ``None``.
        """
        if not self._tied:  # no block skipped its layer: the usual step
            self._ran.clear()
            return []
        used = {
            id(parameter)
            for block in self._blocks
            if id(block) in self._ran
            for parameter in block.layer.parameters()
        }
        restored = []
        for key, parameter in self._tied.items():
            if key not in used and key not in self._outside:
                parameter.grad = None
                restored.append(self._names.get(key, ""))
        self._tied.clear()
        self._ran.clear()
        return restored

    def remove(self) -> None:
        """Remove the hooks from the model's blocks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def check_depth_agreement(
    model: nn.Module, *, step: int | None = None, group: dist.ProcessGroup | None = None
) -> list[int]:
    """Check that every rank's blocks used the same depths in their last forward pass.

    It gathers the ``last_depth`` of every :class:`~stochdepth.RepeatedBlock` of
    ``model`` from every rank of the group (one ``all_gather`` of a small tensor, a
    collective: every rank must call it) and compares them. Call it after the forward
    pass and before ``backward()``: then ranks that disagree fail here, together,
    instead of hanging in DDP's gradient reduction.

    Args:
        model: The model (the module inside DDP, or DDP itself).
        step: The training step, for the error message.
        group: The process group (default: the default group).

    Returns:
        The depths of the model's blocks, one per block, the same on every rank.

    Raises:
        RuntimeError: No process group is initialized.
        DepthMismatchError: Ranks differ; the message names them and their depths.
    """
    _require_process_group("check_depth_agreement")
    depths = _block_depths(model)
    gathered = _all_gather_row([float(d) for d in depths], group, _comm_device(group))
    _raise_on_mismatch([[int(v) for v in row] for row in gathered], step)
    return depths


# What _block_depths reports for a block that has not run, and for one whose depths
# are per row (each rank has its own rows, so they are not compared).
NOT_RUN, PER_ROW = -1, -2


def _skipped_its_layer(block: RepeatedBlock) -> bool:
    """Whether the block's last forward pass left its layer out of the graph.

    A block in ``"skip"`` mode (the default) at depth 0, or, with a depth per row,
    with every row at depth 0, or whose ``grad_depth`` recorded no repeat. A block
    in another mode (``"masked"``) applies its layer at every depth, masked: nothing
    to tie.
    """
    if getattr(block, "mode", "skip") != "skip":
        return False
    if block._grad.last == 0:  # grad_depth left no repeat recorded: the layer is unused
        return True
    depth: object = block.last_depth
    if isinstance(depth, Tensor):
        return depth.numel() == 0 or not bool(depth.any())
    return depth == 0


def _block_depths(model: nn.Module) -> list[int]:
    """The ``last_depth`` of every block of ``model``, as ints to compare across ranks."""
    depths = []
    for module in model.modules():
        if isinstance(module, RepeatedBlock):
            depth: object = module.last_depth
            if depth is None:
                depths.append(NOT_RUN)
            elif isinstance(depth, Tensor):
                depths.append(int(depth) if depth.ndim == 0 else PER_ROW)
            else:
                depths.append(check_int("last_depth", depth))
    return depths


def _raise_on_mismatch(depths: list[list[int]], step: int | None) -> None:
    if all(row == depths[0] for row in depths):
        return
    by_depths: dict[tuple[int, ...], list[int]] = {}
    for rank, row in enumerate(depths):
        by_depths.setdefault(tuple(row), []).append(rank)
    single = all(len(row) == 1 for row in depths)
    parts = []
    for drawn, ranks in by_depths.items():
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        what = str(drawn[0]) if single else str(list(drawn))
        parts.append(f"{who} drew {what}")
    when = "" if step is None else f" at step {step}"
    raise DepthMismatchError(
        f"ranks disagree on the depth{when}: {'; '.join(parts)}. DDP needs the same depth "
        f"on every rank (otherwise it hangs or the replicas drift apart): give every rank "
        f"the same seeded sampler (e.g. SeededDepth(seed=...) with one seed, or the same "
        f"torch.manual_seed and random.seed), or wrap the sampler in BroadcastDepth "
        f"(--broadcast-depth) so that rank 0's draw is every rank's",
        depths,
        step,
    )


def _require_process_group(what: str) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{what} needs torch.distributed's default process group, and none is "
            f"initialized: call torch.distributed.init_process_group first (under torchrun, "
            f"init_process_group() with no arguments reads its environment)"
        )


def _comm_device(group: dist.ProcessGroup | None) -> torch.device:
    """The device of the small tensors this module communicates: NCCL needs CUDA."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_row(
    row: list[float], group: dist.ProcessGroup | None, device: torch.device
) -> list[list[float]]:
    local = torch.tensor(row, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    return torch.stack(gathered).cpu().tolist()


def _sum_gradients(group: dist.ProcessGroup | None, bucket: Any) -> torch.futures.Future[Tensor]:
    """A DDP communication hook: sum the gradients over ranks instead of averaging."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    assert work is not None  # async_op=True returns the work
    future: torch.futures.Future[Tensor] = work.get_future().then(lambda done: done.value()[0])
    return future


# DDP checks that a hook's bucket parameter is annotated with the class itself, and
# this module's annotations are strings (``from __future__ import annotations``).
_sum_gradients.__annotations__["bucket"] = dist.GradBucket  # type: ignore[attr-defined]
_sum_gradients.__annotations__["return"] = torch.futures.Future[Tensor]


class DistributedRun:
    """The distributed part of ``train(..., distributed=True)``; private to the trainer.

    On construction it takes rank 0's ``x``, ``y`` and sampler states, keeps this
    rank's contiguous shard of the batch, ties the blocks' layers for depth 0, and
    wraps the model in ``DistributedDataParallel`` (default arguments, and a
    communication hook that sums the gradients: the loss is a sum over the global
    batch, so the gradient must be too).
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        _require_process_group("train(distributed=True)")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = _comm_device(None)
        # Rank 0's batch is every rank's: the other ranks' x and y are not read.
        x, y = _broadcast_tensor(x, self.device), _broadcast_tensor(y, self.device)
        if x.ndim == 0 or x.shape[0] < self.world_size:
            raise ValueError(
                f"distributed=True splits the batch x along its first dimension across "
                f"{self.world_size} ranks, so it needs at least {self.world_size} rows, "
                f"got shape {tuple(x.shape)}"
            )
        if y.ndim == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"distributed=True splits x and y along their first dimension, so they "
                f"need the same number of rows, got shapes {tuple(x.shape)} and "
                f"{tuple(y.shape)}"
            )
        self.x = torch.tensor_split(x, self.world_size)[self.rank]
        self.y = torch.tensor_split(y, self.world_size)[self.rank]
        _broadcast_sampler_states(model, self.device)
        self.tie = SkippedLayerTie(model)
        self.model = model
        try:
            self.ddp = DistributedDataParallel(model)
            self.ddp.register_comm_hook(None, _sum_gradients)
        except BaseException:
            self.tie.remove()
            raise

    @property
    def is_main(self) -> bool:
        """Whether this rank logs: rank 0."""
        return self.rank == 0

    def step_loss(self, loss: Tensor, step: int) -> Tensor:
        """Check that the ranks agree on the depths; return the global batch's loss.

        One ``all_gather`` of ``[loss, depths...]`` per step, after the forward pass
        and before ``backward()``.
        """
        depths = _block_depths(self.model)
        local = torch.cat(
            [
                loss.detach().reshape(1).to(self.device, torch.float64),
                torch.tensor(depths, dtype=torch.float64, device=self.device),
            ]
        )
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered).cpu()
        rows = table[:, 1:].long().tolist()
        _raise_on_mismatch(rows, step)
        # The ranks' losses, summed in rank order: the same float on every rank.
        return table[:, 0].to(loss.dtype).sum().to(loss.device)

    def close(self) -> None:
        """Remove the tie's hooks."""
        self.tie.remove()


# Dtypes that _broadcast_tensor sends by index (broadcast_object_list needs NumPy).
_DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.complex128,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
_MAX_DIMS = 16


def _broadcast_tensor(tensor: Tensor, device: torch.device) -> Tensor:
    """Rank 0's ``tensor`` on every rank, on ``tensor``'s device (the caller's is untouched)."""
    meta = torch.full((2 + _MAX_DIMS,), -1, dtype=torch.int64, device=device)
    if dist.get_rank() == 0:
        if tensor.dtype not in _DTYPES or tensor.ndim > _MAX_DIMS:
            code = -1
        else:
            code = _DTYPES.index(tensor.dtype)
        meta[0], meta[1] = code, tensor.ndim
        meta[2 : 2 + tensor.ndim] = torch.tensor(tensor.shape, dtype=torch.int64)
    dist.broadcast(meta, src=0)
    code, ndim, *dims = meta.tolist()
    if code < 0:
        raise TypeError(
            f"distributed=True sends rank 0's x and y to every rank: they must have at most "
            f"{_MAX_DIMS} dimensions and a dtype among {', '.join(map(str, _DTYPES))}, "
            f"got rank 0's {tensor.dtype} tensor of shape {tuple(tensor.shape)}"
            if dist.get_rank() == 0
            else "distributed=True: rank 0's x or y has a dtype or rank it cannot send"
        )
    if dist.get_rank() == 0:
        buffer = tensor.detach().to(device, copy=True).contiguous()
    else:
        buffer = torch.empty(dims[:ndim], dtype=_DTYPES[code], device=device)
    dist.broadcast(buffer, src=0)
    return buffer.to(tensor.device)


def _broadcast_bytes(payload: bytes, device: torch.device) -> bytes:
    """Rank 0's ``payload`` on every rank."""
    length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    if dist.get_rank() == 0:
        buffer = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    else:
        buffer = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().tolist()) if dist.get_rank() != 0 else payload


def _broadcast_sampler_states(model: nn.Module, device: torch.device) -> None:
    """Give every block's sampler rank 0's state (seed and generator position)."""
    blocks = [m for m in model.modules() if isinstance(m, RepeatedBlock)]
    stream = io.BytesIO()
    if dist.get_rank() == 0:
        torch.save([block.get_extra_state() for block in blocks], stream)
    payload = _broadcast_bytes(stream.getvalue(), device)
    if dist.get_rank() != 0:
        states = torch.load(io.BytesIO(payload), weights_only=True)
        for block, state in zip(blocks, states, strict=True):
            block.set_extra_state(state)
