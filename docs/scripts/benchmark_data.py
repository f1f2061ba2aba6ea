"""Measure the CPU data of the performance page's figures, with the benchmark's own code.

It runs, on the CPU, the comparisons of ``benchmarks/run.py`` that the figures draw
(the functions of that script, at its default sizes) and one sweep of its own:

* ``memory``: peak activation memory against depth for section 4's layer
  (``Linear(256, 256)`` + ``ReLU``, batch 256), plain, ``checkpoint=True`` and
  ``grad_depth=4``, at depths 1 to 64 (MemTracker's ``ACT`` peak, as section 4 measures
  it: deterministic);
* ``modes``: section 7 at width 256 (every mode against skip mode on a repeated
  ``TransformerEncoderLayer``, depths 0..8);
* ``crossover``: section 9 (per-row depth by compaction against masked rows, widths 8
  to 1024).

Run it from the repository root (a few minutes with one thread)::

    python docs/scripts/benchmark_data.py --threads 1

It writes ``docs/data/benchmarks-cpu.json`` (the command, the machine, the date and
every row), which ``docs/scripts/figures.py`` reads. The GPU figures read
``docs/data/benchmarks-h200.json``, the rows of a GPU run recorded on the performance
page (this script measures no GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as bench_run  # noqa: E402  (benchmarks/run.py, after its folder is on the path)

from stochdepth import FixedDepth, RepeatedBlock  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "data" / "benchmarks-cpu.json"
MEMORY_DEPTHS = (1, 2, 4, 8, 16, 32, 64)
GRAD_DEPTH = 4
PARTS = ("memory", "modes", "crossover")


def memory_sweep(bench: Any) -> dict[str, Any]:
    """Activation memory (MiB) against depth: plain, checkpointed, truncated backprop."""
    batch, width = bench.sizes.memory
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(width, width), nn.ReLU())
    x = torch.randn(batch, width)
    deepest = max(MEMORY_DEPTHS)
    blocks = {
        "plain": RepeatedBlock(layer, FixedDepth(deepest)),
        "checkpoint=True": RepeatedBlock(layer, FixedDepth(deepest), checkpoint=True),
        f"grad_depth={GRAD_DEPTH}": RepeatedBlock(
            layer, FixedDepth(deepest), grad_depth=GRAD_DEPTH
        ),
    }
    curves: dict[str, list[float]] = {name: [] for name in blocks}
    how = ""
    for depth in MEMORY_DEPTHS:
        for name, block in blocks.items():
            peak, how = bench_run.activation_peak(bench, block, x, depth)
            curves[name].append(peak / 2**20)
        print(
            f"  memory at depth {depth}: "
            + ", ".join(f"{name} {values[-1]:.3f} MiB" for name, values in curves.items()),
            file=sys.stderr,
            flush=True,
        )
    return {
        "layer": f"Linear({width}, {width}) + ReLU, batch {batch}",
        "how": how,
        "depths": list(MEMORY_DEPTHS),
        "mib": curves,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen parts and write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS)
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file")
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts takes some of {', '.join(PARTS)}, got {args.parts!r}")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    bench = bench_run.Bench(device, bench_run.Sizes(), "inductor", "cpu")
    data: dict[str, Any] = {
        "command": "python docs/scripts/benchmark_data.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
        "machine": [*bench_run.machine(device), "clock: this process's CPU time"],
    }
    if "memory" in parts:
        data["memory"] = memory_sweep(bench)
    if "modes" in parts:
        bench_run.model_size_width(bench, 256)
    if "crossover" in parts:
        bench_run.crossover_rows(bench)
    data["rows"] = [
        {
            "section": row.section,
            "what": row.what,
            "a": row.a,
            "b": row.b,
            "ratio": row.ratio,
            "note": row.error or row.note,
        }
        for row in bench.rows
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if any(row.error for row in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
