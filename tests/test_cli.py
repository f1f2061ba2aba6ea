"""The command line, ``python -m stochdepth train`` and the ``stochdepth`` script."""

from __future__ import annotations

import importlib.metadata
import math
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import stochdepth
from stochdepth import SeededDepth
from stochdepth._cli import main
from stochdepth.samplers._registry import BUILTIN_SAMPLERS

from support import article9
from support.processes import QUIET_ENV, TIMEOUT

SCRIPT = Path(sys.executable).with_name("stochdepth")
SAMPLER_NAMES = tuple(BUILTIN_SAMPLERS)
# What `train` prints on stderr at the end (unless --no-summary), and nothing else.
SUMMARY = re.compile(
    r"stochdepth train: \d+ steps(, final loss \S+, mean depth \d+\.\d{3}, depths( \d+:\d+)+)?\n"
)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int | str | None, str, str]:
    """Run ``main`` in-process; return (exit status, stdout, stderr)."""
    try:
        status: int | str | None = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# One thread, as conftest.py sets for this process, so that in-process and subprocess
# runs do the same floating-point arithmetic (and print the same losses).
CHILD_ENV = {**QUIET_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


ENTRY_POINTS: dict[str, list[str]] = {
    "python-m": [sys.executable, "-m", "stochdepth"],
    "script": [str(SCRIPT)],
}


def run_child(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=TIMEOUT,
    )


def parse_log(out: str) -> list[tuple[int, float]]:
    """Parse ``t loss`` lines, checking their format; return ``(t, loss)`` pairs."""
    assert out.endswith("\n") or out == ""
    pairs = []
    for line in out.splitlines():
        match = re.fullmatch(r"(\d+) (\S+)", line)
        assert match, f"not a 't loss' line: {line!r}"
        loss = float(match.group(2))
        assert repr(loss) == match.group(2), f"loss is not a float repr: {line!r}"
        assert math.isfinite(loss)
        assert loss >= 0  # a sum of squares
        pairs.append((int(match.group(1)), loss))
    return pairs


def logged_steps(steps: int, log_every: int) -> list[int]:
    return [t for t in range(steps) if (t + 1) % log_every == 0]


def article_lines(
    monkeypatch: pytest.MonkeyPatch, seed: int, steps: int, depth: Callable[[], int] | None
) -> list[str]:
    """The article's program (tests/support/article9.py), its depths from ``depth`` if given."""
    with monkeypatch.context() as patch:
        if depth is not None:
            fake_random = SimpleNamespace(seed=random.seed, randint=lambda low, high: depth())
            patch.setattr(article9, "random", fake_random)
        return article9.run(seed, steps=steps)


# --- output ---------------------------------------------------------------------------


def test_default_run_prints_the_article_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, err = run_main(capsys, "train", "--seed", "0")
    assert status == 0
    assert SUMMARY.fullmatch(err), err
    pairs = parse_log(out)
    assert [t for t, _ in pairs] == [99, 199, 299, 399, 499]
    assert out.splitlines() == article_lines(monkeypatch, 0, 500, None)


@pytest.mark.parametrize(("steps", "log_every"), [(50, 10), (25, 10), (20, 7), (5, 1)])
def test_a_line_every_log_every_steps(
    capsys: pytest.CaptureFixture[str], steps: int, log_every: int
) -> None:
    status, out, err = run_main(
        capsys, "train", "--seed", "1", "--steps", str(steps), "--log-every", str(log_every)
    )
    assert status == 0
    assert SUMMARY.fullmatch(err), err
    assert [t for t, _ in parse_log(out)] == logged_steps(steps, log_every)


def test_log_lines_are_the_losses_of_a_longer_log(capsys: pytest.CaptureFixture[str]) -> None:
    # Logging less often prints a subset of the same losses: logging does not perturb.
    _, every_5, _ = run_main(capsys, "train", "--seed", "2", "--steps", "40", "--log-every", "5")
    _, every_10, _ = run_main(capsys, "train", "--seed", "2", "--steps", "40", "--log-every", "10")
    fine = dict(parse_log(every_5))
    coarse = parse_log(every_10)
    assert coarse == [(t, fine[t]) for t in logged_steps(40, 10)]


@pytest.mark.parametrize("steps", ["0", "30"])
def test_log_every_zero_prints_nothing(capsys: pytest.CaptureFixture[str], steps: str) -> None:
    assert run_main(capsys, "train", "--steps", steps, "--log-every", "0", "--no-summary") == (
        0,
        "",
        "",
    )


def test_zero_steps_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "train", "--steps", "0", "--log-every", "1", "--no-summary") == (
        0,
        "",
        "",
    )


