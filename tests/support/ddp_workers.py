"""What each rank of the two-process DDP tests runs (``torch.multiprocessing.spawn``).

The workers live here, not in the test module, so that a spawned child imports only
this small module. Each rank runs every scenario in turn on one gloo process group
over loopback, records what it saw in a dict (an exception's type and message
included, instead of dying), and saves it for the parent test to check.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stochdepth import (
    BernoulliDepth,
    BroadcastDepth,
    DynamicNet,
    FixedDepth,
    RepeatedBlock,
    SeededDepth,
    SkippedLayerTie,
    UniformDepth,
    check_depth_agreement,
    train,
)

from support.processes import run_rank

WORLD_SIZE = 2
SIZES = (16, 20, 10, 3)  # N, D_in, H, D_out: small, so that many steps stay cheap
STEPS = 40
SEED = 3
SAMPLER_SEED = 11


class SequenceDepth:
    """A sampler that returns given depths in turn (the same object on every rank)."""

    min_depth = 0
    max_depth = 3

    def __init__(self, depths: list[int]) -> None:
        self.depths = list(depths)
        self.index = 0

    def sample(self) -> int:
        depth = self.depths[self.index]
        self.index += 1
        return depth


def global_batch(seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch, and the seeded model that goes with it, as a single process makes them."""
    torch.manual_seed(seed)
    n, d_in, _, d_out = SIZES
    return torch.randn(n, d_in), torch.randn(n, d_out)


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def identical_across_ranks(model: nn.Module) -> bool:
    local = flat_parameters(model)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(gathered[0], other) for other in gathered)


def scenario_train(rank: int) -> dict[str, Any]:
    """train(distributed=True): rank 0's data, weights and sampler state are everyone's."""
    x, y = global_batch()
    model = DynamicNet(*SIZES[1:], sampler=SeededDepth(0, 3, seed=SAMPLER_SEED))
    if rank != 0:  # prove that the broadcasts, not identical seeding, make them agree
        torch.manual_seed(1000 + rank)
        x, y = torch.randn_like(x), torch.randn_like(y)
        model = DynamicNet(*SIZES[1:], sampler=SeededDepth(0, 3, seed=1000 + rank))
    history = train(model, x, y, steps=STEPS, log_every=None, distributed=True)
    return {
        "losses": [record.loss for record in history],
        "depths": history.depths,
        "parameters": flat_parameters(model),
        "identical": identical_across_ranks(model),
    }


