"""Checkpoints of training runs: what they hold, how they are written and read.

A checkpoint file is a short header followed by a payload:

- ``MAGIC`` (``b"stochdepth checkpoint"`` and a newline), then the format version (a little-endian
  ``uint32``), the payload's length (``uint64``) and the payload's SHA-256 (32 bytes);
- the payload: a ``torch.save`` of a dict of tensors, ints, floats, strings, lists,
  tuples and dicts, read back with ``torch.load(weights_only=True)``, which runs no
  code from the file.

The header lets a missing, truncated, corrupted, foreign or newer file be told apart
and reported in one line before anything is unpickled. Files are written to a
temporary file in the same folder, flushed, synced and renamed over the old one, so
that a run killed while saving leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import math
import os
import random
import re
import secrets
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import torch
from torch import Tensor, nn

from stochdepth._block import RepeatedBlock
from stochdepth._errors import CheckpointError as CheckpointError
from stochdepth._validation import check_int, describe
from stochdepth._version import __version__
from stochdepth.samplers._generator import GeneratorSampler

from ._finite import check_state
from ._history import StepRecord, TrainingHistory

FORMAT_VERSION = 1
"""The version of the checkpoint format this stochdepth writes and reads."""

MAGIC = b"stochdepth checkpoint\n"
_HEADER = struct.Struct("<IQ32s")  # format version, payload length, payload SHA-256
_TEMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{8}\Z")
_PAYLOAD_KEYS = ("step", "model", "optimizer", "rng", "history", "run", "versions")

CheckpointPath = str | os.PathLike[str]
OnRank0 = Callable[[Callable[[], bytes]], bytes]


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` read from a checkpoint file.

    Args:
        path: The file it was read from.
        step: How many steps the run had done: it resumes at this step's index.
        history: The record of every one of those steps.
        model_state: The model's ``state_dict`` (each
            :class:`~stochdepth.RepeatedBlock`'s sampler state under
            ``_extra_state``).
        optimizer_state: The optimizer's ``state_dict``.
        rng_state: The random states: ``python`` (``random.getstate()`` as a
            ``(version, internal state, gauss_next)`` tuple), ``torch`` (the CPU
            generator's state) and ``cuda`` (one state per device, empty when CUDA
            was not used).
        run: What a resumed run must match: ``lr`` and ``momentum``, ``data``
            (shape, dtype and SHA-256 of ``x`` and ``y``) and ``samplers`` (each
            block's sampler, by the block's name); ``steps``, the saved run's
            target, which a resumed run may raise; and ``seed``, the seed the run's
            data and weights were made from (``train(seed=...)``, the command line's
            ``--seed`` or the seed it drew), or ``None``.
        versions: The format version and the stochdepth and torch versions that
            wrote it.
    """

    path: str
    step: int
    history: TrainingHistory
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    rng_state: dict[str, Any]
    run: dict[str, Any]
    versions: dict[str, Any]


def load_checkpoint(path: CheckpointPath) -> Checkpoint:
    """Read and check a checkpoint written by :func:`~stochdepth.train`.

    The file's checksum is verified before it is unpickled, with
    ``torch.load(weights_only=True)``: loading never runs code from the file.

    Args:
        path: The checkpoint file.

    Returns:
        What it holds.

    Raises:
        CheckpointError: The file is missing, unreadable, not a stochdepth checkpoint,
            truncated, corrupted, or of another format version (a ``ValueError``).
        TypeError: ``path`` is not a path.

    Example:
        >>> import os, tempfile, torch
        >>> from stochdepth import DynamicNet, FixedDepth, load_checkpoint, train
        >>> x, y = torch.randn(8, 5), torch.randn(8, 2)
        >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
        >>> _ = train(DynamicNet(5, 4, 2, FixedDepth(1)), x, y, steps=3, log_every=None,
        ...           checkpoint=path)
        >>> checkpoint = load_checkpoint(path)
        >>> checkpoint.step, [record.depth for record in checkpoint.history]
        (3, [1, 1, 1])
    """
    path = _check_path(path)
    payload = _decode(path, _read(path))
    return _checkpoint_from(path, payload)


