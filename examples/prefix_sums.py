"""Prefix sums: does a weight-shared network trained on short strings solve longer ones?

The task is the running parity (prefix sums modulo 2) of a random bit string: the
target at position ``i`` is ``b_1 xor ... xor b_i``. A 1-D convolutional layer is
repeated by a ``RepeatedBlock`` with input injection (the embedded string is an extra
argument at every repeat: ``s_i = f(s_{i-1}, e)``, from ``s_0 = 0``); information moves
a few positions per repeat, so a longer string needs more repeats. The models are
trained on 16-bit strings and evaluated on 16, 32, 64 and 128 bits at every test depth
from 1 to several times the training depth, in one pass of ``block.iterate`` per length
(the depth sweep). A string counts as solved when every one of its bits is right.

Training recipes (Schwarzschild et al., 2021; Bansal et al., 2022, made small):

* ``fixed``: always the same depth, the loss after the last repeat, full backprop;
* ``uniform``: a uniform random depth, backprop through the last ``grad_depth`` repeats
  only (the earlier ones run without autograd: Bansal et al.'s progressive loss);
* ``lognormal_poisson``: the recurrent-depth model's log-normal Poisson depth, with the
  same ``grad_depth``.

At test time each model also runs with early exit (``ExitWhenConverged``, each string
on its own): the accuracy, and the mean depth it used.

``--recipes`` picks the recipes; two ablations separate the random depth from the
truncated backprop: ``fixed_truncated`` (a fixed depth with ``grad_depth``) and
``uniform_full`` (a uniform depth, full backprop).

``--ponder`` adds the PonderNet experiment: a halting head trained with
``ponder_loss`` on strings of 4 to 16 bits; it reports the learned mean halting depth
for each length (does it grow with the length?).

    python examples/prefix_sums.py --quick            # under a minute: a smoke run
    python examples/prefix_sums.py --ponder --out results/   # the docs page's run
    python examples/prefix_sums.py --recipes fixed_truncated,uniform_full --out ablation/

Seeds are fixed (``--seed``); ``--out DIR`` writes ``prefix_sums.json`` and, with
matplotlib installed, ``prefix_sums.svg`` (transparent background).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from stochdepth import (
    DepthSampler,
    ExitWhenConverged,
    FixedDepth,
    GeometricDepth,
    LogNormalPoissonDepth,
    RepeatedBlock,
    SeededDepth,
    halting_depths,
    halting_distribution,
    ponder_loss,
)


@dataclass(frozen=True)
class Settings:
    """The sizes of one run; ``--quick`` shrinks them."""

    width: int = 32
    steps: int = 1000
    batch: int = 64
    train_bits: int = 16
    train_depth: int = 12  # the fixed recipe's depth, the random recipes' mean
    grad_depth: int = 8
    lr: float = 1e-3
    test_bits: tuple[int, ...] = (16, 32, 64, 128)
    test_strings: int = 400
    test_depth: int = 160  # sweep 1..test_depth
    exit_tol: float = 1e-3
    ponder_steps: int = 800
    ponder_depth: int = 20
    ponder_bits: tuple[int, ...] = (4, 8, 12, 16)
    ponder_test_bits: tuple[int, ...] = (4, 8, 12, 16, 24, 32)


QUICK = Settings(
    width=16,
    steps=150,
    batch=32,
    train_bits=8,
    train_depth=6,
    grad_depth=4,
    test_bits=(8, 16, 32),
    test_strings=100,
    test_depth=32,
    ponder_steps=60,
    ponder_depth=8,
    ponder_bits=(4, 8),
    ponder_test_bits=(4, 8, 16),
)


def bit_strings(count: int, bits: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random strings as one-hot ``(count, 2, bits)`` inputs, and their running parity."""
    b = torch.randint(0, 2, (count, bits), generator=generator)
    target = torch.cumsum(b, dim=1) % 2
    return functional.one_hot(b, 2).permute(0, 2, 1).float(), target