def scenario_manual_loop(rank: int) -> dict[str, Any]:
    """The public pieces in a hand-written DDP loop, default DDP arguments."""
    torch.manual_seed(SEED)
    depths = [1, 0, 2, 0, 0, 3, 1, 0, 2, 1, 0, 3]
    model = DynamicNet(*SIZES[1:], sampler=SequenceDepth(depths))
    tie = SkippedLayerTie(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = global_batch(SEED + rank)  # a different shard on each rank
    middle = model.middle_linear.weight
    record: dict[str, Any] = {"identical": [], "restored": [], "grad_none": [], "buffer_kept": []}
    for step in range(len(depths)):
        loss = nn.functional.mse_loss(ddp(x), y, reduction="sum")
        check_depth_agreement(model, step=step)
        optimizer.zero_grad()
        loss.backward()
        record["restored"].append(tie.restore_skipped_grads())
        record["grad_none"].append(middle.grad is None)
        before = optimizer.state[middle].get("momentum_buffer")
        before = None if before is None else before.clone()
        weight = middle.detach().clone()
        optimizer.step()
        after = optimizer.state[middle].get("momentum_buffer")
        if depths[step] == 0:
            record["buffer_kept"].append(
                before is not None
                and torch.equal(before, after)
                and torch.equal(weight, middle.detach())
            )
        if step % 3 == 2:
            record["identical"].append(identical_across_ranks(model))
    record["depths"] = depths
    record["final_identical"] = identical_across_ranks(model)
    tie.remove()
    return record


def scenario_no_restore(rank: int) -> dict[str, Any]:
    """The tie without restore_skipped_grads: what DDP itself does to the grad at depth 0."""
    torch.manual_seed(SEED)
    model = DynamicNet(*SIZES[1:], sampler=SequenceDepth([1, 0]))
    tie = SkippedLayerTie(model)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = global_batch(SEED + rank)
    middle = model.middle_linear.weight
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(ddp(x), y, reduction="sum").backward()
        weight = middle.detach().clone()
        buffer = optimizer.state[middle].get("momentum_buffer")
        buffer = None if buffer is None else buffer.clone()
        optimizer.step()
    tie.remove()
    grad = middle.grad
    new_buffer = optimizer.state[middle]["momentum_buffer"]
    return {
        "grad_is_zeros": grad is not None and not bool(grad.any()),
        "weight_moved": not torch.equal(weight, middle.detach()),
        "buffer_decayed": buffer is not None and torch.allclose(new_buffer, 0.9 * buffer),
    }


def scenario_disagreeing_train(rank: int) -> dict[str, Any]:
    """UniformDepth (Python's random) seeded differently on each rank: the check fires."""
    x, y = global_batch()
    random.seed(100 + rank)
    model = DynamicNet(*SIZES[1:], sampler=UniformDepth(0, 3))
    train(model, x, y, steps=STEPS, log_every=None, distributed=True)
    return {}


def scenario_disagreeing_check(rank: int) -> dict[str, Any]:
    """check_depth_agreement names the ranks and their depths."""
    model = DynamicNet(*SIZES[1:], sampler=FixedDepth(rank + 1))
    model(global_batch()[0])
    check_depth_agreement(model, step=7)
    return {}


def scenario_broadcast(rank: int) -> dict[str, Any]:
    """BroadcastDepth: unseeded-alike ranks use rank 0's draws."""
    x, y = global_batch()
    random.seed(100 + rank)
    model = DynamicNet(*SIZES[1:], sampler=BroadcastDepth(UniformDepth(0, 3)))
    history = train(model, x, y, steps=STEPS, log_every=None, distributed=True)
    return {"depths": history.depths, "identical": identical_across_ranks(model)}


class SkipsItsLayer(nn.Module):
    """A model of PyTorch alone that skips its middle layer on some steps (no stochdepth)."""

    def __init__(self, skips: list[bool]) -> None:
        super().__init__()
        _, d_in, h, d_out = SIZES
        self.first, self.middle, self.last = (
            nn.Linear(d_in, h),
            nn.Linear(h, h),
            nn.Linear(h, d_out),
        )
        self.skips, self.calls = skips, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x).clamp(min=0)
        if not self.skips[self.calls]:
            h = self.middle(h).clamp(min=0)
        self.calls += 1
        return self.last(h)


def scenario_raw_ddp(rank: int) -> dict[str, Any]:
    """Plain DDP around a model that skips a layer by itself: what PyTorch does."""
    torch.manual_seed(SEED)
    model = SkipsItsLayer([False, True, False])
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = global_batch(SEED + rank)
    record: dict[str, Any] = {"grads_reduced": []}
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(ddp(x), y, reduction="sum").backward()
        grad = model.first.weight.grad
        assert grad is not None
        gathered = [torch.empty_like(grad) for _ in range(WORLD_SIZE)]
        dist.all_gather(gathered, grad.contiguous())
        record["grads_reduced"].append(torch.equal(gathered[0], gathered[1]))
        optimizer.step()
    record["identical_after_depth_0"] = identical_across_ranks(model)
    try:
        ddp(x)
    except RuntimeError as error:
        record["next_forward_error"] = str(error)
    return record


PLAIN_LR, PLAIN_STEPS = 1e-3, 30


def plain_model() -> DynamicNet:
    torch.manual_seed(SEED)
    return DynamicNet(*SIZES[1:], sampler=SeededDepth(0, 3, seed=SAMPLER_SEED))


