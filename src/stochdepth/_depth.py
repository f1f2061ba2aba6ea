"""The depth choice: how many repeats a :class:`~stochdepth.RepeatedBlock` runs.

One unit decides it on every forward pass: drawn from the sampler in training mode,
the eval policy's in eval mode, or the depth the caller gave; checked against the
block's limits; and recorded (``last_depth``, and in training mode the histogram).
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers
from collections.abc import Iterator
from typing import Literal, cast

import torch
from torch import Tensor

from ._row_draws import RowDraws, draws_globally, global_layout
from ._validation import check_int, describe
from .exits._policy import ExitWhenConverged
from .samplers._builtin import UniformDepth
from .samplers._draws import draw_batch, draw_one
from .samplers._protocol import DepthSampler, check_sampler

EvalDepth = int | Literal["max", "min", "sample"] | ExitWhenConverged
"""What depth a block uses in eval mode: a fixed int, a policy name, or early exit."""

DEFAULT_DEPTH_LIMIT = 10_000
"""The most times a block applies its layer in one forward pass, unless told otherwise."""

_EVAL_POLICIES = ("max", "min", "sample")
_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


class DepthChoice:
    """Chooses, checks and records a block's depth; holds the sampler and the policies.

    Args:
        sampler: The training-mode sampler (``None``: ``UniformDepth(0, 3)``).
        eval_depth: The eval-mode policy (see :class:`~stochdepth.RepeatedBlock`).
        depth_limit: The most repeats one forward pass may run.

    Attributes:
        masked: Whether the block runs ``sampler.max_depth`` repeats on every call
            (masked mode), which bounds every depth by ``max_depth``.
        last: The depth of the last forward pass (``last_depth``).
        counts: Training-mode depth counts (``depth_histogram``).
        row_draws: Whose rows a training-mode per-row draw covers in a process group:
            ``"global"`` (the global batch's, this rank keeping its chunk) or
            ``"local"``.
        everywhere: After a global per-row draw, the depths of the global batch's
            rows (every rank's); ``None`` after any other choice.
    """

    def __init__(self, sampler: object, eval_depth: object, depth_limit: object) -> None:
        self.masked = False
        self.last: int | Tensor | None = None
        self.row_draws: RowDraws = "global"
        self.everywhere: Tensor | None = None
        self.counts: dict[int, int] = {}
        checked = UniformDepth() if sampler is None else check_sampler(sampler)
        self._eval_depth = check_eval_depth(eval_depth)
        self.depth_limit = check_int("depth_limit", depth_limit)
        check_within_limit(checked, self._eval_depth, self.depth_limit)
        self._sampler = checked

    @property
    def sampler(self) -> DepthSampler:
        """The training-mode sampler; assigning one runs the constructor's checks."""
        return self._sampler

    @sampler.setter
    def sampler(self, sampler: object) -> None:
        self._sampler = self.check_fits(sampler)

    def check_fits(self, sampler: object) -> DepthSampler:
        """Return ``sampler`` checked as the setter checks it, without assigning it.

        Raises:
            TypeError: ``sampler`` does not satisfy the sampler protocol.
            ValueError: It draws deeper than ``depth_limit``, or (masked mode) its
                ``max_depth`` is below an int ``eval_depth``.
        """
        checked = check_sampler(sampler)
        check_within_limit(checked, self._eval_depth, self.depth_limit)
        self._check_eval_within_max(checked, self._eval_depth)
        return checked

    @property
    def eval_depth(self) -> EvalDepth:
        """The eval-mode policy; one assigned later is checked at the next eval pass."""
        return self._eval_depth

    @eval_depth.setter
    def eval_depth(self, value: EvalDepth) -> None:
        self._eval_depth = value

    def use_masked(self) -> None:
        """Bound every depth by ``sampler.max_depth``, as masked mode needs."""
        self.masked = True
        self._check_eval_within_max(self._sampler, self._eval_depth)

    def _check_eval_within_max(self, sampler: DepthSampler, eval_depth: EvalDepth) -> None:
        if self.masked and isinstance(eval_depth, ExitWhenConverged):
            raise ValueError(
                "eval_depth=ExitWhenConverged(...) stops when the state converges, a depth "
                "known only while running, but mode='masked' runs max_depth repeats in one "
                "fixed graph: use mode='skip' for early exit"
            )
        if self.masked and isinstance(eval_depth, int) and eval_depth > sampler.max_depth:
            raise ValueError(
                f"eval_depth must be <= sampler.max_depth={sampler.max_depth} in "
                f"mode='masked', which runs max_depth repeats; got {eval_depth}"
            )

    def one(self, depth: object, training: bool, record: bool = True) -> int:
        """One depth for the batch: drawn, the eval policy's, or ``depth`` checked.

        With ``record`` (the forward pass) it goes into ``last`` and, in training mode,
        ``counts``.
        """
        given = depth is not None
        if depth is None:
            depth = draw_one(self._sampler) if training else self.eval_value()
        elif type(depth) is not int or depth < 0:
            depth = check_int("depth", depth)
        if depth > self.depth_limit:
            raise self.limit_error(depth, given)
        if record:
            self.last = depth
            if training:
                counts = self.counts
                counts[depth] = counts.get(depth, 0) + 1
        return depth

    def record(self, depth: int | Tensor, training: bool, counted: Tensor | None = None) -> None:
        """Record a depth as a forward pass does: ``last``, and in training mode ``counts``.

        ``counted``: what the histogram counts instead of ``depth``: the global batch's
        rows after a global row draw (``depth`` holds this rank's).
        """
        self.last = depth
        if not training:
            return
        counts = self.counts
        if counted is not None:
            depth = counted
        if isinstance(depth, int):
            counts[depth] = counts.get(depth, 0) + 1
        elif depth.numel():
            for value, count in enumerate(torch.bincount(depth.reshape(-1).cpu()).tolist()):
                if count:
                    counts[value] = counts.get(value, 0) + count

    def rows(self, rows: int, depth: object, training: bool, record: bool = True) -> Tensor:
        """The rows' depths (a CPU int64 tensor): drawn, the eval policy's, or given.

        A training-mode draw with ``row_draws="global"`` inside a process group draws
        the global batch's rows and keeps this rank's (see ``stochdepth._row_draws``);
        the histogram then counts the global batch's rows, as one process would.
        """
        self.everywhere = None
        if isinstance(depth, Tensor):
            depths = counted = self._given_rows(rows, depth)
        elif depth is None and training and draws_globally(self.row_draws):
            start, total = global_layout(rows)
            counted = self.everywhere = draw_batch(self._sampler, total)
            depths = counted[start : start + rows]
        elif depth is None and (training or self._eval_depth == "sample"):
            depths = counted = draw_batch(self._sampler, rows)
        else:
            value = check_int("depth", depth) if depth is not None else self.eval_value()
            depths = counted = torch.full((rows,), value, dtype=torch.int64)
        deepest = int(counted.max()) if counted.numel() else 0
        if deepest > self.depth_limit:
            raise self.limit_error(deepest, depth is not None)
        if record:
            self.record(depths, training, self.everywhere)
        return depths

    def _given_rows(self, rows: int, depth: Tensor) -> Tensor:
        if depth.dtype not in _INTEGER_DTYPES or tuple(depth.shape) != (rows,):
            raise TypeError(
                f"depth must be an int or an integer tensor of shape ({rows},) with "
                f"per_sample=True, got a tensor of dtype {depth.dtype} and shape "
                f"{tuple(depth.shape)}"
            )
        depths = depth.to(device="cpu", dtype=torch.int64)
        low = int(depths.min()) if rows else 0
        if low < 0:
            raise ValueError(f"depth must be >= 0, got a tensor holding {low}")
        return depths

    def masked_draw(
        self, x: Tensor, depth: object, training: bool, per_row: bool, record: bool = True
    ) -> int | Tensor:
        """Masked mode: an int depth, or the rows' depths (CPU int64), within ``max_depth``.

        An int depth is refused above ``max_depth`` before the histogram records it.
        """
        if isinstance(depth, int):
            self.check_within_max(depth)
        if per_row:
            depths = self.rows(row_count(x), depth, training, record)
            if depths.numel():
                self.check_within_max(int(depths.max()))
            return depths
        value = self.one(depth, training, record)
        self.check_within_max(value)
        return value

    def masked_depth(
        self, x: Tensor, depth: object, training: bool, per_row: bool, record: bool = True
    ) -> Tensor:
        """Masked mode: the depth as an int64 tensor on ``x``'s device (0-d, or per row)."""
        drawn = self.masked_draw(x, depth, training, per_row, record)
        if isinstance(drawn, int):
            return torch.tensor(drawn, dtype=torch.int64, device=x.device)
        return drawn.to(x.device)

    def given_tensor(self, x: Tensor, depth: Tensor, per_row: bool, record: bool = True) -> Tensor:
        """Check a depth tensor given to masked mode.

        By value in eager mode only: not while compiling, nor within
        :func:`unread_depth_tensors` (a CUDA graph capture).
        """
        shape = (row_count(x),) if per_row else ()
        if depth.dtype not in _INTEGER_DTYPES or tuple(depth.shape) != shape:
            raise TypeError(
                f"depth must be an int or an integer tensor of shape {shape} in this mode, "
                f"got a tensor of dtype {depth.dtype} and shape {tuple(depth.shape)}"
            )
        if not torch.compiler.is_compiling() and depth.numel() and not _UNREAD.get():
            low, high = (int(v) for v in torch.aminmax(depth))
            if low < 0:
                raise ValueError(f"depth must be >= 0, got a tensor holding {low}")
            self.check_within_max(high)
        if record and not _exporting():  # an exported program has no attributes to set
            self.last = depth
        return depth.to(device=x.device, dtype=torch.int64)

    def max_depth(self) -> int:
        """The sampler's ``max_depth``, refused above the depth limit."""
        high = check_int("sampler.max_depth", self._sampler.max_depth)
        if high > self.depth_limit:  # masked mode applies the layer max_depth times
            raise self.limit_error(high, False)
        return high

    def check_within_max(self, value: int) -> None:
        """Refuse a masked-mode depth above ``max_depth`` (the repeats the graph holds)."""
        high = self.max_depth()
        if value > high:
            raise ValueError(
                f"depth must be <= sampler.max_depth={high} in mode='masked' (the graph "
                f"holds max_depth repeats), got {value}"
            )

    def early_exit(self, depth: object) -> ExitWhenConverged | None:
        """In eval mode, the early-exit policy when this pass should use it: no depth given."""
        policy = self._eval_depth
        if depth is not None or not isinstance(policy, ExitWhenConverged):
            return None
        check_within_limit(self._sampler, policy, self.depth_limit)
        self._check_eval_within_max(self._sampler, policy)
        return policy

    def eval_value(self) -> int:
        """The eval-mode depth: the policy's, or a draw for ``"sample"``."""
        policy = check_eval_depth(self._eval_depth)
        if isinstance(policy, ExitWhenConverged):  # iterate() runs max_depth repeats
            return policy.max_depth
        if policy == "sample":
            return draw_one(self._sampler)
        if policy == "max":
            return check_int("sampler.max_depth", self._sampler.max_depth)
        if policy == "min":
            return check_int("sampler.min_depth", self._sampler.min_depth)
        return policy

    def limit_error(self, depth: int, given: bool) -> ValueError:
        """The error for a depth above the limit, saying where the depth came from."""
        source = "" if given else f" drawn by sampler {self._sampler!r}"
        return ValueError(
            f"depth must be <= the block's depth_limit={self.depth_limit}, got {depth}"
            f"{source}; pass depth_limit= to RepeatedBlock to allow deeper forward passes"
        )


def check_eval_depth(value: object) -> EvalDepth:
    """Return ``value`` as an eval-depth policy, or raise an error naming ``eval_depth``."""
    expected = (
        f"an int >= 0, one of {', '.join(map(repr, _EVAL_POLICIES))}, or ExitWhenConverged(...)"
    )
    if isinstance(value, ExitWhenConverged):
        return value
    if isinstance(value, str):
        if value in _EVAL_POLICIES:
            return cast(EvalDepth, value)
        raise ValueError(f"eval_depth must be {expected}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"eval_depth must be {expected}, got {describe(value)}")
    return check_int("eval_depth", value)


def check_within_limit(sampler: DepthSampler, eval_depth: EvalDepth, limit: int) -> None:
    """Refuse a sampler or an eval depth deeper than ``depth_limit``."""
    if sampler.max_depth > limit:
        raise ValueError(
            f"sampler.max_depth must be <= depth_limit={limit}, got {sampler.max_depth} "
            f"for {sampler!r}; pass depth_limit= to allow deeper forward passes"
        )
    if isinstance(eval_depth, int) and eval_depth > limit:
        raise ValueError(f"eval_depth must be <= depth_limit={limit}, got {eval_depth}")
    if isinstance(eval_depth, ExitWhenConverged) and eval_depth.max_depth > limit:
        raise ValueError(
            f"eval_depth.max_depth must be <= depth_limit={limit}, got "
            f"{eval_depth.max_depth}; pass depth_limit= to allow deeper forward passes"
        )


def row_count(x: Tensor) -> int:
    """The rows of ``x`` (dimension 0), each with its own depth; refuses a 0-d ``x``."""
    if x.ndim == 0:
        raise ValueError(
            "per_sample=True draws a depth for every row (dimension 0) of x, but x is a 0-d tensor"
        )
    return x.shape[0]


_UNREAD: contextvars.ContextVar[bool] = contextvars.ContextVar("stochdepth_unread", default=False)


@contextlib.contextmanager
def unread_depth_tensors() -> Iterator[None]:
    """Within: masked mode uses a given depth tensor without reading its values.

    For a CUDA graph capture, which refuses the host read (a synchronisation) that the
    check by value makes: the capturing driver drew and checked the values it copies
    into the tensor, outside the graph.
    """
    token = _UNREAD.set(True)
    try:
        yield
    finally:
        _UNREAD.reset(token)


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing (``torch.compiler.is_exporting``, torch >= 2.5)."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False
