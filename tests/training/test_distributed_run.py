"""Distributed training from the command line: ``stochdepth train --distributed`` under torchrun.

Real torchrun jobs of two gloo ranks (NCCL ranks on a GPU machine), a
SIGKILL of the whole job and an exact resume, and the one-line usage errors.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import stochdepth
from stochdepth import DynamicNet, train
from stochdepth._cli import main
from stochdepth.training._launch import parameter_digest

from support import park
from support.processes import QUIET_ENV

# The job's losses are the whole batch's, summed over the ranks' gradients: a single
# process's up to float32 rounding (see tests/test_distributed.py).
RTOL = 1e-5


DIGEST = re.compile(r"stochdepth train: rank (\d) of 2: parameters sha256 ([0-9a-f]{64})")


def test_torchrun_trains_with_identical_parameters_on_both_ranks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps, log_every = 60, 20
    args = ["--seed", "0", "--steps", str(steps), "--log-every", str(log_every)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "stochdepth", "train", "--distributed", "--digest"]
    env = {**QUIET_ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    digests = dict(DIGEST.findall(done.stderr))
    assert sorted(digests) == ["0", "1"], done.stderr
    assert digests["0"] == digests["1"]
    summaries = re.findall(r"stochdepth train: 60 steps, .* depths (.*)", done.stderr)
    assert len(summaries) == 1  # rank 0 only
    assert "0:" in summaries[0]  # depth 0 occurred
    # rank 0 alone logs, the losses of the whole batch: a single process's, up to rounding
    lines = done.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines] == [19, 39, 59]
    assert main(["train", *args, "--no-summary"]) == 0
    single = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in single] == [line.split()[0] for line in lines]
    assert [float(line.split()[1]) for line in lines] == pytest.approx(
        [float(line.split()[1]) for line in single], rel=RTOL
    )


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TORCHRUN_ENV = {**QUIET_ENV, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PARK = Path(park.__file__)


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [*TORCHRUN, "-m", "stochdepth", "train", "--distributed", *args]
    return subprocess.run(command, capture_output=True, text=True, env=TORCHRUN_ENV, timeout=300)


def kill_job(pid: int) -> None:
    """SIGKILL ``pid`` and every process it started (torchrun's ranks have their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # it ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    job, todo = [], [pid]
    while todo:
        job.append(todo.pop())
        todo.extend(children.get(job[-1], []))
    for member in job:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def torchrun_killed_at_step(step: int, *args: str) -> tuple[str, str]:
    """Run the job, wait until both ranks park in ``step``, SIGKILL the whole job."""
    command = [*TORCHRUN, str(PARK), "step", str(step), "--", "train", "--distributed", *args]
    job = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=TORCHRUN_ENV,
    )
    assert job.stderr is not None
    err = b""
    deadline = time.monotonic() + 300
    with selectors.DefaultSelector() as selector:
        selector.register(job.stderr, selectors.EVENT_READ)
        while err.count(b"PARKED") < 2:
            left = deadline - time.monotonic()
            chunk = os.read(job.stderr.fileno(), 4096) if selector.select(left) else b""
            if not chunk or left <= 0:
                kill_job(job.pid)
                raise AssertionError(f"the ranks did not both park: {err!r}")
            err += chunk
    kill_job(job.pid)
    out, rest = job.communicate(timeout=60)
    return out.decode(), (err + rest).decode()


@pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="finds the job's processes in /proc"
)
def test_torchrun_with_a_checkpoint_resumes_exactly_after_a_sigkill_of_the_whole_job(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.ckpt"
    args = ["--steps", "60", "--log-every", "5", "--checkpoint-every", "10"]
    killed_out, killed_err = torchrun_killed_at_step(33, *args, "--checkpoint", str(path))
    drawn = re.findall(
        r"stochdepth train: seed (\d+) drawn; --seed \1 repeats this run", killed_err
    )
    assert len(drawn) == 1, killed_err  # rank 0 alone says it
    assert stochdepth.load_checkpoint(path).step == 30
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    resumed = torchrun(*args, "--checkpoint", str(path), "--resume")  # the seed from the file
    assert resumed.returncode == 0, resumed.stderr
    straight = torchrun(*args, "--checkpoint", str(tmp_path / "s.ckpt"), "--seed", drawn[0])
    assert straight.returncode == 0, straight.stderr
    before = [line for line in killed_out.splitlines() if int(line.split()[0]) < 30]
    assert before + resumed.stdout.splitlines() == straight.stdout.splitlines()
    assert resumed.stderr == straight.stderr  # the summary, once
    a, b = stochdepth.load_checkpoint(path), stochdepth.load_checkpoint(tmp_path / "s.ckpt")
    assert a.history == b.history
    for key, value in a.model_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b.model_state[key]), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="NCCL needs a CUDA device; none here")
def test_torchrun_with_nccl_trains_on_the_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    nproc = min(2, torch.cuda.device_count())  # NCCL takes one GPU per rank
    args = ["--seed", "0", "--steps", "60", "--log-every", "20"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={nproc}", "-m", "stochdepth", "train", "--distributed"]
    command += ["--backend", "nccl", "--digest", *args]
    env = {**QUIET_ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    digests = re.findall(rf"rank \d of {nproc}: parameters sha256 ([0-9a-f]{{64}})", done.stderr)
    assert len(digests) == nproc
    assert len(set(digests)) == 1
    assert main(["train", *args, "--no-summary"]) == 0  # the CPU, one process
    cpu = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines()]
    gpu = [float(line.split()[1]) for line in done.stdout.splitlines()]
    assert gpu == pytest.approx(cpu, rel=1e-3)  # cuBLAS and the CPU round differently


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    return captured.err


@pytest.mark.usefixtures("no_torchrun")
def test_distributed_without_torchrun_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = cli_error(capsys, "--distributed", "--steps", "1")
    assert err.startswith("stochdepth train: error: --distributed runs under torchrun, ")
    assert "RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set" in err


def test_nccl_without_a_gpu_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so --backend nccl is not an error here")
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost"}
    for name, value in {**env, "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    err = cli_error(capsys, "--distributed", "--backend", "nccl")
    assert err.startswith("stochdepth train: error: --backend nccl needs a CUDA device")


def test_broadcast_depth_without_distributed_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = cli_error(capsys, "--broadcast-depth")
    assert err == "stochdepth train: error: --broadcast-depth needs --distributed\n"


def test_digest_prints_the_sha256_of_the_final_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", "--seed", "4", "--steps", "3", "--log-every", "0", "--digest"]) == 0
    err = capsys.readouterr().err
    printed = re.findall(r"stochdepth train: parameters sha256 ([0-9a-f]{64})", err)
    torch.manual_seed(4)
    random.seed(4)
    x, y = torch.randn(64, 1000), torch.randn(64, 10)
    model = DynamicNet(1000, 100, 10)
    train(model, x, y, steps=3, log_every=None)
    assert printed == [parameter_digest(model.parameters())]
    model.output_linear.bias.data[0] += 1e-6
    assert parameter_digest(model.parameters()) != printed[0]
