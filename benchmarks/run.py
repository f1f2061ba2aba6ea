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
5. truncated backprop: a transformer-sized layer (``nn.TransformerEncoderLayer``,
   width 256, 128 positions, batch 32) at depth 32 with ``grad_depth=4`` against
   full backprop: peak activation memory and the time of a training step.

Times are medians over chunks of steps run interleaved (A B A B ...), so that a
machine's load drifts through both sides alike. Every row is printed even when its
measurement fails (the row then says ``error``, and the exit status is 1).
"""

from __future__ import annotations

import argparse
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
from stochdepth import DynamicNet, FixedDepth, RepeatedBlock, UniformDepth

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import article9  # the article's class, kept verbatim in tests/


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
    truncated: tuple[int, int, int, int, int] = (32, 128, 256, 32, 4)  # batch, positions,
    # width, depth, grad_depth
    truncated_reps: int = 3


QUICK = Sizes(
    article=(8, 12, 6, 3),
    chunk=3,
    chunks=3,
    per_sample=(16, 8),
    per_sample_reps=3,
    memory=(4, 8),
    truncated=(2, 4, 8, 6, 2),
    truncated_reps=1,
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
        print(f"  done: {section} / {what}", file=sys.stderr, flush=True)


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


# --------------------------------------------------------------------------- 5. truncated backprop


def truncated_backprop(bench: Bench) -> None:
    """5: ``grad_depth=k`` against full backprop on a transformer-sized layer."""
    batch, positions, width, depth, k = bench.sizes.truncated
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        width, nhead=4, dim_feedforward=4 * width, dropout=0.0, batch_first=True
    ).to(bench.device)
    x = torch.randn(batch, positions, width, device=bench.device)
    full = RepeatedBlock(layer, FixedDepth(depth))
    truncated = RepeatedBlock(layer, FixedDepth(depth), grad_depth=k)
    size = f"TransformerEncoderLayer({width}, 4 heads), batch {batch}, {positions} positions"
    section, what = "5 truncated backprop", f"depth {depth}: grad_depth={k} vs full backprop"
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
        default="1,2,3,4,5",
        help="which comparisons to run, by number (default: all, 1,2,3,4,5)",
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
        "5": truncated_backprop,
    }
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(sections))
    if unknown or not chosen:
        parser.error(f"--sections takes numbers among {','.join(sections)}, got {args.sections!r}")
    for name in sorted(set(chosen)):
        sections[name](bench)
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(report(bench, header, command.strip()))
    return 1 if any(row.error for row in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
