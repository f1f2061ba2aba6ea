"""Every performance comparison of stochdepth, in one process, as one table of ratios.

Run from the repository root (stochdepth installed, e.g. ``pip install -e .``)::

    python benchmarks/run.py --threads 1            # the figures in docs/performance.md
    python benchmarks/run.py --device cuda          # on a GPU, with CUDA graphs
    python benchmarks/run.py --quick                # tiny sizes: checks that it runs

Comparisons (A is the reference, B the thing measured; ratio = B / A):

1. overhead: the package's ``DynamicNet`` trained by ``stochdepth.train`` against
   the article's hand-written model and loop, on the same depth sequence (target
   <= 1.05).
2. compile: eager against ``torch.compile`` for a training step, in skip mode (the
   default) and masked mode, with compile time, graphs and graph breaks; on CUDA also
   ``mode="reduce-overhead"`` (CUDA graphs) in skip mode.
3. per-sample: per-row depths uniform over 0..8 against a fixed depth of 8 for the
   whole batch (target <= 0.75), and against the mask-everything implementation
   (``mode="masked", per_sample=True``), forward and backward, batch 512, width 512.
4. memory: peak activation memory at depths 1, 8 and 64 with and without
   ``checkpoint=True`` (target at depth 64 <= 0.25 of plain).
5. layer drop: ``LayerDropList(per_sample=True, residual=True)``, which runs each
   residual branch on its kept rows only, against "compute every row, then multiply
   by the mask" (timm's ``drop_path``, torchvision's ``stochastic_depth(mode="row")``),
   forward and backward, batch 64, 197 positions, width 384 (ViT-S MLP branches), at
   drop rates 0.1 and 0.5: the ratio should approach the keep rate.
6. CUDA graphs (``--device cuda`` only): a training step of the article's model
   replayed from one CUDA graph per depth (``stochdepth.CUDAGraphStep``) against the
   eager step, on the same depth sequence (target <= 1/3).
7. model sizes: a transformer-sized repeated layer (``nn.TransformerEncoderLayer``,
   width 256 and 1024, 128 positions, batch 32) trained at depths uniform over 0..8,
   each mode against the default skip mode on the same depth sequence: masked,
   per-sample, checkpointed, the layer compiled, and on CUDA ``CUDAGraphStep``. On a
   CPU a step at width 1024 takes seconds: there it runs with ``--quick`` or when asked
   for (``--sections 7``).
8. truncated backprop: a transformer-sized layer (``nn.TransformerEncoderLayer``,
   width 256, 128 positions, batch 32) at depth 32 with ``grad_depth=4`` against
   full backprop: peak activation memory and the time of a training step.
9. per-row crossover: per-row depth (``per_sample=True``, rows' depths uniform over
   0..8) three ways, for ``Linear(width, width)`` + ``ReLU`` at widths from 8 to 4096,
   batch 512, training steps on the same rows' depths: compaction (skip mode, each
   repeat on the rows still active) against masked per-row (``mode="masked"``, every
   repeat on every row, ``torch.where``) and, on CUDA, masked per-row replayed from one
   graph by ``CUDAGraphStep``. Where the ratios cross 1 is the width below which masked
   rows pay. On the CPU it runs when asked for (``--sections 9``, up to width 1024) or
   with ``--quick``.
10. scheduler: ``DepthScheduler`` (a batch of rows in flight, halted rows refilled from
   the stream) against running every row to the maximum depth, against stopping each
   batch when all its rows halted, and against the per-row compaction within one call
   (``per_sample=True``), on inputs whose depths vary: a synthetic block with a known
   per-input depth from 1 to 32 (mean about 8, a quarter of the maximum), and the
   recipe model of ``examples/halting.py`` (trained here first) with its ACT halt head.
   Rows x repeats executed against the ideal (the sum of the inputs' own depths;
   target <= 1.05), and the time per input (targets: <= 1/1.8 of run-to-max, <= 1/1.3
   of stop-when-all-halted).
11. decoding (``benchmarks/decoding.py``; needs the ``hf`` extra): a tiny Llama-style model
   (width 256, 4 heads, prelude 1, one core layer repeated 8 times, coda 1, prompts of 128
   tokens, 64 new tokens, batch 1 and 8): decode time per token with ``DepthCache``
   against the unrolled 10-layer model with transformers' ``DynamicCache`` (target <=
   1.05), and the memory per token of each cheaper cache policy against the exact
   per-repeat cache, with its drift (max logit difference, greedy-token agreement).
12. speculative decoding (``benchmarks/speculative.py``; needs the ``hf`` extra): the
   recipe model of ``examples/speculative_decoding.py`` (a looped Llama: one layer repeated,
   32 repeats in eval; trained here, about 2 minutes on one core), batch 1:
   ``speculative_generate`` at draft depths 1, 2 and 4 against full-depth greedy decoding
   through a ``DepthCache``, identical tokens, time per token (target <= 0.45), with the
   acceptance rate beside each row.

Times are medians over chunks of steps run interleaved (A B A B ...), so that a
machine's load drifts through both sides alike. Every row is printed even when its
measurement fails (the row then says ``error``, and the exit status is 1).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import random
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import stochdepth
from stochdepth import (
    CUDAGraphStep,
    DepthScheduler,
    DynamicNet,
    ExitWhenConverged,
    FixedDepth,
    LayerDropList,
    RepeatedBlock,
    SeededDepth,
    UniformDepth,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from decoding import QUICK_DECODE, DecodeSizes, decode_rows  # section 10, beside this file
from speculative import speculative_rows  # section 12, beside this file

from support import article9  # the article's class, kept verbatim in tests/support/


@dataclass
class Sizes:
    """What each comparison runs on; ``--quick`` shrinks everything."""

    article: tuple[int, int, int, int] = (64, 1000, 100, 10)  # N, D_in, H, D_out
    chunk: int = 100  # steps per timed chunk (comparisons 1 and 2)
    chunks: int = 30  # chunks per side
    per_sample: tuple[int, int] = (512, 512)  # batch, width
    per_sample_reps: int = 12
    memory: tuple[int, int] = (256, 256)  # batch, width
    memory_depths: tuple[int, ...] = (1, 8, 64)
    layer_drop: tuple[int, int, int] = (64, 197, 384)  # batch, positions, width
    layer_drop_branches: int = 2
    layer_drop_reps: int = 6
    graph_chunks: int = 30  # chunks of `chunk` steps a side (comparison 6)
    model_widths: tuple[int, ...] = (256, 1024)
    model_shape: tuple[int, int] = (32, 128)  # batch, positions
    model_chunk: int = 2  # steps per timed chunk (comparison 7)
    model_chunks: int = 7
    truncated: tuple[int, int, int, int, int] = (32, 128, 256, 32, 4)  # batch, positions,
    # width, depth, grad_depth
    truncated_reps: int = 3
    crossover_widths: tuple[int, ...] = (8, 16, 64, 256, 1024, 4096)
    crossover_cpu_widest: int = 1024  # a CPU step at 4096 takes seconds
    crossover_batch: int = 512
    crossover_chunk: int = 20  # steps per timed chunk up to width 256, fewer (>= 2) above
    crossover_chunks: int = 9
    scheduler_inputs: int = 1024  # synthetic inputs per pass (comparison 10)
    scheduler_width: int = 512
    scheduler_batch: int = 64
    scheduler_max_depth: int = 32
    scheduler_chunks: int = 5  # passes a side
    scheduler_recipe_quick: bool = False  # train the recipe with its --quick settings


QUICK = Sizes(
    article=(8, 12, 6, 3),
    chunk=3,
    chunks=3,
    per_sample=(16, 8),
    per_sample_reps=3,
    memory=(4, 8),
    layer_drop=(8, 5, 16),
    layer_drop_reps=2,
    graph_chunks=3,
    model_widths=(8, 16),
    model_shape=(2, 4),
    model_chunk=1,
    model_chunks=2,
    truncated=(2, 4, 8, 6, 2),
    truncated_reps=1,
    crossover_widths=(8, 16),
    crossover_batch=16,
    crossover_chunk=2,
    crossover_chunks=2,
    scheduler_inputs=48,
    scheduler_width=8,
    scheduler_batch=8,
    scheduler_chunks=2,
    scheduler_recipe_quick=True,
)


@dataclass
class Row:
    """One line of the results table."""

    section: str
    what: str
    a: str = ""
    b: str = ""
    ratio: float | None = None
    target: float | None = None
    note: str = ""
    error: str = ""

    def status(self) -> str:
        """``ok`` or ``MISSED`` against the target, ``error``, or empty without a target."""
        if self.error:
            return "error"
        if self.ratio is None or self.target is None:
            return ""
        return "ok" if self.ratio <= self.target else "MISSED"


class Bench:
    """The device, the clock and the table."""

    def __init__(self, device: torch.device, sizes: Sizes, backend: str, clock: str) -> None:
        self.device = device
        self.sizes = sizes
        self.backend = backend
        # CPU time is what the steps cost this process, whatever else the machine runs;
        # wall time is what a GPU needs (its work is not this process's CPU time).
        self.clock = time.perf_counter if clock == "wall" else time.process_time
        self.rows: list[Row] = []
        self.decode_sizes = QUICK_DECODE if sizes is QUICK else DecodeSizes()

    def sync(self) -> None:
        """Wait for the device (CUDA runs asynchronously), so that clocks read real time."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, run: Callable[[], int]) -> float:
        """Seconds per step of ``run()``, which returns how many steps it ran."""
        self.sync()
        start = self.clock()
        steps = run()
        self.sync()
        return (self.clock() - start) / max(steps, 1)

    def interleaved(self, runs: dict[str, Callable[[], int]], chunks: int) -> dict[str, float]:
        """Median seconds per step of each run, timed in turn, ``chunks`` times each.

        The order alternates (A B, then B A, ...), so that neither side always runs
        first. The result also holds, under ``"a/b paired"`` style keys
        (``"B/A"``), the median of the ratios of the two runs timed side by side in
        each round, a second estimate that a drifting load disturbs less.
        """
        names = list(runs)
        times: dict[str, list[float]] = {name: [] for name in names}
        for index in range(chunks):
            for name in names if index % 2 == 0 else names[::-1]:
                times[name].append(self.time(runs[name]))
        medians = {name: statistics.median(values) for name, values in times.items()}
        reference = times[names[0]]
        for name in names[1:]:
            pairs = [b / a for a, b in zip(reference, times[name], strict=True)]
            medians[f"{name}/{names[0]}"] = statistics.median(pairs)
        return medians

    @contextmanager
    def row(self, section: str, what: str, target: float | None = None) -> Iterator[Row]:
        """Yield a row to fill; record it, with the error if its measurement fails."""
        row = Row(section, what, target=target)
        try:
            yield row
        except Exception as error:  # the table goes on; the exit status says it failed
            row.error = f"{type(error).__name__}: {error}".splitlines()[0][:160]
            traceback.print_exc(file=sys.stderr)
        self.rows.append(row)
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else row.error
        print(
            f"  done: {section} / {what}: {row.a} | {row.b} | {ratio}", file=sys.stderr, flush=True
        )


