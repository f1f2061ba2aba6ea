"""Distributed training: DDP over two gloo processes on loopback, depth 0, agreeing ranks.

The torchrun jobs of the command line are in tests/training/test_distributed_run.py.

The two-process tests share one spawn of two ranks (``ddp_workers.run_scenarios``),
which runs every scenario and saves what each rank saw; a module fixture starts it
once, with a deadline, so that a hang fails the tests instead of stalling CI. Every
collective in the workers also has a 30-second timeout.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import stochdepth
from stochdepth import (
    BroadcastDepth,
    DynamicNet,
    FixedDepth,
    RepeatedBlock,
    ScheduledDepth,
    SeededDepth,
    SkippedLayerTie,
    UniformDepth,
    check_depth_agreement,
    train,
)

from support import ddp_workers
from support.processes import scenario_result, spawn_ranks

SPAWN_DEADLINE = 180  # seconds for both ranks to run every scenario (about 10 s idle)
# The distributed run sums each rank's gradient where a single process computes the
# gradient of the whole batch in one matmul: the same numbers up to float32 rounding,
# which 40 momentum-SGD steps amplify to ~1e-8 (measured); a missing
# restore_skipped_grads makes them differ by ~3e-3.
RTOL, ATOL = 1e-5, 1e-6


# --- two ranks, one spawn ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("ddp")
    return spawn_ranks(ddp_workers.run_scenarios, ddp_workers.WORLD_SIZE, out, SPAWN_DEADLINE)


def single_process_run() -> tuple[stochdepth.TrainingHistory, torch.Tensor]:
    x, y = ddp_workers.global_batch()
    sampler = SeededDepth(0, 3, seed=ddp_workers.SAMPLER_SEED)
    model = DynamicNet(*ddp_workers.SIZES[1:], sampler=sampler)
    history = train(model, x, y, steps=ddp_workers.STEPS, log_every=None)
    return history, ddp_workers.flat_parameters(model)


def test_distributed_train_equals_a_single_process_on_the_global_batch(
    ranks: list[dict[str, Any]],
) -> None:
    records = scenario_result(ranks, "train")
    history, parameters = single_process_run()
    assert 0 in history.depth_histogram  # depth-0 steps happened
    for record in records:
        assert record["identical"]
        assert record["depths"] == history.depths
        assert record["losses"] == records[0]["losses"]  # every rank reports the same
        assert record["losses"] == pytest.approx([r.loss for r in history], rel=RTOL)
        assert torch.allclose(record["parameters"], parameters, rtol=RTOL, atol=ATOL)
        assert torch.equal(record["parameters"], records[0]["parameters"])


def test_default_ddp_with_the_tie_keeps_ranks_identical_through_depth_0(
    ranks: list[dict[str, Any]],
) -> None:
    for record in scenario_result(ranks, "manual_loop"):
        zeros = [step for step, depth in enumerate(record["depths"]) if depth == 0]
        assert len(record["identical"]) == 4
        assert all(record["identical"])
        assert record["final_identical"]
        # single-process semantics: no gradient, so momentum SGD leaves weight and buffer
        assert [s for s, none in enumerate(record["grad_none"]) if none] == zeros
        assert record["buffer_kept"] == [True] * len(zeros)
        expected = ["middle.layer.0.weight", "middle.layer.0.bias"]
        assert [names == expected for names in record["restored"]] == [
            depth == 0 for depth in record["depths"]
        ]


def test_ddp_alone_zeroes_the_skipped_layers_grad_and_momentum_moves_it(
    ranks: list[dict[str, Any]],
) -> None:
    # What restore_skipped_grads undoes: DDP writes zeros, where a single process has None.
    for record in scenario_result(ranks, "no_restore"):
        assert record == {"grad_is_zeros": True, "weight_moved": True, "buffer_decayed": True}


def test_plain_ddp_at_depth_0_diverges_silently_then_fails(ranks: list[dict[str, Any]]) -> None:
    # PyTorch's own behaviour, which docs/distributed.md reports; if a new PyTorch
    # changes it, this fails and the page needs updating.
    for record in scenario_result(ranks, "raw_ddp"):
        assert record["grads_reduced"] == [True, False]  # nothing reduced at depth 0
        assert not record["identical_after_depth_0"]
        assert record["next_forward_error"].startswith(
            "Expected to have finished reduction in the prior iteration before starting a "
            "new one. This error indicates that your module has parameters that were not "
            "used in producing loss."
        )


@pytest.mark.parametrize(
    ("name", "momentum", "single_process"),
    [
        ("plain_ddp_no_momentum", 0.0, True),
        ("plain_ddp_restored", 0.9, True),
        ("plain_ddp", 0.9, False),  # zero grads at depth 0: momentum moves the skipped layer
    ],
)
def test_plain_ddp_in_a_users_own_loop_trains_through_depth_0(
    ranks: list[dict[str, Any]], name: str, momentum: float, single_process: bool
) -> None:
    depths, reference = ddp_workers.plain_reference(momentum)
    assert 0 in depths
    records = scenario_result(ranks, name)
    for record in records:
        assert record["identical"]
        assert record["depths"] == depths
        assert torch.equal(record["parameters"], records[0]["parameters"])
        close = torch.allclose(record["parameters"], reference, rtol=RTOL, atol=ATOL)
        assert close == single_process
        # DDP writes zeros where one process leaves None; restore_skipped_grads undoes it
        expected = [name != "plain_ddp_restored"] * depths.count(0)
        assert record["zero_grads"] == expected


def test_ranks_that_disagree_fail_together_with_a_clear_error(
    ranks: list[dict[str, Any]],
) -> None:
    draws = []
    for rank in range(ddp_workers.WORLD_SIZE):
        random.seed(100 + rank)
        draws.append([random.randint(0, 3) for _ in range(ddp_workers.STEPS)])
    step = next(t for t, (a, b) in enumerate(zip(*draws, strict=True)) if a != b)
    expected = (
        f"ranks disagree on the depth at step {step}: rank 0 drew {draws[0][step]}; "
        f"rank 1 drew {draws[1][step]}. DDP needs the same depth on every rank"
    )
    for record in scenario_result(ranks, "disagreeing_train", raises=True):
        assert record["error_type"] == "DepthMismatchError"
        assert record["error"].startswith(expected)
        assert "BroadcastDepth" in record["error"]


def test_check_depth_agreement_names_the_ranks_and_depths(ranks: list[dict[str, Any]]) -> None:
    for record in scenario_result(ranks, "disagreeing_check", raises=True):
        assert record["error_type"] == "DepthMismatchError"
        assert record["error"].startswith(
            "ranks disagree on the depth at step 7: rank 0 drew 1; rank 1 drew 2."
        )


def test_broadcast_depth_makes_every_rank_use_rank_0s_draws(
    ranks: list[dict[str, Any]],
) -> None:
    random.seed(100)  # rank 0's seed; rank 1's random was seeded with 101
    expected = [random.randint(0, 3) for _ in range(ddp_workers.STEPS)]
    for record in scenario_result(ranks, "broadcast"):
        assert record["depths"] == expected
        assert record["identical"]


def test_fsdp2_trains_through_depth_0_like_a_single_process(ranks: list[dict[str, Any]]) -> None:
    # What docs/distributed.md says of FSDP2: no tie needed, None gradients kept.
    reference = ddp_workers.fsdp_reference()
    for record in scenario_result(ranks, "fsdp2"):
        assert record["grad_none"] == [True, True, True]
        assert torch.allclose(record["parameters"], reference, rtol=RTOL, atol=ATOL)


def test_a_batch_too_small_to_split_is_refused_on_every_rank(
    ranks: list[dict[str, Any]],
) -> None:
    for record in scenario_result(ranks, "too_few_rows", raises=True):
        assert record["error_type"] == "ValueError"
        assert record["error"] == (
            "distributed=True splits the batch x along its first dimension across 2 "
            "ranks, so it needs at least 2 rows, got shape (1, 20)"
        )


def test_a_non_finite_loss_stops_every_rank_at_the_same_step(
    ranks: list[dict[str, Any]],
) -> None:
    records = scenario_result(ranks, "diverging", raises=True)
    assert [record["error_type"] for record in records] == ["NonFiniteError"] * 2
    steps = {re.search(r"at step (\d+)", record["error"]).group(1) for record in records}  # type: ignore[union-attr]
    assert len(steps) == 1, records


def test_per_sample_distributed_training_equals_a_single_process(
    ranks: list[dict[str, Any]],
) -> None:
    x, y = ddp_workers.global_batch()
    model = ddp_workers.per_sample_model()
    rows: list[torch.Tensor] = []
    model[2].register_forward_hook(lambda *_: rows.append(ddp_workers.row_depths(model).clone()))
    history = train(model, x, y, steps=ddp_workers.STEPS, log_every=None)
    parameters = ddp_workers.flat_parameters(model)
    half = x.shape[0] // 2
    # some steps had one rank's rows all at depth 0 and the other's not: the tie's case
    assert any(bool(r[:half].any()) != bool(r[half:].any()) for r in rows)
    records = scenario_result(ranks, "per_sample")
    for record in records:
        assert record["identical"]
        assert [torch.equal(a, b) for a, b in zip(record["rows"], rows, strict=True)] == [
            True
        ] * len(rows)
        assert record["depths"] == history.depths
        assert record["losses"] == records[0]["losses"]
        assert record["losses"] == pytest.approx([r.loss for r in history], rel=RTOL)
        assert torch.allclose(record["parameters"], parameters, rtol=RTOL, atol=ATOL)


def test_distributed_training_through_grad_depth_0_equals_a_single_process(
    ranks: list[dict[str, Any]],
) -> None:
    # A step whose grad_depth draws 0 leaves the layer without gradient: a single
    # process leaves its .grad None, so momentum SGD skips it; DDP must too.
    x, y = ddp_workers.global_batch()
    model = ddp_workers.grad_depth_model()
    history = train(model, x, y, steps=ddp_workers.STEPS, log_every=None)
    parameters = ddp_workers.flat_parameters(model)
    for record in scenario_result(ranks, "grad_depth_zero"):
        assert record["identical"]
        assert record["losses"] == pytest.approx([r.loss for r in history], rel=RTOL)
        assert torch.allclose(record["parameters"], parameters, rtol=RTOL, atol=ATOL)


def test_plain_ddp_trains_through_grad_depth_0_with_layers_before_the_block(
    ranks: list[dict[str, Any]],
) -> None:
    # grad_depth 0 cuts the graph before the block too; under plain DDP the block sends
    # zeros to its input, so the first Linear is reduced. Without momentum, zeros and
    # None make the same update: the ranks equal one process on the whole batch.
    model = ddp_workers.upstream_grad_depth_model()
    x, y = ddp_workers.global_batch()
    drawn = ddp_workers.upstream_grad_depth_run(model, model, x, y)
    assert 0 in drawn
    reference = ddp_workers.flat_parameters(model)
    for record in scenario_result(ranks, "plain_ddp_grad_depth_zero"):
        assert record["drawn"] == drawn
        assert record["identical"]
        assert torch.allclose(record["parameters"], reference, rtol=RTOL, atol=ATOL)


def test_distributed_checkpoints_resume_exactly(ranks: list[dict[str, Any]]) -> None:
    for record in scenario_result(ranks, "checkpoint"):
        assert record["same_history"]
        assert record["same_parameters"]
        assert record["identical"]
        assert 0 in record["depths"]
        assert [f for f in record["files"] if f.endswith("ckpt")] == ["run.ckpt", "straight.ckpt"]
        assert not [f for f in record["files"] if ".tmp-" in f]


def test_a_checkpoint_error_on_rank_0_stops_every_rank(ranks: list[dict[str, Any]]) -> None:
    records = scenario_result(ranks, "checkpoint_missing", raises=True)
    assert [record["error_type"] for record in records] == ["CheckpointError"] * 2
    assert records[0]["error"] == records[1]["error"]
    assert records[0]["error"].endswith("missing.ckpt' does not exist")


# --- without a process group --------------------------------------------------------------


def test_library_entry_points_need_a_process_group() -> None:
    model = DynamicNet(5, 4, 2, FixedDepth(1))
    message = "needs torch.distributed's default process group, and none is initialized"
    with pytest.raises(RuntimeError, match=re.escape(f"check_depth_agreement {message}")):
        check_depth_agreement(model)
    x, y = torch.randn(4, 5), torch.randn(4, 2)
    with pytest.raises(RuntimeError, match=re.escape(f"train(distributed=True) {message}")):
        train(model, x, y, steps=1, log_every=None, distributed=True)
    assert not any(module._forward_hooks for module in model.modules())  # nothing left behind


def make_net(seed: int, sampler: stochdepth.DepthSampler) -> DynamicNet:
    torch.manual_seed(seed)
    return DynamicNet(6, 5, 3, sampler)


@given(seed=st.integers(0, 2**16), depth=st.integers(0, 3))
def test_the_tie_changes_no_loss_and_no_gradient(seed: int, depth: int) -> None:
    # Law: with or without the tie, the same forward values and the same gradients,
    # and at depth 0 the skipped layer's gradient stays None (as without DDP).
    grads = []
    for tied in (False, True):
        model = make_net(seed, FixedDepth(depth))
        tie = SkippedLayerTie(model) if tied else None
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(seed))
        loss = model(x).square().sum()
        loss.backward()
        if tie is not None:
            assert tie.restore_skipped_grads() == (
                ["middle.layer.0.weight", "middle.layer.0.bias"] if depth == 0 else []
            )
        grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert (grads_b[2] is None) == (depth == 0)  # middle.layer.0.weight


def test_the_tie_leaves_eval_mode_and_no_grad_alone() -> None:
    model = make_net(0, FixedDepth(0))
    tie = SkippedLayerTie(model)
    with torch.no_grad():
        assert not model(torch.randn(2, 6)).requires_grad
    model.eval()
    model.middle.eval_depth = 0
    x = torch.randn(2, 5)
    assert model.middle(x) is x  # depth 0 in eval mode: the input itself, untied
    assert tie.restore_skipped_grads() == []


def test_the_tie_allows_an_in_place_op_after_a_skipped_block() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), FixedDepth(0))
    model = nn.Sequential(nn.Linear(4, 4), block, nn.ReLU(inplace=True), nn.Linear(4, 1))
    tie = SkippedLayerTie(model)
    model(torch.randn(3, 4)).sum().backward()
    assert tie.restore_skipped_grads() == ["1.layer.weight", "1.layer.bias"]


def test_a_parameter_used_outside_the_block_keeps_its_gradient() -> None:
    model = make_net(1, FixedDepth(0))
    model.extra = nn.Linear(5, 5)
    model.extra.weight = model.middle_linear.weight  # tied weights, registered twice
    tie = SkippedLayerTie(model)
    model(torch.randn(2, 6)).sum().backward()
    assert tie.restore_skipped_grads() == ["middle.layer.0.bias"]


def test_a_block_that_also_ran_its_layer_keeps_its_gradient() -> None:
    block = RepeatedBlock(nn.Linear(4, 4), FixedDepth(2))
    tie = SkippedLayerTie(block)
    x = torch.randn(3, 4)
    (block(x, depth=0) + block(x)).sum().backward()  # skipped once, used once
    assert tie.restore_skipped_grads() == []
    assert block.layer.weight.grad is not None


class RowDepthBlock(RepeatedBlock):
    """Reports a depth per row, as a block with ``per_sample=True`` does: a tensor."""

    def __init__(self, rows: torch.Tensor, mode: str = "skip") -> None:
        super().__init__(nn.Linear(4, 4), FixedDepth(0))
        self.rows, self.mode_name = rows, mode

    @property
    def mode(self) -> str:
        return self.mode_name

    def forward(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        self.last_depth = self.rows
        active = (self.rows > 0).float().unsqueeze(1)
        if self.mode_name == "masked" or bool(self.rows.any()):
            x = active * self.layer(x) + (1 - active) * x
        return x


@pytest.mark.parametrize(
    ("rows", "mode", "restored"),
    [
        (torch.tensor([0, 0, 0]), "skip", ["layer.weight", "layer.bias"]),
        (torch.tensor([0, 2, 0]), "skip", []),
        (torch.tensor([0, 0, 0]), "masked", []),  # masked mode used the layer: zero grads
    ],
)
def test_the_tie_follows_per_row_depths_and_modes(
    rows: torch.Tensor, mode: str, restored: list[str]
) -> None:
    block = RowDepthBlock(rows, mode)
    tie = SkippedLayerTie(block)
    block(torch.randn(3, 4)).sum().backward()
    assert tie.restore_skipped_grads() == restored
    assert (block.layer.weight.grad is None) == bool(restored)


def test_per_row_depths_are_not_compared_across_ranks() -> None:
    from stochdepth._distributed import PER_ROW, block_depths

    model = nn.Sequential(RowDepthBlock(torch.tensor([1, 0, 3])), RepeatedBlock(nn.Linear(4, 4)))
    assert block_depths(model) == [-1, -1]  # neither has run
    model(torch.randn(3, 4))
    assert block_depths(model)[0] == PER_ROW
    assert 0 <= block_depths(model)[1] <= 3


def test_remove_takes_the_hooks_away() -> None:
    model = make_net(2, FixedDepth(0))
    tie = SkippedLayerTie(model)
    assert model.middle._forward_hooks
    tie.remove()
    assert not model.middle._forward_hooks


def test_broadcast_depth_outside_a_process_group_is_its_sampler() -> None:
    sampler = BroadcastDepth(SeededDepth(1, 4, seed=5))
    plain = SeededDepth(1, 4, seed=5)
    assert (sampler.min_depth, sampler.max_depth, sampler.src) == (1, 4, 0)
    assert [sampler.sample() for _ in range(20)] == [plain.sample() for _ in range(20)]
    assert repr(sampler) == "BroadcastDepth(SeededDepth(low=1, high=4, seed=5), src=0)"


def test_broadcast_depth_saves_and_restores_the_wrapped_state() -> None:
    block = RepeatedBlock(nn.Linear(3, 3), BroadcastDepth(SeededDepth(0, 3, seed=1)))
    state = block.state_dict()
    first = [block.sampler.sample() for _ in range(10)]
    block.load_state_dict(state)
    assert [block.sampler.sample() for _ in range(10)] == first
    stateless = BroadcastDepth(UniformDepth())
    assert stateless.state_dict() == {}
    stateless.load_state_dict({})
    with pytest.raises(ValueError, match="keeps no state"):
        stateless.load_state_dict({"seed": 1})
    with pytest.raises(TypeError, match="state must be a mapping"):
        stateless.load_state_dict([])  # type: ignore[arg-type]


def test_broadcast_depth_passes_the_step_on() -> None:
    schedule = ScheduledDepth(start=1, end=4, steps=10, seed=0)
    sampler = BroadcastDepth(schedule)
    sampler.set_step(5)
    assert schedule.step == 5
    BroadcastDepth(UniformDepth()).set_step(3)  # a sampler without set_step: nothing


def test_broadcast_depth_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="DepthSampler protocol"):
        BroadcastDepth(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="src must be an int >= 0, got -1"):
        BroadcastDepth(UniformDepth(), src=-1)


def test_the_distributed_names_are_public() -> None:
    for name in ("BroadcastDepth", "DepthMismatchError", "SkippedLayerTie"):
        assert name in stochdepth.__all__
    assert "check_depth_agreement" in stochdepth.__all__
    assert issubclass(stochdepth.DepthMismatchError, RuntimeError)
    assert Path(ddp_workers.__file__).parent == Path(__file__).parent / "support"
