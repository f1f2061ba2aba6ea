"""`DeepSupervision`: a carried state per row across optimizer steps, refilled as rows halt."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stochdepth._validation import check_int, describe

from ._act import ACTHalting

Data = Callable[[int, torch.Generator], Any]
"""``data(count, generator)``: ``count`` fresh training rows, a tensor or a tuple of them."""

Init = Callable[..., Tensor]
"""``init(*data)``: the first state of fresh rows, from their data."""

_KEYS = ("data", "state", "steps", "halted", "generator", "step", "drawn")


@dataclass(frozen=True)
class SupervisionRows:
    """The rows of one supervision step, from :meth:`DeepSupervision.begin`.

    Args:
        data: The rows' training data, as ``data(count, generator)`` gave it (inputs,
            targets, ...), a tuple of tensors with a row per row.
        state: The carried state: where each row's last supervision step left it
            (detached), or ``init(*data)`` for a fresh row.
        steps: The supervision steps each row has had before this one (CPU int64).
        fresh: Which rows are new this step (CPU bool).
    """

    data: tuple[Tensor, ...]
    state: Tensor
    steps: Tensor
    fresh: Tensor


class DeepSupervision:
    """Deep supervision with a carried state, as HRM and Tiny Recursive Models train.

    Every optimizer step is one supervision step of a batch of ``batch_size`` rows:
    :meth:`begin` gives each row's carried state, the model runs a few repeats from it
    (a :class:`~stochdepth.RepeatedBlock` with ``FixedDepth(k)`` or a random depth and
    ``grad_depth=g`` gives the truncated backprop), the loss is applied to this step's
    output, and :meth:`end` keeps the new state, detached, for the next step. Rows that
    halted (their :class:`~stochdepth.ACTHalting` logit says their answer is right, with
    exploration) or had ``max_steps`` steps are replaced at the next :meth:`begin` by
    fresh training rows, as TRM's ``reset_carry`` does.

    Unlike TRM's checkpoints ("FIXME: Only saved model"), :meth:`state_dict` holds the
    whole carry: the rows' data and states, their step counts and halts, the generator
    that draws the data and the exploration, and the counters. Saved with the model's
    and the optimizer's ``state_dict`` between :meth:`end` and :meth:`begin`, a run
    killed and resumed from it continues exactly as if it had not stopped.

    Args:
        data: ``data(count, generator)`` returns ``count`` fresh training rows (a
            tensor, or a tuple of tensors with ``count`` rows each), drawing every
            random number from ``generator`` (a CPU ``torch.Generator``), so that the
            draws are saved and resumed with the carry.
        init: ``init(*data)`` returns the first state of fresh rows (TRM: a learned
            or fixed initial state, broadcast).
        batch_size: The rows per supervision step, an int >= 1.
        max_steps: The most supervision steps of a row, an int >= 1; with a
            ``halting`` head its ``max_steps`` by default.
        halting: The learned halt, or ``None`` to replace rows after ``max_steps``
            steps only.
        seed: Seeds the generator.

    Attributes:
        step: The supervision steps done (calls of :meth:`end`).
        drawn: The fresh rows drawn so far.
        generator: The CPU generator of the data draws and the exploration.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range, or ``max_steps`` is missing.

    Example:
        >>> import torch
        >>> from stochdepth import DeepSupervision
        >>> sup = DeepSupervision(lambda n, g: torch.randn(n, 3, generator=g),
        ...                       lambda x: torch.zeros_like(x), batch_size=4, max_steps=2)
        >>> rows = sup.begin()
        >>> rows.fresh.tolist(), rows.steps.tolist()
        ([True, True, True, True], [0, 0, 0, 0])
        >>> sup.end(rows.state + rows.data[0]).tolist()  # one step each: not halted
        [False, False, False, False]
        >>> rows = sup.begin(); sup.end(rows.state + rows.data[0]).tolist()
        [True, True, True, True]
        >>> sup.begin().fresh.tolist()  # all four replaced
        [True, True, True, True]
    """

    def __init__(
        self,
        data: Data,
        init: Init,
        *,
        batch_size: int,
        max_steps: int | None = None,
        halting: ACTHalting | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("data", data), ("init", init)):
            if not callable(value):
                raise TypeError(f"{name} must be a callable, got {describe(value)}")
        if halting is not None and not isinstance(halting, ACTHalting):
            raise TypeError(f"halting must be an ACTHalting or None, got {describe(halting)}")
        if max_steps is None:
            if halting is None:
                raise ValueError("max_steps must be given without a halting head")
            max_steps = halting.max_steps
        self.data = data
        self.init = init
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.max_steps = check_int("max_steps", max_steps, minimum=1)
        self.halting = halting
        self.generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=None))
        self.step = 0
        self.drawn = 0
        self._data: tuple[Tensor, ...] = ()
        self._state: Tensor | None = None
        self._steps = torch.zeros(self.batch_size, dtype=torch.int64)
        self._halted = torch.ones(self.batch_size, dtype=torch.bool)  # all fresh at first
        self._open = False

    def begin(self) -> SupervisionRows:
        """Replace the halted rows with fresh ones; return this step's rows.

        Returns:
            The rows: their data, their carried states, their step counts.

        Raises:
            RuntimeError: The last :meth:`begin` was not followed by :meth:`end`.
            TypeError: ``data`` or ``init`` returned something other than tensors.
            ValueError: They returned the wrong number of rows or other shapes.
        """
        if self._open:
            raise RuntimeError("DeepSupervision.begin() was called twice: call end() first")
        fresh = self._halted.clone()
        count = int(fresh.sum())
        if count:
            data = self._draw(count)
            state = self.init(*data)
            if not isinstance(state, Tensor) or state.ndim == 0 or state.shape[0] != count:
                raise ValueError(
                    f"init must return a tensor with a row per fresh row ({count}), got "
                    f"{describe(state) if not isinstance(state, Tensor) else tuple(state.shape)}"
                )
            state = state.detach()
            if self._state is None:
                self._data, self._state = data, state
            else:
                where = torch.nonzero(fresh).squeeze(1)
                self._data = tuple(
                    old.index_copy(0, where.to(old.device), new.to(old.device))
                    for old, new in zip(self._data, data, strict=True)
                )
                self._state = self._state.index_copy(
                    0, where.to(self._state.device), state.to(self._state.device)
                )
            self._steps = torch.where(fresh, 0, self._steps)
        self._open = True
        assert self._state is not None
        return SupervisionRows(self._data, self._state, self._steps.clone(), fresh)

    def _draw(self, count: int) -> tuple[Tensor, ...]:
        drawn = self.data(count, self.generator)
        data = (drawn,) if isinstance(drawn, Tensor) else drawn
        if not isinstance(data, tuple) or not all(isinstance(t, Tensor) for t in data):
            raise TypeError(
                f"data must return a tensor or a tuple of tensors, got {describe(drawn)}"
            )
        if any(t.ndim == 0 or t.shape[0] != count for t in data):
            raise ValueError(
                f"data({count}, generator) must return {count} rows in every tensor, got "
                f"shapes {[tuple(t.shape) for t in data]}"
            )
        if self._data and [t.shape[1:] for t in data] != [t.shape[1:] for t in self._data]:
            raise ValueError(
                f"data must return rows of the same shapes every time: "
                f"{[tuple(t.shape[1:]) for t in self._data]} before, "
                f"{[tuple(t.shape[1:]) for t in data]} now"
            )
        self.drawn += count
        return data

    def end(self, state: Tensor, halt_logits: Tensor | None = None) -> Tensor:
        """Keep this step's state (detached) as the carry; say which rows halt.

        Args:
            state: The rows' state after this step's repeats, of the carry's shape.
            halt_logits: The rows' halt logits from ``halting`` (needed with a
                halting head, refused without one).

        Returns:
            A CPU bool tensor: the rows that halt, to be replaced at the next
            :meth:`begin` (TRM's ``halted``: report metrics on them).

        Raises:
            RuntimeError: :meth:`begin` was not called first.
            TypeError: ``state`` is not a tensor, or ``halt_logits`` is missing or
                unexpected.
            ValueError: ``state`` has another shape than the carry.
        """
        if not self._open:
            raise RuntimeError("DeepSupervision.end() needs begin() first")
        carry = self._state
        assert carry is not None
        if not isinstance(state, Tensor) or state.shape != carry.shape:
            shown = tuple(state.shape) if isinstance(state, Tensor) else describe(state)
            raise ValueError(f"state must have the carry's shape {tuple(carry.shape)}, got {shown}")
        steps = self._steps + 1
        if self.halting is None:
            if halt_logits is not None:
                raise TypeError("halt_logits was given, but this DeepSupervision has no halting")
            halted = steps >= self.max_steps
        else:
            if halt_logits is None:
                raise TypeError("halt_logits is needed: this DeepSupervision has a halting head")
            halted = self.halting.halted(halt_logits.cpu(), steps, self.generator)
            halted = halted | (steps >= self.max_steps)
        self._state = state.detach()
        self._steps = steps
        self._halted = halted.cpu()
        self._open = False
        self.step += 1
        return self._halted.clone()

    def state_dict(self) -> dict[str, Any]:
        """The carry, for an exact resume: call it between :meth:`end` and :meth:`begin`.

        Returns:
            Tensors and ints only (``torch.load(weights_only=True)`` reads them):
                ``data``, ``state``, ``steps``, ``halted``, ``generator`` (its state),
                ``step`` and ``drawn``.

        Raises:
            RuntimeError: A step is open (:meth:`begin` without :meth:`end`).
        """
        if self._open:
            raise RuntimeError("DeepSupervision.state_dict() inside a step: call end() first")
        return {
            "data": list(self._data),
            "state": self._state,
            "steps": self._steps.clone(),
            "halted": self._halted.clone(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "drawn": self.drawn,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the carry saved by :meth:`state_dict`.

        Args:
            state: What :meth:`state_dict` returned.

        Raises:
            TypeError: ``state`` is not such a mapping.
            ValueError: It lacks an entry, or holds another batch size.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {describe(state)}")
        missing = [key for key in _KEYS if key not in state]
        if missing:
            raise ValueError(f"the DeepSupervision state lacks {', '.join(map(repr, missing))}")
        steps, halted = state["steps"], state["halted"]
        for name, value in (("steps", steps), ("halted", halted)):
            if not isinstance(value, Tensor) or tuple(value.shape) != (self.batch_size,):
                raise ValueError(
                    f"the DeepSupervision state's {name} must have shape ({self.batch_size},) "
                    f"(batch_size), got {describe(value)}"
                )
        self._data = tuple(state["data"])
        self._state = state["state"]
        self._steps = steps.to(torch.int64).clone()
        self._halted = halted.to(torch.bool).clone()
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.drawn = int(state["drawn"])
        self._open = False

    def __repr__(self) -> str:
        return (
            f"DeepSupervision(batch_size={self.batch_size}, max_steps={self.max_steps}, "
            f"halting={'ACTHalting' if self.halting is not None else None}, step={self.step})"
        )
