"""What a training run tells its user: the losses it reads, the log lines, the progress.

The trainer does not read each loss back from the device (that would synchronise with
it on every step): it keeps them as detached tensors and reads them in batches, at the
log lines, the checkpoints, the progress updates, every ``CHECK_EVERY`` steps and at
the end, checking each batch for NaN and infinities.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import torch
from torch import Tensor

from ._finite import check_losses
from ._history import StepRecord, TrainingHistory

PROGRESS_WINDOW = 25  # the progress shows the mean loss of this many steps, at most
CHECK_EVERY = 100  # read the pending losses (and check they are finite) at least this often


def progress_bar_class() -> Any:
    """Tqdm's bar class, or an ``ImportError`` that says how to install it."""
    try:
        from tqdm import tqdm
    except ImportError as error:
        raise ImportError(
            "progress=True draws its bar with tqdm, which is not installed: "
            "pip install tqdm (or the 'progress' extra: pip install '.[progress]' "
            "in stochdepth's repository)"
        ) from error
    return tqdm


class Report:
    """The losses and depths of a run, and what it prints of them.

    Every rank of a distributed run keeps one and reads its losses at the same steps
    (so that a non-finite loss stops every rank at the same step); only a
    ``speaking`` one writes.

    Args:
        steps: The run's number of steps.
        log_every: Print ``t loss`` when ``t % log_every == log_every - 1``; 0 never.
        progress: Show the progress on stderr: a tqdm bar on a terminal, otherwise a
            plain line every ``max(PROGRESS_WINDOW, steps // 10)`` steps.
        file: Where the ``t loss`` lines go (``None``: ``sys.stdout``).
        speaking: Whether this process writes anything.
    """

    def __init__(
        self, steps: int, *, log_every: int, progress: bool, file: TextIO | None, speaking: bool
    ) -> None:
        self.losses: list[float] = []
        self.depths: list[int | None] = []
        self._pending: list[Tensor] = []  # detached losses not yet read
        self._depth_sum = 0
        self._depth_count = 0
        self._steps = steps
        self._log_every = log_every
        self._progress = progress
        self._speaking = speaking
        self._file = file
        self._bar: Any = None
        self._every = max(PROGRESS_WINDOW, steps // 10)
        if progress and speaking and sys.stderr.isatty():
            self._bar = progress_bar_class()(
                total=steps, desc="train", unit="step", file=sys.stderr
            )

    def restored(self, start: int) -> None:
        """Take note of the history that a checkpoint put into ``losses`` and ``depths``."""
        used = [depth for depth in self.depths if depth is not None]
        self._depth_sum, self._depth_count = sum(used), len(used)
        if self._bar is not None and start:
            self._bar.update(start)

    def record(self, t: int, loss: Tensor, depth: int | None) -> None:
        """Keep step ``t``'s loss (detached) and depth; print the log line when due."""
        self._pending.append(loss)
        self.depths.append(depth)
        if depth is not None:
            self._depth_sum += depth
            self._depth_count += 1
        if self._log_every and t % self._log_every == self._log_every - 1:
            self.flush()
            self.write(f"{t} {self.losses[-1]}")
        elif len(self._pending) >= CHECK_EVERY:
            self.flush()

    def stepped(self, t: int) -> None:
        """Advance the progress after step ``t``."""
        if self._bar is not None:
            self._bar.update(1)
        if not self._progress:
            return
        # The losses are read at the same steps on every rank, terminal or not.
        last = t == self._steps - 1
        bar_due = len(self._pending) >= PROGRESS_WINDOW or last
        line_due = (t + 1) % self._every == 0 or last
        if not (bar_due or line_due):
            return
        postfix = self._postfix()
        if self._bar is not None and bar_due:
            self._bar.set_postfix(postfix, refresh=False)
        elif self._bar is None and line_due:
            shown = ", ".join(f"{key}={value}" for key, value in postfix.items())
            self._say(f"train: {t + 1}/{self._steps} steps, {shown}")

    def _postfix(self) -> dict[str, str]:
        window = len(self._pending)
        self.flush()
        recent = self.losses[-window:] if window else self.losses[-1:]
        postfix = {"loss": f"{sum(recent) / max(len(recent), 1):.4g}"}
        if self._depth_count:
            postfix["mean_depth"] = f"{self._depth_sum / self._depth_count:.2f}"
        return postfix

    def flush(self) -> None:
        """Read the pending losses into ``losses`` and check that they are finite."""
        if self._pending:
            first = len(self.losses)
            self.losses.extend(torch.stack(self._pending).tolist())
            self._pending.clear()
            check_losses(self.losses, first)

    def write(self, text: str) -> None:
        """Print ``text`` to the run's file (through the bar, when there is one)."""
        if not self._speaking:
            return
        out = sys.stdout if self._file is None else self._file
        if self._bar is not None:
            self._bar.write(text, file=out)
        else:
            print(text, file=out)

    def _say(self, line: str) -> None:
        if self._speaking:  # one call per line: lines of several processes stay whole
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def history(self) -> TrainingHistory:
        """Every step's record so far (after :meth:`flush`)."""
        pairs = enumerate(zip(self.losses, self.depths, strict=True))
        return TrainingHistory(StepRecord(t, loss, depth) for t, (loss, depth) in pairs)

    def close(self) -> None:
        """Close the bar, if there is one."""
        if self._bar is not None:
            self._bar.close()