def plain_loop(rank: int, momentum: float, restore: bool) -> dict[str, Any]:
    """A user's own loop around plain DDP: default arguments, nothing of stochdepth's added.

    Each rank trains on its own half of the global batch, with the mean loss of its
    half: DDP averages the gradients, so that the update is the single process's on
    the whole batch with the mean loss (see plain_reference).
    """
    model = plain_model()
    tie = SkippedLayerTie(model) if restore else None
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=PLAIN_LR, momentum=momentum)
    x, y = (t.chunk(WORLD_SIZE)[rank] for t in global_batch())
    middle = model.middle_linear.weight
    depths, zero_grads = [], []
    for _ in range(PLAIN_STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        if tie is not None:
            tie.restore_skipped_grads()
        depths.append(model.middle.last_depth)
        if model.middle.last_depth == 0:
            zero_grads.append(middle.grad is not None and not bool(middle.grad.any()))
        optimizer.step()
    if tie is not None:
        tie.remove()
    return {
        "depths": depths,
        "zero_grads": zero_grads,
        "identical": identical_across_ranks(model),
        "parameters": flat_parameters(model),
    }


def plain_reference(momentum: float) -> tuple[list[int], torch.Tensor]:
    """The single-process run that plain_loop splits over two ranks."""
    model = plain_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=PLAIN_LR, momentum=momentum)
    x, y = global_batch()
    depths = []
    for _ in range(PLAIN_STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        depths.append(model.middle.last_depth)
        optimizer.step()
    return depths, flat_parameters(model)


def scenario_plain_ddp(rank: int) -> dict[str, Any]:
    return plain_loop(rank, momentum=0.9, restore=False)


def scenario_plain_ddp_no_momentum(rank: int) -> dict[str, Any]:
    return plain_loop(rank, momentum=0.0, restore=False)


def scenario_plain_ddp_restored(rank: int) -> dict[str, Any]:
    return plain_loop(rank, momentum=0.9, restore=True)


def scenario_diverging(rank: int) -> dict[str, Any]:
    """A loss that overflows: every rank stops at the same step, none waits for the other.

    Only rank 0 prints, but every rank reads its losses at the log points, so the
    non-finite loss is seen on every rank at the same step.
    """
    x, y = global_batch()
    model = DynamicNet(*SIZES[1:], sampler=FixedDepth(1))
    train(model, x, y, steps=STEPS, lr=1e3, log_every=1, distributed=True, file=io.StringIO())
    return {}


def scenario_too_few_rows(rank: int) -> dict[str, Any]:
    """A batch of one row cannot be split across two ranks: every rank says so."""
    model = DynamicNet(*SIZES[1:], sampler=FixedDepth(1))
    rows = 1 if rank == 0 else 8  # rank 0's batch is the one that counts
    train(model, torch.randn(rows, SIZES[1]), torch.randn(rows, SIZES[3]), distributed=True)
    return {}


FSDP_DEPTHS = [1, 0, 2, 0, 3, 1, 0, 2]


def fsdp_reference() -> torch.Tensor:
    """The single-process run that scenario_fsdp2 shards: its final parameters."""
    torch.manual_seed(SEED)
    model = DynamicNet(*SIZES[1:], sampler=SequenceDepth(FSDP_DEPTHS))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = global_batch(SEED + 1)
    for _ in FSDP_DEPTHS:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y, reduction="sum").backward()
        optimizer.step()
    return flat_parameters(model)


