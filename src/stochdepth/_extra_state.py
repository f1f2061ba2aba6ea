"""Module extra state as one tensor, so that every saver takes it.

``nn.Module.get_extra_state`` may return any object, but safetensors (and so Hugging
Face's ``save_pretrained`` and ``transformers.Trainer`` checkpoints) hold tensors only,
and ``torch.distributed.checkpoint`` loads into tensors of the size it finds in the
model. So the samplers' and generators' state that :class:`~stochdepth.RepeatedBlock`
and :class:`~stochdepth.LayerDropList` save goes into one CPU ``uint8`` tensor:

- ``b"SDX1"``, then the length of a JSON header (4 bytes, little-endian), the header,
  and the payload;
- the header describes the structure (dict keys, ``None``, strings, and for every
  tensor its dtype and shape); the payload holds the values: ints as 16 bytes
  (signed, little-endian, which covers seeds up to ``2**64 - 1``), floats as 8, bools
  as 1, tensors as their raw bytes.

Values never enter the header, so the tensor's length depends only on the structure:
a module's extra state keeps its size as training goes on, which an in-place loader
(``torch.distributed.checkpoint``) needs. Decoding builds no objects but dicts, lists,
tuples, ints, floats, bools, strings and tensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._validation import describe

__all__ = ["decode_state", "encode_state", "from_bytes", "read_extra_state", "to_bytes"]

MAGIC = b"SDX1"
_INT_BYTES = 16
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )
}


def to_bytes(state: Mapping[Any, Any]) -> bytes:
    """Encode a state (a mapping of ints, floats, strings, tensors, ...) as bytes.

    Args:
        state: A mapping whose keys are strs or ints and whose values are ``None``,
            bools, ints, floats, strs, tensors (of a dtype in the table above, on any
            device: they are saved from the CPU), or lists, tuples and mappings of them.

    Returns:
        The encoded bytes.

    Raises:
        TypeError: ``state`` holds something else (the message says where).
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, got {describe(state)}")
    payload: list[bytes] = []
    header = _describe_value(state, payload, "state")
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(payload)


def encode_state(state: Mapping[Any, Any]) -> Tensor:
    """Encode a state as one 1-d CPU ``uint8`` tensor (see :func:`to_bytes`)."""
    return torch.frombuffer(bytearray(to_bytes(state)), dtype=torch.uint8)


