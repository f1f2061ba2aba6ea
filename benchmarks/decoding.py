"""Section 11 of ``benchmarks/run.py``: decoding a repeated-layer language model with a cache.

A tiny Llama-style model (``LlamaForCausalLM`` from a config, no download): a prelude
layer, one decoder layer repeated ``depth`` times in a :class:`~stochdepth.RepeatedBlock`,
a coda layer. Rows:

* decode time per token with a :class:`~stochdepth.DepthCache` against the unrolled model
  (``depth + 2`` distinct layers with the same weights) with transformers' own
  ``DynamicCache`` (target <= 1.05): what following the repeats costs;
* with per-token early exit (``per_token=True``, ``ExitWhenConverged`` per token): the
  block's decode time against fixed depth ``depth``, both with a DepthCache, to compare
  with the decoded tokens' mean depth divided by ``depth`` (target: within 0.10 above
  it); the note gives the layer applications per step, and the mean of each step's
  deepest token (a step runs as deep as its deepest token);
* memory per token of each cheaper cache policy against the exact per-repeat cache, with
  its drift from the exact cache on the same tokens (teacher-forced along the exact
  cache's greedy continuation): the largest logit difference and the share of steps whose
  greedy token agrees.

Times are per decoded token, prefill excluded, medians over decodes run interleaved (the
per-token exit rows: each pair of decodes in lockstep, a step of each in turn).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stochdepth import DepthCache, ExitWhenConverged, FixedDepth, RepeatedBlock


@dataclass
class DecodeSizes:
    """The model and the decode of section 11."""

    width: int = 256
    heads: int = 4
    depth: int = 8
    prompt: int = 128
    new: int = 64
    batches: tuple[int, ...] = (1, 8)
    vocab: int = 512
    reps: int = 9  # decodes a side
    exit_tol: float = 0.4  # ExitWhenConverged's tolerance for the per-token exit rows


QUICK_DECODE = DecodeSizes(
    width=16, heads=2, depth=2, prompt=6, new=3, batches=(1, 2), vocab=32, reps=1
)


def build(sizes: DecodeSizes, device: torch.device, **options: Any) -> tuple[Any, Any]:
    """The repeated model and its unrolled twin, both in eval mode on ``device``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=sizes.vocab,
        hidden_size=sizes.width,
        intermediate_size=4 * sizes.width,
        num_hidden_layers=3,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.heads,
        max_position_embeddings=sizes.prompt + sizes.new + 8,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    core = model.model.layers[1]
    model.model.layers[1] = RepeatedBlock(
        core, FixedDepth(sizes.depth), eval_depth=sizes.depth, **options
    )
    unrolled_config = copy.deepcopy(config)
    unrolled_config.num_hidden_layers = sizes.depth + 2
    unrolled = LlamaForCausalLM(unrolled_config)
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if not key.startswith("model.layers."):
            state[key] = value
        elif parts[-1] != "_extra_state":
            index, rest = int(parts[2]), [part for part in parts[3:] if part != "layer"]
            last = sizes.depth + 1
            for target in [0] if index == 0 else [last] if index == 2 else range(1, last):
                state[".".join(["model", "layers", str(target), *rest])] = value
    unrolled.load_state_dict(state, strict=True)
    return model.to(device).eval(), unrolled.to(device).eval()


def prefill(model: Any, ids: Tensor, cache: Any) -> Tensor:
    """Run the prompt through ``model`` into ``cache``; the first generated token."""
    logits = model(input_ids=ids, cache=cache, use_cache=True).logits
    return logits[:, -1].argmax(-1, keepdim=True)


def decode(model: Any, token: Tensor, cache: Any, steps: int) -> list[Tensor]:
    """Greedy decoding of ``steps`` tokens from ``cache``; the tokens fed in, in order."""
    fed = []
    for _ in range(steps):
        fed.append(token)
        logits = model(input_ids=token, cache=cache, use_cache=True).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
    return fed


