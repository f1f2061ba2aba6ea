"""The reference trainer: the article's training loop, with its history returned.

``train`` reads as the article's loop: it checks its arguments, binds the sampler to
the model's blocks, sets up the distributed run and the checkpoints, then repeats one
:class:`_Step` and reports each loss (:class:`~._report.Report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import torch
from torch import Tensor, nn

from stochdepth._block import RepeatedBlock
from stochdepth._validation import check_bool, check_int, check_real, check_stream, describe
from stochdepth.samplers._protocol import DepthSampler, check_sampler, has_set_step

from ._checkpoint import Checkpointer, make_checkpointer
from ._cuda_graphs import CUDAGraphStep
from ._distributed_run import DistributedRun, repeats_applied
from ._finite import check_fits
from ._history import TrainingHistory
from ._report import Report, progress_bar_class
from ._sgd import sgd_step


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
    cuda_graphs: bool = False,
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
        progress: Show the progress on stderr with the running loss and the mean
            depth: a tqdm bar on a terminal, otherwise a plain line every
            ``max(25, steps // 10)`` steps; it needs ``tqdm``, the ``progress`` extra.
        file: Where the ``t loss`` lines go (default: ``sys.stdout``).
        summary: After the run, also print :meth:`TrainingHistory.summary` (the
            mean depth and the depth histogram) to ``file``.
        checkpoint: Save the run to this file, a run checkpoint (not the block's
            activation checkpointing): at step 0, every ``checkpoint_every`` steps and
            at the end; a new run refuses to overwrite an existing file. See
            [reliable training runs](../reliability.md).
        checkpoint_every: Save every this many steps; ``None`` or 0 saves only at
            the start and at the end.
        resume: Continue from ``checkpoint`` exactly as if the run had never stopped;
            the options, samplers, model shape and data must be the saved run's.
        distributed: Train with ``DistributedDataParallel`` on torch.distributed's
            default process group: rank 0's data, weights and sampler states are every
            rank's, each rank trains on its share of the batch, and the loss and update
            are the single-process ones of the whole batch (up to rounding). Depth 0,
            depth agreement and checkpoints under DDP:
            [distributed training](../distributed.md).
        seed: The seed the caller made this run's data and weights with, stored in the
            checkpoint (a resumed run with another seed is refused); ``train`` itself
            seeds nothing.
        cuda_graphs: Replay each step from a CUDA graph captured once per depth
            (:class:`~stochdepth.CUDAGraphStep`); on a CUDA device, not with
            ``distributed=True``.

    Returns:
        One :class:`StepRecord` per step, ``(step, loss, depth)``, in a
        :class:`TrainingHistory` that also reports the mean depth and the depth
        histogram.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range (``lr`` and ``momentum`` must also
            fit in the parameters' dtype), ``sampler`` was given for a model
            without a ``RepeatedBlock``, the model's output and ``y`` differ in
            shape, or ``cuda_graphs=True`` was given with ``distributed=True`` or for
            a model that :class:`~stochdepth.CUDAGraphStep` refuses (one not on a
            CUDA device, say).
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
    options = _Options(
        steps=check_int("steps", steps),
        lr=check_real("lr", lr, minimum=0.0, inclusive=False),
        momentum=check_real("momentum", momentum, minimum=0.0),
        log_every=0 if log_every is None else check_int("log_every", log_every),
        progress=check_bool("progress", progress),
        summary=check_bool("summary", summary),
        file=file,
        distributed=check_bool("distributed", distributed),
        seed=None if seed is None else check_int("seed", seed),
        cuda_graphs=check_bool("cuda_graphs", cuda_graphs),
    )
    _check_data(model, x, y, options)
    blocks = bind_sampler(model, sampler)
    if options.progress:
        progress_bar_class()  # on every rank: an ImportError on rank 0 alone would hang the rest
    was_training = model.training
    model.train()
    run: DistributedRun | None = None
    report: Report | None = None
    try:
        run = DistributedRun(model, x, y) if options.distributed else None
        checkpointer = make_checkpointer(
            checkpoint,
            checkpoint_every,
            resume,
            *((x, y) if run is None else (run.global_x, run.global_y)),
            on_rank_0=None if run is None else run.on_rank_0,
            lr=options.lr,
            momentum=options.momentum,
            steps=options.steps,
            seed=options.seed,
        )
        report = Report(
            options.steps,
            log_every=options.log_every,
            progress=options.progress,
            file=file,
            speaking=run is None or run.is_main,  # rank 0 prints for all
        )
        _loop(model, blocks, run, checkpointer, report, options, x, y)
    finally:
        if report is not None:
            report.close()
        if run is not None:
            run.close()
        model.train(was_training)
    history = report.history()
    if options.summary:
        report.write(history.summary())
    return history


@dataclass(frozen=True)
class _Options:
    """``train``'s checked options."""

    steps: int
    lr: float
    momentum: float
    log_every: int
    progress: bool
    summary: bool
    file: TextIO | None
    distributed: bool
    seed: int | None
    cuda_graphs: bool


