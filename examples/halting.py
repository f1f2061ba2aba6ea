"""Learned halting on prefix sums: deep supervision, an ACT halt head, and the scheduler.

The task is the prefix-sums task of ``examples/prefix_sums.py`` (the running parity of a
bit string), with strings of different lengths in one batch: each string has between 2
and ``bits`` bits, the rest of its places are padding (a third input channel) and carry
no target. A longer string needs more repeats, so the depth that an input needs varies.

Training is deep supervision with a carried state, as HRM and Tiny Recursive Models
train (``stochdepth.DeepSupervision``): every optimizer step is one supervision step of
``repeats`` repeats (the last ``grad_repeats`` with autograd, ``grad_depth``) from each
string's carried state; the loss is the task's plus TRM's halting loss, a binary
cross-entropy of an ``ACTHalting`` logit against "the answer is already right"; strings
that halt (with exploration) or reach ``max_steps`` supervision steps are replaced by
fresh ones. At test time ``stochdepth.DepthScheduler`` runs a stream of strings with
the halt head as its rule, refilling finished rows, against running every string to the
maximum depth.

    python examples/halting.py --quick                 # seconds: a smoke run
    python examples/halting.py                         # the docs page's run, minutes
    python examples/halting.py --checkpoint run.pt     # save every --checkpoint-every steps
    python examples/halting.py --checkpoint run.pt --resume   # continue, exactly

A run killed and resumed from its checkpoint prints the same lines as a run that was
not stopped: the checkpoint holds the model, the optimizer and the supervision carry
(rows, states, step counts, halts, and the generator of the data and the exploration).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from stochdepth import ACTHalting, DeepSupervision, DepthScheduler, FixedDepth, RepeatedBlock

IGNORE = -100  # the target of a padding place


@dataclass(frozen=True)
class Settings:
    """The sizes of one run; ``--quick`` shrinks them."""

    width: int = 24
    bits: int = 16
    batch: int = 64
    steps: int = 1500
    repeats: int = 4  # repeats per supervision step
    grad_repeats: int = 2  # of which autograd records the last ones
    max_steps: int = 8  # supervision steps of a string at most
    exploration: float = 0.1
    lr: float = 2e-3
    test_strings: int = 512
    scheduler_batch: int = 64


QUICK = Settings(
    width=12, bits=8, batch=16, steps=40, max_steps=4, test_strings=64, scheduler_batch=16
)


def strings(count: int, bits: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` strings of 2 to ``bits`` bits, padded: ``(count, 3, bits)`` inputs, targets.

    Channels 0 and 1 one-hot the bits, channel 2 marks the padding; the target of a bit
    is the parity of the bits up to it, ``IGNORE`` on the padding.
    """
    lengths = torch.randint(2, bits + 1, (count,), generator=generator)
    b = torch.randint(0, 2, (count, bits), generator=generator)
    valid = torch.arange(bits) < lengths[:, None]
    symbols = torch.where(valid, b, 2)
    target = torch.where(valid, torch.cumsum(b, dim=1) % 2, IGNORE)
    return functional.one_hot(symbols, 3).permute(0, 2, 1).float(), target


class Step(nn.Module):
    """One repeat: ``s -> tanh(conv(relu(conv(cat[s, e]))))``, the input ``e`` recalled."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.recall = nn.Conv1d(2 * width, width, 3, padding=1)
        self.conv = nn.Conv1d(width, width, 3, padding=1)

    def forward(self, state: Tensor, embedded: Tensor) -> Tensor:
        """The next state, from the state and the embedded bits."""
        hidden = functional.relu(self.recall(torch.cat([state, embedded], dim=1)))
        return torch.tanh(self.conv(hidden))


class Pool(nn.Module):
    """A string's state, its places' mean and max: what the halt head reads."""

    def forward(self, state: Tensor) -> Tensor:
        """``(strings, 2 * width)``."""
        return torch.cat([state.mean(dim=2), state.amax(dim=2)], dim=1)


class Model(nn.Module):
    """Embed the string, repeat :class:`Step` with the embedding injected, read each bit."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        width = settings.width
        self.embed = nn.Conv1d(3, width, 3, padding=1)
        self.block = RepeatedBlock(
            Step(width),
            FixedDepth(settings.repeats),
            grad_depth=settings.grad_repeats,
            row_args=0,
        )
        self.head = nn.Conv1d(width, 2, 1)
        self.halt = ACTHalting(
            nn.Sequential(Pool(), nn.Linear(2 * width, 1)),
            max_steps=settings.max_steps,
            every=settings.repeats,
            exploration=settings.exploration,
        )

    def first_state(self, x: Tensor, target: Tensor | None = None) -> Tensor:
        """The state a fresh string starts from: zeros of the embedding's shape."""
        return torch.zeros(x.shape[0], self.head.in_channels, x.shape[2])


