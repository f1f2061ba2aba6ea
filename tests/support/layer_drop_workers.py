"""What each rank of the two-process LayerDropList tests runs (``torch.multiprocessing.spawn``).

Plain ``DistributedDataParallel(model)`` with default arguments, in a hand-written
loop, around a model with a :class:`~stochdepth.LayerDropList`: nothing else added.
Each rank records what it saw in a dict (an exception's traceback included, instead
of dying) and saves it for the parent test.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stochdepth import LayerDropList

from support.processes import run_rank

WORLD_SIZE = 2
ROWS, WIDTH, LAYERS = 8, 6, 4  # global batch rows; each rank takes half
STEPS = 30
SEED = 5


def make_model(mode: str, seed: int) -> nn.Sequential:
    """The same initial weights on every rank and in the single-process reference."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh()) for _ in range(LAYERS)]
    # row mode draws the global batch's rows: a layer is dropped on every rank only
    # when all its rows drop it, so a higher rate makes such steps frequent
    rate = 0.8 if mode == "row" else 0.5
    return nn.Sequential(
        nn.Linear(3, WIDTH),
        LayerDropList(blocks, rate, per_sample=mode == "row", residual=True, seed=seed),
        nn.Linear(WIDTH, 2),
    )


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(ROWS, 3, generator=generator), torch.randn(ROWS, 2, generator=generator)


def train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, momentum: float
) -> list[torch.Tensor]:
    """The user's loop: mean squared error, SGD; returns the keep masks drawn."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
    stack = next(m for m in model.modules() if isinstance(m, LayerDropList))
    keeps = []
    for _ in range(STEPS):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert stack.last_keep is not None
        keeps.append(stack.last_keep.clone())
    return keeps


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def scenario(rank: int, mode: str, seed: int, momentum: float) -> dict[str, Any]:
    model = make_model(mode, seed)
    ddp = DistributedDataParallel(model)  # default arguments: find_unused_parameters=False
    x, y = global_batch()
    half = ROWS // WORLD_SIZE
    local = slice(rank * half, (rank + 1) * half)
    keeps = train(ddp, x[local], y[local], momentum)
    params = flat_parameters(model)
    gathered = [torch.empty_like(params) for _ in range(WORLD_SIZE)]
    dist.all_gather(gathered, params)
    return {
        "identical": all(torch.equal(gathered[0], other) for other in gathered),
        "params": params,
        "keeps": keeps,
    }


def untied(rank: int) -> dict[str, Any]:
    """The control: without the tie, plain DDP fails after the first step that drops a layer."""
    from stochdepth.layer_drop import _list

    saved = _list.process_group_up
    _list.process_group_up = lambda: False
    try:
        scenario(rank, "batch", SEED, 0.0)
    except RuntimeError as error:
        return {"error": str(error)}
    finally:
        _list.process_group_up = saved
    return {"error": None}


SCENARIOS = {
    "batch": lambda rank: scenario(rank, "batch", SEED, 0.0),
    "row": lambda rank: scenario(rank, "row", SEED, 0.0),
    "momentum": lambda rank: scenario(rank, "batch", SEED, 0.9),
    # as if unseeded, with torch's global generators differing between the ranks
    "own_seeds": lambda rank: scenario(rank, "batch", SEED + rank, 0.0),
    "untied": untied,
}


def run_scenarios(rank: int, init_file: str, out_dir: str) -> None:
    """Entry point of each spawned rank."""
    run_rank(rank, init_file, out_dir, WORLD_SIZE, SCENARIOS)
