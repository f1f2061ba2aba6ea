"""The reference trainer: the article's training loop, with its history returned."""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from stochdepth._block import RepeatedBlock, check_within_limit
from stochdepth._validation import check_bool, check_int, check_real, check_stream, describe
from stochdepth.samplers._protocol import DepthSampler, check_sampler, has_set_step
from stochdepth.training._distributed_run import DistributedRun

from ._checkpoint import make_checkpointer
from ._finite import check_fits, check_losses
from ._history import StepRecord, TrainingHistory

_PROGRESS_WINDOW = 25
_CHECK_EVERY = 100  # read the pending losses (and check they are finite) at least this often


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: int = 500,
    lr: float = 1e-4,
    momentum: float = 0.9,
    log_every: int | None = 100,
    sampler: DepthSampler | None = None,
    progress: bool = False,
    file: TextIO | None = None,
    summary: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    distributed: bool = False,
    seed: int | None = None,
) -> TrainingHistory:
    """Train ``model`` to map ``x`` to ``y`` with the article's loop.

    Each step is the article's: forward, ``MSELoss(reduction="sum")``,
    ``zero_grad()``, ``backward()``, and a momentum SGD step; every ``log_every``
    steps it prints ``t loss`` as the article does (``99 3.70...``). With the
    article's data, model and seeds, the printed lines are the article's digit for
    digit. The model is put in training mode for the run, and its previous mode is
    restored afterwards. Before each step, every block's sampler that has
    ``set_step`` (such as :class:`~stochdepth.ScheduledDepth`) is told the step.

    Args:
        model: The model to train in place.
        x: The inputs, one batch.
        y: The targets; the model's output must have exactly this shape.
        steps: How many steps to run, an int >= 0.
        lr: The learning rate, > 0.
        momentum: SGD momentum, >= 0.
        log_every: Print ``t loss`` when ``t % log_every == log_every - 1``;
            ``None`` or 0 prints nothing.
        sampler: If given, it becomes the sampler of every
            :class:`~stochdepth.RepeatedBlock` in ``model`` before the first step
            (and stays theirs afterwards).
        progress: Draw a progress bar on stderr with the running loss and the mean
            depth; it needs ``tqdm``, the ``progress`` extra.
        file: Where the ``t loss`` lines go (default: ``sys.stdout``).
        summary: After the run, also print :meth:`TrainingHistory.summary` (the
            mean depth and the depth histogram) to ``file``.
        checkpoint: Save the run to this file (see :func:`~stochdepth.load_checkpoint`):
            at step 0, every ``checkpoint_every`` steps and at the end. A new run
            refuses to overwrite an existing file.
        checkpoint_every: Save every this many steps; ``None`` or 0 saves only at
            the start and at the end.
        resume: Continue from ``checkpoint``: the model, optimizer, samplers, random
            states and history are restored, and the run goes on from the saved step
            to ``steps``, exactly as if it had never stopped. ``lr``, ``momentum``,
            the samplers' kinds and parameters, the model's shape, and ``x`` and
            ``y`` must be those of the saved run.
        distributed: Train with ``DistributedDataParallel`` on torch.distributed's
            default process group (see the docs' Distributed training page). Rank 0's ``x``,
            ``y``, weights and sampler states are every rank's; each rank trains on its
            contiguous share of the batch, and the gradients are summed, so that the
            loss and the update are the single-process ones of the whole batch (up to
            rounding). A :class:`~stochdepth.SkippedLayerTie` makes depth-0 steps work
            and keeps their single-process semantics, and every step checks that the
            ranks drew the same depths (:class:`~stochdepth.DepthMismatchError`
            otherwise). Only rank 0 prints; every rank returns the same history.
        seed: The seed that made this run's data, weights and random states, if the
            caller seeded them with one (the command line's ``--seed``, given or
            drawn): it is stored in the checkpoint (``Checkpoint.run["seed"]``) so
            that a resumed run can make them again, and a resumed run with another
            seed is refused. ``train`` itself seeds nothing.

    Returns:
        One :class:`StepRecord` per step, ``(step, loss, depth)``, in a
        :class:`TrainingHistory` that also reports the mean depth and the depth
        histogram.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range (``lr`` and ``momentum`` must also
            fit in the parameters' dtype), ``sampler`` was given for a model
            without a ``RepeatedBlock``, the model's output and ``y`` differ in
            shape, or ``distributed=True`` was given together with ``checkpoint`` or
            for a model with a ``RepeatedBlock(per_sample=True)`` (neither is
            supported yet).
        ImportError: ``progress=True`` and tqdm is not installed.
        CheckpointError: ``checkpoint`` cannot be resumed from (missing, damaged, or
            saved by another run) or written; the file is left as it was.
        NonFiniteError: The loss, or the state to save, became NaN or infinite; the
            last checkpoint is left as it was.
        RuntimeError: ``distributed=True`` and no process group is initialized.
        DepthMismatchError: ``distributed=True`` and the ranks drew different depths.

    Example:
        >>> import torch
        >>> from stochdepth import DynamicNet, FixedDepth, train
        >>> x, y = torch.randn(8, 5), torch.randn(8, 2)
        >>> history = train(DynamicNet(5, 4, 2, FixedDepth(1)), x, y, steps=3, log_every=None)
        >>> [record.depth for record in history]
        [1, 1, 1]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    for name, tensor in (("x", x), ("y", y)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {describe(tensor)}")
    steps = check_int("steps", steps)
    lr = check_real("lr", lr, minimum=0.0, inclusive=False)
    momentum = check_real("momentum", momentum, minimum=0.0)
    log_every = 0 if log_every is None else check_int("log_every", log_every)
    progress, summary = check_bool("progress", progress), check_bool("summary", summary)
    check_stream("file", file)
    check_fits(model, lr=lr, momentum=momentum)
    distributed = check_bool("distributed", distributed)
    if distributed and checkpoint is not None:
        raise ValueError(
            "checkpoint cannot be combined with distributed=True yet: every rank would "
            "write the same file; train distributed without checkpoint"
        )
    seed = None if seed is None else check_int("seed", seed)
    checkpointer = make_checkpointer(
        checkpoint, checkpoint_every, resume, x, y, lr=lr, momentum=momentum, steps=steps, seed=seed
    )
    blocks = [module for module in model.modules() if isinstance(module, RepeatedBlock)]
    if sampler is not None:
        if not blocks:
            raise ValueError(
                f"sampler was given, but model has no RepeatedBlock to use it: "
                f"{type(model).__name__}"
            )
        sampler = check_sampler(sampler)
        for block in blocks:
            check_within_limit(sampler, block.eval_depth, block.depth_limit)
        for block in blocks:
            block.sampler = sampler
    steppers = list({id(s): s for b in blocks if has_set_step(s := b.sampler)}.values())
    if distributed and any(block.per_sample for block in blocks):
        raise ValueError(
            "distributed=True does not support RepeatedBlock(per_sample=True) yet: each "
            "rank would draw depths for its own rows only, and the ranks' replicas could "
            "drift apart; use one depth per batch (per_sample=False)"
        )
    if progress:
        _progress_bar_class()  # on every rank: an ImportError on rank 0 alone would hang the rest
    run = DistributedRun(model, x, y) if distributed else None
    forward: nn.Module = model if run is None else run.ddp
    speaking = run is None or run.is_main  # rank 0 prints for all
    if run is not None:
        x, y = run.x, run.y
    # Every rank reads its losses at the same steps (log lines, progress updates), so
    # that a non-finite loss stops every rank at the same step; only rank 0 writes.
    bar = _progress_bar(steps) if progress and speaking else None
    write = (print if bar is None else bar.write) if speaking else _write_nothing
    out = sys.stdout if file is None else file

    criterion = nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    losses: list[float] = []
    pending: list[Tensor] = []  # detached losses not yet read: no device sync per step
    depths: list[int | None] = []
    was_training = model.training
    model.train()
    try:
        start = 0 if checkpointer is None else checkpointer.start(model, optimizer, losses, depths)
        if bar is not None and start:
            bar.update(start)
        for t in range(start, steps):
            for stepper in steppers:
                stepper.set_step(t)
            y_pred = forward(x)
            if not isinstance(y_pred, Tensor) or y_pred.shape != y.shape:
                raise ValueError(_output_mismatch(y_pred, y))
            loss = criterion(y_pred, y)
            pending.append(loss.detach() if run is None else run.step_loss(loss, t))
            depths.append(_total_depth(blocks))
            if log_every and t % log_every == log_every - 1:
                _flush(pending, losses)
                write(f"{t} {losses[-1]}", file=out)
            elif len(pending) >= _CHECK_EVERY:
                _flush(pending, losses)
            optimizer.zero_grad()
            loss.backward()
            if run is not None:
                run.tie.restore_skipped_grads()
            optimizer.step()
            if checkpointer is not None and checkpointer.due(t + 1):
                _flush(pending, losses)
                checkpointer.save(t + 1, model, optimizer, losses, depths)
            if bar is not None:
                bar.update(1)
            if progress and (len(pending) >= _PROGRESS_WINDOW or t == steps - 1):
                if bar is None:
                    _flush(pending, losses)
                else:
                    _show_progress(bar, pending, losses, depths)
        _flush(pending, losses)
        if checkpointer is not None and checkpointer.saved_step != steps:
            checkpointer.save(steps, model, optimizer, losses, depths)
    finally:
        if bar is not None:
            bar.close()
        if run is not None:
            run.close()
        model.train(was_training)
    history = TrainingHistory(
        StepRecord(t, loss, depth)
        for t, (loss, depth) in enumerate(zip(losses, depths, strict=True))
    )
    if summary:
        write(history.summary(), file=out)
    return history


def _total_depth(blocks: list[RepeatedBlock]) -> int | None:
    if len(blocks) == 1:
        depth = blocks[0].last_depth
        return depth if depth is None or type(depth) is int else _repeats_applied(depth)
    if not blocks:
        return None
    return sum(_repeats_applied(block.last_depth) for block in blocks)


def _repeats_applied(depth: int | Tensor | None) -> int:
    """A block's depth as an int: a per-row block counts its deepest row's repeats."""
    if depth is None:
        return 0
    if isinstance(depth, Tensor):
        return int(depth.max()) if depth.numel() else 0
    return depth


def _flush(pending: list[Tensor], losses: list[float]) -> None:
    if pending:
        first = len(losses)
        losses.extend(torch.stack(pending).tolist())
        pending.clear()
        check_losses(losses, first)


def _output_mismatch(y_pred: object, y: Tensor) -> str:
    got = f"shape {tuple(y_pred.shape)}" if isinstance(y_pred, Tensor) else describe(y_pred)
    return (
        f"the model's output must have the shape of y, {tuple(y.shape)}, got {got}; "
        f"MSELoss would otherwise broadcast them into a wrong loss"
    )


def _progress_bar_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise ImportError(
            "progress=True draws its bar with tqdm, which is not installed: "
            "pip install tqdm (or the 'progress' extra: pip install '.[progress]' "
            "in stochdepth's repository)"
        ) from error
    return tqdm


def _progress_bar(steps: int) -> Any:
    return _progress_bar_class()(total=steps, desc="train", unit="step", file=sys.stderr)


def _write_nothing(*_: object, **__: object) -> None:
    """What ranks other than 0 print with."""


def _show_progress(
    bar: Any, pending: list[Tensor], losses: list[float], depths: list[int | None]
) -> None:
    window = len(pending)
    _flush(pending, losses)
    recent = losses[-window:] if window else losses[-1:]
    used = [depth for depth in depths if depth is not None]
    postfix = {"loss": f"{sum(recent) / max(len(recent), 1):.4g}"}
    if used:
        postfix["mean_depth"] = f"{sum(used) / len(used):.2f}"
    bar.set_postfix(postfix, refresh=False)
