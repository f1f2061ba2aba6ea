"""The command line: ``python -m stochdepth train`` (also the ``stochdepth`` script)."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import random
import secrets
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

import torch

from ._block import DEFAULT_DEPTH_LIMIT
from ._distributed import BroadcastDepth, DepthMismatchError
from ._model import DynamicNet
from ._version import __version__
from .samplers._protocol import DepthSampler
from .samplers._registry import BUILTIN_SAMPLERS, available_samplers, get_sampler, lookup_sampler
from .training import _launch
from .training._checkpoint import CheckpointError, load_checkpoint
from .training._finite import NonFiniteError
from .training._trainer import train

PROG = "stochdepth"
EXIT_USAGE = 2
EXIT_DIVERGED = 1  # the loss became NaN or infinite
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
_MAX_SEED = 2**64 - 1  # torch.manual_seed takes no more
_DRAWN_SEEDS = 2**32  # a drawn seed is below this: short enough to type again


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``minimum`` (and <= ``maximum``, if given)."""
    expected = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


def _float_above(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    """An argparse ``type``: a float above (or at, if ``inclusive``) ``minimum``.

    It must also be at most float32's largest value: the model is float32, and SGD
    cannot apply a larger factor to its parameters.
    """
    maximum = torch.finfo(torch.float32).max

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        above = value >= minimum if inclusive else value > minimum
        if not (math.isfinite(value) and above):
            bound = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(
                f"expected a finite number {bound} {minimum:g}, got {text!r}"
            )
        if value > maximum:
            raise argparse.ArgumentTypeError(
                f"expected a number <= {maximum:g} (float32's largest: the model is "
                f"float32), got {text!r}"
            )
        return value

    return convert


def _path(text: str) -> str:
    """An argparse ``type``: a file path, not empty."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file path, got ''")
    return text


def _sampler(text: str) -> str:
    """An argparse ``type``: a sampler spec, checked by building it once.

    The spec itself is returned: :func:`_train` builds the sampler again after
    ``--seed`` has seeded torch, so that a sampler that draws its seed from torch's
    generator (``bernoulli`` without ``seed=``, say) draws it from the seeded one.
    """
    try:
        sampler = _fresh_sampler(text)
    except Exception as error:  # a plugin's constructor may raise anything: one line
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise argparse.ArgumentTypeError(message) from None
    if sampler.max_depth > DEFAULT_DEPTH_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} draws depths up to {sampler.max_depth}, above the model's depth "
            f"limit of {DEFAULT_DEPTH_LIMIT} repeats per forward pass"
        )
    return text


def _fresh_sampler(spec: str) -> DepthSampler:
    """Build ``spec``'s sampler, leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        return get_sampler(spec)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``stochdepth``'s command line."""
    parser = _Parser(
        prog=PROG,
        description="Layers whose depth is drawn at random on every forward pass.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "train",
        help="train the article's DynamicNet and print its loss every --log-every steps",
        description=(
            "Train the article's DynamicNet (N, D_in, H, D_out = 64, 1000, 100, 10) on "
            "random data with MSELoss(reduction='sum') and momentum SGD, printing 't loss' "
            "as the article does. With --seed N it calls torch.manual_seed(N) and "
            "random.seed(N) first and prints what the article's program prints when "
            "seeded the same way."
        ),
    )
    _add_training_options(run)
    _add_output_options(run)
    _add_checkpoint_options(run)
    _add_distributed_options(run)
    commands.add_parser(
        "samplers",
        help="list the samplers --sampler takes: built-in, registered and from plugins",
        description=(
            "List the sampler names that --sampler takes, one per line with the first "
            "line of its documentation: the built-in ones and those that installed "
            "packages provide through the 'stochdepth.samplers' entry point."
        ),
    )
    return parser


def _add_training_options(run: argparse.ArgumentParser) -> None:
    """``train``'s options of the run itself: seed, steps, log, optimizer, sampler."""
    run.add_argument(
        "--seed",
        type=_int_in(0, _MAX_SEED),
        metavar="N",
        help=(
            "seed torch and Python's random with N first (default: unseeded; with "
            "--checkpoint, a seed is drawn and printed on stderr)"
        ),
    )
    run.add_argument("--steps", type=_int_in(0), default=500, metavar="N", help="default: 500")
    run.add_argument(
        "--log-every",
        type=_int_in(0),
        default=100,
        metavar="N",
        help="print 't loss' every N steps; 0 prints nothing (default: 100)",
    )
    run.add_argument(
        "--lr", type=_float_above(0.0, inclusive=False), default=1e-4, help="default: 1e-4"
    )
    run.add_argument(
        "--momentum",
        type=_float_above(0.0, inclusive=True),
        default=0.9,
        help="default: 0.9",
    )
    run.add_argument(
        "--sampler",
        type=_sampler,
        default=None,
        metavar="SPEC",
        help=(
            "the depth sampler, NAME or NAME:key=value,...: uniform:low=0,high=3 (the "
            "default), fixed:depth=2, seeded:low=0,high=3,seed=7, "
            "bernoulli:max_depth=6,p=0.8; any name that 'stochdepth samplers' lists"
        ),
    )


def _add_output_options(run: argparse.ArgumentParser) -> None:
    """``train``'s options of what it prints besides the log lines."""
    run.add_argument(
        "--summary",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print the mean depth and the depth histogram on stderr at the end (default: on)",
    )
    run.add_argument(
        "--progress",
        action="store_true",
        help=(
            "show the progress on stderr: a bar on a terminal, a plain line every "
            "max(25, steps/10) steps otherwise (needs tqdm: the 'progress' extra)"
        ),
    )


def _add_checkpoint_options(run: argparse.ArgumentParser) -> None:
    """``train``'s checkpoint options."""
    run.add_argument(
        "--checkpoint",
        type=_path,
        metavar="PATH",
        help=(
            "save the run and its seed to PATH at the start and the end, and every N "
            "steps with --checkpoint-every N (with --distributed, rank 0 writes it); a new "
            "run does not overwrite PATH"
        ),
    )
    run.add_argument(
        "--checkpoint-every",
        type=_int_in(0),
        default=None,
        metavar="N",
        help="save every N steps; 0 saves only at the start and the end (default: 0)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help=(
            "continue from --checkpoint PATH exactly where it stopped, with its seed; "
            "--lr, --momentum and --sampler must be the saved run's, --steps may be larger"
        ),
    )


