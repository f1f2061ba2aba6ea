"""Section 12 of ``benchmarks/run.py``: self-speculative decoding across depth.

The model of ``examples/speculative_decoding.py`` (a tiny looped Llama: its one decoder
layer repeated, trained at depths drawn from Huginn's law clipped at 32 on the recipe's
synthetic language, eval depth 32), trained here from its fixed seed. Rows, batch 1: the
time per token of :func:`stochdepth.speculative_generate` (greedy, the recipe's lookahead,
8) at draft depths 1, 2 and 4
against full-depth greedy decoding through a :class:`~stochdepth.DepthCache` (one model
call per token), on the same prompts, the tokens checked identical first (target <=
0.45: LayerSkip's best reported speed-up, 2.16x, is 0.46), with the acceptance rate and
the tokens per full-depth pass beside each row. Times are medians over decodes run
interleaved.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "speculative_decoding.py"
DRAFT_DEPTHS = (1, 2, 4)
TARGET = 0.45


def recipe() -> Any:
    """The example script as a module (it lives outside the package)."""
    spec = importlib.util.spec_from_file_location("speculative_recipe", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def speculative_rows(bench: Any) -> None:
    """12: speculative decoding against full-depth cached greedy, draft depths 1, 2, 4."""
    section = "12 speculative"
    try:
        example = recipe()  # imports transformers
    except ImportError as error:  # the hf extra is not installed: say so in the rows
        for depth in DRAFT_DEPTHS:
            with bench.row(section, f"draft depth {depth}: speculative vs full-depth greedy"):
                raise RuntimeError(
                    "transformers is not installed (pip install stochdepth[hf])"
                ) from error
        return
    from stochdepth import speculative_generate

    quick = bench.decode_sizes.reps == 1  # --quick
    settings = example.QUICK if quick else example.FULL
    reps = 1 if quick else 5
    model, _ = example.train_model(settings)
    model = model.to(bench.device)
    prompts = [prompt.to(bench.device) for prompt in example.prompts(settings.prompts)]
    new = example.NEW_TOKENS
    lookahead = example.LOOKAHEAD
    references = [example.cached_greedy(model, prompt, new) for prompt in prompts]
    shape = (
        f"recipe looped Llama width 64, one layer x{example.FULL_DEPTH} in eval, trained "
        f"{settings.steps} steps at LogNormalPoissonDepth({example.MEAN_DEPTH}, {example.SIGMA}, "
        f"max_depth={example.FULL_DEPTH}) depths; {len(prompts)} prompts of "
        f"{example.SEED_TOKENS} tokens, {new} new tokens, lookahead {lookahead}"
    )

    def greedy() -> int:
        for prompt in prompts:
            example.cached_greedy(model, prompt, new)
        return new * len(prompts)

    for depth in DRAFT_DEPTHS:
        what = f"batch 1: speculative, draft depth {depth}, vs full-depth cached greedy, per token"
        with bench.row(section, what, target=TARGET) as row:
            drafted = accepted = passes = 0
            for prompt, reference in zip(prompts, references, strict=True):
                out = speculative_generate(
                    model, prompt, draft_depth=depth, lookahead=lookahead, max_new_tokens=new
                )
                if not torch.equal(out.sequences, reference):
                    raise AssertionError(f"draft depth {depth}: tokens differ from greedy")
                drafted, accepted = drafted + out.drafted, accepted + out.accepted
                passes += out.full_passes

            def speculative(depth: int = depth) -> int:
                for prompt in prompts:
                    speculative_generate(
                        model, prompt, draft_depth=depth, lookahead=lookahead, max_new_tokens=new
                    )
                return new * len(prompts)

            runs: dict[str, Callable[[], int]] = {"greedy": greedy, "speculative": speculative}
            times = bench.interleaved(runs, reps)
            row.a, row.b = bench_ms(times["greedy"]), bench_ms(times["speculative"])
            row.ratio = times["speculative"] / times["greedy"]
            row.note = (
                f"acceptance {accepted / drafted:.3f}, "
                f"{new * len(prompts) / passes:.2f} tokens per full-depth pass; identical "
                f"tokens; {shape}; median of {reps} a side"
            )


def bench_ms(seconds: float) -> str:
    """Seconds shown as milliseconds."""
    return f"{seconds * 1e3:.3f} ms"
