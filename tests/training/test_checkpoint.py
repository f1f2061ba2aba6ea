"""Checkpoints: exact resume after SIGKILL, atomic saves, safe loading, non-finite losses.

"The printed trajectory" of a killed and resumed run is defined here as: the killed
run's ``t loss`` lines for the steps before the checkpoint's step ``C``, followed by
every line the resumed run prints, which starts at step ``C`` and reprints nothing
before it. That concatenation must equal the uninterrupted run's output line for
line, and the killed run's lines from ``C`` on (work it did after the checkpoint)
must be the resumed run's first lines.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import stochdepth
from stochdepth import (
    CheckpointError,
    DynamicNet,
    FixedDepth,
    NonFiniteError,
    ScheduledDepth,
    SeededDepth,
    load_checkpoint,
    train,
)
from stochdepth._cli import main
from stochdepth.training._checkpoint import MAGIC

from support import park
from support.processes import QUIET_ENV, kill_when_parked, run_python

PARK = Path(park.__file__)
# One thread in the children, as conftest.py sets for this process, so that in-process
# and subprocess runs do the same floating-point arithmetic.
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CHILD_ENV = {**QUIET_ENV, **THREADS}
STEPS, EVERY, LOG_EVERY = 120, 25, 10
SUMMARY = re.compile(r"stochdepth train: \d+ steps, final loss \S+, mean depth .*\n")

# Every built-in sampler, and the step inside whose forward pass the run is killed:
# before the first periodic checkpoint, exactly at one, and in between.
KILLS = [
    pytest.param(None, 61, id="uniform"),
    pytest.param("fixed:depth=2", 10, id="fixed"),
    pytest.param("seeded:low=0,high=3,seed=7", 50, id="seeded"),
    pytest.param("bernoulli:max_depth=4,p=0.6,seed=1", 37, id="bernoulli"),
    pytest.param("geometric:p=0.4,max_depth=5,seed=2", 99, id="geometric"),
    pytest.param("scheduled:start=1,end=4,steps=100,seed=3", 88, id="scheduled"),
]


def train_args(path: Path, sampler: str | None, *extra: str) -> list[str]:
    args = ["train", "--seed", "3", "--steps", str(STEPS), "--log-every", str(LOG_EVERY)]
    args += ["--checkpoint", str(path), "--checkpoint-every", str(EVERY), *extra]
    return args + ([] if sampler is None else ["--sampler", sampler])


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[object, str, str]:
    try:
        status: object = main(list(args))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "stochdepth", *args, check=False, env=THREADS)


def run_parked(mode: str, count: int, args: list[str]) -> tuple[str, str]:
    """Run ``park.py``, wait until it parks, SIGKILL it; return its stdout and stderr."""
    return kill_when_parked(PARK, mode, str(count), "--", *args, env=THREADS)


def log_steps(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()]


def assert_same_state(a: stochdepth.Checkpoint, b: stochdepth.Checkpoint) -> None:
    """Bit-identical model, optimizer, random states and history."""
    assert a.step == b.step
    assert a.history == b.history
    assert_equal_trees(a.model_state, b.model_state)
    assert_equal_trees(a.optimizer_state, b.optimizer_state)
    assert_equal_trees(a.rng_state, b.rng_state)


def assert_equal_trees(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for key in a:
            assert_equal_trees(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_equal_trees(x, y)
    else:
        assert a == b


# --- exact resume after SIGKILL ---------------------------------------------------------


@pytest.mark.parametrize(("sampler", "kill_at"), KILLS)
def test_a_killed_run_resumes_bit_identically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sampler: str | None, kill_at: int
) -> None:
    reference_path = tmp_path / "reference.ckpt"
    status, expected, expected_err = run_main(capsys, *train_args(reference_path, sampler))
    assert status == 0
    assert log_steps(expected) == list(range(LOG_EVERY - 1, STEPS, LOG_EVERY))

    path = tmp_path / "run.ckpt"
    killed_out, _ = run_parked("step", kill_at, train_args(path, sampler))
    saved = (kill_at // EVERY) * EVERY  # the last checkpoint before the kill
    assert load_checkpoint(path).step == saved
    # the killed run printed every line before the step it was killed in
    assert log_steps(killed_out) == [t for t in log_steps(expected) if t < kill_at]

    # one resumes in a process of its own, the others in this one (to save time)
    if sampler is None:
        child = run_child(*train_args(path, sampler, "--resume"))
        status, out, err = child.returncode, child.stdout, child.stderr
    else:
        status, out, err = run_main(capsys, *train_args(path, sampler, "--resume"))
    assert status == 0, err
    assert err == expected_err
    assert SUMMARY.fullmatch(err)
    before = [line for line in killed_out.splitlines() if int(line.split()[0]) < saved]
    again = [line for line in killed_out.splitlines() if int(line.split()[0]) >= saved]
    assert before + out.splitlines() == expected.splitlines()
    assert out.splitlines()[: len(again)] == again
    assert_same_state(load_checkpoint(path), load_checkpoint(reference_path))


def test_a_run_killed_while_saving_keeps_the_previous_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampler = "seeded:low=0,high=3,seed=5"
    path = tmp_path / "run.ckpt"
    # saves: 1st at step 0, 2nd at step 25, 3rd at step 50 (killed half-way through)
    run_parked("save", 3, train_args(path, sampler))
    strays = [p for p in tmp_path.iterdir() if p.name.startswith(".run.ckpt.tmp-")]
    assert len(strays) == 1
    assert 0 < strays[0].stat().st_size < path.stat().st_size
    kept = load_checkpoint(path)
    assert kept.step == EVERY

    # it is the state after 25 steps, as a run of 25 steps leaves it
    short = tmp_path / "short.ckpt"
    args = train_args(short, sampler)
    args[args.index("--steps") + 1] = str(EVERY)
    assert run_main(capsys, *args)[0] == 0
    assert_same_state(kept, load_checkpoint(short))

    # the stray temporary file does not stop the resumed run, which removes it
    status, out, _ = run_main(capsys, *train_args(path, sampler, "--resume"))
    assert status == 0
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    reference = tmp_path / "reference.ckpt"
    status, expected, _ = run_main(capsys, *train_args(reference, sampler))
    assert out.splitlines() == [
        line for line in expected.splitlines() if int(line.split()[0]) >= EVERY
    ]
    assert_same_state(load_checkpoint(path), load_checkpoint(reference))


DRAWN = re.compile(r"stochdepth train: seed (\d+) drawn; --seed \1 repeats this run\n")


@pytest.mark.parametrize(("mode", "count"), [("step", 61), ("save", 2)], ids=["step", "save"])
def test_a_run_without_seed_draws_one_and_resumes_exactly_after_sigkill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, count: int
) -> None:
    path = tmp_path / "run.ckpt"
    args = train_args(path, "seeded:low=0,high=3,seed=4")
    del args[1:3]  # no --seed
    killed_out, killed_err = run_parked(mode, count, args)
    drawn = DRAWN.match(killed_err)
    assert drawn is not None, killed_err
    seed = int(drawn.group(1))
    assert load_checkpoint(path).run["seed"] == seed

    status, out, err = run_main(capsys, *args, "--resume")  # the seed comes from the file
    assert status == 0, err
    reference = tmp_path / "reference.ckpt"
    seeded = train_args(reference, "seeded:low=0,high=3,seed=4")
    seeded[seeded.index("--seed") + 1] = str(seed)
    status, expected, expected_err = run_main(capsys, *seeded)
    assert status == 0
    assert err == expected_err  # the summary alone: nothing about the seed on resume
    saved = (count // EVERY) * EVERY if mode == "step" else EVERY * (count - 2)
    before = [line for line in killed_out.splitlines() if int(line.split()[0]) < saved]
    assert before + out.splitlines() == expected.splitlines()
    assert_same_state(load_checkpoint(path), load_checkpoint(reference))


def test_resuming_without_seed_a_checkpoint_that_holds_none_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = small_run()
    path = tmp_path / "run.ckpt"
    train(DynamicNet(6, 5, 2), x, y, steps=2, log_every=None, checkpoint=path)
    status, out, err = run_main(capsys, "train", "--checkpoint", str(path), "--resume")
    assert_one_line_error(status, err, 2, f"checkpoint '{path}' holds no seed", "give --seed")
    assert out == ""


def test_resuming_with_another_seed_than_the_saved_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = small_run()
    path = tmp_path / "run.ckpt"
    train(DynamicNet(6, 5, 2), x, y, steps=2, log_every=None, checkpoint=path, seed=5)
    with pytest.raises(stochdepth.CheckpointError, match="seed=6 here, 5 there"):
        train(DynamicNet(6, 5, 2), x, y, steps=3, checkpoint=path, resume=True, seed=6)
    history = train(DynamicNet(6, 5, 2), x, y, steps=3, checkpoint=path, resume=True)
    assert len(history) == 3  # no seed given: the saved one is not checked


# --- resume from Python ---------------------------------------------------------------


def small_run(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(12, 6, generator=generator), torch.randn(12, 2, generator=generator)


@pytest.mark.parametrize("first", [0, 17, 40])
def test_resuming_with_more_steps_equals_one_longer_run(tmp_path: Path, first: int) -> None:
    x, y = small_run()

    def model() -> DynamicNet:
        torch.manual_seed(1)
        return DynamicNet(6, 5, 2, ScheduledDepth(start=0, end=4, steps=30, seed=9))

    straight = model()
    expected = train(straight, x, y, steps=60, log_every=None)
    path = tmp_path / "run.ckpt"
    train(model(), x, y, steps=first, log_every=None, checkpoint=path, checkpoint_every=7)
    resumed = model()
    history = train(resumed, x, y, steps=60, log_every=None, checkpoint=path, resume=True)
    assert history == expected
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resuming_a_finished_run_does_nothing(tmp_path: Path) -> None:
    x, y = small_run()
    path = tmp_path / "run.ckpt"
    expected = train(DynamicNet(6, 5, 2, FixedDepth(1)), x, y, steps=9, checkpoint=path)
    before = path.read_bytes()
    out = io.StringIO()
    history = train(
        DynamicNet(6, 5, 2, FixedDepth(1)), x, y, steps=9, checkpoint=path, resume=True, file=out
    )
    assert history == expected
    assert out.getvalue() == ""
    assert path.read_bytes() == before


def test_a_checkpoint_loads_with_weights_only_and_holds_the_run(tmp_path: Path) -> None:
    x, y = small_run()
    path = tmp_path / "run.ckpt"
    model = DynamicNet(6, 5, 2, SeededDepth(0, 3, seed=4))
    history = train(model, x, y, steps=12, log_every=None, checkpoint=path, checkpoint_every=5)
    checkpoint = load_checkpoint(path)
    assert checkpoint.step == 12
    assert checkpoint.history == history
    assert checkpoint.run["lr"] == 1e-4
    assert checkpoint.run["samplers"] == {"middle": "SeededDepth(low=0, high=3)"}
    assert checkpoint.versions["format"] == 1
    state = model.state_dict()
    assert_equal_trees(checkpoint.model_state, state)
    # the payload is a plain torch.save file behind the header
    payload = path.read_bytes()[len(MAGIC) + struct.calcsize("<IQ32s") :]
    assert torch.load(io.BytesIO(payload), weights_only=True)["step"] == 12


# --- safe loading -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a checkpoint of the command line's model, after 3 steps."""
    path = tmp_path_factory.mktemp("good") / "good.ckpt"
    state = torch.get_rng_state(), random.getstate()
    try:
        assert main(["train", "--seed", "0", "--steps", "3", "--checkpoint", str(path)]) == 0
    finally:
        torch.set_rng_state(state[0])
        random.setstate(state[1])
    return path.read_bytes()


