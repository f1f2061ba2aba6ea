"""`LayerDropList`'s options: the settable properties, their checks, telemetry and state.

:class:`ListOptions` is the private base of :class:`~stochdepth.LayerDropList`: every
constructor option reads back as a property and, but for ``seed``, can be assigned with
the constructor's checks; the counts of :attr:`~ListOptions.layer_runs`; and the state
saved in ``state_dict`` (the generator's and the telemetry's) and in pickles. The list
itself is in ``_list.py``.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from stochdepth._extra_state import encode_state, read_extra_state
from stochdepth._layer_call import Output, RowArgs, check_output
from stochdepth._row_draws import RowDraws, check_row_draws
from stochdepth._validation import check_bool, check_int, check_probability, describe
from stochdepth.samplers._generator import (
    check_seed,
    generator_from_bytes,
    generator_to_bytes,
    restore_generator,
)

from ._registry import get_drop_rule
from ._rules import DropRule, check_rule

Mode = Literal["skip", "masked"]
"""How a list applies a dropped layer: not at all (``"skip"``), or run and masked out."""

LegacyMode = Literal["batch", "row"]
"""The spellings of ``mode`` before 0.2, deprecated: ``per_sample`` says it now."""

Scale = Literal["train", "eval"]
"""Where a residual branch's ``1 - p`` factor goes: training (timm) or evaluation (the paper)."""


_MODES = ("skip", "masked")
_LEGACY_MODES = ("batch", "row")
# The options whose assignment goes to their property, even for a value that is a Module
_OPTIONS = frozenset(
    {
        "mode",
        "per_sample",
        "residual",
        "scale",
        "rule",
        "row_args",
        "output",
        "seed",
        "row_draws",
        "drop_rate",
        "drop_rates",
        "eval_layers",
    }
)
_SCALES = ("train", "eval")