def _add_distributed_options(run: argparse.ArgumentParser) -> None:
    """``train``'s options for torchrun."""
    run.add_argument(
        "--distributed",
        action="store_true",
        help=(
            "train with DistributedDataParallel across the processes that torchrun "
            "starts (torchrun --nproc_per_node=N -m stochdepth train --distributed): "
            "rank 0's batch is split across ranks, only rank 0 logs"
        ),
    )
    run.add_argument(
        "--backend",
        choices=_launch.BACKENDS,
        default="auto",
        help="with --distributed: nccl when every local rank has a GPU, else gloo (default: auto)",
    )
    run.add_argument(
        "--broadcast-depth",
        action="store_true",
        help=(
            "with --distributed: every rank uses rank 0's draw of the depth "
            "(one broadcast per step)"
        ),
    )
    run.add_argument(
        "--cuda-graphs",
        action="store_true",
        help=(
            "train on the GPU (cuda), each step replayed from a CUDA graph captured once "
            "per depth: the same depths and losses as eager training, less overhead"
        ),
    )
    run.add_argument(
        "--digest",
        action="store_true",
        help="print the SHA-256 of the final parameters on stderr (every rank prints its own)",
    )


def _samplers() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = available_samplers()
    for warning in caught:
        _say(f"warning: {warning.message}", "samplers")
    width = max(map(len, names), default=0)
    for name in names:
        factory = lookup_sampler(name)
        doc = (inspect.getdoc(factory) or "").partition("\n")[0].replace("``", "")
        origin = "" if name in BUILTIN_SAMPLERS else f"  [{factory.__module__}]"
        print(f"{name:<{width}}  {doc}{origin}".rstrip())


def _train(args: argparse.Namespace) -> None:
    try:
        device = _launch.start(args.backend) if args.distributed else torch.device("cpu")
        if args.cuda_graphs:
            device = torch.device("cuda")
        seed = _run_seed(args, device)
        if seed is not None:
            torch.manual_seed(seed)
            random.seed(seed)
        model, x, y = _article_run(args, device)
        history = train(
            model,
            x,
            y,
            steps=args.steps,
            lr=args.lr,
            momentum=args.momentum,
            log_every=args.log_every,
            progress=args.progress,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            distributed=args.distributed,
            seed=seed if args.checkpoint is not None else None,
            cuda_graphs=args.cuda_graphs,
        )
        if args.summary and _launch.is_main():
            _say(history.summary())
        if args.digest:
            _say(_launch.digest_line(model))
    finally:
        _launch.stop()


