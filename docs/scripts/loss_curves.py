"""Draw the tutorial's figure: training loss of uniform 0-3 depth against fixed depths.

For every seed, each configuration starts from the same data and the same initial
weights (``torch.manual_seed(seed)`` and ``random.seed(seed)``, then the article's
``x``, ``y`` and ``DynamicNet``), and is trained with the article's loop
(``stochdepth.train``: 500 steps of momentum SGD on ``MSELoss(reduction="sum")``).
The figure shows, per configuration, the median loss over the seeds at every step and
a band from the smallest to the largest, on a log scale. The final losses are printed
as a table.

Run it from the repository root, with the ``docs`` extra installed::

    python docs/scripts/loss_curves.py

It writes ``docs/img/loss-curves.svg`` and, for the site's dark mode,
``docs/img/loss-curves-dark.svg`` (the same figure, light ink on a transparent
background); ``--seeds``, ``--steps`` and ``--out`` change what it runs and where it writes.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from stochdepth import DepthSampler, DynamicNet, FixedDepth, UniformDepth, train

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "img" / "loss-curves.svg"

# The article's sizes: batch, input, hidden and output features.
N, D_IN, HIDDEN, D_OUT = 64, 1000, 100, 10

CONFIGS: dict[str, DepthSampler] = {
    "uniform 0-3 (the article)": UniformDepth(0, 3),
    "fixed depth 0": FixedDepth(0),
    "fixed depth 1": FixedDepth(1),
    "fixed depth 2": FixedDepth(2),
    "fixed depth 3": FixedDepth(3),
}
COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]


def run(sampler: DepthSampler, seed: int, steps: int) -> list[float]:
    """Train the article's model once with ``sampler``; return the loss of every step."""
    torch.manual_seed(seed)
    random.seed(seed)
    x = torch.randn(N, D_IN)
    y = torch.randn(N, D_OUT)
    model = DynamicNet(D_IN, HIDDEN, D_OUT, sampler=sampler)
    return [record.loss for record in train(model, x, y, steps=steps, log_every=None)]


def measure(seeds: int, steps: int) -> dict[str, list[list[float]]]:
    """Run every configuration with seeds ``0 .. seeds - 1``."""
    curves: dict[str, list[list[float]]] = {}
    for label, sampler in CONFIGS.items():
        start = time.perf_counter()
        curves[label] = [run(sampler, seed, steps) for seed in range(seeds)]
        print(f"# {label}: {seeds} runs in {time.perf_counter() - start:.1f} s")
    return curves


def summarize(curves: dict[str, list[list[float]]]) -> str:
    """A Markdown table of the loss over the seeds: medians, and the final range."""
    steps = len(next(iter(curves.values()))[0])
    early = min(99, steps - 1)
    lines = [
        f"| configuration | median at step {early} | median at step {steps - 1} "
        f"| smallest at {steps - 1} | largest at {steps - 1} |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, runs in curves.items():
        first = statistics.median(losses[early] for losses in runs)
        final = [losses[-1] for losses in runs]
        lines.append(
            f"| {label} | {first:.3g} | {statistics.median(final):.3g} "
            f"| {min(final):.3g} | {max(final):.3g} |"
        )
    return "\n".join(lines)


# The ink of the dark variant: Material's slate text colour, on the page's own background.
DARK_STYLE = {
    "text.color": "#e2e4e9",
    "axes.labelcolor": "#e2e4e9",
    "axes.edgecolor": "#c0c3cc",
    "xtick.color": "#c0c3cc",
    "ytick.color": "#c0c3cc",
    "grid.color": "#8a8f9e",
    "legend.facecolor": "#1e2129",
    "legend.edgecolor": "#5c6070",
}


def dark_variant(out: Path) -> Path:
    """Where the dark-mode variant of ``out`` goes: ``NAME-dark.svg`` beside it."""
    return out.with_name(f"{out.stem}-dark{out.suffix}")


def draw(curves: dict[str, list[list[float]]], out: Path, *, dark: bool = False) -> None:
    """Plot the median per step and the min-max band of every configuration.

    The figure and the axes have no background of their own (the page's shows through);
    ``dark`` draws the text, axes and grid in light colours, for the site's dark mode.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(DARK_STYLE if dark else {}):
        _draw(plt, curves, out)


def _draw(plt: Any, curves: dict[str, list[list[float]]], out: Path) -> None:
    # Reproducible SVG: no date, fixed element ids.
    plt.rcParams["svg.hashsalt"] = "stochdepth"
    seeds = len(next(iter(curves.values())))
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    fig.patch.set_alpha(0)
    ax.patch.set_alpha(0)
    for (label, runs), color in zip(curves.items(), COLORS, strict=True):
        per_step = list(zip(*runs, strict=True))
        steps = range(len(per_step))
        low = [min(values) for values in per_step]
        high = [max(values) for values in per_step]
        median = [statistics.median(values) for values in per_step]
        ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)
        width = 2.2 if label.startswith("uniform") else 1.4
        ax.plot(steps, median, color=color, linewidth=width, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (MSE, sum)")
    ax.set_title(f"The article's DynamicNet, {seeds} seeds: median per step, band from min to max")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata={"Date": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Measure, draw the figure and print the table of final losses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default: 10)")
    parser.add_argument("--steps", type=int, default=500, help="default: 500")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the SVG to write")
    args = parser.parse_args(argv)
    # One thread: the runs are small, and one thread gives the same digits as the tests.
    torch.set_num_threads(1)
    curves = measure(args.seeds, args.steps)
    draw(curves, args.out)
    draw(curves, dark_variant(args.out), dark=True)
    print(summarize(curves))
    print(f"# wrote {args.out} and {dark_variant(args.out)}")


if __name__ == "__main__":
    main()
