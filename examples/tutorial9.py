"""The article "PyTorch sample 9: dynamic graph", written with stochdepth.

The article's ``DynamicNet`` reuses one ``Linear`` ``random.randint(0, 3)`` times per
forward pass; here that middle layer is a ``stochdepth.RepeatedBlock`` and the loop is
``stochdepth.train``. Everything else is the article's: the sizes, the data, the loss,
the optimizer and the five ``t loss`` lines.

    python examples/tutorial9.py            # unseeded, like the article
    python examples/tutorial9.py --seed 0   # torch.manual_seed(0) and random.seed(0) first

With ``--seed N`` it prints, digit for digit, what the article's program prints when
it calls ``torch.manual_seed(N)`` and ``random.seed(N)`` first.
"""

from __future__ import annotations

import argparse
import random

import torch

from stochdepth import DynamicNet, train


def main(argv: list[str] | None = None) -> None:
    """Run the article's training and print its loss every 100 steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="seed torch and random with this first")
    args = parser.parse_args(argv)
    if args.seed is not None:
        torch.manual_seed(args.seed)
        random.seed(args.seed)

    # N is batch size; D_in is input dimension;
    # H is hidden dimension; D_out is output dimension.
    N, D_in, H, D_out = 64, 1000, 100, 10

    # Create random Tensors to hold inputs and outputs
    x = torch.randn(N, D_in)
    y = torch.randn(N, D_out)

    # The article's model: its middle Linear is repeated 0 to 3 times per forward pass,
    # drawn with random.randint(0, 3) as the article does.
    model = DynamicNet(D_in, H, D_out)

    # MSELoss(reduction="sum"), SGD(lr=1e-4, momentum=0.9), 500 steps, "t loss" every 100.
    train(model, x, y)


if __name__ == "__main__":
    main()