def assert_one_line_error(status: object, err: str, status_expected: int, *words: str) -> None:
    assert status == status_expected
    assert err.count("\n") == 1, err
    assert err.endswith("\n"), err
    assert err.startswith("stochdepth train: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)


def resume(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[object, str]:
    args = ["train", "--seed", "0", "--steps", "6", "--checkpoint", str(path), "--resume"]
    status, out, err = run_main(capsys, *args, *extra)
    assert out == ""
    return status, err


class RunsCode:
    """Unpickling it would create the file ``RAN``: what an unsafe load would do."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, ("RAN",))


def damaged(good: bytes) -> dict[str, tuple[bytes, str]]:
    header = len(MAGIC) + struct.calcsize("<IQ32s")
    version_2 = MAGIC + struct.pack("<I", 2) + good[len(MAGIC) + 4 :]
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    evil_payload = pickle.dumps(RunsCode())
    evil = MAGIC + struct.pack(
        "<IQ32s", 1, len(evil_payload), hashlib.sha256(evil_payload).digest()
    )
    plain = io.BytesIO()
    torch.save({"step": 3}, plain)
    return {
        "truncated": (good[: len(good) // 3], "is truncated"),
        "truncated-header": (good[: header - 5], "is truncated"),
        "empty": (b"", "is truncated"),
        "corrupted": (bytes(flipped), "is corrupted"),
        "extra-bytes": (good + b"\0", "is corrupted"),
        "version-2": (version_2, "has format version 2"),
        "text": (b"hello, world\n", "is not a stochdepth checkpoint"),
        "plain-torch-save": (plain.getvalue(), "looks like a plain torch.save file"),
        "pickle-that-runs-code": (evil + evil_payload, "cannot be unpickled safely"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "truncated-header",
        "empty",
        "corrupted",
        "extra-bytes",
        "version-2",
        "text",
        "plain-torch-save",
        "pickle-that-runs-code",
    ],
)
def test_a_damaged_checkpoint_is_a_one_line_error_and_stays_untouched(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    good_checkpoint: bytes,
    case: str,
) -> None:
    content, problem = damaged(good_checkpoint)[case]
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.ckpt"
    path.write_bytes(content)
    status, err = resume(capsys, path)
    assert_one_line_error(status, err, 2, f"checkpoint '{path}'", problem)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]
    with pytest.raises(CheckpointError, match=re.escape(problem)) as raised:
        load_checkpoint(path)
    assert raised.value.path == str(path)


def test_a_missing_checkpoint_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nothing.ckpt"
    status, err = resume(capsys, path)
    assert_one_line_error(status, err, 2, f"checkpoint '{path}' does not exist")
    assert not path.exists()
    status, err = resume(capsys, tmp_path)
    assert_one_line_error(status, err, 2, "is a directory")


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_truncation_and_byte_flip_is_detected(
    tmp_path: Path, good_checkpoint: bytes, data: st.DataObject
) -> None:
    size = len(good_checkpoint)
    content = bytearray(good_checkpoint)
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, size - 1), label="length")]
    else:
        where = data.draw(st.integers(0, size - 1), label="offset")
        content[where] ^= data.draw(st.integers(1, 255), label="xor")
    path = tmp_path / "flipped.ckpt"
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint '{path}' ")):
        load_checkpoint(path)


def test_a_real_process_reports_a_corrupted_checkpoint_in_one_line(
    tmp_path: Path, good_checkpoint: bytes
) -> None:
    path = tmp_path / "run.ckpt"
    content = damaged(good_checkpoint)["corrupted"][0]
    path.write_bytes(content)
    result = run_child("train", "--seed", "0", "--checkpoint", str(path), "--resume")
    assert_one_line_error(result.returncode, result.stderr, 2, "is corrupted")
    assert result.stdout == ""
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--lr", "1e-3"], ["lr=0.001", "0.0001"]),
        (["--momentum", "0.5"], ["momentum=0.5"]),
        (["--sampler", "fixed:depth=3"], ["FixedDepth(depth=3)", "UniformDepth"]),
        (["--sampler", "seeded:high=2,seed=0"], ["SeededDepth(low=0, high=2)"]),
        (["--steps", "2"], ["at step 3, beyond this run's steps=2"]),
    ],
)
def test_resuming_another_runs_checkpoint_says_what_differs(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    good_checkpoint: bytes,
    extra: list[str],
    words: list[str],
) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes(good_checkpoint)
    status, err = resume(capsys, path, *extra)
    assert_one_line_error(status, err, 2, f"checkpoint '{path}'", *words)
    assert path.read_bytes() == good_checkpoint


def test_resuming_with_another_seed_says_the_data_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], good_checkpoint: bytes
) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes(good_checkpoint)
    args = ["train", "--seed", "1", "--checkpoint", str(path), "--resume"]
    status, _, err = run_main(capsys, *args)
    assert_one_line_error(status, err, 2, "x is not the data", "y is not the data")
    assert path.read_bytes() == good_checkpoint


def test_a_checkpoint_of_another_model_shape_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "small.ckpt"
    x, y = small_run()
    train(DynamicNet(6, 5, 2), x, y, steps=2, checkpoint=path)
    before = path.read_bytes()
    status, err = resume(capsys, path)
    assert_one_line_error(status, err, 2, "was saved from another model", "input_linear.weight")
    assert path.read_bytes() == before
    with pytest.raises(CheckpointError, match=r"another model: input_linear\.weight has shape"):
        train(DynamicNet(6, 4, 2), x, y, steps=3, checkpoint=path, resume=True)


def test_a_new_run_does_not_overwrite_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], good_checkpoint: bytes
) -> None:
    path = tmp_path / "run.ckpt"
    path.write_bytes(good_checkpoint)
    status, out, err = run_main(capsys, "train", "--seed", "0", "--checkpoint", str(path))
    assert_one_line_error(status, err, 2, "already exists", "--resume")
    assert out == ""
    assert path.read_bytes() == good_checkpoint


def test_a_folder_that_does_not_exist_fails_before_training(tmp_path: Path) -> None:
    x, y = small_run()
    model = DynamicNet(6, 5, 2)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=r"folder .* does not exist"):
        train(model, x, y, steps=5, checkpoint=tmp_path / "no" / "run.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--checkpoint-every", "5"], ["--checkpoint-every needs --checkpoint"]),
        (["--resume"], ["--resume needs --checkpoint"]),
        (["--checkpoint", "x.ckpt", "--seed", "0", "--checkpoint-every", "-1"], ["-1"]),
    ],
)
def test_checkpoint_options_are_checked(
    capsys: pytest.CaptureFixture[str], args: list[str], words: list[str]
) -> None:
    status, out, err = run_main(capsys, "train", *args)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    for word in words:
        assert word in err


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"checkpoint_every": 3}, ValueError, r"checkpoint_every=3 was given without checkpoint"),
        ({"resume": True}, ValueError, r"resume=True was given without checkpoint"),
        ({"checkpoint": 3}, TypeError, r"checkpoint must be a path"),
        ({"checkpoint": ""}, ValueError, r"checkpoint must be a path, got ''"),
        ({"checkpoint": "c", "checkpoint_every": -2}, ValueError, r"checkpoint_every must be"),
        ({"checkpoint": "c", "checkpoint_every": 2.5}, TypeError, r"checkpoint_every must be"),
        ({"checkpoint": "c", "resume": "yes"}, TypeError, r"resume must be a bool"),
    ],
)
def test_bad_checkpoint_arguments_are_named(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    if isinstance(kwargs.get("checkpoint"), str) and kwargs["checkpoint"]:
        kwargs["checkpoint"] = tmp_path / kwargs["checkpoint"]
    x, y = small_run()
    with pytest.raises(error, match=message):
        train(DynamicNet(6, 5, 2), x, y, steps=2, **kwargs)
    assert list(tmp_path.iterdir()) == []


# --- non-finite losses ----------------------------------------------------------------


def test_a_diverging_command_stops_in_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.ckpt"
    args = ["train", "--seed", "0", "--lr", "1e3", "--checkpoint", str(path)]
    status, out, err = run_main(capsys, *args, "--checkpoint-every", "1")
    assert_one_line_error(status, err, 1, "the loss became inf at step 1")
    assert out == ""
    kept = load_checkpoint(path)
    assert kept.step == 1  # the state before the step whose loss was not finite
    for value in kept.model_state.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert torch.isfinite(value).all()


class NaNAt(nn.Module):
    """A linear model whose output is NaN from its ``bad``-th call (from 0) on."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 2)
        self.bad = bad
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        self.calls += 1
        return out * float("nan") if self.calls > self.bad else out


@settings(max_examples=20)
@given(bad=st.integers(0, 250), log_every=st.sampled_from([None, 7, 1000]))
def test_a_nan_loss_stops_training_within_100_steps_naming_its_step(
    bad: int, log_every: int | None
) -> None:
    x, y = small_run()
    model = NaNAt(bad)
    with pytest.raises(NonFiniteError, match=rf"the loss became nan at step {bad};") as raised:
        train(model, x, y, steps=bad + 101, log_every=log_every, file=io.StringIO())
    assert raised.value.step == bad
    assert model.calls <= bad + 100


def test_a_nan_in_the_data_stops_at_step_0_and_saves_only_the_start(tmp_path: Path) -> None:
    x, y = small_run()
    x[3, 2] = float("nan")
    path = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteError, match="at step 0"):
        train(DynamicNet(6, 5, 2), x, y, steps=50, checkpoint=path, checkpoint_every=1)
    assert load_checkpoint(path).step == 0


def test_parameters_that_overflow_with_a_finite_loss_are_not_saved(tmp_path: Path) -> None:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x, y = torch.ones(1, 1), torch.full((1, 1), 10.0)
    path = tmp_path / "run.ckpt"
    # loss 100.0, gradient -20, so lr=1e38 sends the float32 weight to +inf
    with pytest.raises(NonFiniteError, match=r"weight became NaN or infinite .* step 0") as raised:
        train(model, x, y, steps=3, lr=1e38, momentum=0, checkpoint=path, checkpoint_every=1)
    assert raised.value.step == 0
    assert raised.value.loss == 100.0
    assert load_checkpoint(path).step == 0


def test_a_model_that_starts_non_finite_is_not_saved(tmp_path: Path) -> None:
    model = nn.Linear(6, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    x, y = small_run()
    path = tmp_path / "run.ckpt"
    with pytest.raises(NonFiniteError, match=r"bias is NaN or infinite before the first step"):
        train(model, x, y, steps=3, checkpoint=path)
    assert not path.exists()


# --- what the review found: unwritable files, links, Ctrl-C, bad option values -------------


def test_a_checkpoint_that_cannot_be_written_is_a_checkpoint_error(tmp_path: Path) -> None:
    # A legal name whose temporary sibling is too long: the first save fails.
    path = tmp_path / ("a" * 245 + ".ckpt")
    model = stochdepth.DynamicNet(4, 3, 2)
    with pytest.raises(CheckpointError, match=r"cannot be written: File name too long"):
        stochdepth.train(model, torch.randn(4, 4), torch.randn(4, 2), steps=2, checkpoint=path)
    assert not path.exists()


def test_a_checkpoint_behind_a_symbolic_link_is_saved_through_it(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    target, link = tmp_path / "runs" / "real.ckpt", tmp_path / "latest.ckpt"
    link.symlink_to(target)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    torch.manual_seed(0)
    stochdepth.train(
        stochdepth.DynamicNet(4, 3, 2, FixedDepth(1)), x, y, steps=3, checkpoint=target
    )
    torch.manual_seed(0)
    model = stochdepth.DynamicNet(4, 3, 2, FixedDepth(1))
    stochdepth.train(model, x, y, steps=6, checkpoint=link, resume=True)
    assert link.is_symlink()
    assert load_checkpoint(target).step == 6


def test_ctrl_c_is_one_line_that_says_how_to_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.ckpt"
    assert main(train_args(path, None, "--steps", "2")) == 0
    capsys.readouterr()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("stochdepth._cli.train", interrupted)
    assert main([*train_args(path, None, "--steps", "4"), "--resume"]) == 130
    err = capsys.readouterr().err
    assert err == (
        f"stochdepth train: interrupted; checkpoint '{path}' holds the last save: the same "
        f"command with --resume continues from it\n"
    )
    assert main(["train", "--steps", "4"]) == 130
    assert capsys.readouterr().err == "stochdepth train: interrupted\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "1e39"], "argument --lr: expected a number <= 3.40282e+38 (float32's largest"),
        (["--momentum", "1e39"], "argument --momentum: expected a number <= 3.40282e+38"),
        (
            ["--seed", "0", "--checkpoint", ""],
            "argument --checkpoint: expected a file path, got ''",
        ),
    ],
)
def test_option_values_the_run_cannot_use_are_one_line_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--steps", "1", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err
