"""The built-in depth samplers: uniform from Python's ``random``, fixed, and seeded."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch

from ._validation import check_bounds, check_int, describe

_MAX_SEED = 2**64 - 1


class _DepthRange:
    """An inclusive range of depths ``[low, high]``, checked once; the uniform samplers' base."""

    __slots__ = ("_high", "_low")

    def __init__(self, low: int = 0, high: int = 3) -> None:
        self._low, self._high = check_bounds(low, high)

    @property
    def low(self) -> int:
        """The smallest depth."""
        return self._low

    @property
    def high(self) -> int:
        """The largest depth."""
        return self._high

    @property
    def min_depth(self) -> int:
        """Same as :attr:`low`."""
        return self._low

    @property
    def max_depth(self) -> int:
        """Same as :attr:`high`."""
        return self._high


class UniformDepth(_DepthRange):
    """Uniform depth over ``[low, high]`` from Python's global ``random``, as the article.

    Each :meth:`sample` is exactly ``random.randint(low, high)``, so after
    ``random.seed(s)`` the sequence of depths is the one the article's ``DynamicNet``
    draws. It keeps no state of its own: seed it with ``random.seed``.

    Args:
        low: The smallest depth, a non-negative int.
        high: The largest depth, an int >= ``low``.

    Raises:
        TypeError: A bound is not an int.
        ValueError: A bound is negative, or ``high < low``.

    Example:
        >>> import random
        >>> from stochdepth import UniformDepth
        >>> sampler = UniformDepth(0, 3)
        >>> random.seed(0)
        >>> [sampler.sample() for _ in range(5)]
        [3, 3, 0, 2, 3]
    """

    __slots__ = ()

    def sample(self) -> int:
        """Draw one depth with ``random.randint(low, high)``."""
        return random.randint(self._low, self._high)

    def __repr__(self) -> str:
        return f"UniformDepth(low={self._low}, high={self._high})"


class FixedDepth:
    """Always the same depth: a static graph, for comparison and for evaluation.

    Args:
        depth: The depth, a non-negative int.

    Raises:
        TypeError: ``depth`` is not an int.
        ValueError: ``depth`` is negative.

    Example:
        >>> from stochdepth import FixedDepth
        >>> FixedDepth(2).sample()
        2
    """

    __slots__ = ("_depth",)

    def __init__(self, depth: int) -> None:
        self._depth = check_int("depth", depth)

    @property
    def depth(self) -> int:
        """The depth every draw returns."""
        return self._depth

    @property
    def min_depth(self) -> int:
        """Same as :attr:`depth`."""
        return self._depth

    @property
    def max_depth(self) -> int:
        """Same as :attr:`depth`."""
        return self._depth

    def sample(self) -> int:
        """Return :attr:`depth`."""
        return self._depth

    def __repr__(self) -> str:
        return f"FixedDepth(depth={self._depth})"


class SeededDepth(_DepthRange):
    """Uniform depth over ``[low, high]`` from a ``torch.Generator`` of its own.

    The sequence depends only on ``seed``: not on Python's ``random``, not on the
    global torch RNG, and not on the process, so every process (every rank of a
    distributed run) that builds it with the same seed draws the same depths. Its
    generator state is returned by :meth:`state_dict`, which
    :class:`~stochdepth.RepeatedBlock` saves in its own ``state_dict``: a block
    restored from it continues the same sequence.

    Args:
        low: The smallest depth, a non-negative int.
        high: The largest depth, an int >= ``low``.
        seed: The generator's seed, an int in ``[0, 2**64 - 1]``.

    Raises:
        TypeError: A bound or the seed is not an int.
        ValueError: A bound is negative, ``high < low``, or the seed is out of range.

    Example:
        >>> from stochdepth import SeededDepth
        >>> a, b = SeededDepth(0, 3, seed=7), SeededDepth(0, 3, seed=7)
        >>> [a.sample() for _ in range(8)] == [b.sample() for _ in range(8)]
        True
    """

    __slots__ = ("_generator", "_seed")

    def __init__(self, low: int = 0, high: int = 3, *, seed: int) -> None:
        super().__init__(low, high)
        self._seed = _check_seed(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self._seed)

    @property
    def seed(self) -> int:
        """The seed the generator started from (restored by :meth:`load_state_dict`)."""
        return self._seed

    def sample(self) -> int:
        """Draw one depth from the sampler's own generator."""
        return int(torch.randint(self._low, self._high + 1, (), generator=self._generator))

    def state_dict(self) -> dict[str, Any]:
        """Return the seed and the generator's current state.

        Returns:
            ``{"seed": int, "generator_state": torch.ByteTensor}``; it holds only
            ints and tensors, so it loads with ``torch.load(weights_only=True)``.
        """
        return {"seed": self._seed, "generator_state": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`; later draws continue from it.

        Args:
            state: A mapping with the keys ``seed`` and ``generator_state``.

        Raises:
            TypeError: ``state`` is not a mapping, or ``generator_state`` is not a
                tensor.
            ValueError: A key is missing, ``generator_state`` is not of dtype
                ``torch.uint8``, or the generator rejects the state.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {describe(state)}")
        missing = sorted({"seed", "generator_state"} - set(state))
        if missing:
            raise ValueError(
                f"state for SeededDepth lacks {', '.join(map(repr, missing))}; "
                f"got keys {sorted(state)}"
            )
        seed = _check_seed(state["seed"], name="state['seed']")
        generator_state = state["generator_state"]
        if not isinstance(generator_state, torch.Tensor):
            raise TypeError(
                f"state['generator_state'] must be a torch.ByteTensor, "
                f"got {describe(generator_state)}"
            )
        if generator_state.dtype != torch.uint8:
            raise ValueError(
                f"state['generator_state'] must be a torch.ByteTensor (dtype torch.uint8), "
                f"got a tensor of dtype {generator_state.dtype}"
            )
        try:
            self._generator.set_state(generator_state.detach().cpu())
        except RuntimeError as error:
            raise ValueError(
                f"state['generator_state'] is not a CPU generator state: {error}"
            ) from error
        self._seed = seed

    def __getstate__(self) -> dict[str, Any]:
        return {"low": self._low, "high": self._high, **self.state_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._low, self._high = state["low"], state["high"]
        self._generator = torch.Generator(device="cpu")
        self.load_state_dict(state)

    def __repr__(self) -> str:
        return f"SeededDepth(low={self._low}, high={self._high}, seed={self._seed})"


def _check_seed(seed: object, name: str = "seed") -> int:
    value = check_int(name, seed)
    if value > _MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, 2**64 - 1], got {value}")
    return value