def ms(seconds: float) -> str:
    """Seconds shown as milliseconds."""
    return f"{seconds * 1e3:.3f} ms"


def mib(size: float) -> str:
    """Bytes shown as MiB."""
    return f"{size / 2**20:.3f} MiB"


def article_data(bench: Bench) -> tuple[torch.Tensor, torch.Tensor]:
    """The article's ``x`` and ``y`` at this run's sizes, from a fixed seed, on the device."""
    n, d_in, _, d_out = bench.sizes.article
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=generator).to(bench.device)
    y = torch.randn(n, d_out, generator=generator).to(bench.device)
    return x, y


# --------------------------------------------------------------------------- 1. overhead


def overhead(bench: Bench) -> None:
    """1: ``stochdepth.train`` on ``DynamicNet`` against the article's loop and model."""
    _, d_in, hidden, d_out = bench.sizes.article
    device = bench.device
    x, y = article_data(bench)
    torch.manual_seed(1)
    package = DynamicNet(d_in, hidden, d_out).to(device)
    for what, model_class in [
        ("package train() vs article loop, per step", article9.DynamicNet),
        ("package train() vs article loop with ReLU for clamp", ArticleWithReLU),
    ]:
        torch.manual_seed(1)
        article = model_class(d_in, hidden, d_out).to(device)
        # The target is the issue's, against the article's program; the ReLU twin's row
        # shows what the package's own work costs, for information.
        target = 1.05 if model_class is article9.DynamicNet else None
        with bench.row("1 overhead", what, target) as row:
            overhead_one(bench, row, article, package, x, y)
    bench.rows[
        -1
    ].note += "; the same kernels on both sides: what remains is the package's own work"


