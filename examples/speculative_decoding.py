"""Train a tiny looped Llama with a random depth, then decode it self-speculatively.

A tiny Llama (``LlamaForCausalLM`` from a ``LlamaConfig``, no download: width 64) whose
only decoder layer is a :class:`~stochdepth.RepeatedBlock`, a looped transformer: the
embedding, one shared layer repeated, the final norm and the head. It is trained on a
synthetic language: sequences of numbers modulo 11 where each is the sum of the two
before it plus the one three back (``x[t] = x[t-1] + x[t-2] + x[t-3] mod 11``, from three
random numbers), the loss on every number after the first three. At every step the
layer's depth is drawn from Huginn's law, ``1 + Poisson(rate)`` with a log-normal rate
of mean 8 and scale 1, clipped at 32 (``LogNormalPoissonDepth(8, 1.0, max_depth=32)``:
depths of mean 8.4, depth 1 drawn 7.5 % of the time, 32 3.5 %), and the model is
evaluated at 32 (``eval_depth=32``): the repeats are nearly all of a forward pass's
cost, as in recurrent-depth models. A model trained so is also a family of shallower
models with the same weights: :func:`stochdepth.speculative_generate` drafts tokens at
a few repeats and verifies them at 32.

For each draft depth the script prints the acceptance rate of greedy drafts (lookahead
8, 48 new tokens after prompts of the first 3 numbers) and the new tokens per full-depth
forward pass, and checks that the tokens are those of full-depth greedy decoding.

    python examples/speculative_decoding.py            # about 2 minutes on one core
    python examples/speculative_decoding.py --quick    # seconds: a smoke run (the tests')

It writes ``docs/img/speculative-acceptance.svg`` and, for the site's dark mode,
``docs/img/speculative-acceptance-dark.svg`` (``--out DIR`` elsewhere; needs matplotlib,
the docs extra), with ``--json PATH`` the numbers it printed, and with ``--save PATH``
the trained weights (``torch.save`` of the state dict; ``benchmarks/run.py`` section 12
trains its own model with :func:`train_model`). Seeds are fixed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from stochdepth import DepthCache, LogNormalPoissonDepth, RepeatedBlock, speculative_generate

ROOT = Path(__file__).resolve().parents[1]
MODULUS = 11
SEED_TOKENS = 3
LENGTH = 56
FULL_DEPTH = 32
MEAN_DEPTH = 8  # the Poisson rate's mean: training depths average 8.4 (after clipping)
SIGMA = 1.0  # the rate's log-normal scale: depth 1 is drawn 7.5 % of the time, 32 3.5 %
LOOKAHEAD = 8
NEW_TOKENS = 48
DRAFT_DEPTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


@dataclass(frozen=True)
class Settings:
    """The sizes of one run."""

    steps: int
    batch: int
    prompts: int
    seed: int
    quick: bool


FULL = Settings(steps=600, batch=32, prompts=8, seed=0, quick=False)
QUICK = Settings(steps=4, batch=4, prompts=1, seed=0, quick=True)


def sequences(rows: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The synthetic language: ``x[t] = x[t-1] + x[t-2] + x[t-3] mod 11``; labels skip 3."""
    values = list(torch.randint(0, MODULUS, (rows, SEED_TOKENS), generator=generator).unbind(1))
    for _ in range(LENGTH - SEED_TOKENS):
        values.append((values[-1] + values[-2] + values[-3]) % MODULUS)
    ids = torch.stack(values, 1)
    labels = ids.clone()
    labels[:, :SEED_TOKENS] = -100
    return ids, labels


def build_model(seed: int = 0) -> LlamaForCausalLM:
    """One decoder layer, repeated: Huginn's depth law in training (at most 32), 32 in eval."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=MODULUS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=LENGTH + NEW_TOKENS,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        use_cache=False,
    )
    model = LlamaForCausalLM(config)
    layers = model.model.layers
    sampler = LogNormalPoissonDepth(MEAN_DEPTH, SIGMA, max_depth=FULL_DEPTH, seed=seed)
    layers[0] = RepeatedBlock(layers[0], sampler, eval_depth=FULL_DEPTH)
    return model


def block_of(model: nn.Module) -> RepeatedBlock:
    """The model's repeated layer."""
    block = model.model.layers[0]
    assert isinstance(block, RepeatedBlock)
    return block