def solved(logits: Tensor, target: Tensor) -> Tensor:
    """Whether every bit of each string is right (padding excluded)."""
    right = (logits.argmax(dim=1) == target) | (target == IGNORE)
    return right.all(dim=1)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` so that ``path`` holds either the old or the new checkpoint."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as file:
        torch.save(payload, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, path)


def train(
    model: Model,
    settings: Settings,
    seed: int,
    *,
    checkpoint: Path | None = None,
    every: int = 0,
    resume: bool = False,
    log_every: int = 100,
) -> float:
    """Deep supervision with ACT halting; return the last 50 steps' mean loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    supervision = DeepSupervision(
        lambda count, generator: strings(count, settings.bits, generator),
        model.first_state,
        batch_size=settings.batch,
        halting=model.halt,
        seed=seed,
    )
    recent: list[float] = []
    if resume:
        assert checkpoint is not None
        saved = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        supervision.load_state_dict(saved["supervision"])
        recent = list(saved["recent"])
    model.train()
    while supervision.step < settings.steps:
        rows = supervision.begin()
        x, target = rows.data
        state = model.block(rows.state, model.embed(x))
        logits = model.head(state)
        q = model.halt(state)
        right = solved(logits.detach(), target)
        loss = functional.cross_entropy(logits, target, ignore_index=IGNORE)
        loss = loss + 0.5 * model.halt.loss(q, right)
        halted = supervision.end(state, q)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        t = supervision.step
        recent = [*recent[-49:], float(loss.detach())]
        if t % log_every == 0 or t == settings.steps:
            print(
                f"step {t} loss {float(loss.detach())!r} solved {int(right.sum())} "
                f"halted {int(halted.sum())} mean steps {float(rows.steps.float().mean()) + 1}",
                flush=True,
            )
        if checkpoint is not None and every and t % every == 0:
            payload = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "supervision": supervision.state_dict(),
                "recent": recent,
            }
            save(checkpoint, payload)
    return sum(recent) / max(len(recent), 1)


@torch.no_grad()
def evaluate(model: Model, settings: Settings, seed: int) -> dict[str, Any]:
    """Test strings through the scheduler (halt head) and run to the maximum depth."""
    model.eval()
    x, target = strings(settings.test_strings, settings.bits, torch.Generator().manual_seed(seed))
    embedded = model.embed(x)
    start = model.first_state(x)
    max_depth = model.halt.max_depth
    scheduler = DepthScheduler(model.block, settings.scheduler_batch, halting=model.halt)
    results = scheduler.run(zip(start, embedded, strict=True))
    out = torch.stack([r.output for r in results])
    depth = torch.tensor([r.depth for r in results])
    full = model.block(start, embedded, depth=max_depth)
    lengths = (target != IGNORE).sum(dim=1)
    by_length = {
        int(n): float(depth[lengths == n].float().mean()) for n in torch.unique(lengths).tolist()
    }
    return {
        "scheduler_accuracy": float(solved(model.head(out), target).float().mean()),
        "max_depth_accuracy": float(solved(model.head(full), target).float().mean()),
        "mean_depth": float(depth.float().mean()),
        "max_depth": max_depth,
        "row_repeats": scheduler.row_repeats,
        "row_repeats_at_max": settings.test_strings * max_depth,
        "mean_depth_by_length": by_length,
    }


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the parameters' bytes: two runs with the same weights print the same."""
    digest = hashlib.sha256()
    for value in model.state_dict().values():
        if isinstance(value, Tensor):
            digest.update(value.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    """Train with deep supervision and ACT halting, evaluate with the scheduler."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, seconds")
    parser.add_argument("--seed", type=int, default=0, help="the seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--checkpoint", type=Path, help="save the run here")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between saves")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--log-every", type=int, default=None, help="steps between log lines")
    parser.add_argument("--out", type=Path, help="write halting.json here")
    args = parser.parse_args(argv)
    if args.resume and args.checkpoint is None:
        parser.error("--resume needs --checkpoint")
    if args.resume and not args.checkpoint.is_file():
        parser.error(f"--resume: {args.checkpoint} does not exist")
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else Settings()
    log_every = args.log_every or (10 if args.quick else 100)
    begin = time.perf_counter()
    torch.manual_seed(args.seed)
    model = Model(settings)
    loss = train(
        model,
        settings,
        args.seed,
        checkpoint=args.checkpoint,
        every=args.checkpoint_every,
        resume=args.resume,
        log_every=log_every,
    )
    seconds = time.perf_counter() - begin
    report = evaluate(model, settings, args.seed + 1)
    print(f"weights {fingerprint(model)}")
    print(
        f"scheduler (halt head): solved {report['scheduler_accuracy']:.3f} at mean depth "
        f"{report['mean_depth']:.2f} of {report['max_depth']}, "
        f"{report['row_repeats']} row-repeats"
    )
    print(
        f"run to max depth: solved {report['max_depth_accuracy']:.3f}, "
        f"{report['row_repeats_at_max']} row-repeats"
    )
    print(
        "mean depth by length: "
        + ", ".join(f"{n}: {d:.1f}" for n, d in report["mean_depth_by_length"].items())
    )
    print(f"trained in {seconds:.0f} s, final loss {loss:.4f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        data = {"settings": {**asdict(settings), "quick": args.quick}, "loss": loss, **report}
        (args.out / "halting.json").write_text(json.dumps(data, indent=1))
    if math.isnan(loss):
        raise SystemExit("the training loss is NaN")


if __name__ == "__main__":
    main()
