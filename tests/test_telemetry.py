"""Depth telemetry: RepeatedBlock.depth_histogram, TrainingHistory, and set_step."""

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
from stochdepth._cli import main

from strategies import bounds, seeds


def block(sampler: object = None) -> RepeatedBlock:
    return RepeatedBlock(nn.Linear(3, 3), sampler)  # type: ignore[arg-type]


# --- RepeatedBlock.depth_histogram ----------------------------------------------------


@given(bounds(), seeds, st.integers(0, 40))
def test_the_histogram_counts_every_training_pass(
    low_high: tuple[int, int], seed: int, n: int
) -> None:
    module = block(SeededDepth(*low_high, seed=seed))
    used = []
    for _ in range(n):
        module(torch.randn(2, 3))
        used.append(module.last_depth)
    assert module.depth_histogram == dict(sorted(Counter(used).items()))
    assert list(module.depth_histogram) == sorted(module.depth_histogram)


def test_explicit_depths_in_training_count_and_eval_passes_do_not() -> None:
    module = block(FixedDepth(1))
    module(torch.randn(2, 3), depth=4)
    module(torch.randn(2, 3))
    module.eval()
    module(torch.randn(2, 3))
    module(torch.randn(2, 3), depth=2)
    assert module.depth_histogram == {1: 1, 4: 1}


def test_the_histogram_resets_and_is_a_copy() -> None:
    module = block(FixedDepth(2))
    module(torch.randn(2, 3))
    histogram = module.depth_histogram
    histogram[2] = 100
    assert module.depth_histogram == {2: 1}
    module.reset_depth_histogram()
    assert module.depth_histogram == {}
    module(torch.randn(2, 3))
    assert module.depth_histogram == {2: 1}


def test_the_histogram_is_not_part_of_the_state_dict() -> None:
    module = block(FixedDepth(2))
    module(torch.randn(2, 3))
    twin = block(FixedDepth(2))
    twin.load_state_dict(module.state_dict())
    assert twin.depth_histogram == {}


def test_the_articles_sampler_shows_depths_zero_to_three() -> None:
    # random.randint(0, 3) includes both ends: four depths, 0 to 3, not 1 to 3 or
    # 0 to 2. A reader unsure of what a description of the range means can look here.
    random.seed(0)
    model = DynamicNet(5, 4, 2)
    for _ in range(200):
        model(torch.randn(3, 5))
    assert set(model.middle.depth_histogram) == {0, 1, 2, 3}


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
    assert {
        "uniform",
        "fixed",
        "seeded",
        "bernoulli",
        "geometric",
        "scheduled",
        "lognormal_poisson",
    } <= set(names)
    assert "Each of max_depth repeats survives with probability p" in out
    assert "``" not in out
