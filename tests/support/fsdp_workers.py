"""What each rank of the two-process FSDP2, DCP and row-draw tests runs (``spawn_ranks``).

A user's own loop around ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every
stochdepth layer and on the root, over gloo on the CPU: nothing of stochdepth's
distributed helpers added. Every FSDP module's all-gathers (its unshards) are counted
through ``set_custom_all_gather``, per module and per step. Each rank records what it
saw in a dict (an exception's traceback included, instead of dying) and saves it for
the parent test; the single-process reference runs in the parent, from the same
builders.
"""

from __future__ import annotations

import functools
import os
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather
from torch.nn.parallel import DistributedDataParallel

from stochdepth import (
    BernoulliDepth,
    FixedDepth,
    LayerDropList,
    RepeatedBlock,
    SeededDepth,
    SkippedLayerTie,
)

from support.processes import run_rank

WORLD_SIZE = 2
ROWS, WIDTH, LAYERS = 8, 6, 4  # the global batch's rows; each rank takes its chunk
STEPS = 24
LR, MOMENTUM = 0.005, 0.9


# ------------------------------------------------------------------ models


def _layer() -> nn.Module:
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh())


def block_model(kind: str) -> nn.Sequential:
    """A ``RepeatedBlock`` between two linear layers; the same weights everywhere."""
    torch.manual_seed(0)
    options: dict[str, Any] = {
        # depths 0..3: some steps skip the layer on every rank
        "depth0": {"sampler": SeededDepth(0, 3, seed=3)},
        # depth 2, grad_depth 0 or 1: some steps record no repeat at all
        "grad_depth": {"sampler": FixedDepth(2), "grad_depth": SeededDepth(0, 1, seed=4)},
        # a depth per row, mostly 0: often one rank's rows all skip the layer
        "per_row": {"sampler": BernoulliDepth(2, p=0.2, seed=5), "per_sample": True},
        # a depth per row with grad_depth 1: repeats split into frozen and recorded rows
        "per_row_grad": {"sampler": SeededDepth(0, 3, seed=6), "per_sample": True, "grad_depth": 1},
    }[kind]
    return nn.Sequential(
        nn.Linear(3, WIDTH), RepeatedBlock(_layer(), **options), nn.Linear(WIDTH, 2)
    )


def drop_model(per_sample: bool, rate: float, row_draws: str = "global") -> nn.Sequential:
    """A ``LayerDropList`` of residual branches between two linear layers."""
    torch.manual_seed(0)
    stack = LayerDropList(
        [_layer() for _ in range(LAYERS)],
        rate,
        per_sample=per_sample,
        residual=True,
        scale="eval",  # no 1 / (1 - p) in training: high drop rates stay stable
        seed=7,
        row_draws=row_draws,  # type: ignore[arg-type]
    )
    return nn.Sequential(nn.Linear(3, WIDTH), stack, nn.Linear(WIDTH, 2))


def mixed_model() -> nn.Sequential:
    """The DCP tests' model: a per-row block, then a row-mode list; three generators."""
    torch.manual_seed(0)
    block = RepeatedBlock(
        _layer(), SeededDepth(0, 2, seed=8), per_sample=True, grad_depth=SeededDepth(1, 2, seed=9)
    )
    stack = LayerDropList(
        [_layer() for _ in range(LAYERS)], 0.4, per_sample=True, residual=True, seed=10
    )
    return nn.Sequential(nn.Linear(3, WIDTH), block, stack, nn.Linear(WIDTH, 2))


MODELS: dict[str, Callable[[], nn.Sequential]] = {
    "depth0": functools.partial(block_model, "depth0"),
    "grad_depth": functools.partial(block_model, "grad_depth"),
    "per_row": functools.partial(block_model, "per_row"),
    "per_row_grad": functools.partial(block_model, "per_row_grad"),
    "drop_batch": functools.partial(drop_model, False, 0.6),
    "drop_row": functools.partial(drop_model, True, 0.8),
    "drop_row_uneven": functools.partial(drop_model, True, 0.8),
    "drop_row_local": functools.partial(drop_model, True, 0.8, "local"),
    "ddp_per_row": functools.partial(block_model, "per_row"),
    "mixed": mixed_model,
}


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, 3, generator=generator), torch.randn(ROWS, 2, generator=generator)


