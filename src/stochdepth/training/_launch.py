"""What ``stochdepth train --distributed`` needs from a ``torchrun`` launch.

Checking torchrun's environment, choosing the backend, starting and ending the
process group, a seed shared by all ranks, and a digest of the parameters to compare
ranks with. The training itself is ``train(..., distributed=True)``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from ._distributed_run import bytes_from_rank_0

# What torchrun sets for every worker, and what init_process_group() reads.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("auto", "gloo", "nccl")


def environment_problem(backend: str) -> str | None:
    """Say why ``--distributed`` cannot start here, or return ``None`` when it can.

    Args:
        backend: ``"auto"``, ``"gloo"`` or ``"nccl"``.

    Returns:
        A one-line message, or ``None``.
    """
    if not dist.is_available():
        return "--distributed needs a PyTorch built with torch.distributed, and this one is not"
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        return (
            f"--distributed runs under torchrun, which sets {', '.join(TORCHRUN_VARIABLES)}; "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start it "
            f"with 'torchrun --nproc_per_node=N -m stochdepth train --distributed ...'"
        )
    if backend == "nccl" and not _has_local_gpu():
        return (
            f"--backend nccl needs a CUDA device for local rank {os.environ['LOCAL_RANK']}, "
            f"and torch.cuda.device_count() is {torch.cuda.device_count()}: use --backend gloo"
        )
    return None


def _has_local_gpu() -> bool:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(local_rank + 1)))
    return torch.cuda.is_available() and torch.cuda.device_count() >= max(local_world, 1)


def choose_backend(backend: str) -> str:
    """``"nccl"`` for ``"auto"`` when every local rank has a GPU, else ``"gloo"``."""
    if backend != "auto":
        return backend
    return "nccl" if _has_local_gpu() else "gloo"


def start(backend: str) -> torch.device:
    """Start the default process group from torchrun's environment.

    Args:
        backend: ``"auto"``, ``"gloo"`` or ``"nccl"``.

    Returns:
        The device this rank trains on: ``cuda:LOCAL_RANK`` with NCCL, else the CPU.
    """
    chosen = choose_backend(backend)
    device = torch.device("cpu")
    if chosen == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(chosen)
    return device


def stop() -> None:
    """Destroy the default process group, if there is one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def from_rank_0(function: Callable[[], int], device: torch.device) -> int:
    """``function()``, run once on rank 0 and shared with every rank (or run here alone).

    Outside a process group it is simply ``function()``. In one, an error on rank 0
    (a checkpoint that cannot be read, say) is raised on every rank.
    """
    if not dist.is_initialized():
        return function()
    return int(bytes_from_rank_0(lambda: str(function()).encode(), device).decode())


def is_main() -> bool:
    """Whether this process logs: rank 0, or any process outside a process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def parameter_digest(parameters: Iterable[torch.Tensor]) -> str:
    """The SHA-256 of the parameters' bytes, in order: equal digests, equal parameters.

    Args:
        parameters: The tensors, for example ``model.parameters()``.

    Returns:
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    for parameter in parameters:
        tensor = parameter.detach().to("cpu").contiguous()
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size()))
    return digest.hexdigest()


def digest_line(model: nn.Module) -> str:
    """What ``--digest`` prints: the rank (when distributed) and the parameters' digest."""
    where = f"rank {dist.get_rank()} of {dist.get_world_size()}: " if dist.is_initialized() else ""
    return f"{where}parameters sha256 {parameter_digest(model.parameters())}"
