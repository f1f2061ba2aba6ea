"""How one repeat calls the layer: extra arguments, the repeat index, and the next state.

A :class:`~stochdepth.RepeatedBlock` builds one :class:`LayerCall` per forward pass
from the arguments it was given after ``x``. Every repeat strategy applies the layer
through it, so that the extra arguments reach the layer unchanged at every repeat,
the repeat index reaches it under ``step_kwarg``, and the next state is taken from
what the layer returns (``output``) and checked against the state's shape.

Row-aligned arguments (``row_args``) have a row per row of ``x``; the per-row
strategy cuts them with the rows it runs (:meth:`LayerCall.take`,
:meth:`LayerCall.narrow`).
"""

from __future__ import annotations

import keyword
import numbers
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Set
from typing import Any

from torch import Tensor, nn

from ._validation import describe

Output = int | Callable[[Any], Tensor] | None
"""How the next state is read from the layer's return value (``output=``)."""

ShapeError = Callable[[Tensor, object, int, int], Exception]
"""Builds the error for a state of the wrong shape: ``(x, state, repeat, depth)``."""

RepeatHook = Callable[[Any, int], None]
"""Called as ``hook(block, repeat)`` right before every application of the layer."""


def run_hooks(hooks: Mapping[int, RepeatHook], owner: nn.Module, repeat: int) -> None:
    """Call every repeat hook (a copy of the list, so a hook may remove itself)."""
    for hook in tuple(hooks.values()):
        hook(owner, repeat)


