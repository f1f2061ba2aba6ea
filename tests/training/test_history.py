"""Depth telemetry of a run: TrainingHistory, and the trainer's set_step."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from stochdepth import (
    DynamicNet,
    FixedDepth,
    RepeatedBlock,
    ScheduledDepth,
    SeededDepth,
    StepRecord,
    TrainingHistory,
    UniformDepth,
    train,
)

from support.strategies import bounds, seeds

# --- TrainingHistory ------------------------------------------------------------------


def fit(sampler: object, steps: int = 30, **kwargs: object) -> TrainingHistory:
    torch.manual_seed(0)
    model = DynamicNet(5, 4, 2, sampler)  # type: ignore[arg-type]
    return train(model, torch.randn(8, 5), torch.randn(8, 2), steps=steps, log_every=None, **kwargs)  # type: ignore[arg-type]


@given(bounds(), seeds, st.integers(0, 30))
def test_the_history_reports_the_depths_of_its_records(
    low_high: tuple[int, int], seed: int, steps: int
) -> None:
    history = fit(SeededDepth(*low_high, seed=seed), steps)
    assert isinstance(history, list)
    assert all(isinstance(record, StepRecord) for record in history)
    depths = [record.depth for record in history]
    assert history.depths == depths
    assert history.depth_histogram == dict(sorted(Counter(depths).items()))
    if steps:
        assert history.mean_depth == pytest.approx(sum(depths) / steps)  # type: ignore[arg-type]
    else:
        assert history.mean_depth is None


def test_the_history_matches_the_blocks_histogram() -> None:
    torch.manual_seed(0)
    model = DynamicNet(5, 4, 2, SeededDepth(0, 3, seed=1))
    history = train(model, torch.randn(8, 5), torch.randn(8, 2), steps=50, log_every=None)
    assert history.depth_histogram == model.middle.depth_histogram


def test_the_summary_line() -> None:
    history = TrainingHistory([StepRecord(0, 4.0, 1), StepRecord(1, 2.0, 3), StepRecord(2, 0.5, 1)])
    assert history.summary() == "3 steps, final loss 0.5, mean depth 1.667, depths 1:2 3:1"
    assert TrainingHistory().summary() == "0 steps"
    no_block = TrainingHistory([StepRecord(0, 1.25, None)])
    assert no_block.summary() == "1 steps, final loss 1.25"
    assert no_block.mean_depth is None
    assert no_block.depth_histogram == {}


def test_train_prints_the_summary_when_asked() -> None:
    out = io.StringIO()
    history = fit(FixedDepth(2), steps=10, summary=True, file=out)
    assert out.getvalue() == history.summary() + "\n"
    assert out.getvalue().endswith("mean depth 2.000, depths 2:10\n")
    quiet = io.StringIO()
    fit(FixedDepth(2), steps=10, file=quiet)
    assert quiet.getvalue() == ""


# --- set_step -------------------------------------------------------------------------


class StepRecorder:
    """A sampler that records the steps it is told."""

    min_depth = max_depth = 1

    def __init__(self) -> None:
        self.steps: list[int] = []

    def set_step(self, step: int) -> None:
        self.steps.append(step)

    def sample(self) -> int:
        return 1


def test_the_trainer_tells_each_sampler_every_step_once() -> None:
    recorder = StepRecorder()
    model = nn.Sequential(
        nn.Linear(5, 3),
        RepeatedBlock(nn.Linear(3, 3), recorder),
        RepeatedBlock(nn.Linear(3, 3), recorder),
    )
    train(model, torch.randn(4, 5), torch.randn(4, 3), steps=6, log_every=None)
    assert recorder.steps == [0, 1, 2, 3, 4, 5]


def test_a_schedule_follows_the_training_steps() -> None:
    sampler = ScheduledDepth(0, 6, 60, seed=3)
    history = fit(sampler, steps=90)
    assert sampler.step == 89
    assert all(
        record.depth is not None and record.depth <= sampler.bound_at(record.step)
        for record in history
    )
    late = [record.depth for record in history if record.step >= 60]
    assert max(late) > sampler.bound_at(10)  # the schedule did open up


def test_samplers_without_set_step_still_train() -> None:
    random.seed(1)
    history = fit(UniformDepth(0, 3), steps=20)
    assert len(history) == 20