def train_model(settings: Settings) -> tuple[LlamaForCausalLM, list[float]]:
    """The model trained with a random depth; the training losses. In eval mode."""
    model = build_model(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(settings.seed)
    model.train()
    losses = []
    for _ in range(settings.steps):
        ids, labels = sequences(settings.batch, generator)
        loss = model(ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def prompts(count: int, seed: int = 1) -> list[Tensor]:
    """Prompts of the language's first 3 numbers, ``(1, 3)`` each."""
    generator = torch.Generator().manual_seed(seed)
    ids, _ = sequences(count, generator)
    return [ids[row : row + 1, :SEED_TOKENS] for row in range(count)]


@torch.no_grad()
def cached_greedy(model: nn.Module, prompt: Tensor, new: int) -> Tensor:
    """Full-depth greedy decoding through a ``DepthCache``, one model call per token."""
    cache = DepthCache(model)
    logits = model(input_ids=prompt, cache=cache, use_cache=True).logits
    tokens = [logits[:, -1:].argmax(-1)]
    for _ in range(new - 1):
        logits = model(input_ids=tokens[-1], cache=cache, use_cache=True).logits
        tokens.append(logits[:, -1:].argmax(-1))
    cache.close()
    return torch.cat([prompt, *tokens], dim=1)


@torch.no_grad()
def accuracy(model: nn.Module, depth: int, batch: tuple[Tensor, Tensor]) -> float:
    """The next-token accuracy at ``depth`` on a held-out batch."""
    block = block_of(model)
    block.eval_depth = depth
    try:
        logits = model(batch[0]).logits[:, :-1]
    finally:
        block.eval_depth = FULL_DEPTH
    labels = batch[1][:, 1:]
    keep = labels >= 0
    return float((logits.argmax(-1) == labels)[keep].float().mean())


def acceptance(model: nn.Module, settings: Settings) -> list[dict[str, Any]]:
    """For every draft depth: acceptance, tokens per full-depth pass, exactness."""
    rows = []
    held_out = sequences(64, torch.Generator().manual_seed(2))
    for_prompts = prompts(settings.prompts)
    references = [cached_greedy(model, prompt, NEW_TOKENS) for prompt in for_prompts]
    for depth in DRAFT_DEPTHS:
        drafted = accepted = passes = new = 0
        exact = True
        for prompt, reference in zip(for_prompts, references, strict=True):
            out = speculative_generate(
                model, prompt, draft_depth=depth, lookahead=LOOKAHEAD, max_new_tokens=NEW_TOKENS
            )
            exact = exact and torch.equal(out.sequences, reference)
            drafted, accepted = drafted + out.drafted, accepted + out.accepted
            passes, new = passes + out.full_passes, new + out.new_tokens
        rows.append(
            {
                "draft_depth": depth,
                "acceptance_rate": accepted / drafted,
                "tokens_per_full_pass": new / passes,
                "accuracy": accuracy(model, depth, held_out),
                "exact": exact,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| draft depth | acceptance rate | tokens per full-depth pass | "
        "next-token accuracy at that depth | tokens = full-depth greedy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['draft_depth']} | {row['acceptance_rate']:.3f} | "
            f"{row['tokens_per_full_pass']:.2f} | {row['accuracy']:.3f} | {row['exact']} |"
        )
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


def draw(rows: list[dict[str, Any]], out: Path, *, dark: bool) -> None:
    """Acceptance rate and accuracy against the draft depth, on a transparent background."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = [row["draft_depth"] for row in rows]
    with plt.rc_context(DARK_STYLE if dark else {}):
        plt.rcParams["svg.hashsalt"] = "stochdepth"
        fig, ax = plt.subplots(figsize=(8, 4.6), layout="constrained")
        fig.patch.set_alpha(0)
        ax.patch.set_alpha(0)
        ax.plot(
            depths,
            [row["acceptance_rate"] for row in rows],
            marker="o",
            color="#1f77b4",
            label=f"acceptance rate of greedy drafts (lookahead {LOOKAHEAD})",
        )
        ax.plot(
            depths,
            [row["accuracy"] for row in rows],
            marker="s",
            linestyle="--",
            color="#ff7f0e",
            label="next-token accuracy at the draft depth",
        )
        ax.set_xlabel(f"draft depth (repeats; verified at {FULL_DEPTH})")
        ax.set_ylabel("fraction")
        ax.set_ylim(0, 1.05)
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(depth) for depth in depths])
        ax.minorticks_off()
        ax.set_title("A looped Llama trained at random depths: drafts at a shallow depth")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, metadata={"Date": None})
        plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Train, print the table, write the figure (and the JSON, the weights)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="figure folder")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    parser.add_argument("--save", type=Path, default=None, help="write the weights here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = QUICK if args.quick else FULL
    start = time.perf_counter()
    model, losses = train_model(settings)
    trained = time.perf_counter() - start
    rows = acceptance(model, settings)
    print(f"# trained {settings.steps} steps in {trained:.0f} s; final loss {losses[-1]:.3f}")
    print(table(rows))
    if args.save is not None:
        torch.save(model.state_dict(), args.save)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {"losses": losses, "rows": rows, "settings": settings.__dict__}
        args.json.write_text(json.dumps(data, indent=1))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("# matplotlib is not installed (the docs extra): no figure")
        return
    light = args.out / "speculative-acceptance.svg"
    draw(rows, light, dark=False)
    draw(rows, light.with_name("speculative-acceptance-dark.svg"), dark=True)
    print(f"# wrote {light} and its -dark variant")


if __name__ == "__main__":
    main()
