"""Per-token scheduling: every position of a row stops on its own; the row leaves when all have.

With ``DepthScheduler(..., per_token=True)`` (the default for a block with
``per_token=True``) each input is a ``(seq, ...)`` row whose positions halt one by one,
with the semantics of :class:`~stochdepth.RepeatedBlock`'s ``per_token=True``: a stopped
position's state is frozen, while the layer keeps seeing every position of the row (the
hand loop ``h = torch.where(going, layer(h), h)``). A row is finished, and its place
refilled, when all its positions have stopped or reached their depth limit; it counts one
row-repeat per layer application, so its count is its deepest position's depth.

The halting rule is asked about positions, not rows: it sees the states flattened to
``(rows * seq, ...)``, a depth per position (the row's repeats so far), and a memory per
position, so that every :class:`~stochdepth.HaltingRule` (an
:class:`~stochdepth.ExitWhenConverged` policy, a learned head) is a per-token rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stochdepth._validation import describe

from ._rules import HaltingRule, RunToMax, check_stop
from ._step import Repeat

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass
class _TokenRows:
    """The rows in flight, each ``(seq, ...)``, with a depth per position.

    ``going`` (CPU bool, ``(rows, seq)``) marks the positions still updated; ``depths``
    how many repeats each position had; ``cap`` each position's depth limit;
    ``repeats`` (``(rows,)``) how many layer applications each row had; ``memory`` the
    rule's memory, a row per position, shaped ``(rows, seq, ...)``.
    """

    state: Tensor
    args: tuple[Tensor, ...]
    going: Tensor
    depths: Tensor
    cap: Tensor
    repeats: Tensor
    index: list[int]
    memory: Tensor | None

    def __len__(self) -> int:
        return len(self.index)

    def keep(self, keep: Tensor) -> _TokenRows:
        """The rows ``keep`` (a CPU int64 index)."""
        where = keep.to(self.state.device)
        memory = self.memory
        if memory is not None:
            memory = memory.index_select(0, keep.to(memory.device))
        return _TokenRows(
            self.state.index_select(0, where),
            tuple(a.index_select(0, where) for a in self.args),
            self.going[keep],
            self.depths[keep],
            self.cap[keep],
            self.repeats[keep],
            [self.index[j] for j in keep.tolist()],
            memory,
        )

    def extend(self, other: _TokenRows) -> _TokenRows:
        """These rows followed by ``other``'s."""
        if (self.memory is None) != (other.memory is None):
            raise TypeError(
                "a halting rule's start() must return a tensor every time or None always"
            )
        memory = None
        if self.memory is not None and other.memory is not None:
            memory = torch.cat([self.memory, other.memory])
        return _TokenRows(
            torch.cat([self.state, other.state]),
            tuple(torch.cat([a, b]) for a, b in zip(self.args, other.args, strict=True)),
            torch.cat([self.going, other.going]),
            torch.cat([self.depths, other.depths]),
            torch.cat([self.cap, other.cap]),
            torch.cat([self.repeats, other.repeats]),
            self.index + other.index,
            memory,
        )


Count = Callable[[int, int], None]
"""``count(row_repeats, layer_calls)``: adds a step's work to the scheduler's counts."""


