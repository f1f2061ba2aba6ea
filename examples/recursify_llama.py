"""Recursify a pretrained Llama-style model, then uptrain it with a random depth.

A tiny Llama (``LlamaForCausalLM`` from a ``LlamaConfig``: six layers, width 64, no
download) is pretrained here on a synthetic task: sequences of numbers modulo 11
where each is the sum of the two before it (a Fibonacci sequence from two random
numbers), the loss on every number after the first two. Then its four middle layers
become one shared layer repeated four times (``stochdepth.recursify``), and four
models are uptrained side by side, from the same data:

* ``original``: the pretrained model, six distinct layers, trained on;
* ``shared``: the converted model, one shared layer without deltas (``lora_rank=None``);
* ``shared + rank-R deltas``: the converted model with per-repeat low-rank deltas on the
  linear weights and per-repeat copies of the norm weights (``lora_rank=R``,
  ``per_repeat_copies=True``);
* ``core dropped``: the baseline that simply drops the four middle layers.

The converted models train with a random depth (uniform in ``[2, 6]``,
``SeededDepth(2, 6)``, the same depths for both), with truncated backprop through the
last four repeats (``grad_depth=4``), and are evaluated at the original depth, 4.
Uptraining uses AdamW at a learning rate of 1e-3 (pretraining: 3e-3), gradients clipped
at norm 1. Before
uptraining, the script prints the parameter count and the largest logit difference from
the original for every ``lora_rank``; after it, the evaluation loss of every model, and
of the converted ones at depths 2, 4 and 6.

    python examples/recursify_llama.py            # about 3 minutes on one core
    python examples/recursify_llama.py --quick    # seconds: a smoke run (the tests')

It writes ``docs/img/recursify-llama.svg`` and, for the site's dark mode,
``docs/img/recursify-llama-dark.svg`` (``--out DIR`` elsewhere; needs matplotlib, the
docs extra), and with ``--json PATH`` the numbers it printed. Seeds are fixed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from stochdepth import RepeatedBlock, SeededDepth, recursify

ROOT = Path(__file__).resolve().parents[1]
MODULUS = 11
LENGTH = 16
CORE = slice(1, 5)
DEPTHS = (2, 4, 6)
PRETRAIN_LR = 3e-3
UPTRAIN_LR = 1e-3  # a fresh optimizer at the pretraining rate would undo the pretraining


@dataclass(frozen=True)
class Settings:
    """The sizes of one run."""

    pretrain_steps: int
    uptrain_steps: int
    eval_every: int
    batch: int
    eval_batch: int
    rank: int
    seed: int
    quick: bool


def sequences(rows: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Fibonacci sequences modulo 11 from two random numbers; labels skip the first two."""
    first = torch.randint(0, MODULUS, (rows, 2), generator=generator)
    values = [first[:, 0], first[:, 1]]
    for _ in range(LENGTH - 2):
        values.append((values[-1] + values[-2]) % MODULUS)
    ids = torch.stack(values, 1)
    labels = ids.clone()
    labels[:, :2] = -100
    return ids, labels


def tiny_llama(seed: int) -> LlamaForCausalLM:
    """Six layers of width 64; no cache (the converted models train at random depths)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=MODULUS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=LENGTH,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def train(
    model: nn.Module,
    steps: int,
    settings: Settings,
    seed: int,
    optimizer: torch.optim.Optimizer,
) -> list[float]:
    """``steps`` steps on fresh batches (a generator per call: every model sees the same data)."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        ids, labels = sequences(settings.batch, generator)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, batch: tuple[Tensor, Tensor]) -> float:
    """The loss on the held-out batch, in eval mode (the converted blocks at depth 4)."""
    was_training = model.training
    model.eval()
    loss = model(batch[0], labels=batch[1]).loss.item()
    model.train(was_training)
    return loss


def count(*modules: nn.Module) -> int:
    """The parameters of ``modules``."""
    return sum(p.numel() for module in modules for p in module.parameters())