def decode_rows(bench: Any) -> None:
    """11: DepthCache against the unrolled model's DynamicCache, and the cheaper policies."""
    sizes: DecodeSizes = bench.decode_sizes
    section = "11 decoding"
    try:
        from transformers import DynamicCache
    except ImportError as error:  # the hf extra is not installed: say so in the rows
        for batch in sizes.batches:
            with bench.row(section, f"batch {batch}: DepthCache vs unrolled DynamicCache"):
                raise RuntimeError(
                    "transformers is not installed (pip install stochdepth[hf])"
                ) from error
        return
    model, unrolled = build(sizes, bench.device)
    shape = (
        f"Llama width {sizes.width}, {sizes.heads} heads, prelude 1 + core x{sizes.depth} + "
        f"coda 1, prompt {sizes.prompt}, {sizes.new} new tokens"
    )
    generator = torch.Generator().manual_seed(0)
    for batch in sizes.batches:
        ids = torch.randint(3, sizes.vocab, (batch, sizes.prompt), generator=generator)
        ids = ids.to(bench.device)
        layers = sizes.depth + 2
        what = f"batch {batch}: DepthCache vs unrolled {layers} layers with DynamicCache, per token"
        with bench.row(section, what, target=1.05) as row, torch.no_grad():
            runs: dict[str, Callable[[], float]] = {
                "unrolled": decoder(bench, unrolled, ids, DynamicCache, sizes.new),
                "depth": decoder(bench, model, ids, lambda: DepthCache(model), sizes.new),
            }
            times = interleaved(runs, sizes.reps)
            row.a, row.b = ms(times["unrolled"]), ms(times["depth"])
            row.ratio = times["depth"] / times["unrolled"]
            row.note = (
                f"{shape}; median of {sizes.reps} decodes a side, prefill excluded; median "
                f"of the paired decodes' ratios {times['depth/unrolled']:.3f}"
            )
    exit_rows(bench, sizes, section, shape)
    policy_rows(bench, model, sizes, section, shape)


class BlockClock:
    """Time spent in a block's forward passes (hooks), and the layer's calls in each."""

    def __init__(self, bench: Any, block: RepeatedBlock) -> None:
        self.bench = bench
        self.seconds = 0.0
        self.started = 0.0
        self.calls = 0
        self.passes: list[tuple[Tensor, int]] = []  # a pass's depths, the layer's calls in it
        block.register_forward_pre_hook(self.enter)
        block.register_forward_hook(self.leave)
        block.layer.register_forward_pre_hook(self.count)

    def enter(self, module: Any, args: Any) -> None:
        """Start the clock (a forward pre-hook)."""
        self.calls = 0
        self.bench.sync()
        self.started = self.bench.clock()

    def leave(self, module: Any, args: Any, out: Any) -> None:
        """Stop the clock and record the pass (a forward hook)."""
        self.bench.sync()
        self.seconds += self.bench.clock() - self.started
        depth = module.last_depth
        if isinstance(depth, Tensor):
            self.passes.append((depth, self.calls))

    def count(self, module: Any, args: Any) -> None:
        """Count a call of the layer (a forward pre-hook on it)."""
        self.calls += 1


