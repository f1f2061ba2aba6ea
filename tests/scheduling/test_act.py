"""ACTHalting: TRM's Q-halt head, its exploration, its loss, and as the scheduler's rule."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from stochdepth import ACTHalting, DepthScheduler, RepeatedBlock


def test_it_starts_near_never_halt_as_trm_does() -> None:
    act = ACTHalting(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), max_steps=3)
    assert torch.equal(act(torch.randn(5, 4)), torch.full((5,), -5.0))
    assert act.max_depth == 3
    kept = nn.Linear(4, 1)
    weight = kept.weight.detach().clone()
    ACTHalting(kept, max_steps=3, init_bias=None)
    assert torch.equal(kept.weight, weight)


def test_eval_halts_above_the_threshold_or_at_max_steps() -> None:
    act = ACTHalting(nn.Linear(1, 1), max_steps=4, threshold=0.5).eval()
    logits = torch.tensor([0.4, 0.6, -1.0, 3.0])
    steps = torch.tensor([1, 1, 4, 2])
    assert act.halted(logits, steps).tolist() == [False, True, True, True]


def test_training_exploration_holds_rows_to_a_least_number_of_steps() -> None:
    act = ACTHalting(nn.Linear(1, 1), max_steps=6, exploration=1.0).train()
    confident = torch.full((2000,), 10.0)
    generator = torch.Generator().manual_seed(0)
    # every row explores: its least number of steps is uniform in [2, 6]
    halted_at = torch.zeros(2000, dtype=torch.int64)
    for step in range(1, 7):
        state = generator.get_state()
        halted = act.halted(confident, torch.full((2000,), step), generator)
        generator.set_state(state)  # the same draws at every step: one least per row
        halted_at = torch.where((halted_at == 0) & halted, step, halted_at)
    assert int(halted_at.min()) == 2
    assert int(halted_at.max()) == 6
    counts = torch.bincount(halted_at, minlength=7)[2:].float()
    assert float((counts - 400).abs().max()) < 80  # 400 each, a few standard deviations
    # without exploration a confident row halts at once, in training too
    plain = ACTHalting(nn.Linear(1, 1), max_steps=6, exploration=0.0).train()
    assert plain.halted(confident[:3], torch.ones(3, dtype=torch.int64)).all()


def test_the_exploration_draws_come_from_the_generator() -> None:
    act = ACTHalting(nn.Linear(1, 1), max_steps=8, exploration=0.5).train()
    logits, steps = torch.full((64,), 10.0), torch.full((64,), 3)
    a = act.halted(logits, steps, torch.Generator().manual_seed(4))
    b = act.halted(logits, steps, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert 0 < int(a.sum()) < 64


def test_the_loss_is_the_binary_cross_entropy_against_right_answers() -> None:
    act = ACTHalting(nn.Linear(1, 1), max_steps=2)
    logits = torch.tensor([2.0, -1.0, 0.5])
    right = torch.tensor([True, False, False])
    want = functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(act.loss(logits, right), want)
    with pytest.raises(ValueError, match=r"correct must have the logits' shape \(3,\)"):
        act.loss(logits, right[:2])


class Count(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x + 1.0


def test_as_the_schedulers_rule_a_row_stops_at_the_first_confident_supervision_step() -> None:
    head = nn.Linear(1, 1)
    act = ACTHalting(head, max_steps=5, every=3, init_bias=None).eval()
    with torch.no_grad():  # q = state - target: confident once the state passes its target
        head.weight.fill_(1.0)
        head.bias.fill_(-10.0)
    block = RepeatedBlock(Count()).eval()
    xs = torch.tensor([[9.5], [0.0], [5.0], [-20.0], [8.0]])
    results = DepthScheduler(block, 2, halting=act).run(xs)
    # stops at the first multiple of 3 repeats with x + depth > 10, or at 5 * 3
    assert [r.depth for r in results] == [3, 12, 6, 15, 3]
    assert [float(r.output) for r in results] == [12.5, 12.0, 11.0, -5.0, 11.0]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"head must be a torch\.nn\.Module"):
        ACTHalting(lambda s: s, max_steps=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps must be"):
        ACTHalting(nn.Linear(1, 1), max_steps=0)
    with pytest.raises(ValueError, match="exploration"):
        ACTHalting(nn.Linear(1, 1), max_steps=2, exploration=1.5)
    with pytest.raises(ValueError, match=r"init_bias sets the last nn\.Linear"):
        ACTHalting(nn.ReLU(), max_steps=2)
    act = ACTHalting(nn.Linear(2, 2), max_steps=2)
    with pytest.raises(ValueError, match=r"one logit per row \(3\), got \(3, 2\)"):
        act(torch.zeros(3, 2))


def test_rows_out_of_step_are_asked_at_their_own_supervision_steps() -> None:
    head = nn.Linear(1, 1)
    act = ACTHalting(head, max_steps=5, every=3, init_bias=None).eval()
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(-10.0)
    block = RepeatedBlock(Count()).eval()
    starts = [9.5, 0.0, 5.0, -20.0, 8.0, 3.0, 1.0]
    caps = [2, 15, 15, 4, 15, 7, 15]  # depth limits off the supervision steps: rows drift
    results = DepthScheduler(block, 3, halting=act).run(torch.tensor(starts)[:, None], caps)

    def alone(x: float, cap: int) -> int:
        for depth in range(1, cap + 1):
            if depth == cap or (depth % 3 == 0 and x + depth > 10):
                return depth
        raise AssertionError

    assert [r.depth for r in results] == [alone(x, c) for x, c in zip(starts, caps, strict=True)]