def block_of(model: LlamaForCausalLM) -> RepeatedBlock:
    """The converted model's repeated block."""
    block = model.model.layers[CORE.start]
    assert isinstance(block, RepeatedBlock)
    return block


def convert(model: LlamaForCausalLM, **options: Any) -> LlamaForCausalLM:
    """A converted copy of ``model``: layers 1-4 into one layer repeated 4 times."""
    converted = copy.deepcopy(model)
    converted.model.layers = recursify(converted.model.layers, core=CORE, **options)
    return converted


def rank_table(model: LlamaForCausalLM, batch: tuple[Tensor, Tensor]) -> list[dict[str, Any]]:
    """Parameters and faithfulness of the conversion, before uptraining, for each rank."""
    model.eval()
    with torch.no_grad():
        reference = model(batch[0]).logits
    rows = []
    settings: list[tuple[int | str | None, bool]] = [(None, False), (None, True)]
    settings += [(rank, True) for rank in (1, 2, 4, 8, 16, 32, "full")]
    for rank, copies in settings:
        converted = convert(model, lora_rank=rank, per_repeat_copies=copies)
        report = converted.model.layers.report
        with torch.no_grad():
            logits = converted(batch[0]).logits
        rows.append(
            {
                "lora_rank": rank,
                "per_repeat_copies": copies,
                "core_parameters": report.core_after,
                "model_parameters": count(converted),
                "max_logit_difference": float((logits - reference).abs().max()),
                "eval_loss": evaluate(converted, batch),
            }
        )
    return rows


def run(settings: Settings) -> dict[str, Any]:
    """Pretrain, convert, uptrain; return everything the script prints and plots."""
    eval_batch = sequences(settings.eval_batch, torch.Generator().manual_seed(10_000))
    start = time.perf_counter()
    pretrained = tiny_llama(settings.seed)
    optimizer = torch.optim.AdamW(pretrained.parameters(), lr=PRETRAIN_LR)
    pretrain = train(pretrained, settings.pretrain_steps, settings, settings.seed + 1, optimizer)
    print(f"# pretrained {settings.pretrain_steps} steps in {time.perf_counter() - start:.0f} s")
    original_core = sum(
        p.numel() for layer in pretrained.model.layers[CORE] for p in layer.parameters()
    )
    table = rank_table(pretrained, eval_batch)

    dropped = copy.deepcopy(pretrained)
    kept = [
        layer for i, layer in enumerate(dropped.model.layers) if not CORE.start <= i < CORE.stop
    ]
    dropped.model.layers = nn.ModuleList(kept)
    seed = settings.seed + 3
    models = {
        "original": copy.deepcopy(pretrained),
        "shared": convert(pretrained, sampler=SeededDepth(2, 6, seed=seed), grad_depth=4),
        f"shared + rank-{settings.rank} deltas": convert(
            pretrained,
            lora_rank=settings.rank,
            per_repeat_copies=True,
            sampler=SeededDepth(2, 6, seed=seed),  # the same depths as "shared"
            grad_depth=4,
        ),
        "core dropped": dropped,
    }
    curves: dict[str, dict[str, list[float]]] = {}
    for label, model in models.items():
        start = time.perf_counter()
        steps, losses = [0], [evaluate(model, eval_batch)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=UPTRAIN_LR)
        for done in range(settings.eval_every, settings.uptrain_steps + 1, settings.eval_every):
            train(model, settings.eval_every, settings, settings.seed + 2 + done, optimizer)
            steps.append(done)
            losses.append(evaluate(model, eval_batch))
        curves[label] = {"step": [float(s) for s in steps], "eval_loss": losses}
        print(f"# uptrained {label!r} in {time.perf_counter() - start:.0f} s")
    by_depth = {}
    for label, model in models.items():
        if label in ("shared", f"shared + rank-{settings.rank} deltas"):
            block = block_of(model)
            by_depth[label] = {}
            for value in DEPTHS:
                block.eval_depth = value
                by_depth[label][str(value)] = evaluate(model, eval_batch)
            block.eval_depth = 4
    return {
        "settings": vars(settings) | {"modulus": MODULUS, "length": LENGTH},
        "pretrain_loss": pretrain,
        "original_core_parameters": original_core,
        "ranks": table,
        "curves": curves,
        "by_depth": by_depth,
        "parameters": {
            label: sum(p.numel() for p in m.parameters()) for label, m in models.items()
        },
    }