def exit_rows(bench: Any, sizes: DecodeSizes, section: str, shape: str) -> None:
    """Per-token early exit against fixed depth ``depth``, both with a DepthCache.

    A third model runs alongside at the fixed depth nearest the exit's mean depth (from
    an untimed decode first): what a per-token exit that cost nothing but its repeats
    would take, shown in the note.
    """
    fixed, _ = build(sizes, bench.device)
    adaptive, _ = build(sizes, bench.device, per_token=True)
    adaptive.model.layers[1].eval_depth = ExitWhenConverged(sizes.exit_tol, max_depth=sizes.depth)
    floor, _ = build(sizes, bench.device)
    models = {"fixed": fixed, "exit": adaptive, "floor": floor}
    clocks = {name: BlockClock(bench, model.model.layers[1]) for name, model in models.items()}
    generator = torch.Generator().manual_seed(2)
    for batch in sizes.batches:
        ids = torch.randint(3, sizes.vocab, (batch, sizes.prompt), generator=generator)
        ids = ids.to(bench.device)
        what = f"batch {batch}: per-token exit vs fixed depth {sizes.depth}, block per token"
        with bench.row(section, what) as row, torch.no_grad():
            clocks["exit"].passes = []  # an untimed decode: the exit's mean depth
            warm = DepthCache(adaptive)
            decode(adaptive, prefill(adaptive, ids, warm), warm, sizes.new)
            warm_depths = torch.cat([d for d, _ in clocks["exit"].passes[1:]]).float()
            floor_depth = max(1, round(float(warm_depths.mean())))
            floor.model.layers[1].eval_depth = floor_depth
            steps, blocks, decoded = lockstep(bench, models, clocks, ids, sizes)
            block = {name: statistics.median(values) for name, values in blocks.items()}
            step = {name: statistics.median(values) for name, values in steps.items()}
            applications = statistics.mean(n for _, n in decoded)
            mean = float(torch.cat([d for d, _ in decoded]).float().mean())
            deepest = statistics.mean(int(d.max()) for d, _ in decoded)
            row.a, row.b = ms(block["fixed"]), ms(block["exit"])
            row.ratio = block["exit"] / block["fixed"]
            pairs = [b / a for a, b in zip(blocks["fixed"], blocks["exit"], strict=True)]
            row.target = round(mean / sizes.depth + 0.10, 3)
            row.note = (
                f"{shape}; ExitWhenConverged({sizes.exit_tol}, max_depth={sizes.depth}) per "
                f"token; the RepeatedBlock's time per decode step (hooks); target: the decoded "
                f"tokens' mean depth {mean:.2f} / {sizes.depth} = {mean / sizes.depth:.3f}, "
                f"+ 0.10; the steps' deepest token {deepest:.2f} / {sizes.depth}; layer "
                f"applications per step {applications:.2f} / {sizes.depth} = "
                f"{applications / sizes.depth:.3f} (the batch's deepest token, + 1 on earlier "
                f"tokens' frozen states when a deeper repeat first reads them, cut short once "
                f"the cache has their keys and values); fixed depth {floor_depth} (the "
                f"nearest to the mean) vs fixed depth {sizes.depth}, the same clock: "
                f"{block['floor'] / block['fixed']:.3f}; whole decode step "
                f"{ms(step['fixed'])} vs {ms(step['exit'])} = "
                f"{step['exit'] / step['fixed']:.3f}; median of {sizes.reps} decodes a side, the "
                f"three in lockstep (a step of each in turn); median of the paired decodes' "
                f"ratios {statistics.median(pairs):.3f}"
            )


def lockstep(
    bench: Any, models: dict[str, Any], clocks: dict[str, BlockClock], ids: Tensor, sizes: Any
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[tuple[Tensor, int]]]:
    """``sizes.reps`` greedy decodes of each model, run in lockstep.

    A step of each model in turn, the order rotating from step to step, so that a
    drifting machine slows them alike. Returns, per model, the seconds per decoded token
    of each decode (whole step, and inside the block), and the exit model's passes.
    """
    names = list(models)
    steps: dict[str, list[float]] = {name: [] for name in names}  # decode i: a tuple
    blocks: dict[str, list[float]] = {name: [] for name in names}
    decoded: list[tuple[Tensor, int]] = []
    for _ in range(sizes.reps):
        caches = {name: DepthCache(model) for name, model in models.items()}
        tokens = {name: prefill(models[name], ids, caches[name]) for name in names}
        spent = dict.fromkeys(names, 0.0)
        for clock in clocks.values():
            clock.seconds, clock.passes = 0.0, []
        for index in range(sizes.new):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                bench.sync()
                start = bench.clock()
                logits = models[name](
                    input_ids=tokens[name], cache=caches[name], use_cache=True
                ).logits
                tokens[name] = logits[:, -1].argmax(-1, keepdim=True)
                bench.sync()
                spent[name] += bench.clock() - start
        for name, clock in clocks.items():
            steps[name].append(spent[name] / sizes.new)
            blocks[name].append(clock.seconds / sizes.new)
        decoded.extend(clocks["exit"].passes)
    return steps, blocks, decoded


