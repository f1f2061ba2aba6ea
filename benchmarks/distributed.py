"""What stochdepth's distributed pieces cost per training step, on two gloo ranks.

Run from the repository root (stochdepth installed, e.g. ``pip install -e .``)::

    python benchmarks/distributed.py                 # the figures in the report
    python benchmarks/distributed.py --rounds 3      # quicker

Two processes on loopback train the article's model (64 rows split 32 + 32, sizes 1000,
100, 10) at a fixed depth of 2, one DDP replica per variant, and time chunks of steps
run interleaved (A T B C D G A T B C D G ...), so that a machine's load drifts through every
variant alike; rank 0 prints the median time per step and its ratio to A:

- A: ``DistributedDataParallel(model)``, default arguments, a plain step;
- T: A with a ``SkippedLayerTie`` installed and ``restore_skipped_grads()`` called;
- B: A plus what ``train(distributed=True)`` adds at depths above 0: the
  ``SkippedLayerTie`` hook, the per-step ``all_gather`` of ``[loss, depth]`` and
  ``restore_skipped_grads()``;
- C: B with the sampler wrapped in ``BroadcastDepth`` (one more collective per step);
- D: ``find_unused_parameters=True`` instead of the tie (a graph traversal per step);
- G: no training, only an ``all_gather`` of three float64 numbers: the check's latency.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stochdepth import BroadcastDepth, DynamicNet, FixedDepth, SkippedLayerTie
from stochdepth.training._distributed_run import DistributedRun

WORLD_SIZE = 2


def make_step(variant: str) -> Callable[[], None]:
    """One training step of ``variant``, on this rank's half of the article's batch."""
    if variant == "G":
        local = torch.zeros(3, dtype=torch.float64)
        gathered = [torch.empty_like(local) for _ in range(WORLD_SIZE)]

        def gather() -> None:
            dist.all_gather(gathered, local)

        return gather
    torch.manual_seed(0)
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    sampler = BroadcastDepth(FixedDepth(2)) if variant == "C" else FixedDepth(2)
    model = DynamicNet(1000, 100, 10, sampler)
    criterion = nn.MSELoss(reduction="sum")
    if variant in ("B", "C"):
        run = DistributedRun(model, x, y)  # what train(distributed=True) builds
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

        def step_b() -> None:
            loss = criterion(run.ddp(run.x), run.y)
            run.step_loss(loss, 0)
            optimizer.zero_grad()
            loss.backward()
            run.tie.restore_skipped_grads()
            optimizer.step()

        return step_b
    rank = dist.get_rank()
    x, y = x.chunk(WORLD_SIZE)[rank], y.chunk(WORLD_SIZE)[rank]
    tie = SkippedLayerTie(model) if variant == "T" else None
    ddp = DistributedDataParallel(model, find_unused_parameters=variant == "D")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step() -> None:
        loss = criterion(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        if tie is not None:
            tie.restore_skipped_grads()
        optimizer.step()

    return step


def worker(rank: int, init_file: str, rounds: int, chunk: int) -> None:
    """One rank: build every variant, time interleaved chunks, rank 0 prints."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        variants = {name: make_step(name) for name in "ATBCDG"}
        for step in variants.values():  # warm up
            for _ in range(chunk):
                step()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, step in variants.items():
                dist.barrier()
                start = time.perf_counter()
                for _ in range(chunk):
                    step()
                times[name].append((time.perf_counter() - start) / chunk)
        if rank == 0:
            base = statistics.median(times["A"])
            print(f"median time per step over {rounds} chunks of {chunk} steps, 2 gloo ranks")
            for name, values in times.items():
                median = statistics.median(values)
                print(f"{name}: {median * 1e3:8.3f} ms  ratio {median / base:.3f}")
    finally:
        dist.destroy_process_group()


def main() -> None:
    """Spawn the two ranks."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="chunks per variant (15)")
    parser.add_argument("--chunk", type=int, default=20, help="steps per chunk (20)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init_file = os.path.join(tempfile.mkdtemp(), "rendezvous")
    mp.spawn(worker, args=(init_file, args.rounds, args.chunk), nprocs=WORLD_SIZE)


if __name__ == "__main__":
    main()