def _check_path(path: object) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path (str or os.PathLike), got {describe(path)}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"checkpoint must be a str path, got {describe(path)}")
    if not text:
        raise ValueError("checkpoint must be a path, got ''")
    return text


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise CheckpointError(path, "does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a directory, not a file") from None
    except OSError as error:
        raise CheckpointError(path, f"cannot be read: {error.strerror or error}") from None


def _decode(path: str, data: bytes) -> dict[str, Any]:
    """Check the header and the checksum, then unpickle the payload safely."""
    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise CheckpointError(path, f"is truncated: {len(data)} bytes, not even a header")
        kind = " (it looks like a plain torch.save file)" if data[:2] == b"PK" else ""
        raise CheckpointError(
            path,
            f"is not a stochdepth checkpoint{kind}: it does not start with {MAGIC!r}; "
            f"checkpoints are written by stochdepth.train(checkpoint=...)",
        )
    header_end = len(MAGIC) + _HEADER.size
    if len(data) < header_end:
        raise CheckpointError(path, f"is truncated: {len(data)} bytes, not even a header")
    version, length, digest = _HEADER.unpack_from(data, len(MAGIC))
    if version != FORMAT_VERSION:
        raise CheckpointError(
            path,
            f"has format version {version}, but this stochdepth reads version "
            f"{FORMAT_VERSION} only",
        )
    payload = data[header_end:]
    if len(payload) < length:
        raise CheckpointError(
            path, f"is truncated: {len(payload)} of its {length} payload bytes are there"
        )
    if len(payload) > length:
        raise CheckpointError(
            path,
            f"is corrupted: {len(payload) - length} bytes follow its {length}-byte payload",
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(path, "is corrupted: its payload does not match its SHA-256")
    try:
        loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # a checksummed payload that torch cannot read
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            path, f"cannot be unpickled safely: {type(error).__name__}: {message}"
        ) from None
    if not isinstance(loaded, dict):
        raise CheckpointError(path, f"holds {type(loaded).__name__}, not a checkpoint's dict")
    missing = [key for key in _PAYLOAD_KEYS if key not in loaded]
    if missing:
        raise CheckpointError(path, f"lacks the entries {', '.join(map(repr, missing))}")
    return loaded


def _checkpoint_from(path: str, payload: dict[str, Any]) -> Checkpoint:

    try:
        step = check_int("step", payload["step"])
        history = payload["history"]
        losses = _float_list(history["loss"])
        depths = [None if d < 0 else d for d in _int_list(history["depth"])]
        if not len(losses) == len(depths) == step:
            raise ValueError(
                f"its history has {len(losses)} losses and {len(depths)} depths for {step} steps"
            )
        rng = payload["rng"]
        python_state = rng["python"]
        rng_state = {
            "python": (
                int(python_state[0]),
                tuple(int(v) for v in python_state[1]),
                None if python_state[2] is None else float(python_state[2]),
            ),
            "torch": _byte_tensor(rng["torch"]),
            "cuda": [_byte_tensor(state) for state in rng["cuda"]],
        }
        for key in ("model", "optimizer", "run", "versions"):
            if not isinstance(payload[key], dict):
                raise TypeError(f"its {key!r} entry is {describe(payload[key])}, not a dict")
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"is malformed: {type(error).__name__}: {error}") from None
    pairs = enumerate(zip(losses, depths, strict=True))
    records = TrainingHistory(StepRecord(t, loss, depth) for t, (loss, depth) in pairs)
    return Checkpoint(
        path=path,
        step=step,
        history=records,
        model_state=payload["model"],
        optimizer_state=payload["optimizer"],
        rng_state=rng_state,
        run=payload["run"],
        versions=payload["versions"],
    )


def _float_list(value: object) -> list[float]:
    if not isinstance(value, Tensor) or value.dtype != torch.float64 or value.ndim != 1:
        raise TypeError(f"losses must be a 1-d float64 tensor, got {describe(value)}")
    return [float(v) for v in value.tolist()]


def _int_list(value: object) -> list[int]:
    if not isinstance(value, Tensor) or value.dtype != torch.int64 or value.ndim != 1:
        raise TypeError(f"depths must be a 1-d int64 tensor, got {describe(value)}")
    return [int(v) for v in value.tolist()]


