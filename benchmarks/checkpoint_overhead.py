"""What checkpointing costs: the command line's model, trained with and without saves.

    python benchmarks/checkpoint_overhead.py [--steps 200] [--repeats 5]

Runs ``train`` on the tutorial's DynamicNet (64 x 1000 -> 100 -> 10) for ``--steps``
steps without a checkpoint and with ``checkpoint_every`` 100, 10 and 1, interleaving the
configurations ``--repeats`` times so that a busy machine slows all of them alike. It
prints the median time of each, and the median cost of one save (the extra time over
the run without checkpoints, divided by the number of saves), with the checkpoint's size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from stochdepth import DynamicNet, train

EVERY = (None, 100, 10, 1)


def one_run(every: int | None, steps: int, folder: str) -> float:
    """Train once; return the seconds ``train`` took."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    model = DynamicNet(1000, 100, 10)
    path = None if every is None else os.path.join(folder, f"every-{every}.ckpt")
    if path is not None and os.path.exists(path):
        os.remove(path)
    start = time.perf_counter()
    train(model, x, y, steps=steps, log_every=None, checkpoint=path, checkpoint_every=every)
    return time.perf_counter() - start


def main() -> None:
    """Time every configuration, interleaved; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[int | None, list[float]] = {every: [] for every in EVERY}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for every in EVERY:
                times[every].append(one_run(every, args.steps, folder))
        size = os.path.getsize(os.path.join(folder, "every-1.ckpt"))
    base = statistics.median(times[None])
    print(f"{args.steps} steps, median of {args.repeats} interleaved runs, 1 thread")
    print(f"checkpoint size: {size / 1e6:.2f} MB")
    for every in EVERY:
        median = statistics.median(times[every])
        if every is None:
            print(f"no checkpoint:        {median * 1e3:8.1f} ms")
            continue
        saves = args.steps // every + 1 + (args.steps % every != 0)  # step 0, every, end
        per_save = (median - base) / saves
        print(
            f"checkpoint_every={every:<4}: {median * 1e3:8.1f} ms, {saves} saves, "
            f"{per_save * 1e3:.2f} ms a save, {median / base:.2f}x the run"
        )


if __name__ == "__main__":
    main()
