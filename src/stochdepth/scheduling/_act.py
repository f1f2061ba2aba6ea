"""`ACTHalting`: the learned halt of HRM and Tiny Recursive Models (a Q-halt head)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional

from stochdepth._validation import check_int, check_probability, check_real, describe


class ACTHalting(nn.Module):
    """A halt logit per row, trained against "the answer is already right", with exploration.

    The adaptive computation time of HRM and Tiny Recursive Models (TRM's ``q_head`` with
    ``no_ACT_continue``): after each supervision step a head reads the state and gives a
    logit ``q``; a row halts when ``q > threshold`` (0: a probability of 1/2 that its
    answer is right) or after ``max_steps`` steps. :meth:`loss` trains ``q`` with a
    binary cross-entropy against whether the row's answer is right now. In training
    mode :meth:`halted` explores as TRM does: with probability ``exploration`` a row
    draws a least number of steps, uniform in ``[2, max_steps]``, before which it may not
    halt.

    Given as ``halting=`` to :class:`~stochdepth.DepthScheduler` (test time, no
    exploration), a row is asked after every ``every`` repeats (the repeats of
    one supervision step) and stops when ``q > threshold``; ``max_steps * every``
    repeats is the scheduler's default ``max_depth``.

    Args:
        head: Maps a batch of states to one logit per row (shape ``(rows,)`` or
            ``(rows, 1)``). TRM starts it near "never halt" (zero weights, bias -5),
            which ``init_bias`` does for the head's last ``nn.Linear``.
        max_steps: The most supervision steps of a row, an int >= 1.
        every: Repeats per supervision step, for the scheduler, an int >= 1.
        exploration: The probability that a row explores (TRM's
            ``halt_exploration_prob``, 0.1), in ``[0, 1]``.
        threshold: The halt logit above which a row halts, a real.
        init_bias: Set the last ``nn.Linear`` of ``head`` to zero weights and this bias
            (``None``: leave it).

    Raises:
        TypeError: ``head`` is not an ``nn.Module``, or an argument has the wrong type.
        ValueError: An argument is out of range.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from stochdepth import ACTHalting
        >>> act = ACTHalting(nn.Linear(4, 1), max_steps=8)
        >>> q = act(torch.randn(3, 4))
        >>> q  # zero weights and bias -5 at the start: "never halt"
        tensor([-5., -5., -5.], grad_fn=<ViewBackward0>)
        >>> act.eval().halted(q, torch.tensor([1, 4, 8]))  # only the row at max_steps
        tensor([False, False,  True])
    """

    head: nn.Module

    def __init__(
        self,
        head: nn.Module,
        *,
        max_steps: int,
        every: int = 1,
        exploration: float = 0.1,
        threshold: float = 0.0,
        init_bias: float | None = -5.0,
    ) -> None:
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"head must be a torch.nn.Module, got {describe(head)}")
        self.head = head
        self.max_steps = check_int("max_steps", max_steps, minimum=1)
        self.every = check_int("every", every, minimum=1)
        self.exploration = check_probability("exploration", exploration)
        self.threshold = check_real("threshold", threshold, minimum=-math.inf)
        if init_bias is not None:
            bias = check_real("init_bias", init_bias, minimum=-math.inf)
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if not linears or linears[-1].bias is None:
                raise ValueError(
                    "init_bias sets the last nn.Linear of the head (with a bias), but the "
                    "head has none: pass init_bias=None"
                )
            with torch.no_grad():
                linears[-1].weight.zero_()
                linears[-1].bias.fill_(bias)

    @property
    def max_depth(self) -> int:
        """``max_steps * every``: the scheduler's default ``max_depth``."""
        return self.max_steps * self.every

    def forward(self, state: Tensor) -> Tensor:
        """The halt logit of every row, shape ``(rows,)``.

        Raises:
            ValueError: The head gives other than one value per row.
        """
        logits = self.head(state)
        rows = state.shape[0]
        if not isinstance(logits, Tensor) or logits.numel() != rows:
            raise ValueError(
                f"ACTHalting's head must give one logit per row ({rows}), got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else describe(logits)}"
            )
        return logits.view(rows)

    def loss(self, logits: Tensor, correct: Tensor) -> Tensor:
        """The binary cross-entropy of the halt logits against "the answer is right".

        Args:
            logits: The rows' halt logits, from this module.
            correct: A bool tensor, one per row: whether the row's answer is right.

        Returns:
            The mean over rows, a 0-d tensor.
        """
        if correct.shape != logits.shape:
            raise ValueError(
                f"correct must have the logits' shape {tuple(logits.shape)}, got "
                f"{tuple(correct.shape)}"
            )
        return functional.binary_cross_entropy_with_logits(logits, correct.to(logits.dtype))

    def halted(
        self, logits: Tensor, steps: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Which rows halt after this supervision step.

        ``steps >= max_steps``, or ``logits > threshold``; in training mode a row that
        explores (probability ``exploration``) may not halt before its drawn least
        number of steps, uniform in ``[2, max_steps]`` (TRM's ``min_halt_steps``).

        Args:
            logits: The rows' halt logits.
            steps: The rows' supervision steps so far, this one included, an integer
                tensor.
            generator: The generator that exploration draws from (CPU).

        Returns:
            A bool tensor of the rows, on ``steps``'s device.
        """
        steps = steps.to(torch.int64)
        last = steps >= self.max_steps
        halt = last | (logits.detach().to(steps.device) > self.threshold)
        if self.training and self.max_steps > 1 and self.exploration > 0:
            rows = steps.shape[0]
            explore = torch.rand(rows, generator=generator) < self.exploration
            least = torch.randint(2, self.max_steps + 1, (rows,), generator=generator)
            least = (explore * least).to(steps.device)
            halt = last | (halt & (steps >= least))
        return halt

    def extra_repr(self) -> str:
        """``max_steps``, ``every``, ``exploration`` and ``threshold``."""
        return (
            f"max_steps={self.max_steps}, every={self.every}, exploration={self.exploration}, "
            f"threshold={self.threshold}"
        )


class ACTRule:
    """An :class:`ACTHalting` as the scheduler's halting rule.

    A row is asked after every ``every`` repeats and stops when its halt logit is above
    ``threshold``.
    """

    def __init__(self, act: ACTHalting) -> None:
        self.act = act
        self.max_depth = act.max_depth

    def start(self, x: Tensor) -> None:
        """No memory: the rule reads only the current state."""
        return

    def __call__(
        self, previous: Tensor, current: Tensor, depth: Tensor, memory: Tensor | None
    ) -> tuple[Tensor, None]:
        """The rows whose depth ends a supervision step and whose logit is above threshold."""
        act = self.act
        rows = depth.shape[0]
        if act.every > 1:
            asked = depth % act.every == 0
            if not bool(asked.any()):
                return torch.zeros(rows, dtype=torch.bool), None
            if not bool(asked.all()):
                stop = torch.zeros(rows, dtype=torch.bool)
                index = torch.nonzero(asked).squeeze(1)
                logits = act(current.index_select(0, index.to(current.device)))
                stop[index] = (logits > act.threshold).cpu()
                return stop, None
        return (act(current) > act.threshold).cpu(), None

    def __repr__(self) -> str:
        return f"ACTRule(max_steps={self.act.max_steps}, every={self.act.every})"
