"""`DepthScheduler`: a batch of rows in flight, one repeat at a time, finished rows refilled."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from stochdepth._block import RepeatedBlock
from stochdepth._validation import check_bool, check_int, describe

from ._rules import HaltingRule, RunToMax, as_rule, check_stop
from ._step import repeat_of
from ._token_run import TokenRun


@dataclass(frozen=True)
class ScheduledResult:
    """One input's result from :class:`~stochdepth.DepthScheduler`.

    Args:
        index: The input's position in the stream (0 for the first input).
        output: The state after the input's last repeat, of the input's shape (no
            batch dimension).
        depth: How many repeats the input had (per token: its deepest position's).
        depths: With ``per_token=True``, how many repeats each position had, a CPU
            int64 tensor of shape ``(seq,)``; otherwise ``None``.
    """

    index: int
    output: Tensor
    depth: int
    depths: Tensor | None = None


@dataclass
class _Rows:
    """The rows in flight: their states, row-aligned arguments and bookkeeping.

    ``clock`` counts the repeats of the run so far; a row admitted at clock ``c`` has had
    ``clock - c`` repeats. ``due`` is the clock at which the next row reaches its depth
    limit, so that the limits are compared only then.
    """

    state: Tensor | None = None
    args: tuple[Tensor, ...] = ()
    depth: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    cap: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    index: list[int] = field(default_factory=list)
    memory: Tensor | None = None
    clock: int = 0
    admitted: int = 0  # the clock of the latest admission: the least depth is clock - it
    due: int = 0

    def __len__(self) -> int:
        return len(self.index)

    def schedule(self) -> None:
        """Recompute ``due`` after rows came or went."""
        if self.index:
            self.due = self.clock + int((self.cap - self.depth).min())


_NONE = torch.zeros(0, dtype=torch.int64)  # no place is free


class DepthScheduler:
    """Runs a stream of inputs through a block, refilling the rows that halt.

    HRM and Tiny Recursive Models run every input of a batch to the maximum depth at
    evaluation, and early exit within one call (``per_sample=True`` with
    :class:`~stochdepth.ExitWhenConverged`) still makes the batch wait for its
    slowest row. The scheduler keeps ``batch_size`` rows in flight instead: it applies
    one repeat at a time to all of them, and whenever rows halt (their halting rule
    says stop, or they reach ``max_depth`` or their own depth), it sets them aside and
    fills their places with the next inputs. The layer runs on ``sum of the inputs'
    depths`` rows in all, in batches that stay full until the stream runs dry.

    Each output is what the block gives that input alone with the same rule (up to the
    rounding of a batched kernel against a one-row one): the layer must treat rows
    independently (no ``BatchNorm`` in training mode), as with ``per_sample=True``.
    The repeats run under ``torch.no_grad()`` in the block's current mode (call
    ``block.eval()`` first for dropout and the like).

    With ``per_token=True`` (the default for a block with ``per_token=True``) each
    input is a ``(seq, ...)`` row whose positions stop one by one, as with the block's
    own ``per_token=True``: a stopped position's state is frozen while the layer keeps
    seeing every position. The rule is asked about every position (the states
    flattened to ``(rows * seq, ...)``), a depth may be a ``(seq,)`` tensor, a row is
    finished when all its positions have stopped, and its result holds the ``(seq,)``
    ``depths``. Inputs must share one sequence length (rows are not padded).

    Inputs are tensors of one row's shape (the block's input without its batch
    dimension), or tuples ``(x, *args)`` whose ``args`` are the row-aligned extra
    arguments of that row (tensors, one row each, without the batch dimension), passed
    to the layer after the state. ``kwargs`` are passed unchanged at every repeat.

    Args:
        block: The :class:`~stochdepth.RepeatedBlock` whose layer is repeated.
        batch_size: How many rows are in flight at once, an int >= 1.
        halting: When a row stops before ``max_depth``: ``None`` (never: it runs to
            ``max_depth``, or to its own depth given to :meth:`run`), an
            :class:`~stochdepth.ExitWhenConverged` policy (any exit criterion, its head
            and ``min_depth``; its ``max_depth`` is the default here), a learned
            halting head (:class:`~stochdepth.ACTHalting`,
            :class:`~stochdepth.PonderHalting`), or any
            :class:`~stochdepth.HaltingRule`.
        max_depth: The most repeats of any input, an int >= 1 and at most the block's
            ``depth_limit``; by default the rule's ``max_depth``.
        by_repeat: Apply the layer to the rows at each repeat index in a call of its
            own, for a layer whose result depends on the repeat index (the block's
            ``step_kwarg``, a repeat hook: per-repeat weights, ``recursify``'s
            deltas). By default, when the block has a ``step_kwarg`` or a repeat hook
            as a run starts; otherwise one call serves rows at different repeats. A
            layer that reads the repeat index some other way needs ``True``.
        kwargs: Keyword arguments passed to the layer at every repeat (not
            row-aligned).
        per_token: Stop each position of a ``(seq, ...)`` input on its own; by
            default the block's ``per_token``.

    Attributes:
        row_repeats: How many row-repeats the last run executed (rows times layer
            applications, summed over the calls): the sum of the inputs' depths (per
            token, of each input's deepest position).
        layer_calls: How many times the last run called the layer.
        per_token: Whether each position of an input stops on its own.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: ``batch_size`` or ``max_depth`` is out of range, or no
            ``max_depth`` is given and the rule has none.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import DepthScheduler, RepeatedBlock
        >>> block = RepeatedBlock(nn.Linear(4, 4))
        >>> scheduler = DepthScheduler(block, batch_size=2, max_depth=8)
        >>> results = scheduler.run(torch.randn(5, 4), depths=[3, 1, 8, 2, 2])
        >>> [(r.index, r.depth) for r in results]
        [(0, 3), (1, 1), (2, 8), (3, 2), (4, 2)]
        >>> scheduler.row_repeats
        16
    """

    def __init__(
        self,
        block: RepeatedBlock,
        batch_size: int,
        *,
        halting: object = None,
        max_depth: int | None = None,
        by_repeat: bool | None = None,
        kwargs: dict[str, Any] | None = None,
        per_token: bool | None = None,
    ) -> None:
        if not isinstance(block, RepeatedBlock):
            raise TypeError(f"block must be a stochdepth.RepeatedBlock, got {describe(block)}")
        self.block = block
        self._repeat = repeat_of(block)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.rule: HaltingRule = as_rule(halting)
        if max_depth is None:
            max_depth = getattr(self.rule, "max_depth", None)
            if max_depth is None:
                raise ValueError(
                    f"max_depth must be given: the halting rule {self.rule!r} has none"
                )
        self.max_depth = check_int("max_depth", max_depth, minimum=1)
        if self.max_depth > block.depth_limit:
            raise ValueError(
                f"max_depth must be at most the block's depth_limit={block.depth_limit}, got "
                f"{self.max_depth}"
            )
        self._by_repeat = None if by_repeat is None else check_bool("by_repeat", by_repeat)
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict of keyword arguments, got {describe(kwargs)}")
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.per_token = (
            block.per_token if per_token is None else check_bool("per_token", per_token)
        )
        self.row_repeats = 0
        self.layer_calls = 0
        self._runs_to_max = isinstance(self.rule, RunToMax)
        self._grouped = False

    @property
    def by_repeat(self) -> bool:
        """Whether each repeat index gets a layer call of its own.

        As given, or by default whether the block has a ``step_kwarg`` or a repeat
        hook (per-repeat weights, ``recursify``'s deltas), read when a run starts.
        """
        if self._by_repeat is not None:
            return self._by_repeat
        block = self.block
        return block.step_kwarg is not None or block.has_repeat_hooks

    def run(
        self, inputs: Iterable[Any], depths: Iterable[int] | None = None
    ) -> list[ScheduledResult]:
        """Run every input to its halt; return the results in input order.

        Args:
            inputs: The inputs: tensors of one row's shape, or tuples ``(x, *args)``
                with the row's row-aligned arguments; a tensor is its rows.
            depths: Each input's own depth, an int in ``[0, max_depth]`` (a fixed
                per-input depth; the rule may still stop it earlier; with
                ``per_token``, an int or an integer tensor of shape ``(seq,)``), one
                per input;
                ``None`` to run every input to ``max_depth`` at most.

        Returns:
            One :class:`~stochdepth.ScheduledResult` per input, in input order.

        Raises:
            TypeError: An input or a depth has the wrong type.
            ValueError: An input's shape differs from the first input's, a depth is
                out of range, or ``depths`` has fewer entries than ``inputs``.
        """
        results = list(self.stream(inputs, depths))
        results.sort(key=lambda result: result.index)
        return results

    def stream(
        self, inputs: Iterable[Any], depths: Iterable[int] | None = None
    ) -> Iterator[ScheduledResult]:
        """Yield the results as the inputs halt (the streaming form of :meth:`run`).

        The inputs are read lazily: one more whenever a row halts, so that at most
        ``batch_size`` inputs are read ahead of the results yielded; ``inputs`` may
        be an endless generator.

        Args:
            inputs: As for :meth:`run`.
            depths: As for :meth:`run`.

        Yields:
            One :class:`~stochdepth.ScheduledResult` per input, in the order they
            halt (rows that halt at the same repeat in the order of their places).

        Raises:
            TypeError: As :meth:`run`.
            ValueError: As :meth:`run`.
        """
        source = _check_iterable("inputs", inputs)
        caps = None if depths is None else _check_iterable("depths", depths)
        if self.per_token:
            return self._token_stream(source, caps)
        return self._stream(source, caps)

    def _token_stream(
        self, source: Iterator[Any], caps: Iterator[Any] | None
    ) -> Iterator[ScheduledResult]:
        self.row_repeats = 0
        self.layer_calls = 0
        run = TokenRun(
            self._repeat,
            self.rule,
            max_depth=self.max_depth,
            batch_size=self.batch_size,
            kwargs=self.kwargs,
            by_repeat=self.by_repeat,
            count=self._count,
        )
        return run.stream(_Reader(source, None, self.max_depth), caps, ScheduledResult)

    def _count(self, row_repeats: int, layer_calls: int) -> None:
        self.row_repeats += row_repeats
        self.layer_calls += layer_calls

    def _stream(
        self, source: Iterator[Any], caps: Iterator[int] | None
    ) -> Iterator[ScheduledResult]:
        self.row_repeats = 0
        self.layer_calls = 0
        self._grouped = self.by_repeat
        reader = _Reader(source, caps, self.max_depth)
        rows = _Rows()
        free = _NONE
        while True:
            # Refill only when asked for the next result: the inputs are read lazily.
            with torch.no_grad():
                done = self._refill(rows, reader, free)
                if len(rows):
                    finished, free = self._advance(rows)
                    done += finished
            yield from done
            if not len(rows):
                return

    def _advance(self, rows: _Rows) -> tuple[list[ScheduledResult], Tensor]:
        """One repeat of every row in flight; return the halted rows' results and places."""
        previous = rows.state
        assert previous is not None
        current = self._apply(rows, previous)
        self.row_repeats += len(rows)
        rows.clock += 1
        depth = rows.depth + 1
        stop: Tensor | None = None
        if not self._runs_to_max:
            stop, rows.memory = self.rule(previous, current, depth, rows.memory)
            stop = check_stop(stop, len(rows), self.rule)
        if rows.clock >= rows.due:  # some row reaches its depth limit now
            capped = depth >= rows.cap
            stop = capped if stop is None else stop | capped
        rows.state, rows.depth = current, depth
        if stop is None:
            return [], _NONE
        # A list, not torch.nonzero: on a CPU a few dozen flags read faster in Python.
        places = [j for j, halted in enumerate(stop.tolist()) if halted]
        if not places:
            return [], _NONE
        finished = torch.tensor(places, dtype=torch.int64)
        outputs = current.index_select(0, finished.to(current.device)).unbind(0)
        index = rows.index
        done = [
            ScheduledResult(index[j], out, d)
            for j, out, d in zip(places, outputs, depth[finished].tolist(), strict=True)
        ]
        return done, finished

    def _apply(self, rows: _Rows, state: Tensor) -> Tensor:
        """Apply each row's next repeat: in one call, or one call per repeat index."""
        apply, kwargs = self._repeat, self.kwargs
        if not self._grouped:
            self.layer_calls += 1
            return apply(state, rows.args, kwargs, rows.clock - rows.admitted)
        out = torch.empty_like(state)
        for repeat in torch.unique(rows.depth).tolist():
            index = torch.nonzero(rows.depth == repeat).squeeze(1).to(state.device)
            args = tuple(arg.index_select(0, index) for arg in rows.args)
            part = apply(state.index_select(0, index), args, kwargs, int(repeat))
            out = out.index_copy(0, index, part)
            self.layer_calls += 1
        return out

    def _refill(self, rows: _Rows, reader: _Reader, free: Tensor) -> list[ScheduledResult]:
        """Put new inputs in the ``free`` places (and up to ``batch_size``); drop the rest."""
        room = int(free.numel()) + self.batch_size - len(rows)
        new, done = reader.read(room)
        if new:
            x, args = reader.stack(new, rows.state)
            fresh = _Rows(
                x,
                args,
                torch.zeros(len(new), dtype=torch.int64),
                torch.tensor([item[3] for item in new], dtype=torch.int64),
                [item[0] for item in new],
                self.rule.start(x),
            )
            rows.admitted = rows.clock
            if rows.state is None:
                _assign(rows, fresh)
            else:
                _check_like(rows, fresh)
                count = min(len(new), int(free.numel()))
                if count:
                    _put(rows, free[:count], fresh, slice(0, count))
                if count < len(new):  # beyond the free places: appended
                    _append(rows, fresh, slice(count, len(new)))
        if len(new) < free.numel():
            dropped = set(free[len(new) :].tolist())
            kept = [j for j in range(len(rows)) if j not in dropped]
            _keep(rows, torch.tensor(kept, dtype=torch.int64))
        if new or free.numel():
            rows.schedule()
        return done

    def __repr__(self) -> str:
        return (
            f"DepthScheduler(batch_size={self.batch_size}, max_depth={self.max_depth}, "
            f"halting={self.rule!r}, by_repeat={self.by_repeat}, per_token={self.per_token})"
        )