def scenario_fsdp2(rank: int) -> dict[str, Any]:
    """FSDP2's fully_shard on CPU/gloo through depth-0 steps, without the tie."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(SEED)
    model = DynamicNet(*SIZES[1:], sampler=SequenceDepth(FSDP_DEPTHS))
    fully_shard(model.middle.layer, mesh=init_device_mesh("cpu", (WORLD_SIZE,)))
    fully_shard(model, mesh=init_device_mesh("cpu", (WORLD_SIZE,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = (t.chunk(WORLD_SIZE)[rank] for t in global_batch(SEED + 1))
    grad_none = []
    for depth in FSDP_DEPTHS:
        optimizer.zero_grad()
        # FSDP averages the gradients; the loss is a sum over the whole batch
        loss = nn.functional.mse_loss(model(x), y, reduction="sum") * WORLD_SIZE
        loss.backward()
        if depth == 0:
            grad_none.append(model.middle.layer[0].weight.grad is None)
        optimizer.step()
    full = [p.full_tensor() for p in model.parameters()]  # DTensors: gather the shards
    return {"grad_none": grad_none, "parameters": torch.cat([p.reshape(-1) for p in full])}


def per_sample_model() -> nn.Module:
    """A model whose block draws a depth per row: mostly 0, so a rank's rows are often all 0."""
    torch.manual_seed(SEED)
    _, d_in, h, d_out = SIZES
    block = RepeatedBlock(
        nn.Sequential(nn.Linear(h, h), nn.ReLU()),
        BernoulliDepth(max_depth=2, p=0.1, seed=SAMPLER_SEED),
        per_sample=True,
    )
    return nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), block, nn.Linear(h, d_out))


def row_depths(model: nn.Module) -> torch.Tensor:
    block = model[2]
    assert isinstance(block.last_depth, torch.Tensor)
    return block.last_depth


def scenario_per_sample(rank: int) -> dict[str, Any]:
    """train(distributed=True) with per_sample=True: each rank its rows' share of one draw."""
    x, y = global_batch()
    model = per_sample_model()
    rows = []
    handle = model[2].register_forward_hook(lambda *_: rows.append(row_depths(model).clone()))
    history = train(model, x, y, steps=STEPS, log_every=None, distributed=True)
    handle.remove()
    gathered = [None] * WORLD_SIZE
    dist.all_gather_object(gathered, rows)
    return {
        "losses": [record.loss for record in history],
        "depths": history.depths,
        "rows": [torch.cat(step) for step in zip(*gathered, strict=True)],
        "parameters": flat_parameters(model),
        "identical": identical_across_ranks(model),
    }


def grad_depth_model() -> nn.Module:
    """A block at depth 2 whose grad_depth draws 0 or 1: some steps record no repeat.

    The block comes first: a pass that records no repeat cuts the graph to whatever
    is before the block too, which DDP would find unused.
    """
    torch.manual_seed(SEED)
    _, d_in, _, d_out = SIZES
    block = RepeatedBlock(
        nn.Sequential(nn.Linear(d_in, d_in), nn.Tanh()),
        FixedDepth(2),
        grad_depth=SeededDepth(0, 1, seed=SAMPLER_SEED),
    )
    return nn.Sequential(block, nn.Linear(d_in, d_out))


def scenario_grad_depth_zero(rank: int) -> dict[str, Any]:
    """train(distributed=True) through steps whose grad_depth draws 0 (the layer unused)."""
    x, y = global_batch()
    model = grad_depth_model()
    history = train(model, x, y, steps=STEPS, log_every=None, distributed=True)
    return {
        "losses": [record.loss for record in history],
        "parameters": flat_parameters(model),
        "identical": identical_across_ranks(model),
    }


def upstream_grad_depth_model() -> nn.Module:
    """A Linear, then a block whose grad_depth draws 0 or 1, then a Linear.

    A pass whose grad_depth draws 0 records no repeat, so the first Linear gets no
    gradient either: under plain DDP the block must reach it too.
    """
    torch.manual_seed(SEED)
    _, d_in, _, d_out = SIZES
    block = RepeatedBlock(
        nn.Sequential(nn.Linear(d_in, d_in), nn.Tanh()),
        FixedDepth(2),
        grad_depth=SeededDepth(0, 1, seed=SAMPLER_SEED),
    )
    return nn.Sequential(nn.Linear(d_in, d_in), block, nn.Linear(d_in, d_out))