class TokenRun:
    """One per-token run of a scheduler: reads inputs, applies repeats, yields results.

    Args:
        repeat: One repeat of the block (:func:`~stochdepth.scheduling._step.repeat_of`).
        rule: The halting rule, asked about positions.
        max_depth: The most repeats of any position.
        batch_size: How many rows are in flight.
        kwargs: Keyword arguments for the layer at every repeat.
        by_repeat: One layer call per repeat index.
        count: Adds each step's work to the scheduler's counts.
    """

    def __init__(
        self,
        repeat: Repeat,
        rule: HaltingRule,
        *,
        max_depth: int,
        batch_size: int,
        kwargs: dict[str, Any],
        by_repeat: bool,
        count: Count,
    ) -> None:
        self.repeat = repeat
        self.rule = rule
        self.max_depth = max_depth
        self.batch_size = batch_size
        self.kwargs = kwargs
        self.by_repeat = by_repeat
        self.count = count
        self.runs_to_max = isinstance(rule, RunToMax)
        self.seq: int | None = None

    def stream(self, reader: Any, caps: Iterator[Any] | None, result: Any) -> Iterator[Any]:
        """Yield ``result(index, output, depth, depths)`` for each input as it finishes.

        Args:
            reader: The scheduler's input reader (``read(room)``, ``stack(new, state)``,
                ``ended``, ``count``), built without depths.
            caps: The inputs' own depths (ints or ``(seq,)`` integer tensors), or ``None``.
            result: Builds a result from its index, output, depth and ``(seq,)`` depths.
        """
        rows: _TokenRows | None = None
        while True:
            done: list[Any] = []
            with torch.no_grad():
                room = self.batch_size - (0 if rows is None else len(rows))
                if room > 0 and not reader.ended:
                    rows = self._admit(rows, reader, caps, room, result, done)
                if rows is not None and len(rows):
                    rows, finished = self._advance(rows, result)
                    done += finished
            yield from done
            if (rows is None or not len(rows)) and reader.ended:
                return

    def _admit(
        self,
        rows: _TokenRows | None,
        reader: Any,
        caps: Iterator[Any] | None,
        room: int,
        result: Any,
        done: list[Any],
    ) -> _TokenRows | None:
        """Read up to ``room`` inputs; add the ones with a repeat to run to ``rows``."""
        new, _ = reader.read(room)
        kept, limits = [], []
        for item in new:
            index, x = item[0], item[1]
            seq = self._check_length(x, item[2], index)
            cap = self._cap(None if caps is None else next(caps, None), index, seq, caps)
            if not bool((cap > 0).any()):  # no position has a repeat: the input itself
                done.append(result(index, x, 0, cap))
            else:
                kept.append(item)
                limits.append(cap)
        if reader.ended and caps is not None and next(caps, None) is not None:
            raise ValueError(f"depths has more entries than the {reader.count} inputs")
        if not kept:
            return rows
        x, args = reader.stack(kept, None if rows is None else rows.state)
        count, seq = x.shape[0], x.shape[1]
        cap = torch.stack(limits)
        memory = self.rule.start(x.flatten(0, 1))
        if memory is not None:
            if not isinstance(memory, Tensor) or memory.shape[0] != count * seq:
                raise TypeError(
                    f"the halting rule {self.rule!r} must start a memory with a row per "
                    f"position ({count * seq}), got {describe(memory)}"
                )
            memory = memory.view(count, seq, *memory.shape[1:])
        fresh = _TokenRows(
            x,
            args,
            cap > 0,
            torch.zeros(count, seq, dtype=torch.int64),
            cap,
            torch.zeros(count, dtype=torch.int64),
            [item[0] for item in kept],
            memory,
        )
        return fresh if rows is None else rows.extend(fresh)

    def _check_length(self, x: object, args: tuple[object, ...], index: int) -> int:
        """The input's sequence length; an error for a non-tensor or another length."""
        if not isinstance(x, Tensor) or not all(isinstance(a, Tensor) for a in args):
            shown = describe(x) if not isinstance(x, Tensor) else "a tuple holding a non-tensor"
            raise TypeError(
                f"every input must be a tensor (one row, without the batch dimension) or a "
                f"tuple (x, *args) of tensors, but input {index} is {shown}"
            )
        if x.ndim < 1:
            raise ValueError(
                f"with per_token=True every input must be a (seq, ...) row, but input "
                f"{index} has shape {tuple(x.shape)}"
            )
        seq = int(x.shape[0])
        if self.seq is None:
            self.seq = seq
        elif seq != self.seq:
            raise ValueError(
                f"inputs must all have the first input's sequence length {self.seq} with "
                f"per_token=True (rows are not padded: run each length in a run of its "
                f"own), but input {index} has length {seq} (shape {tuple(x.shape)})"
            )
        return seq

    def _cap(self, value: object, index: int, seq: int, caps: Iterator[Any] | None) -> Tensor:
        """An input's depth limit per position, ``(seq,)`` int64 on the CPU."""
        top = self.max_depth
        if caps is None:
            return torch.full((seq,), top, dtype=torch.int64)
        if value is None:
            raise ValueError(f"depths has fewer entries than inputs: none for input {index}")
        if isinstance(value, Tensor) and value.ndim == 1:
            if value.dtype not in _INTEGER_DTYPES or tuple(value.shape) != (seq,):
                raise TypeError(
                    f"depths[{index}] must be an int or an integer tensor of shape ({seq},), "
                    f"a depth per position, got a tensor of dtype {value.dtype} and shape "
                    f"{tuple(value.shape)}"
                )
            cap = value.to(device="cpu", dtype=torch.int64)
            if seq:
                low, high = (int(v) for v in torch.aminmax(cap))
                if low < 0 or high > top:
                    raise ValueError(
                        f"depths[{index}] must hold depths in [0, max_depth={top}], got "
                        f"values from {low} to {high}"
                    )
            return cap
        if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"depths[{index}] must be an int or an integer tensor of shape ({seq},), got "
                f"{describe(value)}"
            )
        if not 0 <= value <= top:
            raise ValueError(f"depths[{index}] must be in [0, max_depth={top}], got {value}")
        return torch.full((seq,), value, dtype=torch.int64)

    def _advance(self, rows: _TokenRows, result: Any) -> tuple[_TokenRows, list[Any]]:
        """One repeat of every row; the going positions take it, the others stay frozen."""
        previous = rows.state
        current = self._apply(rows, previous)
        count, seq = rows.going.shape
        going = rows.going
        shape = (count, seq, *([1] * (previous.ndim - 2)))
        current = torch.where(going.to(current.device).view(shape), current, previous)
        repeats = rows.repeats + 1
        depths = torch.where(going, repeats.unsqueeze(1).expand(count, seq), rows.depths)
        halted = depths >= rows.cap
        if not self.runs_to_max:
            memory = None if rows.memory is None else rows.memory.flatten(0, 1)
            answer, memory = self.rule(
                previous.flatten(0, 1),
                current.flatten(0, 1),
                repeats.repeat_interleave(seq),
                memory,
            )
            answer = check_stop(answer, count * seq, self.rule).view(count, seq)
            rows.memory = None if memory is None else memory.view(count, seq, *memory.shape[1:])
            halted = halted | answer
        going = going & ~halted
        rows.state, rows.going, rows.depths, rows.repeats = current, going, depths, repeats
        finished = ~going.any(dim=1)
        places = [j for j, stop in enumerate(finished.tolist()) if stop]
        if not places:
            return rows, []
        done = [
            result(rows.index[j], current[j], int(repeats[j]), depths[j].clone()) for j in places
        ]
        kept = torch.nonzero(~finished).squeeze(1)
        return rows.keep(kept), done

    def _apply(self, rows: _TokenRows, state: Tensor) -> Tensor:
        """Each row's next repeat: in one call, or one call per repeat index."""
        apply, kwargs = self.repeat, self.kwargs
        repeats = rows.repeats
        if not self.by_repeat:
            first = int(repeats[0])
            self.count(len(rows), 1)
            return apply(state, rows.args, kwargs, first)
        out = torch.empty_like(state)
        calls = 0
        for repeat in torch.unique(repeats).tolist():
            index = torch.nonzero(repeats == repeat).squeeze(1).to(state.device)
            args = tuple(arg.index_select(0, index) for arg in rows.args)
            part = apply(state.index_select(0, index), args, kwargs, int(repeat))
            out = out.index_copy(0, index, part)
            calls += 1
        self.count(len(rows), calls)
        return out
