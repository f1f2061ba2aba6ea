"""What dropped layers save under FSDP2: all-gathered bytes and time per step, two gloo ranks.

Run from the repository root (stochdepth installed, e.g. ``pip install -e .``)::

    python benchmarks/fsdp.py                      # the figures in the docs
    python benchmarks/fsdp.py --steps 8 --layers 2 # a quick check that it runs

A 12-layer transformer encoder (``nn.TransformerEncoderLayer``, width 128, 4 heads,
feed-forward 512, batch-first; 8 sequences of 32 tokens per rank) in a
``LayerDropList`` (batch mode: one draw per layer per step, the same on both ranks by
its seed), then a linear head (and a tanh). ``fully_shard`` wraps every layer, then the root,
with FSDP2's defaults (a layer is resharded after its forward pass and gathered
again for its backward pass). Each variant is one model, sharded; the variants
train in interleaved chunks of steps, each variant first in turn, after a chunk of
warm-up steps, so that the machine's load drifts through all of them alike:

- ``every layer``: drop rate 0, every layer gathered and run on every step: what
  Hugging Face does under ZeRO-3 ("all layers always run when deepspeed zero-3 is
  detected, but the results are ignored");
- drop rates 0.1, 0.3, 0.5 (``--rates``).

Every FSDP module's all-gathers are counted through ``set_custom_all_gather``; the
bytes are those of the gathered (unsharded) parameters that arrive on a rank. Rank 0
prints one Markdown row per variant: the keep rate ``1 - p``, the share of layer runs
the draws kept, the all-gathered bytes per step and their ratio to ``every layer``
(the target: within 0.05 of the keep rate), and the median time per step over the
chunks and its ratio.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather

from stochdepth import LayerDropList

WORLD_SIZE = 2


class CountingAllGather(AllGather):
    """FSDP2's all-gather, with the bytes it gathers added to ``tally[name]``."""

    def __init__(self, tally: Counter[str], name: str) -> None:
        self.tally, self.name = tally, name

    def allocate(
        self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """The output buffer, as FSDP2's default all-gather allocates it."""
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        async_op: bool = False,
    ) -> dist.Work | None:
        """Count the gathered bytes, then gather as FSDP2's default does."""
        self.tally[self.name] += output_tensor.numel() * output_tensor.element_size()
        return dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)


class Variant:
    """One sharded model at one drop rate, with its counters."""

    def __init__(self, rate: float, args: argparse.Namespace) -> None:
        torch.manual_seed(0)  # the same weights in every variant
        layers = [
            nn.TransformerEncoderLayer(
                args.width,
                args.heads,
                4 * args.width,
                dropout=0.0,
                batch_first=True,
            )
            for _ in range(args.layers)
        ]
        self.stack = LayerDropList(layers, rate, seed=1)
        # the Tanh: a root that returns the Linear's 3-d output returns a view, of
        # which FSDP2 warns
        self.model = nn.Sequential(self.stack, nn.Linear(args.width, 1), nn.Tanh())
        self.bytes: Counter[str] = Counter()
        for index, layer in enumerate(layers):
            fully_shard(layer)
            _count(layer, self.bytes, f"layer{index}")
        fully_shard(self.model)
        _count(self.model, self.bytes, "root")
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(2 + dist.get_rank())
        self.x = torch.randn(args.rows, args.tokens, args.width, generator=generator)
        self.y = torch.randn(args.rows, args.tokens, 1, generator=generator)
        self.times: list[float] = []
        self.steps = 0
        self.kept = 0

    def step(self) -> None:
        """One training step: forward, mean squared error, backward, SGD."""
        loss = nn.functional.mse_loss(self.model(self.x), self.y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        assert self.stack.last_keep is not None
        self.kept += int(self.stack.last_keep.sum())
        self.steps += 1


def _count(module: object, tally: Counter[str], name: str) -> None:
    assert isinstance(module, FSDPModule)
    module.set_custom_all_gather(CountingAllGather(tally, name))


def worker(rank: int, init_file: str, args: argparse.Namespace) -> None:
    """One rank: build every variant, run interleaved chunks, rank 0 prints the rows."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        rates = [0.0, *args.rates]
        variants = [Variant(rate, args) for rate in rates]
        for variant in variants:  # warm up, then forget the counts
            for _ in range(args.chunk):
                variant.step()
            variant.bytes.clear()
            variant.steps = variant.kept = 0
        for round_ in range(args.steps // args.chunk):
            shift = round_ % len(variants)  # each variant goes first in turn
            for variant in variants[shift:] + variants[:shift]:
                dist.barrier()
                start = time.perf_counter()
                for _ in range(args.chunk):
                    variant.step()
                variant.times.append((time.perf_counter() - start) / args.chunk)
        if rank == 0:
            _report(rates, variants, args)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def _report(rates: list[float], variants: list[Variant], args: argparse.Namespace) -> None:
    base_bytes = sum(variants[0].bytes.values()) / variants[0].steps
    base_time = statistics.median(variants[0].times)
    print(
        f"{args.layers}-layer transformer (width {args.width}, {args.heads} heads, "
        f"{args.rows} x {args.tokens} tokens per rank), FSDP2 on {WORLD_SIZE} gloo ranks, "
        f"{variants[0].steps} steps per variant in chunks of {args.chunk}, torch "
        f"{torch.__version__}, {os.cpu_count()} logical cores"
    )
    print(
        "| variant | keep rate | layers kept | all-gathered MB per step | bytes / every layer "
        "| off the keep rate | ms per step | time / every layer |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rate, variant in zip(rates, variants, strict=True):
        per_step = sum(variant.bytes.values()) / variant.steps
        ratio = per_step / base_bytes
        kept = variant.kept / (variant.steps * args.layers)
        median = statistics.median(variant.times)
        name = "every layer" if rate == 0 else f"drop rate {rate}"
        print(
            f"| {name} | {1 - rate:.2f} | {kept:.3f} | {per_step / 1e6:.2f} | {ratio:.3f} "
            f"| {abs(ratio - (1 - rate)):.3f} | {median * 1e3:.1f} | {median / base_time:.3f} |"
        )


def main() -> None:
    """Parse the options and spawn the two ranks."""
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per variant (60)")
    parser.add_argument("--chunk", type=int, default=5, help="steps per chunk (5)")
    parser.add_argument("--layers", type=int, default=12, help="transformer layers (12)")
    parser.add_argument("--width", type=int, default=128, help="model width (128)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (4)")
    parser.add_argument("--rows", type=int, default=8, help="sequences per rank (8)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per sequence (32)")
    parser.add_argument(
        "--rates",
        type=lambda text: [float(v) for v in text.split(",")],
        default=[0.1, 0.3, 0.5],
        help="drop rates, comma-separated (0.1,0.3,0.5)",
    )
    args = parser.parse_args()
    if args.steps < args.chunk or args.chunk < 1:
        parser.error(f"--steps must be at least --chunk >= 1, got {args.steps} and {args.chunk}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    init_file = os.path.join(tempfile.mkdtemp(), "rendezvous")
    mp.spawn(worker, args=(init_file, args), nprocs=WORLD_SIZE)


if __name__ == "__main__":
    main()
