"""The DDP tie of a :class:`~stochdepth.LayerDropList`: dropped layers' parameters join the graph.

``DistributedDataParallel`` with its default ``find_unused_parameters=False`` waits
for a gradient of every parameter; a layer that a forward pass dropped gives none, and
the next forward pass fails ("Expected to have finished reduction in the prior
iteration"). When a process group is up, a list passes its output through
:class:`~stochdepth._tie.ZeroGradTie`, an identity that lists the dropped layers'
parameters as inputs and gives them no gradient: autograd still visits their gradient
accumulators, so DDP's hooks fire and every bucket is reduced.
"""

from __future__ import annotations

from torch import Tensor, nn

from stochdepth._tie import tie as tie_params


def tie(h: Tensor, dropped: list[nn.Module], used: list[nn.Module]) -> Tensor:
    """Tie ``h`` to the parameters that only ``dropped`` layers hold (see the module).

    A parameter shared with a layer in ``used`` gets its gradient there and is left
    out. Returns ``h`` itself when nothing needs tying.
    """
    seen = {id(p) for layer in used for p in layer.parameters()}
    params = []
    for layer in dropped:
        for parameter in layer.parameters():
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                params.append(parameter)
    return tie_params(h, params)
