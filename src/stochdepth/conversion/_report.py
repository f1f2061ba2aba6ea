"""`RecursifyReport`: what a conversion built, in parameters, and how faithful it is."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RecursifyReport:
    """What :func:`~stochdepth.recursify` built: the parameter counts and the check.

    The converted module list carries it as ``converted.report``. ``print(report)``
    shows a short table.

    Attributes:
        core: ``(start, stop)``: the layers that became the repeated block.
        block_size: Layers in the shared block.
        repeats: How many times the block replaces ``block_size`` original layers
            (the eval depth of the converted block).
        init: How the shared weights started: ``"average"``, ``"first"``, or the
            group whose layers they copy (``init`` as given).
        lora_rank: The ``lora_rank`` asked for (``None``: no low-rank deltas).
        ranks: The rank of each linear layer's delta, by parameter name in the shared
            block (at most ``min(out, in)``; ``"full"`` gives that).
        per_repeat_copies: Whether the parameters that are not linear weights (biases,
            norm weights) have a per-repeat copy.
        unrelaxed: The shared parameters without a per-repeat delta: the same tensor
            at every repeat.
        total_before: Parameters of the whole module list before the conversion.
        total_after: Parameters of the converted module list.
        core_before: Parameters of the core layers before the conversion.
        shared: Parameters of the shared block (the weights every repeat uses).
        deltas: Parameters of the low-rank (or, at ``"full"`` rank, dense) deltas of
            the linear weights.
        copies: Parameters of the per-repeat copies of the other parameters.
        max_difference: The largest absolute difference between the original and the
            converted layers' outputs on the ``check`` inputs, or ``None`` without
            ``check``.
    """

    core: tuple[int, int]
    block_size: int
    repeats: int
    init: str | int
    lora_rank: int | str | None
    per_repeat_copies: bool
    total_before: int
    total_after: int
    core_before: int
    shared: int
    deltas: int
    copies: int
    ranks: dict[str, int] = field(default_factory=dict)
    unrelaxed: tuple[str, ...] = ()
    max_difference: float | None = None

    @property
    def core_after(self) -> int:
        """Parameters of the repeated block: shared weights, deltas and copies."""
        return self.shared + self.deltas + self.copies

    def __str__(self) -> str:
        start, stop = self.core
        lines = [
            f"recursify: layers {start}..{stop - 1} -> a block of {self.block_size} "
            f"layer(s) x {self.repeats} repeats (init={self.init!r}, "
            f"lora_rank={self.lora_rank!r}, per_repeat_copies={self.per_repeat_copies})",
            f"  core parameters: {self.core_before:,} -> {self.core_after:,} "
            f"(shared {self.shared:,}, deltas {self.deltas:,}, copies {self.copies:,})",
            f"  all layers:      {self.total_before:,} -> {self.total_after:,}",
        ]
        if self.max_difference is not None:
            difference = f"{self.max_difference:.3g}"
            lines.append(f"  max |original - converted| on the check inputs: {difference}")
        return "\n".join(lines)