class ListOptions(nn.Module):
    """The options of a :class:`~stochdepth.LayerDropList`, as settable properties.

    With the telemetry (``layer_runs``) and the saved state (the generator's and the
    telemetry's). The list's constructor sets the attributes below.
    """

    last_keep: Tensor | None
    _mode: Mode
    _per_sample: bool
    _masked: bool
    _residual: bool
    _scale: Scale
    _drop_rates: tuple[float, ...]
    _rates_tensor: Tensor
    _eval_layers: tuple[int, ...] | None
    _rule: DropRule
    _rows: RowArgs
    _output: Output
    _row_draws: RowDraws
    _generator: torch.Generator
    _seed: int
    _runs: Tensor
    _draws: int

    def __len__(self) -> int:
        return len(self._modules)

    # ----------------------------------------------------------------- options

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OPTIONS:  # the property's setter, even for a value that is a Module
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def mode(self) -> Mode:
        """``"skip"`` or ``"masked"``; settable (the deprecated spellings are not)."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        self._mode = cast(Mode, _check_choice("mode", value, _MODES))
        self._masked = self._mode == "masked"

    @property
    def per_sample(self) -> bool:
        """Whether every row draws its own keep mask; settable (``False`` refuses ``row_args``)."""
        return self._per_sample

    @per_sample.setter
    def per_sample(self, value: bool) -> None:
        per_sample = check_bool("per_sample", value)
        self._set_row_args(self._rows.spec(), per_sample)
        self._per_sample = per_sample

    @property
    def row_draws(self) -> RowDraws:
        """Whose rows a per-row draw covers in a process group: ``"global"`` or ``"local"``."""
        return self._row_draws

    @row_draws.setter
    def row_draws(self, value: RowDraws) -> None:
        self._row_draws = check_row_draws(value)

    @property
    def residual(self) -> bool:
        """Whether each layer is a residual branch; settable (``scale="eval"`` needs it)."""
        return self._residual

    @residual.setter
    def residual(self, value: bool) -> None:
        residual = check_bool("residual", value)
        check_scale(self._scale, residual)
        self._residual = residual

    @property
    def scale(self) -> Scale:
        """Where a residual branch's ``1 - p`` factor goes: ``"train"`` or ``"eval"``; settable."""
        return self._scale

    @scale.setter
    def scale(self, value: Scale) -> None:
        self._scale = check_scale(value, self._residual)

    @property
    def masked(self) -> bool:
        """Deprecated (``FutureWarning``): ``mode == "masked"``."""
        warnings.warn(
            "LayerDropList.masked is deprecated and goes in the next release: read "
            "mode == 'masked' instead",
            FutureWarning,
            stacklevel=2,
        )
        return self._masked

    @property
    def rule(self) -> DropRule:
        """The drop rule the list draws with; settable (a name or a ``DropRule``)."""
        return self._rule

    @rule.setter
    def rule(self, value: str | DropRule) -> None:
        self._rule = get_rule(value)

    @property
    def row_args(self) -> tuple[int | str, ...]:
        """The extra arguments cut to the kept rows with ``per_sample=True``; settable."""
        return self._rows.spec()

    @row_args.setter
    def row_args(self, value: Iterable[int | str]) -> None:
        self._set_row_args(value, self._per_sample)

    def _set_row_args(self, value: object, per_sample: bool) -> None:
        rows = RowArgs(value, reserved="keep")
        row_args = rows.spec()
        if row_args and not per_sample:
            raise ValueError(
                f"row_args names arguments cut to the kept rows, which only "
                f"per_sample=True does; got row_args={row_args!r} with per_sample=False"
            )
        self._rows = rows

    @property
    def output(self) -> Output:
        """How the next hidden state is read from a layer's return value; settable."""
        return self._output

    @output.setter
    def output(self, value: Output) -> None:
        self._output = check_output(value)

    @property
    def seed(self) -> int:
        """The seed the generator started from (restored by ``load_state_dict``).

        Not assignable (an ``AttributeError``): to restart the draws, call
        ``stack.generator.manual_seed(seed)`` or build a new list.
        """
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        raise AttributeError(
            f"LayerDropList.seed is the seed the generator started from, not a setting; got "
            f"an assignment of {value!r}: call stack.generator.manual_seed(seed) to restart "
            f"the draws, or build a new LayerDropList(..., seed=...)"
        )

    @property
    def generator(self) -> torch.Generator:
        """The CPU ``torch.Generator`` the list draws from."""
        return self._generator

    @property
    def drop_rate(self) -> tuple[float, ...]:
        """The constructor's ``drop_rate``: each layer's rate, as :attr:`drop_rates`; settable."""
        return self._drop_rates

    @drop_rate.setter
    def drop_rate(self, value: float | Sequence[float]) -> None:
        self.drop_rates = value

    @property
    def drop_rates(self) -> tuple[float, ...]:
        """Each layer's drop rate; settable (one float or one per layer), as ``drop_rate``."""
        return self._drop_rates

    @drop_rates.setter
    def drop_rates(self, value: float | Sequence[float]) -> None:
        self._set_rates(value)

    def _set_rates(self, value: object) -> None:
        self._drop_rates = check_rates(value, len(self))
        self._rates_tensor = torch.tensor(self._drop_rates, dtype=torch.float64, device="cpu")

    @property
    def eval_layers(self) -> tuple[int, ...] | None:
        """The layers evaluation runs, in order, or ``None`` for all; settable."""
        return self._eval_layers

    @eval_layers.setter
    def eval_layers(self, value: Iterable[int] | None) -> None:
        self._eval_layers = check_eval_layers(value, len(self))

    # ----------------------------------------------------------------- telemetry

    @property
    def layer_runs(self) -> list[int]:
        """How many times each layer ran in training: forward passes, or rows in row mode.

        With ``masked=True``, how many times each layer's result was kept. Counted for
        every training-mode forward pass in eager mode and for the draws the list makes
        itself under ``torch.compile`` (a ``keep=`` mask given to a compiled list is not
        counted). Saved in the ``state_dict``. With ``row_draws="global"`` in a process
        group, the rows of the global batch: the same counts on every rank.
        """
        return [int(count) for count in self._runs]

    @property
    def draws(self) -> int:
        """How many draws :attr:`layer_runs` counts over: forward passes, or rows in row mode."""
        return self._draws

    @property
    def keep_frequencies(self) -> list[float]:
        """Each layer's share of draws in which it ran (``1 - p`` on average); 0 before any."""
        return [runs / self._draws if self._draws else 0.0 for runs in self.layer_runs]

    def reset_layer_runs(self) -> None:
        """Forget the counts of :attr:`layer_runs` and :attr:`draws`."""
        self._runs = torch.zeros(len(self), dtype=torch.int64, device="cpu")
        self._draws = 0

    # ----------------------------------------------------------------- state

    def get_extra_state(self) -> Tensor:
        """Return the generator's state and the telemetry, for ``state_dict``, as a tensor.

        One CPU ``uint8`` tensor (an encoding of the mapping below), so that
        safetensors (``save_pretrained``), ``torch.load(weights_only=True)`` and
        ``torch.distributed.checkpoint`` all take it.

        Returns:
            The encoding of the generator's seed and state, ``layer_runs`` and
                ``draws``.
        """
        return encode_state(self._state_mapping())

    def _state_mapping(self) -> dict[str, Any]:
        """The state that :meth:`get_extra_state` encodes, as a mapping.

        Returns:
            ``{"seed": int, "generator_state": ByteTensor, "layer_runs": LongTensor,
            "draws": int}``.
        """
        return {
            "seed": self._seed,
            "generator_state": self._generator.get_state(),
            "layer_runs": self._runs.clone(),
            "draws": self._draws,
        }

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` returned; later draws continue from it.

        An empty mapping (a ``state_dict`` saved without the list's state) changes
        nothing.

        Args:
            state: The tensor :meth:`get_extra_state` returned, the mapping that
                earlier versions saved (the same keys), or ``{}``.

        Raises:
            TypeError: ``state`` or one of its values has the wrong type.
            ValueError: ``state`` is not an encoded state, a key is missing, the
                telemetry is for another number of layers, ``generator_state`` is not
                of dtype ``torch.uint8``, or the generator rejects the state.
        """
        state = read_extra_state(state, "LayerDropList")
        if not state:
            return
        missing = sorted({"seed", "generator_state", "layer_runs", "draws"} - set(state))
        if missing:
            raise ValueError(
                f"LayerDropList extra state lacks {', '.join(map(repr, missing))}; "
                f"got keys {sorted(map(str, state))}"
            )
        seed = check_seed(state["seed"], name="state['seed']")
        runs = state["layer_runs"]
        if not isinstance(runs, Tensor) or tuple(runs.shape) != (len(self),):
            raise ValueError(
                f"state['layer_runs'] must be a tensor of shape ({len(self)},), one count "
                f"per layer, got {describe(runs)}"
            )
        draws = check_int("state['draws']", state["draws"])
        generator = torch.Generator(device="cpu")
        restore_generator(generator, state["generator_state"])
        self._generator, self._seed = generator, seed
        self._runs = runs.detach().to(device="cpu", dtype=torch.int64).clone()
        self._draws = draws

    def __getstate__(self) -> dict[str, Any]:
        # The generator as bytes: torch.multiprocessing (spawn, Lightning's ddp_spawn)
        # pickles a generator's state tensor into shared memory, which it does not
        # survive (pytorch issue 146828).
        state = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state["_generator"] = generator_to_bytes(self._generator)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        saved = state["_generator"]
        if isinstance(saved, bytes):
            state["_generator"] = generator_from_bytes(saved)
        super().__setstate__(state)  # type: ignore[no-untyped-call]
        # the counts are this process's own, not a tensor shared with the parent
        self._runs = self._runs.clone()

    def extra_repr(self) -> str:
        """Show the rates and the options that differ from the defaults in ``print(list)``."""
        rates = self._drop_rates
        shown = f"drop_rate={rates[0]!r}" if len(set(rates)) == 1 else f"drop_rates={list(rates)!r}"
        options = "".join(
            f", {name}={value!r}"
            for name, value, default in (
                ("mode", self._mode, "skip"),
                ("per_sample", self._per_sample, False),
                ("residual", self._residual, False),
                ("scale", self._scale, "train"),
                ("eval_layers", self._eval_layers, None),
                ("row_draws", self._row_draws, "global"),
            )
            if value != default
        )
        return f"{shown}{options}, rule={self._rule!r}, seed={self._seed}"


# --------------------------------------------------------------------- checks


def check_mode(mode: object, per_sample: object, masked: object) -> tuple[Mode, bool]:
    """``(mode, per_sample)`` from the arguments, the deprecated spellings translated."""
    rows = check_bool("per_sample", per_sample)
    if isinstance(mode, str) and mode in _LEGACY_MODES:
        new = "per_sample=True" if mode == "row" else "per_sample=False (the default)"
        warnings.warn(
            f"LayerDropList(mode={mode!r}) is deprecated and goes in the next release: "
            f"pass {new}; mode now takes 'skip' or 'masked', as RepeatedBlock's does",
            FutureWarning,
            stacklevel=3,
        )
        if mode == "batch" and rows:
            raise ValueError("mode='batch' draws once per forward pass, but per_sample=True")
        rows, mode = mode == "row", "skip"
    checked = cast(Mode, _check_choice("mode", mode, _MODES))
    if masked is not None:
        flag = check_bool("masked", masked)
        warnings.warn(
            f"LayerDropList(masked={flag}) is deprecated and goes in the next release: "
            f"pass mode={'masked' if flag else 'skip'!r}",
            FutureWarning,
            stacklevel=3,
        )
        if flag:
            checked = "masked"
        elif checked == "masked":
            raise ValueError("masked=False contradicts mode='masked': pass mode alone")
    return checked, rows


def check_scale(value: object, residual: bool) -> Scale:
    scale = cast(Scale, _check_choice("scale", value, _SCALES))
    if scale == "eval" and not residual:
        raise ValueError(
            "scale='eval' multiplies residual branches by 1 - p in evaluation and "
            "needs residual=True; got residual=False"
        )
    return scale


def get_rule(value: str | DropRule) -> DropRule:
    return get_drop_rule(value) if isinstance(value, str) else check_rule(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    expected = f"one of {', '.join(map(repr, choices))}"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_rates(value: object, count: int) -> tuple[float, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (check_probability("drop_rate", value),) * count
    if isinstance(value, Tensor):
        value = value.tolist() if value.ndim == 1 else value
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise TypeError(
            f"drop_rate must be a probability or a sequence of {count} probabilities "
            f"(one per layer), got {describe(value)}"
        )
    if len(value) != count:
        raise ValueError(
            f"drop_rate must hold one probability per layer ({count}), got {len(value)}: "
            f"{list(value)!r}"
        )
    return tuple(check_probability(f"drop_rate[{i}]", rate) for i, rate in enumerate(value))


def check_eval_layers(value: object, count: int) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"eval_layers must be None or layer indices in [0, {count - 1}], got {describe(value)}"
        )
    indices = [check_int(f"eval_layers[{i}]", v) for i, v in enumerate(value)]
    wrong = [index for index in indices if index >= count]
    if wrong:
        raise ValueError(f"eval_layers must hold layer indices in [0, {count - 1}], got {wrong[0]}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"eval_layers must not repeat an index, got {indices}")
    return tuple(sorted(indices))
