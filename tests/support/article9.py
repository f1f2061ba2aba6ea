"""The article's program, "9_dynamic_graph.py", kept as it was for comparison.

``DynamicNet`` below is the article's class verbatim. ``run`` is the article's script
with one addition: ``torch.manual_seed(seed)`` and ``random.seed(seed)`` first, when a
seed is given. Run as a script (``python tests/support/article9.py [SEED]``) it prints the
article's five lines. ``watch_zero_pre_activations`` is ours, for the comparisons.
"""

from __future__ import annotations

import random
import sys

import torch


class DynamicNet(torch.nn.Module):
    def __init__(self, D_in, H, D_out):
        super(DynamicNet, self).__init__()
        self.input_linear = torch.nn.Linear(D_in, H)
        self.middle_linear = torch.nn.Linear(H, H)
        self.output_linear = torch.nn.Linear(H, D_out)

    def forward(self, x):
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        y_pred = self.output_linear(h_relu)
        return y_pred


def run(seed: int | None = None, steps: int = 500) -> list[str]:
    """Run the article's program; return the lines it prints."""
    if seed is not None:
        torch.manual_seed(seed)
        random.seed(seed)
    N, D_in, H, D_out = 64, 1000, 100, 10
    x = torch.randn(N, D_in)
    y = torch.randn(N, D_out)
    model = DynamicNet(D_in, H, D_out)
    criterion = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    lines = []
    for t in range(steps):
        y_pred = model(x)
        loss = criterion(y_pred, y)
        if t % 100 == 99:
            lines.append(f"{t} {loss.item()}")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lines


def watch_zero_pre_activations(model: DynamicNet) -> list[bool]:
    """Record, per call of ``model``'s linear layers before a clamp, whether an output is 0.

    The article's ``clamp(min=0)`` passes the gradient at a pre-activation of exactly
    zero, where ReLU (stochdepth's ``DynamicNet``) passes none: the one place the two
    models' training may differ. Returns the list the forward hooks append to.
    """
    seen: list[bool] = []
    for linear in (model.input_linear, model.middle_linear):
        linear.register_forward_hook(lambda module, args, out: seen.append(bool((out == 0).any())))
    return seen


if __name__ == "__main__":
    print("\n".join(run(int(sys.argv[1]) if len(sys.argv) > 1 else None)))