def shard_rows(rank: int, uneven: bool = False) -> slice:
    """This rank's contiguous rows of the global batch: halves, or 5 and 3 rows."""
    cut = 5 if uneven else ROWS // WORLD_SIZE
    return slice(0, cut) if rank == 0 else slice(cut, ROWS)


def stochastic_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, RepeatedBlock | LayerDropList)]


def sharded_units(model: nn.Module) -> list[nn.Module]:
    """The modules ``fully_shard`` wraps, innermost first: every layer of stochdepth's."""
    units: list[nn.Module] = []
    for module in stochastic_modules(model):
        units.extend(
            [module.layer] if isinstance(module, RepeatedBlock) else list(module.children())
        )
    return units


# ------------------------------------------------------------------ counting unshards


class CountingAllGather(AllGather):
    """FSDP2's all-gather, counted: one per unshard of the module it is set on."""

    def __init__(self, tally: Counter[str], name: str) -> None:
        self.tally, self.name = tally, name

    def allocate(
        self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        async_op: bool = False,
    ) -> dist.Work | None:
        self.tally[self.name] += 1
        return dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)


def shard(model: nn.Module) -> Counter[str]:
    """``fully_shard`` every stochdepth layer, then the root; count their unshards."""
    tally: Counter[str] = Counter()
    units = sharded_units(model)
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    names = {id(unit): f"unit{index}" for index, unit in enumerate(units)}
    for module in model.modules():
        if isinstance(module, FSDPModule):
            name = names.get(id(module), "root")
            module.set_custom_all_gather(CountingAllGather(tally, name))
    return tally


# ------------------------------------------------------------------ the loop


def record_draw(model: nn.Module) -> list[torch.Tensor]:
    """What every stochdepth module drew in the last pass (this rank's rows)."""
    drawn = []
    for module in stochastic_modules(model):
        value = module.last_depth if isinstance(module, RepeatedBlock) else module.last_keep
        drawn.append(torch.as_tensor(value).clone())
    return drawn


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: range,
    *,
    scale: float,
    tally: Counter[str] | None = None,
    hook: Callable[[int, str], None] | None = None,
    after_backward: Callable[[], object] | None = None,
) -> list[dict[str, Any]]:
    """The user's loop: summed squared error (times ``scale``: FSDP averages), momentum SGD."""
    records = []
    for step in steps:
        if tally is not None:
            tally.clear()
        loss = nn.functional.mse_loss(model(x), y, reduction="sum") * scale
        if hook is not None:
            hook(step, "after forward")
        optimizer.zero_grad()
        loss.backward()
        if after_backward is not None:
            after_backward()
        no_grad = [p.grad is None for p in model.parameters()]
        optimizer.step()
        records.append(
            {
                "drawn": record_draw(model),
                "unshards": dict(tally) if tally is not None else {},
                "no_grad": no_grad,
            }
        )
    return records


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def full_parameters(model: nn.Module) -> torch.Tensor:
    """Every parameter, whole (FSDP2's DTensors gathered), in one flat tensor."""
    tensors = [getattr(p, "full_tensor", lambda p=p: p)() for p in model.parameters()]
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def stochastic_states(model: nn.Module) -> list[Any]:
    """Every stochdepth module's extra state (generators, samplers, telemetry)."""
    return [module.get_extra_state() for module in stochastic_modules(model)]


def same_on_every_rank(value: torch.Tensor) -> bool:
    gathered = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, value)
    return all(torch.equal(gathered[0], other) for other in gathered)


