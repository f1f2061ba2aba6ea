"""DeepSupervision: the carry, its refill, and an exact resume after SIGKILL."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from stochdepth import ACTHalting, DeepSupervision, FixedDepth, RepeatedBlock

from support import park_halting
from support.processes import kill_when_parked, run_python

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "halting.py"
PARK = Path(park_halting.__file__)
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def draw(count: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(count, 3, generator=generator)
    return x, x.sum(dim=1, keepdim=True)


def zeros(x: Tensor, y: Tensor) -> Tensor:
    return torch.zeros(x.shape[0], 3)


def test_rows_carry_their_state_and_are_replaced_after_max_steps() -> None:
    sup = DeepSupervision(draw, zeros, batch_size=4, max_steps=3, seed=1)
    carried = None
    for step in range(7):
        rows = sup.begin()
        if step % 3 == 0:
            assert rows.fresh.all()
            assert torch.equal(rows.state, torch.zeros(4, 3))
        else:
            assert not rows.fresh.any()
            assert carried is not None
            assert torch.equal(rows.state, carried)  # where the last step left it
        assert rows.steps.tolist() == [step % 3] * 4
        new = rows.state + rows.data[0]
        halted = sup.end(new)
        carried = new
        assert halted.tolist() == [step % 3 == 2] * 4
    assert sup.drawn == 12
    assert sup.step == 7


def test_only_the_halted_rows_get_fresh_data() -> None:
    act = ACTHalting(nn.Linear(3, 1), max_steps=5, exploration=0.0).eval()
    sup = DeepSupervision(draw, zeros, batch_size=4, halting=act)
    rows = sup.begin()
    first = rows.data[0].clone()
    logits = torch.tensor([1.0, -1.0, 2.0, -3.0])  # rows 0 and 2 halt
    assert sup.end(rows.state + 1, logits).tolist() == [True, False, True, False]
    rows = sup.begin()
    assert rows.fresh.tolist() == [True, False, True, False]
    assert torch.equal(rows.data[0][[1, 3]], first[[1, 3]])
    assert not torch.equal(rows.data[0][[0, 2]], first[[0, 2]])
    assert torch.equal(rows.state[[1, 3]], torch.ones(2, 3))
    assert torch.equal(rows.state[[0, 2]], torch.zeros(2, 3))
    assert rows.steps.tolist() == [0, 1, 0, 1]


def supervised_run(
    sup: DeepSupervision, model: nn.Module, optimizer: torch.optim.Optimizer, steps: int
) -> list[float]:
    block, head, act = model[0], model[1], model[2]
    losses = []
    for _ in range(steps):
        rows = sup.begin()
        x, y = rows.data
        state = block(rows.state, x)
        q = act(state)
        right = ((head(state) - y).abs() < 0.5).squeeze(1)
        loss = (head(state) - y).pow(2).mean() + act.loss(q, right)
        sup.end(state, q)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


class Inject(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, state: Tensor, x: Tensor) -> Tensor:
        return torch.tanh(self.linear(torch.cat([state, x], dim=1)))


def test_a_restored_carry_continues_exactly_in_process() -> None:
    def build() -> tuple[nn.Module, torch.optim.Optimizer, DeepSupervision]:
        torch.manual_seed(0)
        block = RepeatedBlock(Inject(), FixedDepth(3), grad_depth=1, row_args=0)
        act = ACTHalting(nn.Linear(3, 1), max_steps=4, exploration=0.5, init_bias=0.0)
        model = nn.Sequential(block, nn.Linear(3, 1), act)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, optimizer, DeepSupervision(draw, zeros, batch_size=6, halting=act, seed=5)

    model, optimizer, sup = build()
    expected = supervised_run(sup, model, optimizer, 12)
    model, optimizer, sup = build()
    first = supervised_run(sup, model, optimizer, 5)
    saved = copy.deepcopy(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "sup": sup.state_dict()}
    )
    model, optimizer, sup = build()  # a new process builds everything afresh, then loads
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["opt"])
    sup.load_state_dict(saved["sup"])
    assert first + supervised_run(sup, model, optimizer, 7) == expected
    assert sup.step == 12


def log(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("step ")]


def test_a_run_killed_mid_step_resumes_the_carry_exactly(tmp_path: Path) -> None:
    common = ["--quick", "--log-every", "1", "--checkpoint-every", "5"]
    whole = run_python(EXAMPLE, *common, "--checkpoint", tmp_path / "whole.pt", env=THREADS)
    expected = whole.stdout.splitlines()
    path = tmp_path / "killed.pt"
    killed, _ = kill_when_parked(PARK, "23", "--", *common, "--checkpoint", path, env=THREADS)
    # killed inside step 23: it printed steps 1 to 22; its last checkpoint is step 20's
    assert log(killed) == log(whole.stdout)[:22]
    resumed = run_python(EXAMPLE, *common, "--checkpoint", path, "--resume", env=THREADS)
    lines = resumed.stdout.splitlines()
    assert log(resumed.stdout) == log(whole.stdout)[20:]
    # the same weights and the same evaluation as the run that was not stopped
    assert lines[len(log(resumed.stdout)) :][:-1] == expected[len(log(whole.stdout)) :][:-1]
    assert any(line.startswith("weights ") for line in lines)


def test_bad_calls_are_named() -> None:
    sup = DeepSupervision(draw, zeros, batch_size=2, max_steps=2)
    with pytest.raises(RuntimeError, match=r"needs begin\(\) first"):
        sup.end(torch.zeros(2, 3))
    rows = sup.begin()
    with pytest.raises(RuntimeError, match="called twice"):
        sup.begin()
    with pytest.raises(RuntimeError, match="inside a step"):
        sup.state_dict()
    with pytest.raises(ValueError, match=r"carry's shape \(2, 3\)"):
        sup.end(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="no halting"):
        sup.end(rows.state, torch.zeros(2))
    with pytest.raises(ValueError, match="max_steps must be given"):
        DeepSupervision(draw, zeros, batch_size=2)
    with pytest.raises(TypeError, match="data must be a callable"):
        DeepSupervision(3, zeros, batch_size=2, max_steps=1)  # type: ignore[arg-type]
    bad = DeepSupervision(lambda n, g: torch.zeros(n + 1), zeros, batch_size=2, max_steps=1)
    with pytest.raises(ValueError, match="must return 2 rows"):
        bad.begin()
    with pytest.raises(ValueError, match="lacks 'data'"):
        DeepSupervision(draw, zeros, batch_size=2, max_steps=1).load_state_dict({})


def test_an_act_head_needs_its_logits() -> None:
    act = ACTHalting(nn.Linear(3, 1), max_steps=2)
    sup = DeepSupervision(draw, zeros, batch_size=2, halting=act)
    rows = sup.begin()
    with pytest.raises(TypeError, match="halt_logits is needed"):
        sup.end(rows.state)