class ArticleWithReLU(article9.DynamicNet):
    """The article's model with ``relu()`` for ``clamp(min=0)``, the kernel the package uses.

    On the CPU ``clamp(min=0)`` costs about twice ``relu()`` forward and backward, which
    makes the package faster than the article; this twin isolates the package's overhead.
    """

    def forward(self, x: Tensor) -> Tensor:
        """The article's forward pass, with ``relu()``."""
        h_relu = self.input_linear(x).relu()
        for _ in range(random.randint(0, 3)):
            h_relu = self.middle_linear(h_relu).relu()
        y_pred: Tensor = self.output_linear(h_relu)
        return y_pred


def overhead_one(
    bench: Bench, row: Row, article: nn.Module, package: nn.Module, x: Tensor, y: Tensor
) -> None:
    """Fill one overhead row: chunks of the article's loop and of ``train``, interleaved."""
    chunk = bench.sizes.chunk
    sink = io.StringIO()
    calls = {"article": 0, "package": 0}  # the n-th chunk of each side draws from seed n

    def article_loop() -> int:  # the article's loop, as written, on a fresh optimizer
        random.seed(calls["article"])
        calls["article"] += 1
        criterion = torch.nn.MSELoss(reduction="sum")
        optimizer = torch.optim.SGD(article.parameters(), lr=1e-4, momentum=0.9)
        lines = []
        for t in range(chunk):
            y_pred = article(x)
            loss = criterion(y_pred, y)
            if t % 100 == 99 or t == chunk - 1:
                lines.append(f"{t} {loss.item()}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return chunk

    def package_loop() -> int:  # the same depths: both draw random.randint(0, 3) per step
        random.seed(calls["package"])
        calls["package"] += 1
        stochdepth.train(package, x, y, steps=chunk, log_every=chunk, file=sink)
        return chunk

    article_loop()  # warm up both
    package_loop()
    medians = bench.interleaved(
        {"article": article_loop, "package": package_loop}, bench.sizes.chunks
    )
    row.a, row.b = ms(medians["article"]), ms(medians["package"])
    row.ratio = medians["package"] / medians["article"]
    row.note = (
        f"N, D_in, H, D_out = {bench.sizes.article}; {bench.sizes.chunks} chunks of "
        f"{chunk} steps a side, same depths; median of paired chunk ratios "
        f"{medians['package/article']:.3f}"
    )


# --------------------------------------------------------------------------- 2. compile


def compile_rows(bench: Bench) -> None:
    """2: eager against compiled training steps, one row per way of compiling."""
    modes: list[tuple[str, str, dict[str, object]]] = [
        ("skip", "skip mode, torch.compile(model)", {}),
        ("masked", "masked mode, torch.compile(model)", {}),
        ("masked-tensor", "masked mode, fullgraph=True, depth as a tensor", {"fullgraph": True}),
    ]
    if bench.device.type == "cuda":
        modes.append(
            ("skip", "skip mode, mode='reduce-overhead' (CUDA graphs)", {"mode": "reduce-overhead"})
        )
    for mode, what, options in modes:
        with bench.row("2 compile", what) as row:
            compile_one(bench, row, mode, options)


def compile_one(bench: Bench, row: Row, mode: str, options: dict[str, object]) -> None:
    """Fill one compile row: warm up until every depth was seen, then time both."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    _, d_in, hidden, d_out = bench.sizes.article
    device = bench.device
    x, y = article_data(bench)
    torch.manual_seed(1)
    eager = DynamicNet(d_in, hidden, d_out)
    if mode != "skip":
        eager.middle = RepeatedBlock(eager.middle.layer, UniformDepth(0, 3), mode="masked")
    eager = eager.to(device)
    model = copy.deepcopy(eager)
    # The depth as a tensor argument, drawn outside (masked mode's fullgraph use), or None.
    as_tensor = mode == "masked-tensor"

    def depth() -> Tensor | None:
        return torch.tensor(random.randint(0, 3), device=device) if as_tensor else None

    if bench.backend == "inductor":  # time a cold compile, not a read of the disk cache
        import torch._inductor.config

        torch._inductor.config.force_disable_caches = True
        warnings.filterwarnings("ignore", "dynamo_pgo force disabled")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(copy.deepcopy(model))(x, depth=depth())
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=bench.backend, **options)  # type: ignore[arg-type]
    cudagraphs = options.get("mode") == "reduce-overhead"
    criterion = nn.MSELoss(reduction="sum")

    def make_step(net: nn.Module, params: nn.Module) -> Callable[[], None]:
        optimizer = torch.optim.SGD(params.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss = criterion(net(x, depth=depth()), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step

    eager_step, compiled_step = make_step(eager, eager), make_step(compiled, model)
    random.seed(0)
    start = time.perf_counter()
    warmup = 0
    while warmup < 500 and (
        warmup < 4 if as_tensor else set(model.middle.depth_histogram) != {0, 1, 2, 3}
    ):
        compiled_step()
        warmup += 1
    for _ in range(3):  # CUDA graphs record on the first runs after compiling
        compiled_step()
    bench.sync()
    compile_seconds = time.perf_counter() - start
    graphs = counters["stats"]["unique_graphs"]
    eager_step()
    chunk = bench.sizes.chunk

    def chunk_of(step: Callable[[], None]) -> Callable[[], int]:
        def run() -> int:
            for _ in range(chunk):
                step()
            return chunk

        return run

    random.seed(1)
    medians = bench.interleaved(
        {"eager": chunk_of(eager_step), "compiled": chunk_of(compiled_step)}, bench.sizes.chunks
    )
    recompiles = counters["stats"]["unique_graphs"] - graphs
    row.a, row.b = ms(medians["eager"]), ms(medians["compiled"])
    row.ratio = medians["compiled"] / medians["eager"]
    chunk_note = f"{bench.sizes.chunks} chunks of {chunk} steps a side; "
    row.note = chunk_note + (
        f"backend {bench.backend}; compile {compile_seconds:.1f} s over {warmup + 3} warm-up "
        f"steps{'' if as_tensor else ' (all 4 depths seen)'}; {graphs} graphs in all; one forward: "
        f"{explained.graph_count} graphs, {explained.graph_break_count} graph breaks; "
        f"{recompiles} graphs compiled after warm-up"
    )


# --------------------------------------------------------------------------- 3. per sample


def per_sample(bench: Bench) -> None:
    """3: per-row depths against a batch depth of 8 and against masking everything."""
    batch, width = bench.sizes.per_sample
    device = bench.device
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(width, width), nn.ReLU()).to(device)
    x = torch.randn(batch, width, device=device)
    fixed = RepeatedBlock(layer, FixedDepth(8))
    rows = RepeatedBlock(layer, UniformDepth(0, 8), per_sample=True)
    masked = RepeatedBlock(layer, UniformDepth(0, 8), per_sample=True, mode="masked")

    def step_of(block: RepeatedBlock) -> Callable[[], int]:
        def run() -> int:
            layer.zero_grad(set_to_none=True)
            block(x).sum().backward()
            return 1

        return run

    random.seed(0)
    for block in (fixed, rows, masked):
        step_of(block)()
    medians = bench.interleaved(
        {"fixed": step_of(fixed), "rows": step_of(rows), "masked": step_of(masked)},
        bench.sizes.per_sample_reps,
    )
    mean_depth = sum(d * c for d, c in rows.depth_histogram.items()) / max(
        sum(rows.depth_histogram.values()), 1
    )
    note = f"batch {batch}, width {width}, forward + backward; mean row depth {mean_depth:.2f}"
    with bench.row("3 per-sample", "per-row 0..8 (skip) vs batch depth 8", 0.75) as row:
        row.a, row.b = ms(medians["fixed"]), ms(medians["rows"])
        row.ratio = medians["rows"] / medians["fixed"]
        row.note = note
    with bench.row("3 per-sample", "per-row 0..8 (skip) vs mask-everything (masked)") as row:
        row.a, row.b = ms(medians["masked"]), ms(medians["rows"])
        row.ratio = medians["rows"] / medians["masked"]
        row.note = (
            "masked: the layer runs 8 times on every row, torch.where keeps each row's own repeats"
        )


# --------------------------------------------------------------------------- 4. memory


def activation_peak(bench: Bench, block: RepeatedBlock, x: Tensor, depth: int) -> tuple[int, str]:
    """Peak activation memory of one forward and backward pass, and how it was measured."""
    layer_grads = lambda: block.zero_grad(set_to_none=True)  # noqa: E731
    layer_grads()
    if bench.device.type == "cuda":
        bench.sync()
        torch.cuda.reset_peak_memory_stats(bench.device)
        base = torch.cuda.memory_allocated(bench.device)
        block(x, depth=depth).sum().backward()
        bench.sync()
        peak = torch.cuda.max_memory_allocated(bench.device) - base
        layer_grads()
        return peak, "torch.cuda.max_memory_allocated above the baseline"
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(block, x)
    with tracker:
        block(x, depth=depth).sum().backward()
    snapshot = tracker.get_tracker_snapshot("peak")
    peaks = next(iter(snapshot.values()))
    layer_grads()
    activation = next(value for key, value in peaks.items() if str(key).endswith("ACT"))
    return int(activation), "MemTracker's peak of activation memory (ACT)"


def memory(bench: Bench) -> None:
    """4: peak activation memory with and without checkpointed repeats."""
    batch, width = bench.sizes.memory
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(width, width), nn.ReLU()).to(bench.device)
    x = torch.randn(batch, width, device=bench.device)
    deepest = max(bench.sizes.memory_depths)
    plain = RepeatedBlock(layer, FixedDepth(deepest))
    checkpointed = RepeatedBlock(layer, FixedDepth(deepest), checkpoint=True)
    for depth in bench.sizes.memory_depths:
        target = 0.25 if depth == deepest else None
        with bench.row("4 memory", f"depth {depth}: checkpoint=True vs plain", target) as row:
            want, how = activation_peak(bench, plain, x, depth)
            got, _ = activation_peak(bench, checkpointed, x, depth)
            row.a, row.b = mib(want), mib(got)
            row.ratio = got / want if want else None
            row.note = f"batch {batch}, width {width}; {how}"


# --------------------------------------------------------------------------- 5. layer drop


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """The one-liner of timm's ``drop_path`` and torchvision's ``stochastic_depth``.

    ``timm/layers/drop.py`` (``drop_path``) and ``torchvision/ops/stochastic_depth.py``
    (``stochastic_depth(x, p, mode="row")``): the branch was computed for every row;
    multiply the dropped rows by zero and scale the kept ones by ``1 / (1 - p)``.
    """
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)


def layer_drop(bench: Bench) -> None:
    """5: row-mode layer drop against timm's and torchvision's multiply-by-the-mask."""
    batch, positions, width = bench.sizes.layer_drop
    device = bench.device
    torch.manual_seed(0)
    branches = [
        nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        ).to(device)
        for _ in range(bench.sizes.layer_drop_branches)
    ]
    x = torch.randn(batch, positions, width, device=device, requires_grad=True)
    for rate in (0.1, 0.5):
        stack = LayerDropList(branches, rate, per_sample=True, residual=True, seed=0)

        def masked(rate: float = rate) -> int:
            h = x
            for branch in branches:
                h = h + drop_path(branch(h), rate)  # timm's Block: x + drop_path(mlp(x))
            h.sum().backward()
            return 1

        def rows(stack: LayerDropList = stack) -> int:
            stack(x).sum().backward()
            return 1

        masked()
        rows()
        stack.reset_layer_runs()
        medians = bench.interleaved({"masked": masked, "rows": rows}, bench.sizes.layer_drop_reps)
        kept = sum(stack.keep_frequencies) / len(stack)
        with bench.row("5 layer drop", f"row mode vs multiply-by-mask, drop rate {rate}") as row:
            row.a, row.b = ms(medians["masked"]), ms(medians["rows"])
            row.ratio = medians["rows/masked"]
            row.note = (
                f"batch {batch}, {positions} positions, width {width}, "
                f"{len(branches)} MLP branches, forward + backward; keep rate {1 - rate:g}, "
                f"rows kept {kept:.3f}"
            )


# --------------------------------------------------------------------------- 5. CUDA graphs


def cuda_graph_rows(bench: Bench) -> None:
    """5: the article's training step replayed from CUDA graphs against the eager step."""
    what = "article's model, CUDAGraphStep vs eager step"
    with bench.row("6 CUDA graphs", what, 1 / 3) as row:
        _, d_in, hidden, d_out = bench.sizes.article
        x, y = article_data(bench)
        torch.manual_seed(1)
        eager = DynamicNet(d_in, hidden, d_out, SeededDepth(0, 3, seed=0)).to(bench.device)
        graphed = copy.deepcopy(eager)
        criterion = nn.MSELoss(reduction="sum")
        eager_step = training_step(eager, eager, criterion, x, y, lr=1e-4)
        optimizer = torch.optim.SGD(graphed.parameters(), lr=1e-4, momentum=0.9)
        graph_step = CUDAGraphStep(graphed, optimizer, criterion)
        start = time.perf_counter()
        while len(graph_step.graphs) < 4 and time.perf_counter() < start + 120:
            graph_step(x, y)  # until every depth 0..3 has its graph
        bench.sync()
        capture_seconds = time.perf_counter() - start
        for _ in range(3):
            eager_step()
        for model in (eager, graphed):  # the same depth sequence from here on
            model.middle.sampler = SeededDepth(0, 3, seed=1)
        chunk = bench.sizes.chunk
        medians = bench.interleaved(
            {
                "eager": repeat(eager_step, chunk),
                "graphs": repeat(lambda: graph_step(x, y), chunk),
            },
            bench.sizes.graph_chunks,
        )
        row.a, row.b = ms(medians["eager"]), ms(medians["graphs"])
        row.ratio = medians["graphs"] / medians["eager"]
        row.note = (
            f"N, D_in, H, D_out = {bench.sizes.article}, depths 0..3, SGD with momentum; "
            f"{bench.sizes.graph_chunks} chunks of {chunk} steps a side, same depths; median "
            f"of paired chunk ratios {medians['graphs/eager']:.3f}; {graph_step.captures} "
            f"graphs captured in {capture_seconds:.1f} s (with the warm-up steps)"
        )


def training_step(
    model: nn.Module, params: nn.Module, criterion: nn.Module, x: Tensor, y: Tensor, lr: float
) -> Callable[[], None]:
    """The article's eager step (zero_grad, forward, loss, backward, SGD with momentum)."""
    optimizer = torch.optim.SGD(params.parameters(), lr=lr, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def repeat(step: Callable[[], object], steps: int) -> Callable[[], int]:
    """A chunk: ``step()`` run ``steps`` times; returns ``steps``."""

    def run() -> int:
        for _ in range(steps):
            step()
        return steps

    return run


# --------------------------------------------------------------------------- 6. model sizes


def model_size_rows(bench: Bench) -> None:
    """6: every mode against skip mode, a transformer-sized layer at depths 0..8."""
    for width in bench.sizes.model_widths:
        model_size_width(bench, width)


def model_size_width(bench: Bench, width: int) -> None:
    """The rows of one width: each side trains its own copy of the same model.

    The model is ``Linear(width, width)`` (an input projection, so that depth 0 still
    has something to train) followed by the repeated ``TransformerEncoderLayer``.
    """
    import torch._dynamo

    batch, positions = bench.sizes.model_shape
    device = bench.device
    torch.manual_seed(0)
    projection = nn.Linear(width, width, device=device)
    layer = nn.TransformerEncoderLayer(
        width, max(1, width // 64), 4 * width, dropout=0.0, batch_first=True, device=device
    )
    x = torch.randn(batch, positions, width, device=device)
    y = torch.zeros_like(x)
    criterion = nn.MSELoss()
    lr = 1e-6  # the weights hardly move: every side keeps training the same model

    def model(**options: object) -> tuple[nn.Module, RepeatedBlock]:
        block = RepeatedBlock(copy.deepcopy(layer), SeededDepth(0, 8, seed=0), **options)
        return nn.Sequential(copy.deepcopy(projection), block), block

    models = {
        "skip": model(),
        "masked": model(mode="masked"),
        "per-sample": model(per_sample=True),
        "checkpoint": model(checkpoint=True),
    }
    steps: dict[str, Callable[[], object]] = {
        name: training_step(net, net, criterion, x, y, lr) for name, (net, _) in models.items()
    }
    torch._dynamo.reset()
    start = time.perf_counter()
    net, block = model()
    block.layer = torch.compile(block.layer, backend=bench.backend)  # type: ignore[assignment]
    models["compiled"] = net, block
    steps["compiled"] = training_step(net, net, criterion, x, y, lr)
    criterion(net[1](net[0](x), depth=2), y).backward()  # compile forward and backward
    net.zero_grad(set_to_none=True)
    bench.sync()
    compile_seconds = time.perf_counter() - start
    graph_note = ""
    if device.type == "cuda":
        net, block = models["CUDA graphs"] = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        graph_step = CUDAGraphStep(net, optimizer, criterion)
        steps["CUDA graphs"] = lambda: graph_step(x, y)
        start = time.perf_counter()
        while len(graph_step.graphs) < 9 and time.perf_counter() < start + 60:
            graph_step(x, y)
        bench.sync()
        graph_note = (
            f"; {len(graph_step.graphs)} graphs captured in {time.perf_counter() - start:.1f} s"
        )
    for step in steps.values():  # warm up every side
        step()
    for _, block in models.values():  # the same depth sequence on every side from here on
        block.sampler = SeededDepth(0, 8, seed=1)
    chunk = bench.sizes.model_chunk
    medians = bench.interleaved(
        {name: repeat(step, chunk) for name, step in steps.items()}, bench.sizes.model_chunks
    )
    shape = (
        f"Linear({width}, {width}), then TransformerEncoderLayer({width}, "
        f"nhead={max(1, width // 64)}, "
        f"dim_feedforward={4 * width}, dropout=0), x {batch} x {positions} x {width}; "
        f"training step (forward, MSELoss, backward, SGD); {bench.sizes.model_chunks} chunks "
        f"of {chunk} steps a side"
    )
    notes = {
        "masked": "the layer runs 8 times, torch.where keeps the depth's repeats",
        "per-sample": "each row (sequence) its own depth 0..8, mean about 4",
        "checkpoint": "segments of ceil(sqrt(depth)) repeats recomputed in backward",
        "compiled": (
            f"torch.compile(layer, backend={bench.backend!r}) inside a skip-mode block: one "
            f"graph for every depth; compile {compile_seconds:.1f} s"
        ),
        "CUDA graphs": "CUDAGraphStep, one graph per depth" + graph_note,
    }
    for name in steps:
        if name == "skip":
            continue
        with bench.row("7 model sizes", f"width {width}: {name} vs skip, depths 0..8") as row:
            row.a, row.b = ms(medians["skip"]), ms(medians[name])
            row.ratio = medians[name] / medians["skip"]
            row.note = f"{notes[name]}; {shape}; paired ratio {medians[f'{name}/skip']:.3f}"


# --------------------------------------------------------------------------- 5. truncated backprop


def truncated_backprop(bench: Bench) -> None:
    """8: ``grad_depth=k`` against full backprop on a transformer-sized layer."""
    batch, positions, width, depth, k = bench.sizes.truncated
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        width, nhead=4, dim_feedforward=4 * width, dropout=0.0, batch_first=True
    ).to(bench.device)
    x = torch.randn(batch, positions, width, device=bench.device)
    full = RepeatedBlock(layer, FixedDepth(depth))
    truncated = RepeatedBlock(layer, FixedDepth(depth), grad_depth=k)
    size = f"TransformerEncoderLayer({width}, 4 heads), batch {batch}, {positions} positions"
    section, what = "8 truncated backprop", f"depth {depth}: grad_depth={k} vs full backprop"
    with bench.row(section, f"{what}, activation memory") as row:
        want, how = activation_peak(bench, full, x, depth)
        got, _ = activation_peak(bench, truncated, x, depth)
        row.a, row.b = mib(want), mib(got)
        row.ratio = got / want if want else None
        row.note = f"{size}; {how}"

    def step_of(block: RepeatedBlock) -> Callable[[], int]:
        def run() -> int:
            layer.zero_grad(set_to_none=True)
            block(x).sum().backward()
            return 1

        return run

    with bench.row(section, f"{what}, forward + backward step") as row:
        medians = bench.interleaved(
            {"full": step_of(full), "truncated": step_of(truncated)}, bench.sizes.truncated_reps
        )
        row.a, row.b = ms(medians["full"]), ms(medians["truncated"])
        row.ratio = medians["truncated"] / medians["full"]
        row.note = (
            f"{size}; median of {bench.sizes.truncated_reps} steps a side; the first "
            f"{depth - k} repeats run under torch.no_grad()"
        )


# --------------------------------------------------------------------------- 9. per-row crossover


def crossover_rows(bench: Bench) -> None:
    """9: per-row depth by compaction, by masking, and (CUDA) masked under CUDAGraphStep."""
    for width in bench.sizes.crossover_widths:
        if bench.device.type == "cuda" or width <= bench.sizes.crossover_cpu_widest:
            crossover_width(bench, width)


def crossover_width(bench: Bench, width: int) -> None:
    """The rows of one width: each side trains its own copy of one block on the same rows.

    Every side is a training step (forward, ``MSELoss``, backward, SGD with momentum) of
    ``RepeatedBlock(Linear(width, width) + ReLU, per_sample=True)``, whose rows' depths
    are the same on every side (one seeded sampler each, reseeded after the warm-up).
    """
    batch, device = bench.sizes.crossover_batch, bench.device
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(width, width), nn.ReLU()).to(device)
    x = torch.randn(batch, width, device=device)
    y = torch.zeros_like(x)
    criterion = nn.MSELoss()
    lr = 1e-6  # the weights hardly move: every side keeps training the same model

    def model(**options: object) -> tuple[nn.Module, RepeatedBlock]:
        block = RepeatedBlock(
            copy.deepcopy(layer), SeededDepth(0, 8, seed=0), per_sample=True, **options
        )
        return nn.Sequential(block), block

    cuda = device.type == "cuda"
    names = {
        "masked": "masked per-row vs compaction",
        "graphs": "masked per-row, CUDAGraphStep vs compaction",
    }
    medians: dict[str, float] = {}
    what = f"width {width}: {names['masked']}"
    with bench.row("9 per-row crossover", what) as row:
        models = {"compaction": model(), "masked": model(mode="masked")}
        steps: dict[str, Callable[[], object]] = {
            name: training_step(net, net, criterion, x, y, lr) for name, (net, _) in models.items()
        }
        capture_note = ""
        if cuda:
            net, block = models["graphs"] = model(mode="masked")
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
            graph_step = CUDAGraphStep(net, optimizer, criterion)
            steps["graphs"] = lambda: graph_step(x, y)
            start = time.perf_counter()
            for _ in range(2):  # the first step runs eagerly, the second captures
                graph_step(x, y)
            bench.sync()
            capture_note = (
                f"; {len(graph_step.graphs)} graph captured in "
                f"{time.perf_counter() - start:.2f} s (with the first step and the warm-up)"
            )
        for step in steps.values():  # warm up every side
            step()
        for _, block in models.values():  # the same rows' depths on every side from here on
            block.sampler = SeededDepth(0, 8, seed=1)
            block.reset_depth_histogram()
        # The work grows as width**2: fewer steps per chunk for the wide layers.
        chunk = max(2, bench.sizes.crossover_chunk * 256**2 // max(width, 256) ** 2)
        medians = bench.interleaved(
            {name: repeat(step, chunk) for name, step in steps.items()},
            bench.sizes.crossover_chunks,
        )
        histogram = models["compaction"][1].depth_histogram
        mean = sum(d * c for d, c in histogram.items()) / max(sum(histogram.values()), 1)
        note = (
            f"Linear({width}, {width}) + ReLU, batch {batch}, rows' depths uniform 0..8 "
            f"(mean {mean:.2f}), the same on every side; training step (forward, MSELoss, "
            f"backward, SGD); {bench.sizes.crossover_chunks} chunks of {chunk} steps a side"
        )
        row.a, row.b = ms(medians["compaction"]), ms(medians["masked"])
        row.ratio = medians["masked"] / medians["compaction"]
        row.note = (
            f"masked: every repeat on every row, torch.where keeps each row's own; {note}; "
            f"paired ratio {medians['masked/compaction']:.3f}"
        )
    if cuda:
        with bench.row("9 per-row crossover", f"width {width}: {names['graphs']}") as row:
            if "graphs" not in medians:
                raise RuntimeError("not measured: see the row above")
            row.a, row.b = ms(medians["compaction"]), ms(medians["graphs"])
            row.ratio = medians["graphs"] / medians["compaction"]
            row.note = (
                f"one graph for every rows' depths, read from a static tensor{capture_note}; "
                f"{note}; paired ratio {medians['graphs/compaction']:.3f}"
            )


# --------------------------------------------------------------------------- 10. scheduler


def scheduler_rows(bench: Bench) -> None:
    """10: the scheduler against the three ways of batching inputs of varied depths."""
    synthetic_rows(bench)
    recipe_rows(bench)


class RowCounter:
    """Counts the rows that a layer is applied to: rows x repeats executed."""

    def __init__(self, layer: nn.Module) -> None:
        self.rows = 0
        layer.register_forward_pre_hook(self.count)

    def count(self, module: nn.Module, args: tuple[object, ...]) -> None:
        """The hook: add the first argument's rows."""
        first = args[0]
        assert isinstance(first, Tensor)
        self.rows += first.shape[0]


def batches(count: int, size: int) -> list[slice]:
    """The consecutive batches of ``size`` inputs (the last may be short)."""
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def synthetic_rows(bench: Bench) -> None:
    """10, synthetic: a block run to a known per-input depth, 1 to ``max_depth``."""
    sizes, device = bench.sizes, bench.device
    n, width, size, top = (
        sizes.scheduler_inputs,
        sizes.scheduler_width,
        sizes.scheduler_batch,
        sizes.scheduler_max_depth,
    )
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(width, width), nn.Tanh()).to(device).eval()
    counter = RowCounter(layer)
    x = torch.randn(n, width, device=device)
    generator = torch.Generator().manual_seed(0)
    # geometric with mean 8, cut at the maximum: mean about a quarter of it
    depths = (torch.empty(n).geometric_(1 / 8, generator=generator).clamp(1, top)).long()
    skip = RepeatedBlock(layer, depth_limit=top).eval()
    rows = RepeatedBlock(layer, per_sample=True, depth_limit=top).eval()
    scheduler = DepthScheduler(skip, size, max_depth=top)
    parts = batches(n, size)
    depth_list = depths.tolist()
    inputs = list(x.unbind(0))  # a stream of inputs, one tensor each, on every side

    @torch.no_grad()
    def run_to_max() -> int:
        for part in parts:
            skip(torch.stack(inputs[part]), depth=top).unbind(0)
        return n

    @torch.no_grad()
    def stop_when_all_halted() -> int:
        for part in parts:
            skip(torch.stack(inputs[part]), depth=max(depth_list[part])).unbind(0)
        return n

    @torch.no_grad()
    def compaction() -> int:
        for part in parts:
            rows(torch.stack(inputs[part]), depth=depths[part]).unbind(0)
        return n

    def scheduled() -> int:
        scheduler.run(inputs, depths=depth_list)
        return n

    runs = {
        "run to max": run_to_max,
        "stop when all halted": stop_when_all_halted,
        "compaction": compaction,
        "scheduler": scheduled,
    }
    work = {}
    for name, run in runs.items():  # warm up, and count each side's row-repeats
        counter.rows = 0
        run()
        work[name] = counter.rows
    medians = bench.interleaved(
        {"scheduler": scheduled, **{k: v for k, v in runs.items() if k != "scheduler"}},
        sizes.scheduler_chunks,
    )
    what = f"synthetic depths 1..{top}"
    shape = (
        f"mean depth {float(depths.float().mean()):.2f}; Linear({width}, {width}) + Tanh, "
        f"{n} inputs, batches of {size}, eval, no_grad; "
        f"every side reads a stream of one-row inputs and returns one output per input; "
        f"{sizes.scheduler_chunks} passes a side"
    )
    scheduler_table(bench, what, int(depths.sum()), work, medians, shape)


class ACTCriterion:
    """The ACT halt head as an exit criterion, for the block's own early exit."""

    def __init__(self, act: nn.Module, every: int) -> None:
        self.act = act
        self.every = every

    def __call__(
        self, previous: Tensor, current: Tensor, repeat: int, outputs: object = None
    ) -> Tensor:
        """Stop at the end of a supervision step whose halt logit is above the threshold."""
        if (repeat + 1) % self.every:
            return torch.zeros(current.shape[0], dtype=torch.bool, device=current.device)
        return self.act(current) > self.act.threshold


def recipe_rows(bench: Bench) -> None:
    """10, recipe: the halting recipe's model, its ACT head as every side's exit rule."""
    import importlib.util

    sizes, device = bench.sizes, bench.device
    path = Path(__file__).resolve().parent.parent / "examples" / "halting.py"
    spec = importlib.util.spec_from_file_location("halting_recipe", path)
    assert spec is not None
    assert spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe
    spec.loader.exec_module(recipe)
    settings = recipe.QUICK if sizes.scheduler_recipe_quick else recipe.Settings()
    start = time.perf_counter()
    torch.manual_seed(0)
    model = recipe.Model(settings)
    with contextlib.redirect_stdout(io.StringIO()):
        recipe.train(model, settings, 0, log_every=10**9)
    trained = time.perf_counter() - start
    model = model.to(device).eval()
    act, block = model.halt, model.block
    layer = block.layer
    counter = RowCounter(layer)
    n, size = sizes.scheduler_inputs, settings.scheduler_batch
    x, _ = recipe.strings(n, settings.bits, torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.no_grad():
        embedded = model.embed(x)
    zeros = torch.zeros_like(embedded)
    top = act.max_depth
    policy = ExitWhenConverged(None, top, criterion=ACTCriterion(act, act.every))
    whole = RepeatedBlock(layer, eval_depth=policy, row_args=0, depth_limit=top).eval()
    rows = RepeatedBlock(layer, eval_depth=policy, per_sample=True, row_args=0).eval()
    scheduler = DepthScheduler(block, size, halting=act)
    parts = batches(n, size)
    inputs = list(zip(zeros, embedded, strict=True))  # a stream of (state, embedding) inputs

    def stacked(part: slice) -> tuple[Tensor, Tensor]:
        states, embeddings = zip(*inputs[part], strict=True)
        return torch.stack(states), torch.stack(embeddings)

    @torch.no_grad()
    def run_to_max() -> int:
        for part in parts:
            block(*stacked(part), depth=top).unbind(0)
        return n

    @torch.no_grad()
    def stop_when_all_halted() -> int:
        for part in parts:
            whole(*stacked(part)).unbind(0)
        return n

    @torch.no_grad()
    def compaction() -> int:
        for part in parts:
            rows(*stacked(part)).unbind(0)
        return n

    def scheduled() -> int:
        scheduler.run(inputs)
        return n

    runs = {
        "run to max": run_to_max,
        "stop when all halted": stop_when_all_halted,
        "compaction": compaction,
        "scheduler": scheduled,
    }
    work = {}
    for name, run in runs.items():
        counter.rows = 0
        run()
        work[name] = counter.rows
    depths = torch.tensor([r.depth for r in scheduler.run(inputs)])
    with torch.no_grad():
        own = torch.cat([(rows(zeros[p], embedded[p]), rows.last_depth)[1] for p in parts])
    agree = bool(torch.equal(own.cpu(), depths))
    medians = bench.interleaved(
        {"scheduler": scheduled, **{k: v for k, v in runs.items() if k != "scheduler"}},
        sizes.scheduler_chunks,
    )
    what = "recipe, ACT halt head"
    shape = (
        f"mean depth {float(depths.float().mean()):.2f} of {top}; examples/halting.py model "
        f"(width {settings.width}, {settings.bits} bits, "
        f"{'--quick ' if sizes.scheduler_recipe_quick else ''}training {trained:.0f} s), "
        f"{n} test strings, batches of {size}, halt head every {act.every} repeats; every "
        f"side reads a stream of one-row inputs and returns one output per input; "
        f"per-row early exit gives the scheduler's depths: {agree}; "
        f"{sizes.scheduler_chunks} passes a side"
    )
    scheduler_table(bench, what, int(depths.sum()), work, medians, shape)


def scheduler_table(
    bench: Bench,
    what: str,
    ideal: int,
    work: dict[str, int],
    medians: dict[str, float],
    shape: str,
) -> None:
    """The four rows of one workload: work against the ideal, time against each side."""
    section = "10 scheduler"
    with bench.row(section, f"{what}: row-repeats, scheduler vs ideal", 1.05) as row:
        row.a, row.b = str(ideal), str(work["scheduler"])
        row.ratio = work["scheduler"] / ideal
        row.note = (
            "row-repeats executed: "
            + ", ".join(f"{name} {count}" for name, count in work.items())
            + f"; {shape}"
        )
    # throughput >= 1.8x run-to-max and >= 1.3x stop-when-all-halted: time <= 1/1.8, 1/1.3
    targets = {"run to max": 0.556, "stop when all halted": 0.769, "compaction": None}
    for name, target in targets.items():
        with bench.row(section, f"{what}: time per input, scheduler vs {name}", target) as row:
            row.a, row.b = ms(medians[name]), ms(medians["scheduler"])
            row.ratio = medians["scheduler"] / medians[name]
            row.note = (
                f"throughput {medians[name] / medians['scheduler']:.2f}x; paired ratio "
                f"{1 / medians[f'{name}/scheduler']:.3f}"
            )


# --------------------------------------------------------------------------- report


def machine(device: torch.device) -> list[str]:
    """Describe the machine: CPU, cores, versions, threads and device."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"machine: {cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"stochdepth {stochdepth.__version__}, torch threads {torch.get_num_threads()}",
    ]
    if device.type == "cuda":
        lines.append(f"device: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    else:
        lines.append("device: cpu")
    return lines


def report(bench: Bench, header: list[str], command: str) -> str:
    """The results as a Markdown table, after the command and the machine."""
    out = [f"command: {command}", *header, ""]
    out.append("| comparison | A (reference) | B (measured) | B / A | target | status | notes |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for row in bench.rows:
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else ""
        target = f"<= {row.target:g}" if row.target is not None else ""
        note = row.error or row.note
        out.append(
            f"| {row.section}: {row.what} | {row.a} | {row.b} | {ratio} | {target} | "
            f"{row.status()} | {note} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run every comparison and print the table; exit status 1 if a row failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--sections",
        default=None,
        help=(
            "which comparisons to run, by number (default: all, 1..11, on CUDA; "
            "1,2,3,4,5,8,10,11 on the CPU, and 7 and 9 too with --quick)"
        ),
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="time steps by this process's CPU time (default on the CPU) or wall time "
        "(default, and the only sensible choice, on CUDA)",
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend (default: inductor; aot_eager with --quick)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False here")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else Sizes()
    backend = args.compile_backend or ("aot_eager" if args.quick else "inductor")
    clock = args.clock or ("wall" if device.type == "cuda" else "cpu")
    bench = Bench(device, sizes, backend, clock)
    header = machine(device)
    header.append(
        "clock: "
        + (
            "wall time (time.perf_counter"
            + (", after CUDA synchronize)" if device.type == "cuda" else ")")
            if clock == "wall"
            else "this process's CPU time (time.process_time)"
        )
    )
    print("\n".join(header), file=sys.stderr, flush=True)
    sections = {
        "1": overhead,
        "2": compile_rows,
        "3": per_sample,
        "4": memory,
        "5": layer_drop,
        "6": cuda_graph_rows,
        "7": model_size_rows,
        "8": truncated_backprop,
        "9": crossover_rows,
        "10": scheduler_rows,
        "11": decode_rows,
        "12": speculative_rows,
    }
    # Sections 7 and 9 at full size take minutes on a CPU: there on demand (or --quick).
    if device.type == "cuda":
        default = "1,2,3,4,5,6,7,8,9,10,11,12"
    else:
        default = "1,2,3,4,5,7,8,9,10,11,12" if args.quick else "1,2,3,4,5,8,10,11,12"
    given = default if args.sections is None else args.sections
    chosen = [name.strip() for name in given.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(sections))
    if unknown or not chosen:
        parser.error(f"--sections takes numbers among 1,2,3,4,5,6,7,8,9,10,11,12, got {given!r}")
    if "6" in chosen and device.type != "cuda":
        parser.error("--sections 6 (CUDA graphs) needs --device cuda")
    for name in sorted(set(chosen), key=int):
        sections[name](bench)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(report(bench, header, command.strip()))
    return 1 if any(row.error for row in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
