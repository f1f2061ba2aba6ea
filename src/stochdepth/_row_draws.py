"""Row draws of the global batch under ``torch.distributed``: each rank keeps its rows.

A :class:`~stochdepth.LayerDropList` in row mode and a
:class:`~stochdepth.RepeatedBlock` with ``per_sample=True`` draw one value per row.
Under data parallelism (DDP, FSDP2) each rank holds a shard of the global batch; if
every rank drew its own rows from the same generator state, row ``i`` of every rank
would get the same draw, and the global batch would hold ``world_size`` copies of one
pattern. With ``row_draws="global"`` (the default) a training-mode draw inside an
initialized process group instead gathers every rank's row count (one ``all_gather``
of one integer), draws the rows of the whole global batch, from the same generator
state on every rank, and keeps this rank's contiguous chunk: rank ``r`` keeps the rows
after those of ranks ``0..r-1``, as ``torch.chunk`` and ``torch.tensor_split`` lay a
batch out. ``row_draws="local"`` draws this rank's rows only, as a single process
would draw them (no communication).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.distributed as dist

from ._validation import describe

RowDraws = Literal["global", "local"]
"""Whose rows a per-row draw covers in a process group: the global batch's, or this rank's."""

ROW_DRAWS = ("global", "local")


class RowLayout(NamedTuple):
    """Where this rank's rows sit in the global batch.

    Attributes:
        start: The global index of this rank's first row.
        total: The global batch's rows (every rank's, summed).
    """

    start: int
    total: int


def check_row_draws(value: object) -> RowDraws:
    """Return ``value`` as a ``row_draws`` option, or raise an error naming ``row_draws``."""
    expected = f"one of {', '.join(map(repr, ROW_DRAWS))}"
    if not isinstance(value, str):
        raise TypeError(f"row_draws must be {expected}, got {describe(value)}")
    if value not in ROW_DRAWS:
        raise ValueError(f"row_draws must be {expected}, got {value!r}")
    return value  # type: ignore[return-value]


def draws_globally(row_draws: RowDraws) -> bool:
    """Whether a per-row draw covers the global batch: ``"global"`` in a process group."""
    return row_draws == "global" and dist.is_available() and dist.is_initialized()


def global_layout(rows: int) -> RowLayout:
    """Gather every rank's row count; return this rank's place in the global batch.

    A collective over the default process group: every rank must call it, once per
    draw, as every rank of a data-parallel training step does.

    Args:
        rows: This rank's rows.

    Returns:
        This rank's first global row and the global batch's rows.
    """
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    local = torch.tensor([rows], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    counts = torch.cat(gathered).tolist()
    rank = dist.get_rank()
    return RowLayout(start=sum(counts[:rank]), total=sum(counts))
