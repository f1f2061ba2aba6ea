"""The trainer's SGD step: ``optimizer.step()`` through torch's own functional ``sgd``.

``torch.optim.SGD.step`` gathers the parameters that have gradients and their momentum
buffers, calls ``torch.optim.sgd.sgd`` (the functional form, public in
``torch.optim.sgd``) and stores the buffers back in ``optimizer.state``. Around that it
opens a profiler range, runs the step hooks and switches the grad mode (section 1 of
``benchmarks/run.py`` shows what that costs the whole training step). :func:`sgd_step` does the same
gathering and the same call, without the wrappers: the parameters, buffers and
``state_dict`` come out bitwise the same.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.sgd import sgd


def sgd_step(optimizer: torch.optim.SGD) -> None:
    """One step of ``optimizer``, as ``optimizer.step()`` takes it (no closure, no hooks).

    For the trainer's own optimizer, which no caller sees: it has no step hooks of its
    own; hooks registered for every optimizer (``torch.optim.optimizer.
    register_optimizer_step_pre_hook`` and ``..._post_hook``) do not run either. The
    parameter groups and the state are read at each call, so a ``load_state_dict``
    (resuming a checkpoint) is seen.

    Args:
        optimizer: A ``torch.optim.SGD`` (with ``differentiable`` or ``fused``, its own
            ``step()`` runs).
    """
    if optimizer.defaults["differentiable"] or any(g["fused"] for g in optimizer.param_groups):
        optimizer.step()  # the checks and the grad mode that these need
        return
    state = optimizer.state
    with torch.no_grad():
        for group in optimizer.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            has_sparse_grad = False
            for param in group["params"]:
                grad = param.grad
                if grad is not None:
                    params.append(param)
                    grads.append(grad)
                    has_sparse_grad = has_sparse_grad or grad.is_sparse
            momentum = group["momentum"]
            buffers: list[Tensor | None] = (
                [state[param].get("momentum_buffer") for param in params] if momentum else []
            )
            sgd(
                params,
                grads,
                buffers,
                weight_decay=group["weight_decay"],
                momentum=momentum,
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
                has_sparse_grad=has_sparse_grad,
                foreach=group["foreach"],
                fused=group["fused"],
            )
            if momentum:
                for param, buffer in zip(params, buffers, strict=True):
                    state[param]["momentum_buffer"] = buffer