def sharded_run(rank: int, name: str) -> dict[str, Any]:
    """One scenario: FSDP2 on every stochdepth layer and the root, or plain DDP (``ddp_``)."""
    model = MODELS[name]()
    x, y = global_batch()
    rows = shard_rows(rank, uneven=name.endswith("uneven"))
    if name.startswith("ddp_"):
        # plain DDP in a user's loop, with the tie's restore for momentum's sake
        tie = SkippedLayerTie(model)
        records = train_steps(
            DistributedDataParallel(model),
            optimizer_for(model),
            x[rows],
            y[rows],
            range(STEPS),
            scale=dist.get_world_size(),  # DDP averages too
            after_backward=tie.restore_skipped_grads,
        )
        tie.remove()
    else:
        tally = shard(model)
        records = train_steps(
            model,
            optimizer_for(model),
            x[rows],
            y[rows],
            range(STEPS),
            scale=dist.get_world_size(),
            tally=tally,
        )
    params = full_parameters(model)
    states = stochastic_states(model)
    flat_states = torch.cat(
        [torch.as_tensor(v).reshape(-1).double() for s in states for v in _leaves(s)]
    )
    return {
        "records": records,
        "params": params,
        "params_identical": same_on_every_rank(params),
        "states_identical": same_on_every_rank(flat_states),
    }


def _leaves(state: Any) -> list[Any]:
    if isinstance(state, dict):
        return [leaf for key in sorted(state) for leaf in _leaves(state[key])]
    return [state]


SCENARIOS = [
    "depth0",
    "grad_depth",
    "per_row",
    "per_row_grad",
    "drop_batch",
    "drop_row",
    "drop_row_uneven",
    "drop_row_local",
    "ddp_per_row",
]


def run_scenarios(rank: int, init_file: str, out_dir: str) -> None:
    """Entry point of each spawned rank of the FSDP2 tests."""
    scenarios = {name: functools.partial(sharded_run, name=name) for name in SCENARIOS}
    run_rank(rank, init_file, out_dir, WORLD_SIZE, scenarios)


# ------------------------------------------------------------------ DCP

DCP_STEPS, DCP_EVERY, KILL_AT = 16, 4, 10  # killed after step 10's forward pass


def checkpointed_run(
    rank: int,
    directory: Path | None,
    *,
    kill_at: int | None,
    resume: bool = False,
    save: bool = True,
) -> dict[str, Any]:
    """The mixed model under FSDP2; a DCP checkpoint every ``DCP_EVERY`` steps.

    ``directory`` None: no checkpoints (the uninterrupted reference). ``kill_at``: the
    step inside which every rank sends itself SIGKILL. ``resume``: start from the
    latest complete checkpoint in ``directory`` (named by its ``latest`` file, which
    rank 0 writes only after ``dcp.save`` returned on every rank). ``save``: write
    checkpoints into ``directory`` (a resumed run leaves it as it found it).
    """
    model = mixed_model()
    shard(model)
    optimizer = optimizer_for(model)
    start = 0
    if resume:
        assert directory is not None
        start = int((directory / "latest").read_text())
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=directory / f"step{start}")
        set_state_dict(
            model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
    x, y = global_batch()
    world = dist.get_world_size()
    rows = slice(rank * ROWS // world, (rank + 1) * ROWS // world)

    def kill(step: int, where: str) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    records: list[dict[str, Any]] = []
    for first in range(start, DCP_STEPS, DCP_EVERY):
        stop = min(first + DCP_EVERY, DCP_STEPS)
        records += train_steps(
            model, optimizer, x[rows], y[rows], range(first, stop), scale=world, hook=kill
        )
        if directory is not None and save:
            model_state, optim_state = get_state_dict(model, optimizer)
            dcp.save(
                {"model": model_state, "optim": optim_state},
                checkpoint_id=directory / f"step{stop}",
            )
            dist.barrier()
            if rank == 0:
                (directory / "latest.tmp").write_text(str(stop))
                (directory / "latest.tmp").replace(directory / "latest")
    return {
        "start": start,
        "records": records,
        "params": full_parameters(model),
        "states": stochastic_states(model),
    }


def run_checkpointed(
    rank: int,
    init_file: str,
    out_dir: str,
    *,
    checkpoints: str | None,
    world_size: int,
    kill_at: int | None,
    resume: bool,
) -> None:
    """Entry point of each spawned rank of the DCP tests (``functools.partial`` the options).

    ``checkpoints`` None: the uninterrupted run, without checkpoints. The result is
    saved under ``"run"``.
    """
    directory = None if checkpoints is None else Path(checkpoints)

    def run(rank: int) -> dict[str, Any]:
        return checkpointed_run(rank, directory, kill_at=kill_at, resume=resume, save=not resume)

    run_rank(rank, init_file, out_dir, world_size, {"run": run})