class Step(nn.Module):
    """One repeat: ``s -> tanh(conv(relu(conv(cat[s, e]))))``, the input ``e`` recalled."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.recall = nn.Conv1d(2 * width, width, 3, padding=1)
        self.conv = nn.Conv1d(width, width, 3, padding=1)

    def forward(self, state: Tensor, embedded: Tensor) -> Tensor:
        """The next state, from the state and the embedded bits."""
        hidden = functional.relu(self.recall(torch.cat([state, embedded], dim=1)))
        return torch.tanh(self.conv(hidden))


class PrefixParity(nn.Module):
    """Embed the bits, repeat :class:`Step` with the embedding injected, read each bit."""

    def __init__(self, width: int, block: Callable[[nn.Module], RepeatedBlock]) -> None:
        super().__init__()
        self.embed = nn.Conv1d(2, width, 3, padding=1)
        self.block = block(Step(width))
        self.head = nn.Conv1d(width, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The logits of every bit's running parity, ``(strings, 2, bits)``."""
        embedded = self.embed(x)
        return self.head(self.block(torch.zeros_like(embedded), embedded))

    def states(self, x: Tensor, depth: int) -> Iterator[Tensor]:
        """The state after each repeat, 1 to ``depth``: one pass for a whole depth sweep."""
        embedded = self.embed(x)
        return self.block.iterate(torch.zeros_like(embedded), embedded, depth=depth)


def recipes(settings: Settings, seed: int) -> dict[str, Callable[[nn.Module], RepeatedBlock]]:
    """The training recipes, each a way to wrap the repeated layer."""
    mean, k = settings.train_depth, settings.grad_depth
    high = 2 * mean

    def fixed(layer: nn.Module) -> RepeatedBlock:
        return RepeatedBlock(layer, FixedDepth(mean), row_args=0)

    def uniform(layer: nn.Module) -> RepeatedBlock:
        sampler: DepthSampler = SeededDepth(1, high, seed=seed)
        return RepeatedBlock(layer, sampler, grad_depth=k, row_args=0, depth_limit=1000)

    def lognormal_poisson(layer: nn.Module) -> RepeatedBlock:
        sampler = LogNormalPoissonDepth(mean, 0.5, max_depth=4 * mean, seed=seed)
        return RepeatedBlock(layer, sampler, grad_depth=k, row_args=0, depth_limit=1000)

    # Ablations (--recipes): which of the two changes, random depth or truncated backprop?
    def fixed_truncated(layer: nn.Module) -> RepeatedBlock:
        return RepeatedBlock(layer, FixedDepth(mean), grad_depth=k, row_args=0)

    def uniform_full(layer: nn.Module) -> RepeatedBlock:
        sampler: DepthSampler = SeededDepth(1, high, seed=seed)
        return RepeatedBlock(layer, sampler, row_args=0, depth_limit=1000)

    return {
        "fixed": fixed,
        "uniform": uniform,
        "lognormal_poisson": lognormal_poisson,
        "fixed_truncated": fixed_truncated,
        "uniform_full": uniform_full,
    }


MAIN_RECIPES = ("fixed", "uniform", "lognormal_poisson")


def train(model: PrefixParity, settings: Settings, seed: int) -> float:
    """Train on ``train_bits``-bit strings; return the last 50 steps' mean loss."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    model.train()
    recent: list[float] = []
    for _ in range(settings.steps):
        x, y = bit_strings(settings.batch, settings.train_bits, generator)
        loss = functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = [*recent[-49:], float(loss.detach())]
    return sum(recent) / len(recent)


@torch.no_grad()
def depth_sweep(model: PrefixParity, x: Tensor, y: Tensor, depth: int) -> list[float]:
    """The fraction of strings solved after each depth 1..``depth``, in one pass."""
    model.eval()
    return [
        float((model.head(state).argmax(dim=1) == y).all(dim=1).float().mean())
        for state in model.states(x, depth)
    ]


@torch.no_grad()
def early_exit(
    model: PrefixParity, x: Tensor, y: Tensor, tol: float, max_depth: int
) -> tuple[float, float]:
    """Accuracy and mean depth with each string stopping when its state converges."""
    policy = ExitWhenConverged(tol, max_depth)
    block = RepeatedBlock(
        model.block.layer, per_sample=True, eval_depth=policy, row_args=0, depth_limit=1000
    ).eval()
    model.eval()
    embedded = model.embed(x)
    out = model.head(block(torch.zeros_like(embedded), embedded))
    depths = block.last_depth
    assert isinstance(depths, Tensor)
    solved = (out.argmax(dim=1) == y).all(dim=1).float().mean()
    return float(solved), float(depths.float().mean())


@dataclass
class Result:
    """One recipe's results: the final training loss, the sweeps and early exit."""

    loss: float
    seconds: float
    sweep: dict[int, list[float]] = field(default_factory=dict)
    exit: dict[int, tuple[float, float]] = field(default_factory=dict)