def _check_data(model: object, x: object, y: object, options: _Options) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}")
    for name, tensor in (("x", x), ("y", y)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {describe(tensor)}")
    check_stream("file", options.file)
    check_fits(model, lr=options.lr, momentum=options.momentum)
    if options.cuda_graphs and options.distributed:
        raise ValueError(
            "cuda_graphs=True cannot be combined with distributed=True yet: the gradients' "
            "all-reduce would have to be captured too; use one of them"
        )


def bind_sampler(model: nn.Module, sampler: DepthSampler | None) -> list[RepeatedBlock]:
    """Give every block of ``model`` ``sampler`` (when given); return the blocks.

    Raises:
        ValueError: ``sampler`` was given for a model without a block, or draws
            depths that a block cannot run.
        TypeError: ``sampler`` does not satisfy the sampler protocol.
    """
    blocks = [module for module in model.modules() if isinstance(module, RepeatedBlock)]
    if sampler is None:
        return blocks
    if not blocks:
        raise ValueError(
            f"sampler was given, but model has no RepeatedBlock to use it: {type(model).__name__}"
        )
    sampler = check_sampler(sampler)
    for block in blocks:  # every block checked before any is changed
        block.check_sampler(sampler)
    for block in blocks:
        block.sampler = sampler
    return blocks


def _loop(
    model: nn.Module,
    blocks: list[RepeatedBlock],
    run: DistributedRun | None,
    checkpointer: Checkpointer | None,
    report: Report,
    options: _Options,
    x: Tensor,
    y: Tensor,
) -> None:
    """The article's loop, from the checkpoint's step (or 0) to ``options.steps``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=options.lr, momentum=options.momentum)
    step = _Step(model, blocks, run, optimizer, cuda_graphs=options.cuda_graphs)
    if run is not None:
        x, y = run.x, run.y
    start = 0
    if checkpointer is not None:
        start = checkpointer.start(model, optimizer, report.losses, report.depths)
    report.restored(start)
    for t in range(start, options.steps):
        loss, logged, depth = step.forward(t, x, y)
        report.record(t, logged, depth)
        step.update(loss)
        if checkpointer is not None and checkpointer.due(t + 1):
            report.flush()
            checkpointer.save(t + 1, model, optimizer, report.losses, report.depths)
        report.stepped(t)
    report.flush()
    if checkpointer is not None and checkpointer.saved_step != options.steps:
        checkpointer.save(options.steps, model, optimizer, report.losses, report.depths)


class _Step:
    """One step of the article's loop: forward, ``MSELoss(reduction="sum")``, backward, SGD."""

    def __init__(
        self,
        model: nn.Module,
        blocks: list[RepeatedBlock],
        run: DistributedRun | None,
        optimizer: torch.optim.SGD,
        *,
        cuda_graphs: bool = False,
    ) -> None:
        self._forward = model if run is None else run.ddp
        self._blocks = blocks
        self._run = run
        self._optimizer = optimizer
        # optimizer.zero_grad() as a plain loop: the same ``grad = None`` for the same
        # parameters, without its profiler range and Dynamo guard (about 20 us a step on
        # a 2-core CPU: benchmarks/run.py, section 1).
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        # With CUDA graphs, the whole step (backward and update too) is one replay.
        self._graph = CUDAGraphStep(model, optimizer, _checked(_mse)) if cuda_graphs else None
        samplers = {id(s): s for block in blocks if has_set_step(s := block.sampler)}
        self._steppers = list(samplers.values())

    def forward(self, t: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int | None]:
        """Step ``t``'s loss, the loss to log (detached) and the depth to record."""
        for stepper in self._steppers:
            stepper.set_step(t)
        if self._graph is not None:
            loss = self._graph(x, y)
            return loss, loss, _total_depth(self._blocks)
        y_pred = self._forward(x)
        if not isinstance(y_pred, Tensor) or y_pred.shape != y.shape:
            raise ValueError(_output_mismatch(y_pred, y))
        loss = _mse(y_pred, y)
        if self._run is not None:
            logged, depth = self._run.step_loss(loss, t)
            return loss, logged, depth
        return loss, loss.detach(), _total_depth(self._blocks)

    def update(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` and step the optimizer (a graph's replay did both)."""
        if self._graph is not None:
            return
        for param in self._params:
            param.grad = None
        loss.backward()  # type: ignore[no-untyped-call]
        if self._run is not None:
            self._run.tie.restore_skipped_grads()
        sgd_step(self._optimizer)  # optimizer.step(), bitwise, without its wrappers


def _total_depth(blocks: list[RepeatedBlock]) -> int | None:
    if len(blocks) == 1:
        depth = blocks[0].last_depth
        return depth if depth is None or type(depth) is int else repeats_applied(depth)
    if not blocks:
        return None
    return sum(repeats_applied(block.last_depth) for block in blocks)


def _mse(y_pred: Tensor, y: Tensor) -> Tensor:
    """The article's ``MSELoss(reduction="sum")``, called as the function that it calls."""
    return nn.functional.mse_loss(y_pred, y, reduction="sum")


def _checked(criterion: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The criterion, refusing an output whose shape is not ``y``'s (run at capture)."""

    def loss(y_pred: Tensor, y: Tensor) -> Tensor:
        if not isinstance(y_pred, Tensor) or y_pred.shape != y.shape:
            raise ValueError(_output_mismatch(y_pred, y))
        return criterion(y_pred, y)

    return loss


def _output_mismatch(y_pred: object, y: Tensor) -> str:
    got = f"shape {tuple(y_pred.shape)}" if isinstance(y_pred, Tensor) else describe(y_pred)
    return (
        f"the model's output must have the shape of y, {tuple(y.shape)}, got {got}; "
        f"MSELoss would otherwise broadcast them into a wrong loss"
    )
