"""Distributed data parallel training with random depth: ranks that agree, depth 0 under DDP.

Three pieces, usable in any ``DistributedDataParallel`` loop and put together by
``train(..., distributed=True)``:

- :class:`BroadcastDepth` wraps any sampler so that rank 0's draw is every rank's depth.
- :func:`check_depth_agreement` gathers every rank's depths and raises
  :class:`DepthMismatchError`, naming the ranks and their depths, when they differ.
- :class:`SkippedLayerTie` gives the layers that a step skipped back the ``None``
  gradient that single-process training leaves them (DDP writes zeros).

A :class:`~stochdepth.RepeatedBlock` needs none of them to run under DDP with its
default ``find_unused_parameters=False`` (``stochdepth._tie``); the docs' Distributed
training page tells the depth-0 story.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from . import _tie
from ._block import RepeatedBlock
from ._errors import DepthMismatchError as DepthMismatchError
from ._tie import process_group_up as process_group_up
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
        if not process_group_up():
            return depth
        if type(depth) is not int:
            depth = check_int("the wrapped sampler's depth", depth)
        buffer = torch.tensor([depth], dtype=torch.int64, device=comm_device(self._group))
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


class SkippedLayerTie:
    """Gives the layers a DDP step skipped their single-process ``None`` gradient back.

    A forward hook on every block of ``model`` notes which parameters a training-mode
    pass at depth 0 skipped (and ties them itself where the block did not, outside a
    DDP forward pass). DDP writes zeros into their ``.grad`` where single-process
    training leaves ``None``: call :meth:`restore_skipped_grads` after ``backward()``
    and before ``optimizer.step()`` to get the single-process update exactly. Install
    it before wrapping the model in DDP or after; it works without DDP too. Why:
    [depth 0 under DDP](../distributed.md#depth-0-under-ddp).

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
        if _tie.in_ddp_forward():  # the block tied its skipped layer itself
            return None
        return _tie.tie(output, params)

    def note_ran(self, block: nn.Module) -> None:
        """Count ``block``'s layer as used since the last restore (another rank ran it).

        With ``per_sample=True`` each rank has its own rows, so a rank whose rows all
        skipped the layer may receive, through DDP, the gradient of a rank whose rows
        did not: that gradient must stay. ``train(distributed=True)`` calls this for
        such blocks; in a loop of your own, gather the ranks' deepest rows first.

        Args:
            block: The block that ran its layer on some rank.
        """
        self._ran.add(id(block))

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
    require_process_group("check_depth_agreement")
    depths = block_depths(model)
    gathered = _all_gather_row([float(d) for d in depths], group, comm_device(group))
    raise_on_mismatch([[int(v) for v in row] for row in gathered], step)
    return depths


# What block_depths reports for a block that has not run, and for one whose depths
# are per row (each rank has its own rows, so they are not compared).
NOT_RUN, PER_ROW = -1, -2


def _skipped_its_layer(block: RepeatedBlock) -> bool:
    """Whether the block's last forward pass left its layer out of the graph.

    A block in ``"skip"`` mode (the default) at depth 0, or, with a depth per row,
    with every row at depth 0 (every row of the global batch after a global row draw),
    or whose ``grad_depth`` recorded no repeat. A block in another mode (``"masked"``)
    applies its layer at every depth, masked: nothing to tie.
    """
    if getattr(block, "mode", "skip") != "skip":
        return False
    if block.last_grad_depth == 0:  # grad_depth left no repeat recorded: the layer is unused
        return True
    # A global row draw: the layer ran on every rank (maybe on no rows) unless every
    # row of the global batch drew depth 0.
    everywhere = block.last_global_depth
    depth: object = block.last_depth if everywhere is None else everywhere
    if isinstance(depth, Tensor):
        return depth.numel() == 0 or not bool(depth.any())
    return depth == 0


def block_depths(model: nn.Module) -> list[int]:
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


def raise_on_mismatch(depths: list[list[int]], step: int | None) -> None:
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


def require_process_group(what: str) -> None:
    if not process_group_up():
        raise RuntimeError(
            f"{what} needs torch.distributed's default process group, and none is "
            f"initialized: call torch.distributed.init_process_group first (under torchrun, "
            f"init_process_group() with no arguments reads its environment)"
        )


def comm_device(group: dist.ProcessGroup | None) -> torch.device:
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