def _article_run(
    args: argparse.Namespace, device: torch.device
) -> tuple[DynamicNet, torch.Tensor, torch.Tensor]:
    """The article's data and model, made from torch's (seeded) generator, on ``device``."""
    N, D_in, H, D_out = 64, 1000, 100, 10  # noqa: N806 - the article's names
    x = torch.randn(N, D_in)
    y = torch.randn(N, D_out)
    sampler = None if args.sampler is None else _fresh_sampler(args.sampler)
    model = DynamicNet(D_in, H, D_out, sampler=sampler)
    if args.broadcast_depth:
        model.middle.sampler = BroadcastDepth(model.middle.sampler)
    if device.type != "cpu":
        model, x, y = model.to(device), x.to(device), y.to(device)
    return model, x, y


def _run_seed(args: argparse.Namespace, device: torch.device) -> int | None:
    """The run's seed: ``--seed``, the checkpoint's on ``--resume``, or one drawn.

    A run with ``--checkpoint`` always has a seed, stored in the checkpoint, so that
    ``--resume`` can make the same data; a distributed run always has one, rank 0's,
    so that every rank makes the same data and draws the same depths.
    """
    seed: int | None = args.seed
    drawn = False
    if seed is None and args.checkpoint is not None and args.resume:
        seed = _launch.from_rank_0(lambda: _checkpoint_seed(args.checkpoint), device)
    elif seed is None and (args.checkpoint is not None or args.distributed):
        seed, drawn = _launch.from_rank_0(_draw_seed, device), True
    if drawn and args.checkpoint is not None and _launch.is_main():
        _say(f"seed {seed} drawn; --seed {seed} repeats this run")
    return seed


def _draw_seed() -> int:
    return secrets.randbelow(_DRAWN_SEEDS)


def _checkpoint_seed(path: str) -> int:
    seed = load_checkpoint(path).run.get("seed")
    if not isinstance(seed, int):
        raise CheckpointError(
            path,
            "holds no seed (train() saved it without seed=...): give --seed, the seed "
            "its data were made from",
        )
    return seed


def _say(line: str, command: str = "train") -> None:
    """Write ``stochdepth COMMAND: LINE`` on stderr in one call: ranks' lines stay whole."""
    sys.stderr.write(f"{PROG} {command}: {line}\n")
    sys.stderr.flush()


def _train_options_problem(args: argparse.Namespace) -> str | None:
    """What makes ``train``'s options unusable together, or ``None``."""
    if args.progress and importlib.util.find_spec("tqdm") is None:
        return "--progress draws its bar with tqdm, which is not installed: pip install tqdm"
    if args.checkpoint is None and args.checkpoint_every is not None:
        return "--checkpoint-every needs --checkpoint PATH"
    if args.checkpoint is None and args.resume:
        return "--resume needs --checkpoint PATH"
    if args.cuda_graphs and args.distributed:
        return "--cuda-graphs cannot be combined with --distributed yet"
    if args.cuda_graphs and not torch.cuda.is_available():
        return (
            "--cuda-graphs needs a CUDA device (CUDA graphs record and replay GPU kernels), "
            "and torch.cuda.is_available() is False here"
        )
    if args.distributed:
        return _launch.environment_problem(args.backend)
    if args.broadcast_depth:
        return "--broadcast-depth needs --distributed"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments, without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success; 2 with a one-line message when a checkpoint
        cannot be used; 1 with a one-line message when the loss became NaN or
        infinite; 130 with a one-line message on Ctrl-C. Bad arguments exit with
        status 2 and a one-line message, through ``SystemExit``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and (problem := _train_options_problem(args)) is not None:
        parser.exit(EXIT_USAGE, f"{PROG} train: error: {problem}\n")
    try:
        if args.command == "samplers":
            _samplers()
        else:
            _train(args)
    except (CheckpointError, DepthMismatchError) as error:  # DepthMismatchError: every rank
        _say(f"error: {error}")
        return EXIT_USAGE
    except NonFiniteError as error:
        _say(f"error: {error}")
        return EXIT_DIVERGED
    except BrokenPipeError:  # `stochdepth train | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, and how to go on
        _say(f"interrupted{_how_to_go_on(args)}", args.command)
        return EXIT_INTERRUPTED
    return 0


def _how_to_go_on(args: argparse.Namespace) -> str:
    if getattr(args, "checkpoint", None) and os.path.exists(args.checkpoint):
        return (
            f"; checkpoint '{args.checkpoint}' holds the last save: the same command "
            f"with --resume continues from it"
        )
    return ""