def _byte_tensor(value: object) -> Tensor:
    if not isinstance(value, Tensor) or value.dtype != torch.uint8:
        raise TypeError(f"a generator state must be a uint8 tensor, got {describe(value)}")
    return value


def encode(payload: Mapping[str, Any]) -> bytes:
    """Serialise ``payload`` with ``torch.save`` behind the checkpoint header."""
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    body = buffer.getvalue()
    header = MAGIC + _HEADER.pack(FORMAT_VERSION, len(body), hashlib.sha256(body).digest())
    return header + body


def _write_all(file: IO[bytes], data: bytes) -> None:
    """Write ``data`` to ``file`` (a seam: the tests stall a save here)."""
    file.write(data)


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old or its new bytes.

    The bytes go to a temporary file ``.NAME.tmp-XXXXXXXX`` in the same folder,
    which is flushed, synced and renamed over ``path`` (then the folder is synced
    where the system allows). If anything fails, the temporary file is removed.
    """
    target = os.path.realpath(path)  # through a symbolic link, replace the file it names
    folder, name = os.path.split(target)
    while True:
        temp = os.path.join(folder, f".{name}.tmp-{secrets.token_hex(4)}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(temp, flags, 0o666)  # the umask applies, as for open()
        except FileExistsError:  # pragma: no cover - a 32-bit name collision
            continue
        break
    try:
        with os.fdopen(fd, "wb") as file:
            _write_all(file, data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    with contextlib.suppress(OSError):  # not every system can open or sync a folder
        fd = os.open(folder, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temp_files(path: str) -> list[str]:
    """Remove the temporary files that runs killed while saving ``path`` left behind.

    Returns:
        The paths removed.
    """
    folder, name = os.path.split(os.path.realpath(path))  # through a link, its target
    removed: list[str] = []
    prefix = f".{name}"
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if entry.startswith(prefix) and _TEMP_SUFFIX.fullmatch(entry[len(prefix) :]):
            stale = os.path.join(folder, entry)
            with contextlib.suppress(OSError):
                os.unlink(stale)
                removed.append(stale)
    return removed


def fingerprint(tensor: Tensor) -> dict[str, Any]:
    """Shape, dtype and SHA-256 of a tensor's values, to recognise the same data."""
    flat = (
        tensor.detach()
        .cpu()
        .resolve_conj()
        .resolve_neg()
        .clone(memory_format=torch.contiguous_format)
    )
    raw = ctypes.string_at(flat.data_ptr(), flat.numel() * flat.element_size())
    return {
        "shape": list(flat.shape),
        "dtype": str(flat.dtype),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def describe_sampler(sampler: object) -> str:
    """What a resumed run's sampler must match: its kind and parameters, not its seed.

    The seed and the generator's state come from the checkpoint.
    """
    kind = type(sampler)
    if isinstance(sampler, GeneratorSampler):
        params = ", ".join(f"{key}={value!r}" for key, value in sampler.params().items())
        return f"{kind.__qualname__}({params})"
    text = repr(sampler)
    if " object at 0x" in text or isinstance(sampler, nn.Module):
        return f"{kind.__module__}.{kind.__qualname__}"
    return text


def make_checkpointer(
    checkpoint: object,
    every: object,
    resume: object,
    x: Tensor,
    y: Tensor,
    *,
    on_rank_0: OnRank0 | None = None,
    **run: Any,
) -> Checkpointer | None:
    """The trainer's checkpointer, or ``None`` without ``checkpoint``; checks the options.

    ``on_rank_0`` runs a function on rank 0 alone and returns its bytes (or raises its
    error) on every rank: given, only rank 0 touches the file.

    Raises:
        TypeError: An option has the wrong type.
        ValueError: ``checkpoint_every`` or ``resume`` was given without ``checkpoint``.
        CheckpointError: The checkpoint cannot be resumed from, or a new run would
            overwrite it.
    """
    if checkpoint is None:
        if every is not None:
            raise ValueError(f"checkpoint_every={every!r} was given without checkpoint")
        if resume is not False:
            raise ValueError(f"resume={resume!r} was given without checkpoint")
        return None
    return Checkpointer(
        checkpoint, every=every, resume=resume, run=run, x=x, y=y, on_rank_0=on_rank_0
    )


def _here(function: Callable[[], bytes]) -> bytes:
    """A single process's ``on_rank_0``: ``function()``."""
    return function()


class Checkpointer:
    """The trainer's side of checkpoints: check, restore, and save every ``every`` steps.

    In a distributed run every rank keeps one: rank 0 alone reads and writes the file
    (through ``on_rank_0``), and every rank decodes what it read and checks the state
    it would save, so that an error stops every rank at once.
    """

    def __init__(
        self,
        path: object,
        *,
        every: object,
        resume: object,
        run: dict[str, Any],
        x: Tensor,
        y: Tensor,
        on_rank_0: OnRank0 | None = None,
    ) -> None:
        self.path = _check_path(path)
        self.every = 0 if every is None else check_int("checkpoint_every", every)
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {describe(resume)}")
        self.resume = resume
        self.run = {**run, "data": {"x": fingerprint(x), "y": fingerprint(y)}}
        self.saved_step: int | None = None
        self.loaded: Checkpoint | None = None
        self._on_rank_0 = _here if on_rank_0 is None else on_rank_0
        path = self.path
        if resume:
            data = self._on_rank_0(lambda: _read(path))
            self.loaded = _checkpoint_from(path, _decode(path, data))
        else:
            self._on_rank_0(self._check_fresh)

    def _check_fresh(self) -> bytes:
        """Refuse to start a new run over an existing file, or in a missing folder."""
        path = self.path
        if os.path.isdir(path):
            raise CheckpointError(path, "is a directory, not a file")
        if os.path.lexists(path):
            raise CheckpointError(
                path,
                "already exists: pass resume=True (--resume) to continue from it, or "
                "remove it to start over",
            )
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CheckpointError(path, f"cannot be written: its folder {folder} does not exist")
        return b""

    def start(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        losses: list[float],
        depths: list[int | None],
    ) -> int:
        """Restore the checkpoint (or save step 0 of a new run); return the first step."""
        self._on_rank_0(self._remove_stale_temp_files)
        self.run["samplers"] = _samplers(model)
        loaded = self.loaded
        if loaded is None:
            self.save(0, model, optimizer, losses, depths)
            return 0
        self._check_compatible(loaded, model, self.run["steps"])
        try:
            model.load_state_dict(loaded.model_state)
            optimizer.load_state_dict(loaded.optimizer_state)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise CheckpointError(
                self.path, f"cannot be restored into this run: {type(error).__name__}: {first}"
            ) from None
        losses[:] = [record.loss for record in loaded.history]
        depths[:] = [record.depth for record in loaded.history]
        _restore_rng(self.path, loaded.rng_state)
        self.saved_step = loaded.step
        return loaded.step

    def _remove_stale_temp_files(self) -> bytes:
        remove_stale_temp_files(self.path)
        return b""

    def _check_compatible(self, loaded: Checkpoint, model: nn.Module, steps: int) -> None:
        path = self.path
        _check_model_shape(path, loaded.model_state, model.state_dict())
        saved, here = loaded.run, self.run
        differ = []
        for key in ("lr", "momentum", "seed"):
            theirs, ours = saved.get(key), here[key]
            if theirs != ours and not (key == "seed" and None in (theirs, ours)):
                differ.append(f"{key}={ours!r} here, {theirs!r} there")
        for key in ("x", "y"):
            theirs, ours = saved.get("data", {}).get(key), here["data"][key]
            if theirs != ours:
                differ.append(f"{key} is not the data it was trained on ({_data(theirs)})")
        theirs_samplers, our_samplers = saved.get("samplers"), here["samplers"]
        if theirs_samplers != our_samplers:
            differ.append(
                f"the samplers are {_samplers_text(our_samplers)} here, "
                f"{_samplers_text(theirs_samplers)} there"
            )
        if differ:
            raise CheckpointError(path, f"was saved by another run: {'; '.join(differ)}")
        if loaded.step > steps:
            raise CheckpointError(
                path, f"is at step {loaded.step}, beyond this run's steps={steps}"
            )

    def due(self, step: int) -> bool:
        """Whether to save after ``step`` steps (not counting the save at the end)."""
        return bool(self.every) and step % self.every == 0

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        losses: list[float],
        depths: list[int | None],
    ) -> None:
        """Save the state after ``step`` steps; ``losses`` must hold all of them."""
        if len(losses) != step or len(depths) != step:  # pragma: no cover - a trainer bug
            raise RuntimeError(f"checkpoint at step {step} with {len(losses)} losses")
        model_state = model.state_dict()
        optimizer_state = optimizer.state_dict()
        named = _named_tensors(model_state, optimizer_state)
        if step:
            check_state(step - 1, losses[-1], named)
        else:
            check_state(None, math.nan, named)
        payload = {
            "step": step,
            "model": model_state,
            "optimizer": optimizer_state,
            "rng": _rng_state(),
            "history": {
                "loss": torch.tensor(losses, dtype=torch.float64),
                "depth": torch.tensor([-1 if d is None else d for d in depths], dtype=torch.int64),
            },
            "run": self.run,
            "versions": _versions(),
        }
        self._on_rank_0(lambda: self._write(payload))
        self.saved_step = step

    def _write(self, payload: Mapping[str, Any]) -> bytes:
        try:
            write_atomically(self.path, encode(payload))
        except OSError as error:  # a full disk, a missing folder, a name too long...
            raise CheckpointError(
                self.path, f"cannot be written: {error.strerror or error}"
            ) from error
        return b""


