"""Fakes shared by the test modules: samplers (protocol-only, scripted, a module), a criterion."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from support.strategies import MAX_DEPTH


class CountingSampler:
    """A protocol-only sampler that draws uniformly and counts its ``sample`` calls.

    It has no ``sample_batch``, so a block with ``per_sample=True`` asks it once per row.
    """

    def __init__(self, low: int, high: int, seed: int = 0) -> None:
        self.min_depth = low
        self.max_depth = high
        self.calls = 0
        self._rng = random.Random(seed)

    def sample(self) -> int:
        self.calls += 1
        return self._rng.randint(self.min_depth, self.max_depth)

    def __repr__(self) -> str:
        return f"CountingSampler({self.min_depth}, {self.max_depth})"


class ScriptedSampler:
    """A protocol-only sampler returning the given values in turn, whatever they are."""

    def __init__(self, values: Sequence[object], low: int = 0, high: int = MAX_DEPTH) -> None:
        self.min_depth = low
        self.max_depth = high
        self._values: Iterator[object] = iter(values)
        self.calls = 0

    def sample(self) -> int:
        self.calls += 1
        return next(self._values)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"ScriptedSampler(low={self.min_depth}, high={self.max_depth})"


class ModuleSampler(nn.Module):
    """A sampler that is itself a module, with a buffer holding its next depth."""

    min_depth = 0
    max_depth = 4

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.register_buffer("next_depth", torch.tensor(depth))

    def sample(self) -> int:
        return int(self.next_depth)


class Never:
    """A criterion that never stops a row."""

    def __call__(self, previous, current, repeat, outputs=None):  # type: ignore[no-untyped-def]
        return torch.zeros(current.shape[0], dtype=torch.bool)
