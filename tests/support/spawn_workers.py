"""What each rank of the spawn tests runs: a model that reached it through ``mp.spawn``'s pickling.

The model is built in the parent, with seeded samplers and a seeded ``LayerDropList``
whose generators have already drawn, and passed as an argument of
``torch.multiprocessing.start_processes``: that pickles it through shared memory, where
a ``torch.Generator``'s state used not to survive (pytorch issue 146828). Each rank
trains it under plain DDP and saves what it drew and its final weights.
"""

from __future__ import annotations

import copy
import datetime
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from stochdepth import LayerDropList, RepeatedBlock, SeededDepth

WORLD_SIZE = 2
STEPS = 6
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=30)


def make_model() -> nn.Sequential:
    """A model whose samplers have drawn once already, so its generators are mid-sequence."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 6),
        RepeatedBlock(nn.Sequential(nn.Linear(6, 6), nn.Tanh()), SeededDepth(0, 3, seed=11)),
        LayerDropList([nn.Linear(6, 6) for _ in range(3)], 0.5, residual=True, seed=12),
        nn.Linear(6, 2),
    )
    model(torch.randn(2, 3))
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(8, 3, generator=generator), torch.randn(8, 2, generator=generator)


def train(
    model: nn.Module, inner: nn.Sequential, x: torch.Tensor, y: torch.Tensor
) -> dict[str, Any]:
    """SGD on ``x`` through ``model`` (``inner`` or a DDP around it); what it drew, its weights."""
    block, stack = inner[1], inner[2]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    depths, keeps = [], []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        depths.append(block.last_depth)
        keeps.append(stack.last_keep.tolist())
    return {
        "depths": depths,
        "keeps": keeps,
        "weights": {k: v.detach().clone() for k, v in inner.state_dict().items()},
    }


def train_passed_model(rank: int, init_file: str, out_dir: str, model: nn.Sequential) -> None:
    result: dict[str, Any] = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=WORLD_SIZE,
            timeout=COLLECTIVE_TIMEOUT,
        )
        # What spawn gives every rank is one set of parameters in shared memory: each
        # rank's optimizer would step them all. A rank of its own copies them first.
        model = copy.deepcopy(model)
        x, y = batch()
        rows = slice(rank * 4, rank * 4 + 4)
        ddp = DistributedDataParallel(model)
        result = train(ddp, model, x[rows], y[rows])
        del ddp  # before the process group goes
    except BaseException:
        result["error"] = traceback.format_exc()
    finally:
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        if dist.is_initialized():
            dist.destroy_process_group()
