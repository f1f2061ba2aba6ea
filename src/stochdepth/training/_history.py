"""What a training run returns: one record per step, with depth telemetry on top."""

from __future__ import annotations

from typing import NamedTuple


class StepRecord(NamedTuple):
    """What one training step did.

    Attributes:
        step: The step's index, from 0.
        loss: The loss of that step's forward pass, before the update.
        depth: The depth the model's :class:`~stochdepth.RepeatedBlock` used; with
            several blocks, the total number of repeats they applied; ``None`` for a
            model without one. A block with ``per_sample=True`` counts its deepest
            row's depth (the repeats it ran); its rows' depths are in its
            ``depth_histogram``.
    """

    step: int
    loss: float
    depth: int | None


class TrainingHistory(list[StepRecord]):
    """What :func:`train` returns: one :class:`StepRecord` per step, and depth telemetry.

    It is a ``list`` of records, with the depth statistics of the run on top, so
    that a user can see that the sampler does what they think.

    Example:
        >>> import torch
        >>> from stochdepth import DynamicNet, SeededDepth, train
        >>> x, y = torch.randn(8, 5), torch.randn(8, 2)
        >>> model = DynamicNet(5, 4, 2, SeededDepth(0, 3, seed=0))
        >>> history = train(model, x, y, steps=200, log_every=None)
        >>> sorted(history.depth_histogram)
        [0, 1, 2, 3]
        >>> 1.0 < history.mean_depth < 2.0
        True
    """

    __slots__ = ()

    @property
    def depths(self) -> list[int]:
        """The depth of every step that had one (steps of models without a block have none)."""
        return [record.depth for record in self if record.depth is not None]

    @property
    def mean_depth(self) -> float | None:
        """The mean depth over the steps, or ``None`` when no step had a depth."""
        depths = self.depths
        return sum(depths) / len(depths) if depths else None

    @property
    def depth_histogram(self) -> dict[int, int]:
        """How many steps used each depth, by depth."""
        counts: dict[int, int] = {}
        for depth in self.depths:
            counts[depth] = counts.get(depth, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """Return a one-line summary: steps, final loss, mean depth and histogram.

        Returns:
            The line, for example ``500 steps, final loss 0.191512, mean depth
                1.426, depths 0:149 1:111 2:118 3:122``.
        """
        if not self:
            return "0 steps"
        parts = [f"{len(self)} steps", f"final loss {self[-1].loss:.6g}"]
        mean = self.mean_depth
        if mean is not None:
            histogram = " ".join(f"{d}:{n}" for d, n in self.depth_histogram.items())
            parts += [f"mean depth {mean:.3f}", f"depths {histogram}"]
        return ", ".join(parts)