def run_recipes(
    settings: Settings, seed: int, names: list[str], log: Callable[[str], None]
) -> dict[str, Result]:
    """Train the named recipes from the same initial weights; sweep and early-exit each."""
    results: dict[str, Result] = {}
    tests = {
        bits: bit_strings(settings.test_strings, bits, torch.Generator().manual_seed(seed + bits))
        for bits in settings.test_bits
    }
    wraps = recipes(settings, seed)
    for name in names:
        wrap = wraps[name]
        torch.manual_seed(seed)
        model = PrefixParity(settings.width, wrap)
        start = time.perf_counter()
        loss = train(model, settings, seed)
        result = Result(loss, time.perf_counter() - start)
        for bits, (x, y) in tests.items():
            result.sweep[bits] = depth_sweep(model, x, y, settings.test_depth)
            result.exit[bits] = early_exit(model, x, y, settings.exit_tol, settings.test_depth)
        results[name] = result
        log(f"trained {name}: loss {loss:.4f} in {result.seconds:.0f} s")
    return results


def table(results: dict[str, Result], settings: Settings) -> str:
    """A Markdown table: accuracy at the training depth, the best depth, and early exit."""
    d = settings.train_depth
    lines = [
        f"| recipe | bits | acc. at depth {d} | best acc. (depth) | acc. at depth "
        f"{settings.test_depth} | early exit acc. | early exit mean depth |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results.items():
        for bits, sweep in result.sweep.items():
            best = max(range(len(sweep)), key=lambda i: (sweep[i], -i))
            exit_acc, exit_depth = result.exit[bits]
            lines.append(
                f"| {name} | {bits} | {sweep[d - 1]:.3f} | {sweep[best]:.3f} ({best + 1}) | "
                f"{sweep[-1]:.3f} | {exit_acc:.3f} | {exit_depth:.1f} |"
            )
    return "\n".join(lines)


# --- PonderNet ----------------------------------------------------------------------------


class Halting(nn.Module):
    """PonderNet's halting head: ``lambda_n`` per string, from its state's mean and max."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * width, 1)

    def forward(self, state: Tensor) -> Tensor:
        """``lambda``, the probability of halting after this state, per string."""
        pooled = torch.cat([state.mean(dim=2), state.amax(dim=2)], dim=1)
        return torch.sigmoid(self.linear(pooled)).squeeze(-1)


def ponder(
    settings: Settings, seed: int, log: Callable[[str], None]
) -> dict[int, dict[str, float]]:
    """Train a PonderNet on strings of ``ponder_bits`` bits; report halting depths per length.

    Each batch has one length drawn from ``ponder_bits``. The loss is ``ponder_loss``: the
    task loss after every step 1..``ponder_depth``, weighted by the halting distribution,
    plus 0.01 KL to a geometric prior of mean about ``ponder_depth / 3``.
    """
    torch.manual_seed(seed)
    n = settings.ponder_depth
    model = PrefixParity(
        settings.width, lambda layer: RepeatedBlock(layer, FixedDepth(n), row_args=0)
    )
    halt = Halting(settings.width)
    prior = GeometricDepth(3.0 / n, max_depth=n - 1)
    optimizer = torch.optim.AdamW([*model.parameters(), *halt.parameters()], lr=settings.lr)
    generator = torch.Generator().manual_seed(seed)
    lengths = settings.ponder_bits
    model.train()
    for _ in range(settings.ponder_steps):
        bits = lengths[int(torch.randint(0, len(lengths), (), generator=generator))]
        x, y = bit_strings(settings.batch, bits, generator)
        states = list(model.states(x, n))
        losses = torch.stack(
            [functional.cross_entropy(model.head(s), y, reduction="none").mean(1) for s in states],
            dim=1,
        )
        p = halting_distribution(torch.stack([halt(s) for s in states], dim=1))
        loss = ponder_loss(losses, p, prior, beta=0.01)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([*model.parameters(), *halt.parameters()], 1.0)
        optimizer.step()
    report: dict[int, dict[str, float]] = {}
    model.eval()
    with torch.no_grad():
        for bits in settings.ponder_test_bits:
            x, y = bit_strings(settings.test_strings, bits, torch.Generator().manual_seed(bits))
            states = list(model.states(x, n))
            p = halting_distribution(torch.stack([halt(s) for s in states], dim=1))
            depth = halting_depths(p, threshold=0.5)
            logits = torch.stack([model.head(s) for s in states], dim=1)
            chosen = logits[torch.arange(len(depth)), depth - 1]
            expected = float((p * torch.arange(1, n + 1)).sum(dim=1).mean())
            report[bits] = {
                "mean_depth": float(depth.float().mean()),
                "expected_depth": expected,
                "accuracy": float((chosen.argmax(dim=1) == y).all(dim=1).float().mean()),
                "accuracy_at_max": float(
                    (logits[:, -1].argmax(dim=1) == y).all(dim=1).float().mean()
                ),
            }
            log(
                f"ponder {bits:3d} bits: halting depth {report[bits]['mean_depth']:.2f} "
                f"(expected {expected:.2f}), accuracy {report[bits]['accuracy']:.3f} "
                f"(at depth {n}: {report[bits]['accuracy_at_max']:.3f})"
            )
    return report


def figure(results: dict[str, Result], settings: Settings, path: Path) -> bool:
    """Accuracy against test depth, one panel per recipe, one curve per length (SVG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, grid = plt.subplots(
        1, len(results), figsize=(4 * len(results), 3.2), sharey=True, squeeze=False
    )
    axes = grid[0]
    for ax, (name, result) in zip(axes, results.items(), strict=True):
        for bits, sweep in result.sweep.items():
            ax.plot(range(1, len(sweep) + 1), sweep, label=f"{bits} bits")
        ax.axvline(settings.train_depth, color="grey", linestyle=":", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel("test depth")
    axes[0].set_ylabel("strings solved")
    axes[-1].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, transparent=True)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    """Train the recipes, print the table, and write the results when asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, under a minute")
    parser.add_argument("--ponder", action="store_true", help="run the PonderNet experiment")
    parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    parser.add_argument(
        "--recipes",
        default=",".join(MAIN_RECIPES),
        help="comma-separated recipes to train (default: %(default)s; ablations: "
        "fixed_truncated, uniform_full)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write prefix_sums.json (and .svg) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else Settings()

    def log(line: str) -> None:
        print(line, flush=True)

    start = time.perf_counter()
    names = [name.strip() for name in args.recipes.split(",") if name.strip()]
    unknown = sorted(set(names) - set(recipes(settings, args.seed)))
    if unknown or not names:
        parser.error(
            f"--recipes: unknown recipe {', '.join(unknown) or '(none given)'}; the recipes "
            f"are {', '.join(recipes(settings, args.seed))}"
        )
    results = run_recipes(settings, args.seed, names, log)
    print(table(results, settings))
    report = ponder(settings, args.seed, log) if args.ponder else {}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {
            "settings": {**settings.__dict__, "quick": args.quick, "seed": args.seed},
            "recipes": {
                name: {
                    "loss": r.loss,
                    "seconds": r.seconds,
                    "sweep": r.sweep,
                    "early_exit": {
                        b: {"accuracy": a, "mean_depth": m} for b, (a, m) in r.exit.items()
                    },
                }
                for name, r in results.items()
            },
            "ponder": report,
            "table": table(results, settings),
        }
        (args.out / "prefix_sums.json").write_text(json.dumps(data, indent=1))
        figure(results, settings, args.out / "prefix_sums.svg")
    log(f"done in {time.perf_counter() - start:.0f} s")
    if any(math.isnan(r.loss) for r in results.values()):
        raise SystemExit("a training run's loss is NaN")


if __name__ == "__main__":
    main()
