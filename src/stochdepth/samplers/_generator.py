"""The random state of the seeded samplers: a ``torch.Generator`` of their own.

:class:`GeneratorSampler` is the private base of every built-in sampler that draws
from its own generator. It takes ``seed=`` or ``generator=``, saves the generator's
state in :meth:`~GeneratorSampler.state_dict` (which loads with
``torch.load(weights_only=True)``), restores it, and pickles and deep-copies with the
sequence intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stochdepth._extra_state import from_bytes, to_bytes
from stochdepth._validation import check_int, describe

MAX_SEED = 2**64 - 1
_STATE_KEYS = ("seed", "generator_state")


class GeneratorSampler:
    """A sampler that draws from a CPU ``torch.Generator`` of its own.

    Subclasses call :meth:`_init_generator` from ``__init__``, draw with
    ``self._generator``, and list their constructor arguments in :meth:`_params`
    (used by ``repr``, pickling and deep copies). A subclass with more state than the
    generator extends :meth:`state_dict` and :meth:`_load_extra_state`.
    """

    _generator: torch.Generator
    _seed: int

    def _init_generator(
        self, seed: int | None, generator: torch.Generator | None, *, required: bool
    ) -> None:
        """Take the generator, or make one from ``seed``.

        Args:
            seed: The seed, an int in ``[0, 2**64 - 1]``, or ``None``.
            generator: A CPU ``torch.Generator`` to draw from (shared, not copied),
                or ``None``.
            required: Whether one of ``seed`` and ``generator`` must be given; if not
                and neither is, the seed is drawn from torch's global generator, so
                ``torch.manual_seed`` makes the sampler reproducible.

        Raises:
            TypeError: Both or (when ``required``) neither were given, or
                ``generator`` is not a ``torch.Generator``.
            ValueError: ``seed`` is out of range, or ``generator`` is not on the CPU.
        """
        name = type(self).__name__
        if seed is not None and generator is not None:
            raise TypeError(f"{name} takes seed or generator, not both")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator, got {describe(generator)}")
            if generator.device.type != "cpu":
                raise ValueError(
                    f"generator must be a CPU torch.Generator, got one on {generator.device}"
                )
            self._generator = generator
            self._seed = generator.initial_seed()
            return
        if seed is None and required:
            raise TypeError(
                f"{name} needs parameter 'seed' (an int in [0, 2**64 - 1]) or "
                f"'generator' (a torch.Generator), got neither"
            )
        self._seed, self._generator = new_generator(seed)

    @property
    def seed(self) -> int:
        """The seed the generator started from (restored by :meth:`load_state_dict`)."""
        return self._seed

    @property
    def generator(self) -> torch.Generator:
        """The ``torch.Generator`` the sampler draws from."""
        return self._generator

    def _params(self) -> dict[str, Any]:
        """The constructor's arguments other than ``seed`` and ``generator``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The constructor's arguments other than ``seed`` (what :meth:`_params` lists).

        Returns:
            A new dict, by argument name.
        """
        return dict(self._params())

    def state_dict(self) -> dict[str, Any]:
        """Return the seed and the generator's current state.

        Returns:
            ``{"seed": int, "generator_state": torch.ByteTensor, ...}``; it holds only
                ints and tensors, so it loads with ``torch.load(weights_only=True)``.
        """
        return {"seed": self._seed, "generator_state": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`; later draws continue from it.

        Args:
            state: A mapping with (at least) the keys ``seed`` and
                ``generator_state``.

        Raises:
            TypeError: ``state`` is not a mapping, or a value has the wrong type.
            ValueError: A key is missing, ``generator_state`` is not of dtype
                ``torch.uint8``, or the generator rejects the state.
        """
        name = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {describe(state)}")
        missing = sorted(set(self._state_keys()) - set(state))
        if missing:
            raise ValueError(
                f"state for {name} lacks {', '.join(map(repr, missing))}; "
                f"got keys {sorted(map(str, state))}"
            )
        seed = check_seed(state["seed"], name="state['seed']")
        previous = self._generator.get_state()
        restore_generator(self._generator, state["generator_state"])
        try:
            self._load_extra_state(state)
        except BaseException:
            self._generator.set_state(previous)  # all or nothing
            raise
        self._seed = seed

    def _state_keys(self) -> tuple[str, ...]:
        return _STATE_KEYS

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Check and restore what a subclass adds to :meth:`state_dict`."""

    def __getstate__(self) -> dict[str, Any]:
        # The state as bytes, not tensors: torch.multiprocessing pickles a tensor into
        # shared memory, and a generator state's tensor does not survive that
        # (pytorch issue 146828), so a spawned process would fail to start.
        return {"params": self._params(), "state": to_bytes(self.state_dict())}

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved = state["state"]
        saved = from_bytes(saved) if isinstance(saved, bytes) else saved
        init: Any = type(self).__init__
        init(self, **state["params"], seed=saved["seed"])
        self.load_state_dict(saved)

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self._params().items())
        return f"{type(self).__name__}({params}, seed={self._seed})"


def new_generator(seed: object) -> tuple[int, torch.Generator]:
    """The seed and a new CPU generator started from it: the seeded state's one start.

    Both containers of seeded draws start here: the seeded samplers and
    :class:`~stochdepth.LayerDropList`.

    Args:
        seed: An int in ``[0, 2**64 - 1]``, or ``None`` to draw one from torch's global
            generator (so that ``torch.manual_seed`` makes it reproducible).

    Returns:
        ``(seed, generator)``; the generator is on the CPU whatever the default device
            (``from_pretrained`` builds models on ``"meta"``).

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` is out of range.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
    value = check_seed(seed)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(value)
    return value, generator


def restore_generator(generator: torch.Generator, saved: object) -> None:
    """Set ``generator`` to a saved ``state['generator_state']``, checked.

    Raises:
        TypeError: ``saved`` is not a tensor.
        ValueError: ``saved`` is not of dtype ``torch.uint8``, or the generator rejects it
            (``generator`` is then left as it was).
    """
    if not isinstance(saved, torch.Tensor):
        raise TypeError(
            f"state['generator_state'] must be a torch.ByteTensor, got {describe(saved)}"
        )
    if saved.dtype != torch.uint8:
        raise ValueError(
            f"state['generator_state'] must be a torch.ByteTensor (dtype torch.uint8), "
            f"got a tensor of dtype {saved.dtype}"
        )
    try:
        generator.set_state(saved.detach().cpu())
    except RuntimeError as error:
        raise ValueError(
            f"state['generator_state'] is not a CPU generator state: {error}"
        ) from error


def generator_to_bytes(generator: torch.Generator) -> bytes:
    """A CPU generator's state as bytes, which every pickler copies as they are."""
    return bytes(generator.get_state().numpy().tobytes())


def generator_from_bytes(data: bytes) -> torch.Generator:
    """A new CPU generator in the state that :func:`generator_to_bytes` returned."""
    generator = torch.Generator(device="cpu")
    generator.set_state(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return generator


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` as an int in ``[0, 2**64 - 1]``, or raise an error naming ``name``."""
    value = check_int(name, seed)
    if value > MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**64 - 1], got {value}")
    return value