def _named_tensors(
    model_state: Mapping[str, Any], optimizer_state: Mapping[str, Any]
) -> list[tuple[str, Tensor]]:
    named = [(f"the model's {k}", v) for k, v in model_state.items() if isinstance(v, Tensor)]
    for index, state in optimizer_state.get("state", {}).items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                named.append((f"the optimizer's {key} of parameter {index}", value))
    return named


def _samplers(model: nn.Module) -> dict[str, str]:
    return {
        name: describe_sampler(module.sampler)
        for name, module in model.named_modules()
        if isinstance(module, RepeatedBlock)
    }


def _samplers_text(samplers: object) -> str:
    if not isinstance(samplers, dict) or not samplers:
        return "none"
    return ", ".join(f"{name or 'model'}: {text}" for name, text in samplers.items())


def _data(info: object) -> str:
    if not isinstance(info, dict):
        return "unknown"
    shape = "x".join(map(str, info.get("shape", []))) or "scalar"
    return f"shape {shape}, {info.get('dtype')}, sha256 {str(info.get('sha256'))[:12]}..."


def _check_model_shape(path: str, saved: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    missing = [key for key in expected if key not in saved]
    unexpected = [key for key in saved if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {_some(missing)}")
        if unexpected:
            parts.append(f"has {_some(unexpected)}, which this model lacks")
        raise CheckpointError(
            path, f"was saved from another model: its state {' and '.join(parts)}"
        )
    for key, value in expected.items():
        theirs = saved[key]
        # A module's extra state (an encoded sampler state) is not a weight: its size
        # follows the sampler, which the run's description compares, by name, later.
        if isinstance(value, Tensor) and not key.endswith("_extra_state"):
            if not isinstance(theirs, Tensor):
                raise CheckpointError(
                    path, f"was saved from another model: {key} is not a tensor there"
                )
            if theirs.shape != value.shape or theirs.dtype != value.dtype:
                raise CheckpointError(
                    path,
                    f"was saved from another model: {key} has shape {tuple(theirs.shape)} "
                    f"and dtype {theirs.dtype} there, {tuple(value.shape)} and {value.dtype} "
                    f"in this model",
                )


def _some(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _rng_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda = torch.cuda.get_rng_state_all() if initialized else []
    return {
        "python": (version, internal, gauss_next),
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
    }


def _restore_rng(path: str, state: Mapping[str, Any]) -> None:
    try:
        random.setstate(state["python"])
        torch.set_rng_state(state["torch"])
        cuda = state["cuda"]
        if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            path, f"holds a random state that cannot be restored: {error}"
        ) from None


def _versions() -> dict[str, Any]:

    return {"format": FORMAT_VERSION, "stochdepth": __version__, "torch": str(torch.__version__)}