def upstream_grad_depth_run(
    model: nn.Module, ddp: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[int]:
    """PLAIN_STEPS of plain SGD (no momentum) on the mean loss; the grad depths drawn."""
    optimizer = torch.optim.SGD(model.parameters(), lr=PLAIN_LR)
    block = model[1]
    drawn = []
    for _ in range(PLAIN_STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(ddp(x), y).backward()
        drawn.append(block._grad.last)
        optimizer.step()
    return drawn


def scenario_plain_ddp_grad_depth_zero(rank: int) -> dict[str, Any]:
    """Plain DDP in a user's own loop through passes whose grad_depth draws 0."""
    model = upstream_grad_depth_model()
    ddp = DistributedDataParallel(model)
    x, y = (t.chunk(WORLD_SIZE)[rank] for t in global_batch())
    drawn = upstream_grad_depth_run(model, ddp, x, y)
    return {
        "drawn": drawn,
        "identical": identical_across_ranks(model),
        "parameters": flat_parameters(model),
    }


CHECKPOINT_DIR: list[Path] = []  # set by run_scenarios: a folder that every rank sees


def scenario_checkpoint(rank: int) -> dict[str, Any]:
    """train(distributed=True, checkpoint=...): stopped at step 17, resumed to STEPS."""
    folder = CHECKPOINT_DIR[0]
    x, y = global_batch()

    def model() -> DynamicNet:
        torch.manual_seed(SEED)
        return DynamicNet(*SIZES[1:], sampler=SeededDepth(0, 3, seed=SAMPLER_SEED))

    straight = model()
    expected = train(
        straight,
        x,
        y,
        steps=STEPS,
        log_every=None,
        distributed=True,
        checkpoint=folder / "straight.ckpt",
    )
    train(
        model(),
        x,
        y,
        steps=17,
        log_every=None,
        distributed=True,
        checkpoint=folder / "run.ckpt",
        checkpoint_every=5,
    )
    resumed = model()
    history = train(
        resumed,
        x,
        y,
        steps=STEPS,
        log_every=None,
        distributed=True,
        checkpoint=folder / "run.ckpt",
        resume=True,
    )
    return {
        "same_history": history == expected,
        "same_parameters": torch.equal(flat_parameters(straight), flat_parameters(resumed)),
        "identical": identical_across_ranks(resumed),
        "files": sorted(path.name for path in folder.iterdir()),
        "depths": history.depths,
    }


def scenario_checkpoint_missing(rank: int) -> dict[str, Any]:
    """Rank 0 alone reads the checkpoint; what it finds wrong stops every rank."""
    x, y = global_batch()
    model = DynamicNet(*SIZES[1:], sampler=FixedDepth(1))
    path = CHECKPOINT_DIR[0] / "missing.ckpt"
    train(model, x, y, steps=3, distributed=True, checkpoint=path, resume=True)
    return {}


SCENARIOS: dict[str, Callable[[int], dict[str, Any]]] = {
    "train": scenario_train,
    "manual_loop": scenario_manual_loop,
    "no_restore": scenario_no_restore,
    "disagreeing_train": scenario_disagreeing_train,
    "disagreeing_check": scenario_disagreeing_check,
    "broadcast": scenario_broadcast,
    "too_few_rows": scenario_too_few_rows,
    "diverging": scenario_diverging,
    "fsdp2": scenario_fsdp2,
    "per_sample": scenario_per_sample,
    "checkpoint": scenario_checkpoint,
    "checkpoint_missing": scenario_checkpoint_missing,
    "plain_ddp": scenario_plain_ddp,
    "plain_ddp_no_momentum": scenario_plain_ddp_no_momentum,
    "plain_ddp_restored": scenario_plain_ddp_restored,
    "grad_depth_zero": scenario_grad_depth_zero,
    "plain_ddp_grad_depth_zero": scenario_plain_ddp_grad_depth_zero,
    "raw_ddp": scenario_raw_ddp,  # last: it leaves a DDP reducer in a failed state
}


def run_scenarios(rank: int, init_file: str, out_dir: str) -> None:
    """Entry point of each spawned rank."""
    CHECKPOINT_DIR.append(Path(out_dir))
    run_rank(rank, init_file, out_dir, WORLD_SIZE, SCENARIOS)