def tables(data: dict[str, Any]) -> str:
    """The Markdown tables the script prints."""
    lines = [
        f"Conversion of the pretrained model (core: layers 1-4, "
        f"{data['original_core_parameters']:,} parameters), before uptraining:",
        "",
        "| lora_rank | per-repeat copies | core parameters | model parameters "
        "| max logit difference | eval loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["ranks"]:
        lines.append(
            f"| {row['lora_rank']} | {'yes' if row['per_repeat_copies'] else 'no'} "
            f"| {row['core_parameters']:,} | {row['model_parameters']:,} "
            f"| {row['max_logit_difference']:.3g} | {row['eval_loss']:.3g} |"
        )
    steps = int(data["settings"]["uptrain_steps"])
    lines += [
        "",
        f"Uptraining, eval loss at the original depth (4 repeats), after 0 and {steps} steps:",
        "",
        "| model | parameters | at step 0 | at the end |",
        "| --- | --- | --- | --- |",
    ]
    for label, curve in data["curves"].items():
        lines.append(
            f"| {label} | {data['parameters'][label]:,} | {curve['eval_loss'][0]:.3g} "
            f"| {curve['eval_loss'][-1]:.3g} |"
        )
    lines += ["", "The converted models after uptraining, eval loss at other depths:", ""]
    lines.append("| model | " + " | ".join(f"depth {d}" for d in DEPTHS) + " |")
    lines.append("| --- |" + " --- |" * len(DEPTHS))
    for label, losses in data["by_depth"].items():
        lines.append(f"| {label} | " + " | ".join(f"{losses[str(d)]:.3g}" for d in DEPTHS) + " |")
    return "\n".join(lines)


# The ink of the dark variant: Material's slate text colour (as docs/scripts/loss_curves.py).
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
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]


def draw(data: dict[str, Any], out: Path, *, dark: bool) -> None:
    """Eval loss against uptraining steps, one curve per model, on a transparent background."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context(DARK_STYLE if dark else {}):
        plt.rcParams["svg.hashsalt"] = "stochdepth"
        fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
        fig.patch.set_alpha(0)
        ax.patch.set_alpha(0)
        for (label, curve), color in zip(data["curves"].items(), COLORS, strict=True):
            ax.plot(curve["step"], curve["eval_loss"], color=color, linewidth=1.8, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("uptraining step")
        ax.set_ylabel("eval loss (cross-entropy, depth 4)")
        ax.set_title("A pretrained tiny Llama, its 4 middle layers recursified into 1")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right")
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, metadata={"Date": None})
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Run, print the tables, write the figure (and the JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rank", type=int, default=8, help="the deltas' rank (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="figure folder")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        settings = Settings(20, 6, 3, 8, 32, args.rank, args.seed, True)
    else:
        settings = Settings(400, 300, 10, 32, 256, args.rank, args.seed, False)
    data = run(settings)
    print(tables(data))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, default=str))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("# matplotlib is not installed (the docs extra): no figure")
        return
    light = args.out / "recursify-llama.svg"
    draw(data, light, dark=False)
    draw(data, light.with_name("recursify-llama-dark.svg"), dark=True)
    print(f"# wrote {light} and its -dark variant")
    assert all(math.isfinite(c["eval_loss"][-1]) for c in data["curves"].values())


if __name__ == "__main__":
    main()
