"""Draw the site's figures from measured data, each in a light and a dark variant.

Every figure is drawn twice: ``docs/img/NAME.svg`` for the light scheme and
``docs/img/NAME-dark.svg`` for the dark one (light ink), both on a transparent
background; the pages show them with Material's ``#only-light`` and ``#only-dark``. The
figures are a single column about 6 inches wide (a panel per row, never side by
side), so that on a phone each panel keeps the full width of the screen.

The data, all committed:

* ``docs/data/benchmarks-cpu.json``: written by ``docs/scripts/benchmark_data.py`` (the
  benchmark's own comparisons, run on the CPU): activation memory against depth, the
  modes' speed, the per-row crossover;
* ``docs/data/benchmarks-h200.json``: the rows of the GPU run (an NVIDIA H200) recorded
  on the performance page, copied with their source;
* ``docs/data/prefix-sums.json`` and ``docs/data/prefix-sums-ablation.json``: written by
  ``examples/prefix_sums.py --out DIR`` (seed 0; see the file's ``command``);
* ``docs/data/sampler-laws.json``: the depths that the seven built-in samplers drew,
  counted by this script (``--draw-samplers``; seeded, so the counts are reproducible),
  beside each one's ``probabilities()``.

Run it from the repository root, with the ``docs`` extra installed (a few seconds)::

    python docs/scripts/figures.py                    # every figure
    python docs/scripts/figures.py --only crossover   # one
    python docs/scripts/figures.py --draw-samplers    # count the draws again first
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "data"
IMG = ROOT / "docs" / "img"
WIDTH = 5.2  # inches: shown at its own size on a wide screen, scaled down on a phone

# The dark variant's ink: Material's slate text colours, on the page's own background.
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
BASE_STYLE = {
    "font.size": 11,
    "axes.titlesize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "stochdepth",  # the same file on every run
    "svg.fonttype": "path",
}
# Series colours that read on both backgrounds: a darker set on white, a lighter one on slate.
LIGHT_COLORS = ["#1f5fa8", "#c23b22", "#2a8a3e", "#7b4fb3", "#b8860b", "#5a6270"]
DARK_COLORS = ["#7db8ff", "#ff8c75", "#72d98a", "#c7a4ff", "#f2c14e", "#b9c0cc"]


def load(name: str) -> dict[str, Any]:
    """One data file of ``docs/data``."""
    return dict(json.loads((DATA / name).read_text()))


def ms(text: str) -> float:
    """``"1.234 ms"`` as a float."""
    return float(text.split()[0])


def rows_of(data: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    """A benchmark file's rows of one section, by what they compare."""
    return {row["what"]: row for row in data["rows"] if row["section"] == section}


# --------------------------------------------------------------------------- figures


