"""The time of each repeat of a decode pass: the first repeats cost more than the later.

    python benchmarks/repeat_times.py [--decodes 3] [--batch 1]

Section 11's model (``benchmarks/decoding.py``: a tiny Llama, its core layer repeated 8
times in a RepeatedBlock at a fixed depth) decodes 64 greedy tokens through a
DepthCache, ``--decodes`` times; a repeat hook on the block stamps the CPU time
(``time.process_time``) as each repeat starts, and a forward hook as the pass ends. It
prints the median time of each repeat over the decode steps. Between two passes of the
block the model runs its other layers, whose weights displace the repeated layer's from
the CPU's caches, so a pass that stops at half the depth saves less than half its time.
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
    """Decode, stamp every repeat, print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decodes", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = DecodeSizes()
    model, _ = build(sizes, torch.device("cpu"))
    block = model.model.layers[1]
    marks: list[tuple[int, float]] = []  # (repeat, CPU time); -1: the pass ended
    block.register_repeat_hook(lambda module, repeat: marks.append((repeat, time.process_time())))
    block.register_forward_hook(lambda module, args, out: marks.append((-1, time.process_time())))
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, sizes.vocab, (args.batch, sizes.prompt), generator=generator)
    seconds: dict[int, list[float]] = {repeat: [] for repeat in range(sizes.depth)}
    with torch.no_grad():
        for _ in range(args.decodes):
            cache = DepthCache(model)
            token = prefill(model, ids, cache)
            marks.clear()
            decode(model, token, cache, sizes.new)
            for (repeat, start), (_, stop) in itertools.pairwise(marks):
                if repeat >= 0:
                    seconds[repeat].append(stop - start)
    print(
        f"batch {args.batch}, depth {sizes.depth}, {sizes.new} new tokens, "
        f"{args.decodes} decodes, 1 thread; median ms per repeat:"
    )
    total = sum(statistics.median(values) for values in seconds.values())
    running = 0.0
    for repeat, values in seconds.items():
        median = statistics.median(values)
        running += median
        print(
            f"repeat {repeat + 1}: {median * 1e3:.3f} ms (repeats 1..{repeat + 1}: "
            f"{running / total:.3f} of the pass)"
        )


if __name__ == "__main__":
    main()