def test_seed_makes_runs_identical(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("train", "--steps", "30", "--log-every", "10")
    first = run_main(capsys, *args, "--seed", "5")
    random.seed(123)  # the global state before the run must not matter
    torch.manual_seed(123)
    second = run_main(capsys, *args, "--seed", "5")
    other = run_main(capsys, *args, "--seed", "6")
    assert first == second
    assert first[0] == other[0] == 0
    assert len(parse_log(first[1])) == len(parse_log(other[1])) == 3
    assert first[1] != other[1]


# --- samplers -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 2])
def test_fixed_sampler_runs_the_article_loop_at_that_depth(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    status, out, err = run_main(
        capsys, "train", "--seed", "3", "--steps", "100", "--sampler", f"fixed:depth={depth}"
    )
    assert status == 0
    assert SUMMARY.fullmatch(err), err
    assert out.splitlines() == article_lines(monkeypatch, 3, 100, lambda: depth)


def test_fixed_depths_give_different_runs(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("train", "--seed", "3", "--steps", "20", "--log-every", "10")
    runs = [run_main(capsys, *args, "--sampler", f"fixed:depth={d}") for d in (0, 1, 2)]
    assert all(status == 0 for status, _, _ in runs)
    outs = [out for _, out, _ in runs]
    assert len(set(outs)) == 3


def test_seeded_sampler_runs_the_article_loop_with_its_depths(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = "seeded:low=0,high=3,seed=7"
    status, out, err = run_main(capsys, "train", "--seed", "4", "--steps", "100", "--sampler", spec)
    assert status == 0
    assert SUMMARY.fullmatch(err), err
    reference = SeededDepth(0, 3, seed=7)
    assert out.splitlines() == article_lines(monkeypatch, 4, 100, reference.sample)


def test_seeded_runs_are_identical_and_differ_from_uniform(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The data and the weights come from torch's RNG, so --seed stays the same.
    args = ("train", "--seed", "8", "--steps", "40", "--log-every", "10")
    first = run_main(capsys, *args, "--sampler", "seeded:low=0,high=3,seed=11")
    second = run_main(capsys, *args, "--sampler", "seeded:seed=11")  # the same range
    uniform = run_main(capsys, *args, "--sampler", "uniform:low=0,high=3")
    default = run_main(capsys, *args)
    other_seed = run_main(capsys, *args, "--sampler", "seeded:low=0,high=3,seed=12")
    assert first == second
    assert len(parse_log(first[1])) == 4
    assert uniform == default
    assert first[1] != uniform[1]
    assert first[1] != other_seed[1]


# --- --progress -----------------------------------------------------------------------


def test_progress_bar_goes_to_stderr_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("train", "--seed", "9", "--steps", "30", "--log-every", "10")
    plain = run_main(capsys, *args, "--sampler", "fixed:depth=2")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    status, out, err = run_main(capsys, *args, "--sampler", "fixed:depth=2", "--progress")
    assert status == 0
    assert out == plain[1]  # only the loss lines, the same ones
    assert [t for t, _ in parse_log(out)] == [9, 19, 29]
    assert "30/30" in err
    assert "100%" in err
    assert "\r" in err
    assert "mean_depth=2.00" in err  # every step used depth 2
    assert re.search(r"loss=\d", err)


def test_progress_off_a_terminal_is_plain_lines(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("train", "--seed", "9", "--steps", "120", "--log-every", "0", "--no-summary")
    status, out, err = run_main(capsys, *args, "--sampler", "fixed:depth=2", "--progress")
    assert status == 0
    assert out == ""
    assert "\r" not in err  # a log file gets no carriage returns
    lines = err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        f"train: {n}/120 steps" for n in (25, 50, 75, 100, 120)
    ]
    assert all(re.fullmatch(r"train: \d+/120 steps, loss=\S+, mean_depth=2\.00", x) for x in lines)


def test_progress_without_tqdm_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` now raises ImportError
    status, out, err = run_main(capsys, "train", "--steps", "5", "--progress")
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.endswith("\n")
    assert err.startswith("stochdepth")
    assert "error" in err
    assert "tqdm" in err
    assert "progress" in err
    assert "Traceback" not in err


# --- --version ------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    installed = importlib.metadata.version("stochdepth")
    assert stochdepth.__version__ == installed
    assert run_main(capsys, "--version") == (0, f"stochdepth {installed}\n", "")


# --- bad arguments --------------------------------------------------------------------

BAD_ARGUMENTS = [
    pytest.param(["train", "--steps", "-1"], ["--steps", "-1"], id="steps-negative"),
    pytest.param(["train", "--steps", "abc"], ["--steps", "abc"], id="steps-not-int"),
    pytest.param(["train", "--steps", "2.5"], ["--steps", "2.5"], id="steps-float"),
    pytest.param(["train", "--lr", "0"], ["--lr", "'0'"], id="lr-zero"),
    pytest.param(["train", "--lr", "nan"], ["--lr", "nan"], id="lr-nan"),
    pytest.param(["train", "--lr", "inf"], ["--lr", "inf"], id="lr-inf"),
    pytest.param(["train", "--lr", "-1"], ["--lr", "-1"], id="lr-negative"),
    pytest.param(["train", "--lr", "-1e-3"], ["--lr"], id="lr-negative-exponent"),
    pytest.param(["train", "--momentum", "-0.5"], ["--momentum", "-0.5"], id="momentum"),
    pytest.param(["train", "--log-every", "-3"], ["--log-every", "-3"], id="log-every"),
    pytest.param(["train", "--seed", "-1"], ["--seed", "-1"], id="seed-negative"),
    pytest.param(
        ["train", "--sampler", "nope"],
        ["--sampler", "nope", *SAMPLER_NAMES],
        id="sampler-unknown",
    ),
    pytest.param(
        ["train", "--sampler", "fixed:depth=-1"],
        ["--sampler", "fixed", "depth", "-1"],
        id="sampler-bad-value",
    ),
    pytest.param(
        ["train", "--sampler", "fixed:dept=2"],
        ["--sampler", "fixed", "dept", "depth"],
        id="sampler-unknown-parameter",
    ),
    pytest.param(
        ["train", "--sampler", "seeded"], ["--sampler", "seeded", "seed"], id="sampler-no-seed"
    ),
    pytest.param(["train", "--sampler", ""], ["--sampler"], id="sampler-empty"),
    pytest.param(["train", "--sampler"], ["--sampler"], id="sampler-no-value"),
    pytest.param(["train", "--bogus"], ["--bogus"], id="train-bogus"),
    pytest.param(["--bogus", "train"], ["--bogus"], id="bogus-train"),
    pytest.param([], ["COMMAND"], id="no-command"),
    pytest.param(["fly"], ["fly", "train"], id="unknown-command"),
    pytest.param(["train", "extra-positional"], ["extra-positional"], id="extra-positional"),
]


def assert_usage_error(status: object, out: str, err: str, names: list[str]) -> None:
    assert status == 2
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("stochdepth")
    assert "error" in err
    assert "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} not in {err!r}"


@pytest.mark.parametrize(("args", "names"), BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], args: list[str], names: list[str]
) -> None:
    assert_usage_error(*run_main(capsys, *args), names)


def test_bogus_option_without_a_command_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # argparse reports the missing command first, so the message does not name --bogus.
    assert_usage_error(*run_main(capsys, "--bogus"), ["COMMAND"])


def test_seed_beyond_torchs_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # torch.manual_seed takes seeds below 2**64 (SeededDepth enforces the same range).
    assert_usage_error(*run_main(capsys, "train", "--seed", str(2**64), "--steps", "1"), ["--seed"])


def test_largest_seed_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(
        capsys, "train", "--seed", str(2**64 - 1), "--steps", "10", "--log-every", "10"
    )
    assert status == 0
    assert SUMMARY.fullmatch(err), err
    assert [t for t, _ in parse_log(out)] == [9]


# --- real processes -------------------------------------------------------------------


def test_module_and_script_print_what_main_prints(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("train", "--seed", "4", "--steps", "20", "--log-every", "10")
    status, expected, _ = run_main(capsys, *args)
    assert status == 0
    assert [t for t, _ in parse_log(expected)] == [9, 19]
    for entry in ENTRY_POINTS:
        result = run_child(entry, *args)
        assert result.returncode == 0, entry
        assert SUMMARY.fullmatch(result.stderr), (entry, result.stderr)
        assert result.stdout == expected, entry


@pytest.mark.parametrize(
    ("entry", "args", "names"),
    [
        ("python-m", ["train", "--steps", "-1"], ["--steps"]),
        ("python-m", ["train", "--sampler", "nope"], ["--sampler", *SAMPLER_NAMES]),
        ("script", [], ["COMMAND"]),
        ("script", ["train", "--lr", "0"], ["--lr"]),
    ],
)
def test_bad_arguments_in_a_real_process(entry: str, args: list[str], names: list[str]) -> None:
    result = run_child(entry, *args)
    assert_usage_error(result.returncode, result.stdout, result.stderr, names)


def test_version_in_a_real_process() -> None:
    result = run_child("script", "--version")
    assert result.returncode == 0
    assert result.stdout == f"stochdepth {importlib.metadata.version('stochdepth')}\n"
    assert result.stderr == ""


def test_an_unseeded_sampler_draws_its_seed_from_the_seeded_generator(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # bernoulli without seed= takes its seed from torch's generator: the one --seed
    # seeded, not whatever state torch was in when the arguments were parsed.
    args = ("train", "--seed", "7", "--steps", "60", "--log-every", "20")
    runs = []
    for before in (123, 456):
        torch.manual_seed(before)
        runs.append(run_main(capsys, *args, "--sampler", "bernoulli:max_depth=3,p=0.5"))
    assert runs[0] == runs[1]
    assert runs[0][0] == 0
    # and building it leaves the seeded data and weights alone: at depth 0 the first
    # loss is the one any depth-0 sampler gives
    torch.manual_seed(0)
    _, fixed_out, _ = run_main(capsys, *args, "--sampler", "fixed:depth=0")
    _, bernoulli_out, _ = run_main(capsys, *args, "--sampler", "bernoulli:max_depth=3,p=0.0")
    assert bernoulli_out == fixed_out


# --- the command line's summary -------------------------------------------------------


def test_the_command_line_prints_the_summary_of_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    state, random_state = torch.get_rng_state(), random.getstate()
    try:
        assert (
            main(
                [
                    "train",
                    "--seed",
                    "3",
                    "--steps",
                    "40",
                    "--log-every",
                    "0",
                    "--sampler",
                    "fixed:depth=2",
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("stochdepth train: 40 steps, final loss ")
        assert captured.err.endswith(", mean depth 2.000, depths 2:40\n")
        assert main(["train", "--seed", "3", "--steps", "5", "--no-summary"]) == 0
        assert capsys.readouterr().err == ""
    finally:
        torch.set_rng_state(state)
        random.setstate(random_state)


def test_the_samplers_command_lists_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert set(BUILTIN_SAMPLERS) <= set(names)
    assert "each of max_depth repeats kept with probability p" in out
    assert "``" not in out
