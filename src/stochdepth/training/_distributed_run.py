"""The distributed part of ``train(..., distributed=True)``, and what rank 0 shares.

Private to the trainer and the command line; the public DDP helpers are in
``stochdepth._distributed``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from stochdepth._block import RepeatedBlock
from stochdepth._distributed import (
    SkippedLayerTie,
    block_depths,
    comm_device,
    raise_on_mismatch,
    require_process_group,
)

from ._checkpoint import CheckpointError


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
    rank's contiguous shard of the batch, installs a :class:`SkippedLayerTie` (to give
    skipped layers their ``None`` gradient back), and wraps the model in
    ``DistributedDataParallel`` (default arguments, and a communication hook that sums
    the gradients: the loss is a sum over the global batch, so the gradient must be
    too).

    Attributes:
        global_x: Rank 0's ``x``, the whole batch (the checkpoint's data).
        global_y: Rank 0's ``y``.
        x: This rank's rows of ``global_x``.
        y: This rank's rows of ``global_y``.
        ddp: The model in ``DistributedDataParallel``.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor) -> None:
        require_process_group("train(distributed=True)")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.device = comm_device(None)
        # Rank 0's batch is every rank's: the other ranks' x and y are not read.
        x, y = _broadcast_tensor(x, self.device), _broadcast_tensor(y, self.device)
        _check_batch(x, y, self.world_size)
        self.global_x, self.global_y = x, y
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

    def step_loss(self, loss: Tensor, step: int) -> tuple[Tensor, int | None]:
        """Check that the ranks agree on the depths; return the global batch's loss and depth.

        One ``all_gather`` of ``[loss, depths..., repeats...]`` per step, after the
        forward pass and before ``backward()``. The depth is the one a single process
        records for the global batch: the sum over the blocks of their repeats, where a
        block with a depth per row counts the deepest row of every rank's rows.
        """
        blocks = [module for module in self.model.modules() if isinstance(module, RepeatedBlock)]
        depths = block_depths(self.model)
        repeats = [repeats_applied(block.last_depth) for block in blocks]
        recorded = [
            repeats_recorded(block, count) for block, count in zip(blocks, repeats, strict=True)
        ]
        local = torch.cat(
            [
                loss.detach().reshape(1).to(self.device, torch.float64),
                torch.tensor(
                    [*depths, *repeats, *recorded], dtype=torch.float64, device=self.device
                ),
            ]
        )
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered).cpu()
        raise_on_mismatch(table[:, 1 : 1 + len(depths)].long().tolist(), step)
        # The ranks' losses, summed in rank order: the same float on every rank.
        total = table[:, 0].to(loss.dtype).sum().to(loss.device)
        columns = table[:, 1 + len(depths) :].amax(dim=0).long().tolist() if blocks else []
        deepest, recorded_anywhere = columns[: len(blocks)], columns[len(blocks) :]
        for block, repeats_anywhere in zip(blocks, recorded_anywhere, strict=True):
            # Some rank's rows ran the layer with autograd: its gradient stays. Repeats
            # that grad_depth ran without autograd give it none, as at depth 0.
            if repeats_anywhere:
                self.tie.note_ran(block)
        return total, (sum(deepest) if blocks else None)

    def on_rank_0(self, function: Callable[[], bytes]) -> bytes:
        """``function()`` run on rank 0 alone, its bytes (or its error) on every rank."""
        return bytes_from_rank_0(function, self.device)

    def close(self) -> None:
        """Remove the tie's hooks."""
        self.tie.remove()


def repeats_recorded(block: RepeatedBlock, repeats: int) -> int:
    """How many of a block's last ``repeats`` autograd recorded (``grad_depth`` keeps ``k``)."""
    k = block.last_grad_depth
    return repeats if k is None else min(repeats, k)


def repeats_applied(depth: int | Tensor | None) -> int:
    """A block's last depth as an int: a per-row block counts its deepest row's repeats."""
    if depth is None:
        return 0
    if isinstance(depth, Tensor):
        return int(depth.max()) if depth.numel() else 0
    return depth


def _check_batch(x: Tensor, y: Tensor, world_size: int) -> None:
    if x.ndim == 0 or x.shape[0] < world_size:
        raise ValueError(
            f"distributed=True splits the batch x along its first dimension across "
            f"{world_size} ranks, so it needs at least {world_size} rows, "
            f"got shape {tuple(x.shape)}"
        )
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"distributed=True splits x and y along their first dimension, so they "
            f"need the same number of rows, got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )


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


def bytes_from_rank_0(function: Callable[[], bytes], device: torch.device) -> bytes:
    """Run ``function`` on rank 0 alone; return what it returned on every rank.

    An error that ``function`` raises on rank 0 is raised on every rank, so that no
    rank waits for the others in a later collective: a :class:`CheckpointError` as
    itself (same path and problem), any other as a ``RuntimeError`` naming it (rank 0
    raises the original).
    """
    if dist.get_rank() != 0:
        return _unpack(_broadcast_bytes(b"", device))
    try:
        result = function()
    except CheckpointError as error:
        _broadcast_bytes(_pack("checkpoint", error.path, error.problem), device)
        raise
    except Exception as error:
        _broadcast_bytes(_pack("error", f"{type(error).__name__}: {error}"), device)
        raise
    _broadcast_bytes(b"ok\0" + result, device)
    return result


def _pack(kind: str, *texts: str) -> bytes:
    return "\0".join((kind, *texts)).encode()


def _unpack(payload: bytes) -> bytes:
    kind, _, rest = payload.partition(b"\0")
    if kind == b"ok":
        return rest
    texts = rest.decode().split("\0")
    if kind == b"checkpoint":
        raise CheckpointError(texts[0], texts[1])
    raise RuntimeError(f"rank 0 failed, so this rank stops too: {texts[0]}")