class RowArgs:
    """Which extra arguments are row-aligned: positions among ``args`` and keyword names.

    The one reading of ``row_args=`` that :class:`~stochdepth.RepeatedBlock` and
    :class:`~stochdepth.LayerDropList` share, with :func:`check_row_aligned` and
    :func:`cut_row_aligned`.

    Args:
        spec: ``None``, or an int, a str, or a sequence (any iterable) of ints
            (positions among the extra positional arguments, 0 the first after the
            state) and strs (keyword names).
        reserved: The keyword the container takes itself (``depth``, ``keep``), which
            cannot name an argument of the layer.

    Raises:
        TypeError: An entry is neither an int nor a str.
        ValueError: A position is negative, a name is not an identifier, or an
            entry is repeated.
    """

    def __init__(self, spec: object, reserved: str = "depth") -> None:
        entries: Iterable[object]
        if spec is None:
            entries = ()
        elif isinstance(spec, (int, str)):
            entries = (spec,)
        elif isinstance(spec, Iterable) and not isinstance(spec, (bytes, Mapping, Set)):
            entries = spec
        else:
            raise TypeError(
                f"row_args must be an int, a str, or a sequence of them (positions among the "
                f"extra positional arguments, keyword names), got {describe(spec)}"
            )
        positions: list[int] = []
        names: list[str] = []
        for entry in entries:
            if isinstance(entry, str):
                if not entry.isidentifier() or keyword.iskeyword(entry) or entry == reserved:
                    raise ValueError(
                        f"row_args names must be keyword argument names other than "
                        f"{reserved!r}, got {entry!r}"
                    )
                names.append(entry)
            elif isinstance(entry, numbers.Integral) and not isinstance(entry, bool):
                if int(entry) < 0:
                    raise ValueError(
                        f"row_args positions must be >= 0 (0 is the first argument after "
                        f"the state), got {int(entry)}"
                    )
                positions.append(int(entry))
            else:
                raise TypeError(
                    f"row_args entries must be ints (positions) or strs (keyword names), "
                    f"got {describe(entry)}"
                )
        if len(set(positions)) != len(positions) or len(set(names)) != len(names):
            raise ValueError(f"row_args must not repeat an entry, got {spec!r}")
        self.positions: frozenset[int] = frozenset(positions)
        self.names: frozenset[str] = frozenset(names)

    def __bool__(self) -> bool:
        return bool(self.positions or self.names)

    def spec(self) -> tuple[int | str, ...]:
        """The entries, positions first, for ``repr``."""
        return (*sorted(self.positions), *sorted(self.names))

    def given(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The row-aligned arguments of one call, each with how an error names it."""
        values = [
            (f"positional argument {i}", args[i]) for i in sorted(self.positions) if i < len(args)
        ]
        values += [
            (f"keyword argument {name!r}", kwargs[name])
            for name in sorted(self.names)
            if name in kwargs
        ]
        return values


def check_row_aligned(
    rows: RowArgs,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    count: int | None,
    state: str,
    shape: tuple[int, ...] | None = None,
) -> None:
    """Refuse a row-aligned argument without a row per row of the state.

    Args:
        rows: Which arguments are row-aligned.
        args: The extra positional arguments.
        kwargs: The extra keyword arguments.
        count: The state's rows (dimension 0), or ``None`` for a 0-d state.
        state: How the message names the state (``"x"``, ``"h"``).
        shape: The state's shape, for the message, when known.

    Raises:
        ValueError: A tensor in a row-aligned argument has another number of rows.
        TypeError: A row-aligned argument holds something other than tensors (in
            tuples, lists and dicts) and ``None``.
    """
    detail = f"{state} has shape {shape}" if shape is not None else f"{state} has {count} rows"
    for name, value in rows.given(args, kwargs):
        for leaf in _leaves(value):
            if leaf is None:
                continue
            if not isinstance(leaf, Tensor):
                raise TypeError(
                    f"row_args names {name} as row-aligned, so it must hold tensors (or "
                    f"tuples, lists and dicts of them), got {describe(leaf)}"
                )
            if count is None or leaf.ndim == 0 or leaf.shape[0] != count:
                raise ValueError(
                    f"row_args names {name} as row-aligned, so every tensor in it needs a "
                    f"row per row of {state} along dimension 0 ({detail}), got a tensor of "
                    f"shape {tuple(leaf.shape)}"
                )


def cut_row_aligned(
    rows: RowArgs,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    function: Callable[[Tensor], Tensor],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The extra arguments with ``function`` applied to every tensor of the row-aligned ones.

    ``function`` picks rows (``index_select``, a slice); the other arguments are passed
    as they are.
    """
    if not rows:
        return args, kwargs
    positions, names = rows.positions, rows.names
    if positions:
        args = tuple(
            map_tensors(arg, function) if i in positions else arg for i, arg in enumerate(args)
        )
    if names and not names.isdisjoint(kwargs):
        kwargs = {
            key: map_tensors(value, function) if key in names else value
            for key, value in kwargs.items()
        }
    return args, kwargs


def map_tensors(value: Any, function: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``function`` to every tensor in a nested tuple, list or dict; keep the rest."""
    if isinstance(value, Tensor):
        return function(value)
    if isinstance(value, tuple):
        items = tuple(map_tensors(item, function) for item in value)
        return type(value)(*items) if hasattr(value, "_fields") else items
    if isinstance(value, list):
        return [map_tensors(item, function) for item in value]
    if isinstance(value, Mapping):
        return {key: map_tensors(item, function) for key, item in value.items()}
    return value


def _leaves(value: Any) -> Iterator[Any]:
    """The leaves of a nested tuple, list or dict (tensors, ``None``, anything else)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def tensor_leaves(value: Any) -> Iterator[Tensor]:
    """The tensors of a nested tuple, list or dict."""
    for leaf in _leaves(value):
        if isinstance(leaf, Tensor):
            yield leaf


class LayerCall:
    """Calls ``layer(x, *args, **kwargs)`` for one repeat and returns the next state.

    Args:
        layer: The repeated module.
        args: The extra positional arguments, passed after the state.
        kwargs: The extra keyword arguments.
        rows: Which of them are row-aligned.
        step_kwarg: The keyword under which the 0-based repeat index is passed, or
            ``None``.
        output: How the next state is read from the layer's return value.
        error: Builds the error for a state of the wrong shape.
        hooks: The owner's repeat hooks (the owner's own mapping, shared, so that a
            hook registered later is seen), called before every application.
        owner: The module passed to the hooks.
    """

    def __init__(
        self,
        layer: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        rows: RowArgs,
        step_kwarg: str | None,
        output: Output,
        error: ShapeError,
        hooks: Mapping[int, RepeatHook],
        owner: nn.Module,
    ) -> None:
        self.layer = layer
        self.args = args
        self.kwargs = kwargs
        self.rows = rows
        self.step_kwarg = step_kwarg
        self.output = output
        self.error = error
        self.hooks = hooks
        self.owner = owner

    def __call__(self, x: Tensor, repeat: int, depth: int) -> Tensor:
        """Apply repeat ``repeat`` (0-based, of ``depth``) to the state ``x``."""
        if self.hooks:
            run_hooks(self.hooks, self.owner, repeat)
        kwargs = self.kwargs
        if self.step_kwarg is not None:
            kwargs = {**kwargs, self.step_kwarg: repeat}
        try:
            out = self.layer(x, *self.args, **kwargs)
        except TypeError as error:
            if self.args and isinstance(self.args[0], int) and hasattr(error, "add_note"):
                error.add_note(
                    f"RepeatedBlock passed {self.args[0]!r} to the layer as an extra "
                    f"argument: depth is keyword-only, block(x, depth={self.args[0]!r})"
                )
            raise
        output = self.output
        if output is None:
            state = out
        else:
            where = f" at repeat {repeat + 1} of {depth}"
            state = read_state(out, output, type(self.layer).__name__, where)
        if not isinstance(state, Tensor) or state.shape != x.shape:
            raise self.error(x, state, repeat, depth)
        return state

    def check_rows(self, x: Tensor) -> None:
        """Refuse a row-aligned argument without a row per row of ``x``."""
        if self.rows:
            count = x.shape[0] if x.ndim else None
            check_row_aligned(self.rows, self.args, self.kwargs, count, "x", tuple(x.shape))

    def _with_rows(self, function: Callable[[Tensor], Tensor]) -> LayerCall:
        if not self.rows:
            return self
        return self.with_arguments(*cut_row_aligned(self.rows, self.args, self.kwargs, function))

    def with_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LayerCall:
        """This call with other extra arguments (everything else the same)."""
        return LayerCall(
            self.layer,
            args,
            kwargs,
            self.rows,
            self.step_kwarg,
            self.output,
            self.error,
            self.hooks,
            self.owner,
        )

    def take(self, index: Tensor) -> LayerCall:
        """This call with the row-aligned arguments' rows picked by ``index``."""
        return self._with_rows(lambda tensor: tensor.index_select(0, index.to(tensor.device)))

    def narrow(self, start: int, stop: int) -> LayerCall:
        """This call with the row-aligned arguments cut to rows ``start..stop-1``."""
        return self._with_rows(lambda tensor: tensor[start:stop])


class PlainCall(LayerCall):
    """The layer call without extra arguments: ``layer(x)``, the default path.

    A block keeps one and reuses it on every call that passes no extra arguments, so
    the default path builds nothing per forward pass.
    """

    def __init__(
        self,
        layer: nn.Module,
        error: ShapeError,
        hooks: Mapping[int, RepeatHook],
        owner: nn.Module,
    ) -> None:
        super().__init__(layer, (), {}, RowArgs(None), None, None, error, hooks, owner)

    def __call__(self, x: Tensor, repeat: int, depth: int) -> Tensor:
        """Apply repeat ``repeat`` (0-based, of ``depth``) to the state ``x``."""
        if self.hooks:
            run_hooks(self.hooks, self.owner, repeat)
        out = self.layer(x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            raise self.error(x, out, repeat, depth)
        return out

    def take(self, index: Tensor) -> LayerCall:
        """This call: it has no row-aligned arguments."""
        return self

    def narrow(self, start: int, stop: int) -> LayerCall:
        """This call: it has no row-aligned arguments."""
        return self


def read_state(out: object, output: Output, layer: str, where: str = "") -> object:
    """The next state, read from a layer's return value ``out`` as ``output=`` says.

    The one reading of ``output=`` that :class:`~stochdepth.RepeatedBlock` and
    :class:`~stochdepth.LayerDropList` share; the caller checks the state's shape.

    Args:
        out: What the layer returned.
        output: ``None`` (``out`` itself), an int (that element of a tuple or list), or
            a callable mapping ``out`` to the state.
        layer: The layer, as the error message names it.
        where: Appended to the error message (the repeat, say).

    Raises:
        TypeError: ``output`` is an int and ``out`` is not a tuple or list with that
            element.
    """
    if output is None:
        return out
    if isinstance(output, int):
        if not isinstance(out, (tuple, list)) or not -len(out) <= output < len(out):
            raise TypeError(
                f"output={output} takes element {output} of a tuple or list that {layer} "
                f"returns, but it returned {summarize(out)}{where}"
            )
        return out[output]
    return output(out)


def shape_error(
    container: str, expected: str, layer: str, x: Tensor, state: object, where: str, output: Output
) -> Exception:
    """The error for a next state that is not a tensor of the input's shape.

    The one wording that :class:`~stochdepth.RepeatedBlock` and
    :class:`~stochdepth.LayerDropList` share.

    Args:
        container: The class the layer belongs to, as a hint names it.
        expected: What the layer must return (``"RepeatedBlock's layer must return a
            tensor of its input's shape"``).
        layer: How the message names the layer (``"Linear"``, ``"layer 1 (Linear)"``).
        x: The input of the call.
        state: The next state the call gave (after ``output``).
        where: Appended to the message (``" at repeat 1 of 2"``, or ``""``).
        output: The container's ``output=`` option.

    Returns:
        A ``TypeError`` for a state that is not a tensor, else a ``ValueError``.
    """
    if output is not None:
        expected = f"the state that output={output!r} reads must be a tensor of the input's shape"
        if not isinstance(state, Tensor):
            return TypeError(
                f"{expected}, but it read {summarize(state)} from what {layer} returned{where}"
            )
        return ValueError(
            f"{expected}, but from {layer}'s return value it read, for an input of shape "
            f"{tuple(x.shape)}, a tensor of shape {tuple(state.shape)}{where}"
        )
    if not isinstance(state, Tensor):
        hint = ""
        if isinstance(state, (tuple, list)):
            hint = (
                f"; pass output=0 (or the state's index) to {container} to take the state from it"
            )
        return TypeError(f"{expected}, but {layer} returned {summarize(state)}{where}{hint}")
    return ValueError(
        f"{expected}, but {layer} turned an input of shape {tuple(x.shape)} into "
        f"{tuple(state.shape)}{where}"
    )


def summarize(value: object) -> str:
    """A short description of what a layer returned, for error messages.

    Tensors and tuples of them are described by type and shape, never printed: a
    tuple of activations would make an error message thousands of characters long.
    """
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(summarize(item) for item in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"a {type(value).__name__} of length {len(value)} ({items}{more})"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} of type {type(value).__name__}"


def check_output(value: object) -> Output:
    """Return ``value`` as an ``output=`` option, or raise an error naming ``output``."""
    if value is None or callable(value):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(
        f"output must be None, an int (the index of the next state in a tuple the layer "
        f"returns) or a callable (mapping the layer's return value to the next state), "
        f"got {describe(value)}"
    )


def check_step_kwarg(value: object) -> str | None:
    """Return ``value`` as a ``step_kwarg=`` option, or raise an error naming it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"step_kwarg must be a keyword name (a str) or None, got {describe(value)}")
    if not value.isidentifier() or keyword.iskeyword(value) or value == "depth":
        raise ValueError(f"step_kwarg must be a keyword name other than 'depth', got {value!r}")
    return value


def check_kwargs(kwargs: Collection[str], step_kwarg: str | None) -> None:
    """Refuse a keyword argument that the block passes itself (``step_kwarg``)."""
    if step_kwarg is not None and step_kwarg in kwargs:
        raise TypeError(
            f"{step_kwarg!r} is passed to the layer by the block (step_kwarg={step_kwarg!r}, "
            f"the repeat index); do not pass it to the block"
        )