_Item = tuple[int, Tensor, tuple[Tensor, ...], int]
"""One input read from the stream: its index, its tensor, its row-aligned arguments, its cap."""


class _Reader:
    """Reads the inputs (and their depths) from the stream, a batch at a time.

    The inputs' types and shapes are checked when they are stacked into a batch: a
    mismatch fails ``torch.stack`` (or differs from the rows in flight), and only then
    are the inputs examined one by one, for an error that names the input.
    """

    def __init__(self, source: Iterator[Any], caps: Iterator[int] | None, max_depth: int) -> None:
        self.source = source
        self.caps = caps
        self.max_depth = max_depth
        self.count = 0
        self.ended = False
        self.first: _Item | None = None

    def read(self, room: int) -> tuple[list[_Item], list[ScheduledResult]]:
        """Up to ``room`` inputs to run, and the results of the depth-0 ones read on the way."""
        new: list[_Item] = []
        done: list[ScheduledResult] = []
        source, caps, top = self.source, self.caps, self.max_depth
        while len(new) < room and not self.ended:
            try:
                value = next(source)
            except StopIteration:
                self.ended = True
                if caps is not None and next(caps, None) is not None:
                    raise ValueError(
                        f"depths has more entries than the {self.count} inputs"
                    ) from None
                break
            index = self.count
            self.count += 1
            if type(value) is tuple and value:
                x, args = value[0], value[1:]
            else:
                x, args = value, ()
            cap = top
            if caps is not None:
                cap = _check_depth(next(caps, None), index, top)
            item = (index, x, args, cap)
            if self.first is None:
                _split(value, index)
                self.first = item
            if cap == 0:  # depth 0: the input itself, without a repeat
                _split(value, index)
                done.append(ScheduledResult(index, x, 0))
            else:
                new.append(item)
        return new, done

    def stack(self, new: list[_Item], state: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The new rows' inputs and arguments, stacked; an error naming a bad input."""
        try:
            x = torch.stack([item[1] for item in new])
            columns = zip(*(item[2] for item in new), strict=True)
            args = tuple(torch.stack(column) for column in columns)
        except (TypeError, ValueError, RuntimeError):
            self._diagnose(new)
            raise
        first = self.first
        assert first is not None
        like = (x.shape[1:], x.dtype, x.device) == (first[1].shape, first[1].dtype, first[1].device)
        if not like or len(args) != len(first[2]):
            self._diagnose(new)
        if any(a.shape[1:] != b.shape for a, b in zip(args, first[2], strict=True)):
            self._diagnose(new)
        return x, args

    def _diagnose(self, new: list[_Item]) -> None:
        """Raise the error that names the first input unlike the first of the stream."""
        first = self.first
        assert first is not None
        for item in new:
            index, x, args, _ = item
            _split((x, *args) if args else x, index)
            if x.shape != first[1].shape or [a.shape for a in args] != [a.shape for a in first[2]]:
                raise ValueError(
                    f"every input must have the first input's shapes ({_shapes(first)}), "
                    f"but input {index} has {_shapes(item)}"
                )
            if (x.dtype, x.device) != (first[1].dtype, first[1].device):
                raise ValueError(
                    f"every input must have the first input's dtype and device "
                    f"({first[1].dtype}, {first[1].device}), but input {index} has "
                    f"({x.dtype}, {x.device})"
                )


def _split(value: object, index: int) -> tuple[Tensor, tuple[Tensor, ...]]:
    if isinstance(value, Tensor):
        return value, ()
    if isinstance(value, tuple) and value and all(isinstance(v, Tensor) for v in value):
        return value[0], tuple(value[1:])
    raise TypeError(
        f"every input must be a tensor (one row, without the batch dimension) or a tuple "
        f"(x, *args) of tensors, but input {index} is {describe(value)}"
    )


def _check_depth(value: object, index: int, max_depth: int) -> int:
    if type(value) is int and 0 <= value <= max_depth:  # the common case, at once
        return value
    if value is None:
        raise ValueError(f"depths has fewer entries than inputs: none for input {index}")
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point():
            value = int(value)
        else:
            raise TypeError(f"depths[{index}] must be an int, got {describe(value)}")
    if not 0 <= value <= max_depth:
        raise ValueError(f"depths[{index}] must be in [0, max_depth={max_depth}], got {value}")
    return value


def _shapes(item: _Item) -> str:
    shapes = [tuple(item[1].shape), *(tuple(a.shape) for a in item[2])]
    return ", ".join(map(str, shapes))


def _check_iterable(name: str, value: object) -> Iterator[Any]:
    if isinstance(value, Tensor):
        if value.ndim == 0:
            raise TypeError(f"{name} must be an iterable, got a 0-d tensor")
        return iter(value.unbind(0))
    try:
        return iter(value)  # type: ignore[call-overload, no-any-return]
    except TypeError:
        raise TypeError(f"{name} must be an iterable, got {describe(value)}") from None


def _assign(rows: _Rows, fresh: _Rows) -> None:
    rows.state, rows.args, rows.memory = fresh.state, fresh.args, fresh.memory
    rows.depth, rows.cap, rows.index = fresh.depth, fresh.cap, fresh.index


def _check_like(rows: _Rows, fresh: _Rows) -> None:
    """New rows' memory must match the rows' memory (both tensors or both ``None``)."""
    if (rows.memory is None) != (fresh.memory is None):
        raise TypeError("a halting rule's start() must return a tensor every time or None always")


def _put(rows: _Rows, places: Tensor, fresh: _Rows, part: slice) -> None:
    """Write the ``part`` of ``fresh`` into the ``places`` (out of place)."""
    assert rows.state is not None
    assert fresh.state is not None
    where = places.to(rows.state.device)
    rows.state = rows.state.index_copy(0, where, fresh.state[part])
    rows.args = tuple(
        a.index_copy(0, where, b[part]) for a, b in zip(rows.args, fresh.args, strict=True)
    )
    if rows.memory is not None and fresh.memory is not None:
        memory_at = places.to(rows.memory.device)
        rows.memory = rows.memory.index_copy(0, memory_at, fresh.memory[part])
    rows.depth = rows.depth.index_copy(0, places, fresh.depth[part])
    rows.cap = rows.cap.index_copy(0, places, fresh.cap[part])
    for place, index in zip(places.tolist(), fresh.index[part], strict=True):
        rows.index[place] = index


def _append(rows: _Rows, fresh: _Rows, part: slice) -> None:
    assert rows.state is not None
    assert fresh.state is not None
    rows.state = torch.cat([rows.state, fresh.state[part]])
    rows.args = tuple(torch.cat([a, b[part]]) for a, b in zip(rows.args, fresh.args, strict=True))
    if rows.memory is not None and fresh.memory is not None:
        rows.memory = torch.cat([rows.memory, fresh.memory[part]])
    rows.depth = torch.cat([rows.depth, fresh.depth[part]])
    rows.cap = torch.cat([rows.cap, fresh.cap[part]])
    rows.index = rows.index + fresh.index[part]


def _keep(rows: _Rows, keep: Tensor) -> None:
    assert rows.state is not None
    where = keep.to(rows.state.device)
    rows.state = rows.state.index_select(0, where)
    rows.args = tuple(a.index_select(0, where) for a in rows.args)
    if rows.memory is not None:
        rows.memory = rows.memory.index_select(0, keep.to(rows.memory.device))
    rows.depth = rows.depth[keep]
    rows.cap = rows.cap[keep]
    rows.index = [rows.index[j] for j in keep.tolist()]
