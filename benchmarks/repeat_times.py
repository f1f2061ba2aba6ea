"""The time of each repeat of a pass: the first repeats cost more than the later ones.

    python benchmarks/repeat_times.py [--decodes 3] [--batch 1]
    python benchmarks/repeat_times.py --alone [--gap-ms 2] [--batch 1]

Section 11's model (``benchmarks/decoding.py``: a tiny Llama, its core layer repeated 8
times in a RepeatedBlock at a fixed depth) decodes 64 greedy tokens through a
DepthCache, ``--decodes`` times; a repeat hook on the block stamps the CPU time
(``time.process_time``) as each repeat starts, and a forward hook as the pass ends. It
prints the median time of each repeat over the decode steps. The first repeats of a pass
cost more than the later ones, so a pass that stops at half the depth saves less than
half its time. Between two passes the model runs its other layers, whose weights may
displace the repeated layer's from the CPU's caches, but that is not the whole cause:

With ``--alone`` no model runs around the layer: the core layer's MLP (no cache, no
attention) is applied 8 times in a row to a ``(batch, 1, 256)`` state, 300 times, each
time after a busy wait of ``--gap-ms`` milliseconds that touches no tensor (``0``: none).
On the shared machine of docs/generation.md the first applications after the wait were
slower too, and all 8 took the same time without it.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch
from decoding import DecodeSizes, build, decode, prefill

from stochdepth import DepthCache


def main() -> None:
    """Decode (or apply the MLP alone), stamp every repeat, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decodes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--alone", action="store_true", help="the core layer's MLP alone")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="with --alone: the wait")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = DecodeSizes()
    model, _ = build(sizes, torch.device("cpu"))
    with torch.no_grad():
        if args.alone:
            seconds = alone(model.model.layers[1].layer.mlp, sizes, args.batch, args.gap_ms)
            what = f"the core layer's MLP alone, after a {args.gap_ms:g} ms busy wait"
        else:
            seconds = in_decode(model, sizes, args.batch, args.decodes)
            what = f"{sizes.new} new tokens, {args.decodes} decodes"
    print(f"batch {args.batch}, depth {sizes.depth}, {what}, 1 thread; median ms per repeat:")
    total = sum(statistics.median(values) for values in seconds.values())
    running = 0.0
    for repeat, values in seconds.items():
        median = statistics.median(values)
        running += median
        print(
            f"repeat {repeat + 1}: {median * 1e3:.3f} ms (repeats 1..{repeat + 1}: "
            f"{running / total:.3f} of the pass)"
        )


def in_decode(
    model: torch.nn.Module, sizes: DecodeSizes, batch: int, decodes: int
) -> dict[int, list[float]]:
    """Each repeat's CPU times in the decode passes of ``decodes`` greedy decodes."""
    block = model.model.layers[1]
    marks: list[tuple[int, float]] = []  # (repeat, CPU time); -1: the pass ended
    block.register_repeat_hook(lambda module, repeat: marks.append((repeat, time.process_time())))
    block.register_forward_hook(lambda module, args, out: marks.append((-1, time.process_time())))
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, sizes.vocab, (batch, sizes.prompt), generator=generator)
    seconds: dict[int, list[float]] = {repeat: [] for repeat in range(sizes.depth)}
    for _ in range(decodes):
        cache = DepthCache(model)
        token = prefill(model, ids, cache)
        marks.clear()
        decode(model, token, cache, sizes.new)
        for (repeat, start), (_, stop) in itertools.pairwise(marks):
            if repeat >= 0:
                seconds[repeat].append(stop - start)
    return seconds


def alone(
    mlp: torch.nn.Module, sizes: DecodeSizes, batch: int, gap_ms: float
) -> dict[int, list[float]]:
    """Each of ``sizes.depth`` applications' CPU times, after a busy wait, 300 times."""
    state = torch.randn(batch, 1, sizes.width)
    seconds: dict[int, list[float]] = {repeat: [] for repeat in range(sizes.depth)}
    for _ in range(300):
        until = time.perf_counter() + gap_ms / 1e3
        while time.perf_counter() < until:
            pass
        for repeat in range(sizes.depth):
            start = time.process_time()
            mlp(state)
            seconds[repeat].append(time.process_time() - start)
    return seconds


if __name__ == "__main__":
    main()