def from_bytes(data: bytes) -> dict[Any, Any]:
    """Decode what :func:`to_bytes` wrote.

    Raises:
        ValueError: ``data`` is not such an encoding (or is cut short).
    """
    if data[:4] != MAGIC or len(data) < 8:
        raise ValueError(
            f"extra state must start with {MAGIC!r} (stochdepth's tensor encoding), got "
            f"{bytes(data[:4])!r} in {len(data)} bytes"
        )
    (length,) = struct.unpack("<I", data[4:8])
    try:
        header = json.loads(data[8 : 8 + length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"extra state has a corrupt header: {error}") from error
    reader = _Reader(memoryview(data)[8 + length :])
    try:
        value = reader.value(header)
    except (KeyError, TypeError, IndexError) as error:
        raise ValueError(f"extra state has a corrupt header: {error!r}") from error
    if reader.offset != len(reader.data):
        raise ValueError(
            f"extra state holds {len(reader.data) - reader.offset} bytes more than its "
            f"header describes"
        )
    if not isinstance(value, dict):
        raise ValueError(f"extra state must encode a mapping, got {describe(value)}")
    return value


def decode_state(tensor: Tensor) -> dict[Any, Any]:
    """Decode what :func:`encode_state` returned (on any device).

    Raises:
        ValueError: ``tensor`` is not a 1-d ``uint8`` tensor holding such an encoding.
    """
    if tensor.dtype != torch.uint8 or tensor.ndim != 1:
        raise ValueError(
            f"extra state must be a 1-d torch.uint8 tensor, got one of dtype {tensor.dtype} "
            f"and shape {tuple(tensor.shape)}"
        )
    return from_bytes(tensor.detach().cpu().numpy().tobytes())


def read_extra_state(state: object, owner: str) -> Mapping[Any, Any]:
    """The mapping that ``set_extra_state`` received: decoded, or an old dict as it is.

    Args:
        state: A tensor from :func:`encode_state` (what this version saves), or a
            mapping (what earlier versions saved, and what a pretrained model's missing
            state is replaced by).
        owner: The module's class name, for the error message.

    Raises:
        TypeError: ``state`` is neither.
        ValueError: The tensor is not an encoding of a state.
    """
    if isinstance(state, Tensor):
        if state.is_meta:
            raise ValueError(
                f"{owner} extra state is a tensor on the meta device, which holds no data: "
                f"load the checkpoint's values instead"
            )
        return decode_state(state)
    if isinstance(state, Mapping):
        return state
    raise TypeError(
        f"{owner} extra state must be a uint8 tensor (as state_dict() saves it) or a mapping "
        f"(as earlier versions saved it), got {describe(state)}"
    )


def _describe_value(value: Any, payload: list[bytes], where: str) -> Any:
    """The header node of ``value``; its data appended to ``payload``."""
    if value is None:
        return ["none"]
    if isinstance(value, bool):
        payload.append(b"\x01" if value else b"\x00")
        return ["bool"]
    if isinstance(value, int):
        try:
            payload.append(value.to_bytes(_INT_BYTES, "little", signed=True))
        except OverflowError:
            raise TypeError(f"{where} is an int beyond 16 bytes: {value}") from None
        return ["int"]
    if isinstance(value, float):
        payload.append(struct.pack("<d", value))
        return ["float"]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, Tensor):
        name = str(value.dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise TypeError(f"{where} is a tensor of dtype {value.dtype}, which is not encoded")
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        payload.append(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        return ["tensor", name, list(value.shape)]
    if isinstance(value, list | tuple):
        kind = "list" if isinstance(value, list) else "tuple"
        return [kind, [_describe_value(v, payload, f"{where}[{i}]") for i, v in enumerate(value)]]
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise TypeError(f"{where} has a key that is neither a str nor an int: {key!r}")
            items.append([key, _describe_value(item, payload, f"{where}[{key!r}]")])
        return ["dict", items]
    raise TypeError(
        f"{where} must be None, a bool, int, float, str, tensor, list, tuple or mapping, "
        f"got {describe(value)}"
    )


class _Reader:
    """Reads a payload in the order that :func:`_describe_value` wrote it."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        if self.offset + count > len(self.data):
            raise ValueError("extra state is cut short: its payload ends before its header")
        chunk = self.data[self.offset : self.offset + count].tobytes()
        self.offset += count
        return chunk

    def value(self, node: Any) -> Any:
        kind = node[0]
        if kind == "none":
            return None
        if kind == "bool":
            return self.take(1) != b"\x00"
        if kind == "int":
            return int.from_bytes(self.take(_INT_BYTES), "little", signed=True)
        if kind == "float":
            return float(struct.unpack("<d", self.take(8))[0])
        if kind == "str":
            return str(node[1])
        if kind == "tensor":
            dtype, shape = _DTYPES[node[1]], [int(size) for size in node[2]]
            count = math.prod(shape) * torch.empty((), dtype=dtype, device="cpu").element_size()
            if not count:
                return torch.empty(shape, dtype=dtype, device="cpu")
            raw = torch.frombuffer(bytearray(self.take(count)), dtype=torch.uint8)
            return raw.view(dtype).reshape(shape)
        if kind in ("list", "tuple"):
            items = [self.value(item) for item in node[1]]
            return items if kind == "list" else tuple(items)
        if kind == "dict":
            return {key: self.value(item) for key, item in node[1]}
        raise KeyError(kind)