def memory_depth(plt: Any, colors: list[str]) -> Any:
    """Peak activation memory against depth: plain, checkpointed, truncated backprop."""
    data = load("benchmarks-cpu.json")["memory"]
    fig, ax = plt.subplots(figsize=(WIDTH, 3.6))
    for color, marker, (name, values) in zip(colors, "os^", data["mib"].items(), strict=False):
        ax.plot(data["depths"], values, marker=marker, color=color, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(data["depths"], [str(d) for d in data["depths"]])
    ax.set_xlabel("depth (repeats of the layer)")
    ax.set_ylabel("activation memory (MiB)")
    ax.set_title(f"{data['layer']}, forward and backward (CPU)", loc="left")
    ax.legend(frameon=False)
    return fig


def mode_speed(plt: Any, colors: list[str]) -> Any:
    """Each mode's training step against skip mode's: CPU and H200 side by side."""
    cpu = rows_of(load("benchmarks-cpu.json"), "7 model sizes")
    gpu = rows_of(load("benchmarks-h200.json"), "7 model sizes")
    modes = ["masked", "per-sample", "checkpoint", "compiled", "CUDA graphs"]
    series = [
        ("CPU, width 256", cpu, 256),
        ("H200, width 256", gpu, 256),
        ("H200, width 1024", gpu, 1024),
    ]
    fig, ax = plt.subplots(figsize=(WIDTH, 4.4))
    height = 0.26
    for index, (label, rows, width) in enumerate(series):
        values = []
        for mode in modes:
            row = rows.get(f"width {width}: {mode} vs skip, depths 0..8")
            values.append(row["ratio"] if row else float("nan"))
        positions = [m + (index - 1) * height for m in range(len(modes))]
        bars = ax.barh(positions, values, height=height, color=colors[index], label=label)
        for bar, value in zip(bars, values, strict=True):
            if value == value:  # not NaN: the CPU has no CUDA graphs
                ax.text(
                    bar.get_width() + 0.03,
                    bar.get_y() + bar.get_height() / 2,
                    f"{value:.2f}",
                    va="center",
                    fontsize=9,
                )
    ax.axvline(1.0, color=colors[5], linestyle="--", linewidth=1)
    ax.set_yticks(range(len(modes)), modes)
    ax.invert_yaxis()
    ax.set_xlabel("time of a training step / skip mode's (lower is faster)")
    ax.set_title("Repeated TransformerEncoderLayer, depths 0..8", loc="left")
    ax.legend(frameon=False, loc="lower right")
    ax.grid(axis="y", visible=False)
    return fig


def crossover(plt: Any, colors: list[str]) -> Any:
    """Per-row depth: masked rows' step over compaction's, against the layer's width."""
    cpu = rows_of(load("benchmarks-cpu.json"), "9 per-row crossover")
    gpu = rows_of(load("benchmarks-h200.json"), "9 per-row crossover")

    def curve(rows: dict[str, dict[str, Any]], suffix: str) -> tuple[list[int], list[float]]:
        points = sorted(
            (int(match[1]), row["ratio"])
            for what, row in rows.items()
            if (match := re.fullmatch(rf"width (\d+): {re.escape(suffix)}", what))
        )
        return [w for w, _ in points], [r for _, r in points]

    fig, ax = plt.subplots(figsize=(WIDTH, 4.4), layout="constrained")
    lines = [
        ("CPU: masked rows", cpu, "masked per-row vs compaction", "o"),
        ("H200: masked rows", gpu, "masked per-row vs compaction", "s"),
        (
            "H200: masked rows, CUDAGraphStep",
            gpu,
            "masked per-row, CUDAGraphStep vs compaction",
            "^",
        ),
    ]
    for color, (label, rows, suffix, marker) in zip(colors, lines, strict=False):
        widths, ratios = curve(rows, suffix)
        ax.plot(widths, ratios, marker=marker, color=color, label=label)
    ax.axhline(1.0, color=colors[5], linestyle="--", linewidth=1, label="compaction (the default)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = [8, 16, 64, 256, 1024, 4096]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks([0.1, 0.25, 0.5, 1, 2], ["0.1", "0.25", "0.5", "1", "2"])
    ax.set_xlabel("width of Linear(width, width) + ReLU")
    ax.set_ylabel("step time / compaction's")
    ax.set_title("Per-row depth 0..8, batch 512: below 1, masked rows win", loc="left")
    fig.legend(frameon=False, fontsize=9, ncol=2, loc="outside upper center")
    return fig


def sampler_laws(plt: Any, colors: list[str]) -> Any:
    """The seven built-in samplers' depth distributions, one small panel each."""
    data = load("sampler-laws.json")
    laws = data["laws"]
    fig, grid = plt.subplots(4, 2, figsize=(WIDTH, 8.6), sharex=True, sharey=True)
    axes = list(grid.flat)
    for ax, color, (name, law) in zip(axes, colors * 2, laws.items(), strict=False):
        for snapshot, style in zip(law["counts"], ("-", "--", ":"), strict=False):
            counts = law["counts"][snapshot]
            total = sum(counts)
            depths = range(len(counts))
            if len(law["counts"]) == 1:
                ax.bar(depths, [c / total for c in counts], color=color, width=0.8)
                ax.plot(
                    depths,
                    law["probabilities"][snapshot],
                    linestyle="none",
                    marker="_",
                    markersize=12,
                    markeredgewidth=1.6,
                    color=colors[5],
                )
            else:
                ax.step(
                    depths,
                    [c / total for c in counts],
                    where="mid",
                    linestyle=style,
                    color=color,
                    label=snapshot,
                )
        if len(law["counts"]) > 1:
            ax.legend(frameon=False, fontsize=8, loc="upper left")
        spec = law["sampler"].replace(", steps", ",\nsteps").replace(", max", ",\nmax")
        ax.set_title(f"{name}\n{spec}", fontsize=9, loc="left")
    axes[-1].axis("off")
    for ax in axes:
        ax.set_xticks(range(0, 9, 2))
    for ax in grid[-1]:
        ax.set_xlabel("depth")
    for ax in grid[:, 0]:
        ax.set_ylabel("share")
    grid[-2][1].xaxis.set_tick_params(labelbottom=True)
    grid[-2][1].set_xlabel("depth")
    fig.suptitle(
        f"Share of {data['draws']} seeded draws; ticks: the sampler's probabilities()",
        x=0.01,
        ha="left",
        fontsize=10,
    )
    return fig


def prefix_sums(name: str) -> Callable[[Any, list[str]], Any]:
    """Strings solved against test depth: a panel per recipe, a curve per length."""

    def draw(plt: Any, colors: list[str]) -> Any:
        data = load(f"{name}.json")
        recipes = data["recipes"]
        train_depth = data["settings"]["train_depth"]
        fig, axes = plt.subplots(
            len(recipes),
            1,
            figsize=(WIDTH, 2.3 * len(recipes) + 0.7),
            sharex=True,
            sharey=True,
            layout="constrained",
        )
        for ax, (recipe, result) in zip(axes, recipes.items(), strict=True):
            for color, (bits, sweep) in zip(colors, result["sweep"].items(), strict=False):
                ax.plot(range(1, len(sweep) + 1), sweep, color=color, label=f"{bits} bits")
            ax.axvline(train_depth, color=colors[5], linestyle=":", linewidth=1.2)
            ax.set_title(recipe, loc="left")
            ax.set_ylabel("solved")
            ax.set_ylim(-0.03, 1.03)
        fig.legend(
            *axes[0].get_legend_handles_labels(),
            frameon=False,
            fontsize=9,
            ncol=4,
            loc="outside upper center",
        )
        axes[-1].set_xlabel(f"test depth (dotted: the training depth, {train_depth})")
        return fig

    return draw


FIGURES: dict[str, Callable[[Any, list[str]], Any]] = {
    "memory-depth": memory_depth,
    "mode-speed": mode_speed,
    "per-row-crossover": crossover,
    "sampler-laws": sampler_laws,
    "prefix-sums": prefix_sums("prefix-sums"),
    "prefix-sums-ablation": prefix_sums("prefix-sums-ablation"),
}


def draw_samplers(draws: int = 20_000) -> None:
    """Count the depths the seven built-in samplers draw; write ``sampler-laws.json``."""
    import stochdepth

    made: dict[str, tuple[str, Callable[[], Any]]] = {
        "uniform": ("UniformDepth(0, 8)", lambda: stochdepth.UniformDepth(0, 8)),
        "fixed": ("FixedDepth(4)", lambda: stochdepth.FixedDepth(4)),
        "seeded": ("SeededDepth(2, 6, seed=0)", lambda: stochdepth.SeededDepth(2, 6, seed=0)),
        "bernoulli": (
            "BernoulliDepth(8, p=0.5, seed=0)",
            lambda: stochdepth.BernoulliDepth(8, p=0.5, seed=0),
        ),
        "geometric": (
            "GeometricDepth(0.3, max_depth=8, seed=0)",
            lambda: stochdepth.GeometricDepth(0.3, max_depth=8, seed=0),
        ),
        "lognormal_poisson": (
            "LogNormalPoissonDepth(3, max_depth=8, seed=0)",
            lambda: stochdepth.LogNormalPoissonDepth(3, max_depth=8, seed=0),
        ),
        "scheduled": (
            "ScheduledDepth(start=1, end=8, steps=1000, seed=0)",
            lambda: stochdepth.ScheduledDepth(start=1, end=8, steps=1000, seed=0),
        ),
    }
    if sorted(made) != sorted(stochdepth.available_samplers()):
        raise SystemExit(
            f"the built-in samplers are {stochdepth.available_samplers()}, this script "
            f"draws {sorted(made)}: add the new one"
        )
    laws: dict[str, Any] = {}
    random.seed(0)  # UniformDepth draws with Python's global random
    for name, (text, make) in made.items():
        sampler = make()
        snapshots = (
            {"": None} if name != "scheduled" else {"step 0": 0, "step 500": 500, "step 1000": 1000}
        )
        counts: dict[str, list[int]] = {}
        exact: dict[str, list[float]] = {}
        for label, step in snapshots.items():
            if step is not None:
                sampler.set_step(step)
            law = sampler.probabilities()
            exact[label] = [float(law.get(depth, 0.0)) for depth in range(9)]
            tally = [0] * 9
            for _ in range(draws):
                tally[sampler.sample()] += 1
            counts[label] = tally
        laws[name] = {"sampler": text, "counts": counts, "probabilities": exact}
    out = {
        "command": "python docs/scripts/figures.py --draw-samplers",
        "draws": draws,
        "laws": laws,
    }
    (DATA / "sampler-laws.json").write_text(json.dumps(out, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Draw the chosen figures (all by default), light and dark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated: " + ", ".join(FIGURES))
    parser.add_argument(
        "--draw-samplers", action="store_true", help="count the samplers' draws again first"
    )
    parser.add_argument("--out", type=Path, default=IMG, help="where the SVGs go")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(FIGURES)
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        parser.error(f"--only takes some of {', '.join(FIGURES)}, got {args.only!r}")
    if args.draw_samplers or not (DATA / "sampler-laws.json").exists():
        draw_samplers()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for dark in (False, True):
            style = {**BASE_STYLE, **(DARK_STYLE if dark else {})}
            with plt.rc_context(style):
                fig = FIGURES[name](plt, DARK_COLORS if dark else LIGHT_COLORS)
                if fig.get_layout_engine() is None:
                    fig.tight_layout()
                path = args.out / f"{name}{'-dark' if dark else ''}.svg"
                fig.savefig(path, transparent=True, metadata={"Date": None})
                plt.close(fig)
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
