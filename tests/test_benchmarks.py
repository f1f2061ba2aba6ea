"""The benchmark script runs and prints every row, so that it cannot rot.

Only that: timings belong to the benchmark's report, not to assertions here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.processes import run_python

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"

ROWS = [
    "1 overhead: package train() vs article loop, per step",
    "1 overhead: package train() vs article loop with ReLU for clamp",
    "2 compile: skip mode, torch.compile(model)",
    "2 compile: masked mode, torch.compile(model)",
    "2 compile: masked mode, fullgraph=True, depth as a tensor",
    "3 per-sample: per-row 0..8 (skip) vs batch depth 8",
    "3 per-sample: per-row 0..8 (skip) vs mask-everything (masked)",
    "4 memory: depth 1: checkpoint=True vs plain",
    "4 memory: depth 8: checkpoint=True vs plain",
    "4 memory: depth 64: checkpoint=True vs plain",
    "5 layer drop: row mode vs multiply-by-mask, drop rate 0.1",
    "5 layer drop: row mode vs multiply-by-mask, drop rate 0.5",
    *(
        f"7 model sizes: width {width}: {mode} vs skip, depths 0..8"
        for width in (8, 16)
        for mode in ("masked", "per-sample", "checkpoint", "compiled")
    ),
    "8 truncated backprop: depth 6: grad_depth=2 vs full backprop, activation memory",
    "8 truncated backprop: depth 6: grad_depth=2 vs full backprop, forward + backward step",
    *(f"9 per-row crossover: width {width}: masked per-row vs compaction" for width in (8, 16)),
    *(
        f"10 scheduler: {workload}: {what}"
        for workload in ("synthetic depths 1..32", "recipe, ACT halt head")
        for what in (
            "row-repeats, scheduler vs ideal",
            "time per input, scheduler vs run to max",
            "time per input, scheduler vs stop when all halted",
            "time per input, scheduler vs compaction",
        )
    ),
    *(
        f"11 decoding: batch {batch}: DepthCache vs unrolled 4 layers with DynamicCache, per token"
        for batch in (1, 2)
    ),
    *(
        f"11 decoding: batch {batch}: per-token exit vs fixed depth 2, block per token"
        for batch in (1, 2)
    ),
    "11 decoding: memory per token: policy='first' vs policy='exact'",
    "11 decoding: memory per token: policy='last' vs policy='exact'",
    "11 decoding: memory per token: policy='window', window=2 vs policy='exact'",
    *(
        f"12 speculative: batch 1: speculative, draft depth {depth}, vs full-depth cached "
        f"greedy, per token"
        for depth in (1, 2, 4)
    ),
]


def test_quick_benchmark_prints_every_row_and_the_machine() -> None:
    result = run_python(SCRIPT, "--quick", "--threads", "1", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    assert "command: python benchmarks/run.py --quick --threads 1" in table
    assert "torch threads 1" in table
    assert "torch 2." in table
    assert "logical cores" in table
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + len(ROWS)
    for row, line in zip(ROWS, lines[2:], strict=True):
        assert line.startswith(f"| {row} |"), line
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        assert cells[5] != "error", line
        assert cells[3], f"no ratio in {line}"


def test_sections_choose_the_comparisons() -> None:
    result = run_python(SCRIPT, "--quick", "--sections", "4", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 4 memory")]
    assert len(rows) == 3
    assert "| 1 overhead" not in result.stdout


def test_an_unknown_section_is_a_usage_error() -> None:
    result = run_python(SCRIPT, "--sections", "13", check=False)
    assert result.returncode == 2
    assert "--sections takes numbers among 1,2,3,4,5,6,7,8,9,10,11,12, got '13'" in result.stderr


def test_the_cuda_graph_section_needs_cuda() -> None:
    result = run_python(SCRIPT, "--quick", "--sections", "6", check=False)
    assert result.returncode == 2
    assert "--sections 6 (CUDA graphs) needs --device cuda" in result.stderr


@pytest.mark.parametrize("mode", [["--alone", "--gap-ms", "0"], ["--decodes", "1"]])
def test_the_repeat_times_script_prints_every_repeat(mode: list[str]) -> None:
    pytest.importorskip("transformers", reason="repeat_times.py builds a Llama (the hf extra)")
    result = run_python(SCRIPT.parent / "repeat_times.py", *mode, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("repeat ")]
    assert [line.split(":")[0] for line in lines] == [f"repeat {r}" for r in range(1, 9)]
    for line in lines:  # "repeat 3: 0.408 ms (repeats 1..3: 0.440 of the pass)"
        assert float(line.split()[2]) > 0, line
    assert lines[-1].endswith("(repeats 1..8: 1.000 of the pass)")