def policy_rows(bench: Any, model: Any, sizes: DecodeSizes, section: str, shape: str) -> None:
    """Memory per token of each cheaper policy against the exact cache, and its drift."""
    batch = sizes.batches[-1]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, sizes.vocab, (batch, sizes.prompt), generator=generator).to(bench.device)
    with torch.no_grad():
        exact = DepthCache(model)
        first = prefill(model, ids, exact)
        fed = decode(model, first, exact, sizes.new)
        want = teacher_forced(model, ids, fed, DepthCache(model))
    exact_per_token = exact.memory_bytes() / (batch * exact.get_seq_length())
    window = max(sizes.depth // 4, 2)
    for options in (
        {"policy": "first"},
        {"policy": "last"},
        {"policy": "window", "window": window},
    ):
        label = ", ".join(f"{key}={value!r}" for key, value in options.items())
        with (
            bench.row(section, f"memory per token: {label} vs policy='exact'") as row,
            torch.no_grad(),
        ):
            cache = DepthCache(model, **options)
            got = teacher_forced(model, ids, fed, cache)
            per_token = cache.memory_bytes() / (batch * cache.get_seq_length())
            drift = max(float((a - b).abs().max()) for a, b in zip(got, want, strict=True))
            agree = statistics.mean(
                float((a.argmax(-1) == b.argmax(-1)).float().mean())
                for a, b in zip(got, want, strict=True)
            )
            row.a, row.b = kib(exact_per_token), kib(per_token)
            row.ratio = per_token / exact_per_token
            row.note = (
                f"{shape}, batch {batch}; drift over the {sizes.new} decode steps, fed the exact "
                f"cache's greedy tokens: max abs logit difference {drift:.3g}, greedy tokens agree "
                f"{agree:.1%}"
            )


def teacher_forced(model: Any, ids: Tensor, fed: list[Tensor], cache: Any) -> list[Tensor]:
    """The logits of each decode step, feeding ``fed`` after the prompt into ``cache``."""
    model(input_ids=ids, cache=cache, use_cache=True)
    return [model(input_ids=token, cache=cache, use_cache=True).logits[:, -1] for token in fed]


def decoder(
    bench: Any, model: Any, ids: Tensor, make_cache: Callable[[], Any], steps: int
) -> Callable[[], float]:
    """A run for :func:`interleaved`: one timed decode."""
    return lambda: timed_decode(bench, model, ids, make_cache, steps)


def timed_decode(
    bench: Any, model: Any, ids: Tensor, make_cache: Callable[[], Any], steps: int
) -> float:
    """Seconds per decoded token (the prefill, not timed, first)."""
    cache = make_cache()
    token = prefill(model, ids, cache)
    bench.sync()
    start = bench.clock()
    decode(model, token, cache, steps)
    bench.sync()
    return float(bench.clock() - start) / steps


def interleaved(runs: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Median of each run's result over ``reps`` rounds, the order alternating.

    Also, under ``"b/a"`` (the second run's name over the first's), the median of the
    ratios of the two runs of each round, a second estimate that a drifting load
    disturbs less.
    """
    names = list(runs)
    results: dict[str, list[float]] = {name: [] for name in names}
    for index in range(reps):
        for name in names if index % 2 == 0 else names[::-1]:
            results[name].append(runs[name]())
    medians = {name: statistics.median(values) for name, values in results.items()}
    first, second = names[0], names[1]
    pairs = [b / a for a, b in zip(results[first], results[second], strict=True)]
    medians[f"{second}/{first}"] = statistics.median(pairs)
    return medians


def ms(seconds: float) -> str:
    """Seconds shown as milliseconds."""
    return f"{seconds * 1e3:.3f} ms"


def kib(size: float) -> str:
    """Bytes shown as KiB."""
    return f"{size / 2**10:.2f} KiB"
