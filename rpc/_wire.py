"""Wire codec: JSON values with tensors, arrays and bytes, laid out as a safetensors file."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from rpc.errors import MalformedPayload, UnsupportedValue

CONTENT_TYPE = "application/x-plexus-rpc"
# Bodies are streamed in slices of this many bytes: small enough that the per-chunk copies
# made by the HTTP stack stay cheap, large enough that per-chunk Python overhead is noise.
CHUNK_BYTES = 1 << 18
# Pieces smaller than this are copied together into one chunk rather than written alone.
_SMALL_BYTES = 1 << 16
# A header larger than this is not something we produced; refuse before parsing it.
MAX_HEADER_BYTES = 100 << 20
# Limits on a tensor's shape, checked before anything is allocated: numpy holds at most 64
# dimensions (32 before numpy 2), and torch computes element counts and strides in int64, so the
# product of the dimensions (zeros counted as 1, as strides do) must stay well inside it.
MAX_NDIM = 32
MAX_ELEMENTS = 1 << 53

_TENSOR_KEY = "__tensor__"
_ESCAPE_KEY = "__dict__"

# safetensors dtype name -> (numpy dtype or None when numpy has none, item size in bytes)
_DTYPES: dict[str, tuple[np.dtype[Any] | None, int]] = {
    "BOOL": (np.dtype("bool"), 1),
    "U8": (np.dtype("<u1"), 1),
    "I8": (np.dtype("<i1"), 1),
    "I16": (np.dtype("<i2"), 2),
    "U16": (np.dtype("<u2"), 2),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (None, 2),
    "I32": (np.dtype("<i4"), 4),
    "U32": (np.dtype("<u4"), 4),
    "F32": (np.dtype("<f4"), 4),
    "I64": (np.dtype("<i8"), 8),
    "U64": (np.dtype("<u8"), 8),
    "F64": (np.dtype("<f8"), 8),
}
_NUMPY_TO_CODE: dict[str, str] = {
    "b1": "BOOL",
    "u1": "U8",
    "i1": "I8",
    "i2": "I16",
    "u2": "U16",
    "f2": "F16",
    "i4": "I32",
    "u4": "U32",
    "f4": "F32",
    "i8": "I64",
    "u8": "U64",
    "f8": "F64",
}
_TORCH_NAMES: dict[str, str] = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "BF16": "bfloat16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}
_TORCH_TO_CODE = {f"torch.{v}": k for k, v in _TORCH_NAMES.items()}


# A received body: writable, so decoded tensors and arrays can be views of it.
Buffer = bytearray | memoryview


def alloc(nbytes: int) -> memoryview:
    """A writable buffer of `nbytes` bytes for a body about to be received.

    numpy.empty, unlike bytearray(n), does not zero-fill it first: one pass over the memory
    fewer for a buffer that the body overwrites anyway.
    """
    return np.empty(nbytes, dtype=np.uint8).data


@dataclass
class Encoded:
    """An encoded body: its pieces in order (header first, then tensor buffers)."""

    pieces: list[bytes | bytearray | memoryview]
    nbytes: int

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the body in slices of at most `size` bytes.

        Large tensors are sliced without copying; small pieces (the header, small tensors,
        tails) are merged into one bytes chunk first, so a state dict of many small tensors
        does not cost a socket write each. The slices are memoryviews or bytes: httpx and ASGI
        servers take any bytes-like chunk, the cast only satisfies their `bytes` annotations.
        """
        pending = bytearray()
        for piece in self.pieces:
            view = memoryview(piece)
            start, n = 0, len(view)
            if pending:
                take = min(n, size - len(pending))
                pending += view[:take]
                start = take
                if len(pending) < size and start >= n:
                    continue
                yield bytes(pending)
                pending = bytearray()
            while start < n:
                end = min(start + size, n)
                if end == n and end - start < _SMALL_BYTES:
                    pending += view[start:end]
                    break
                yield cast(bytes, view[start:end])
                start = end
        if pending:
            yield bytes(pending)

    async def achunks(self, size: int = CHUNK_BYTES) -> Any:
        """Async form of `chunks` for httpx.AsyncClient and ASGI responses."""
        for chunk in self.chunks(size):
            yield chunk

    def join(self) -> bytes:
        """The whole body as one bytes object (copies; for tests and small bodies)."""
        return b"".join(self.pieces)


@dataclass
class _Slot:
    name: str
    dtype: str
    shape: list[int]
    data: memoryview
    itemsize: int


def _torch_module() -> Any:
    # Only a tensor of that kind can exist if torch was imported by someone already.
    return sys.modules.get("torch")


def _tensor_slot(obj: Any, name: str, torch: Any) -> _Slot:
    if obj.layout != torch.strided or obj.is_quantized:
        raise UnsupportedValue(
            f"cannot send a {obj.layout} / quantized tensor; convert it with .to_dense() first"
        )
    code = _TORCH_TO_CODE.get(str(obj.dtype))
    if code is None:
        raise UnsupportedValue(
            f"tensor dtype {obj.dtype} has no safetensors equivalent; cast it (e.g. .float())"
        )
    t = obj.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy()
    return _Slot(name, code, list(t.shape), raw.data, _DTYPES[code][1])


def _array_slot(obj: np.ndarray[Any, Any], name: str) -> _Slot:
    arr = np.ascontiguousarray(obj)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    code = _NUMPY_TO_CODE.get(f"{arr.dtype.kind}{arr.dtype.itemsize}")
    if code is None:
        raise UnsupportedValue(
            f"numpy dtype {arr.dtype} cannot be sent; use a bool, integer or float dtype"
        )
    raw = arr.reshape(-1).view(np.uint8)
    return _Slot(name, code, list(arr.shape), raw.data, arr.dtype.itemsize)


class _Encoder:
    def __init__(self) -> None:
        self.slots: list[_Slot] = []
        self.torch = _torch_module()

    def _ref(self, kind: str) -> tuple[str, dict[str, str]]:
        name = f"t{len(self.slots)}"
        return name, {_TENSOR_KEY: name, "kind": kind}

    def value(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for key, val in obj.items():
                if not isinstance(key, str):
                    raise UnsupportedValue(
                        f"dict key {key!r} is a {type(key).__name__}; only str keys can be sent"
                    )
                out[key] = self.value(val)
            if _TENSOR_KEY in out or _ESCAPE_KEY in out:
                return {_ESCAPE_KEY: out}
            return out
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        if isinstance(obj, np.ndarray):
            name, ref = self._ref("numpy")
            self.slots.append(_array_slot(obj, name))
            return ref
        if isinstance(obj, np.generic):
            return self.value(obj.item())
        if isinstance(obj, bytes | bytearray | memoryview):
            name, ref = self._ref("bytes")
            data = memoryview(obj).cast("B")
            self.slots.append(_Slot(name, "U8", [len(data)], data, 1))
            return ref
        torch = self.torch
        if torch is not None and isinstance(obj, torch.Tensor):
            name, ref = self._ref("torch")
            self.slots.append(_tensor_slot(obj, name, torch))
            return ref
        raise UnsupportedValue(
            f"cannot send a value of type {type(obj).__module__}.{type(obj).__qualname__}; "
            "send JSON values, bytes, numpy arrays or torch tensors"
        )


def encode(value: Any) -> Encoded:
    """Encode a JSON-like value holding tensors/arrays/bytes into a body (no copy of buffers)."""
    enc = _Encoder()
    try:
        tree = enc.value(value)
    except RecursionError:
        raise UnsupportedValue("value is nested too deeply (or refers to itself)") from None
    # Largest item size first keeps every tensor aligned to its item size (as safetensors does).
    slots = sorted(enc.slots, key=lambda s: -s.itemsize)
    header: dict[str, Any] = {"__metadata__": {"rpc": json.dumps(tree, separators=(",", ":"))}}
    offset = 0
    for slot in slots:
        if len(slot.shape) > MAX_NDIM:
            raise UnsupportedValue(
                f"a tensor of {len(slot.shape)} dimensions cannot be sent (at most {MAX_NDIM}); "
                "reshape it"
            )
        end = offset + len(slot.data)
        header[slot.name] = {
            "dtype": slot.dtype,
            "shape": slot.shape,
            "data_offsets": [offset, end],
        }
        offset = end
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    pieces: list[bytes | bytearray | memoryview] = [struct.pack("<Q", len(head)) + head]
    pieces.extend(slot.data for slot in slots)
    return Encoded(pieces, 8 + len(head) + offset)


def _bad(detail: str) -> MalformedPayload:
    return MalformedPayload(f"{detail}; the body must be an rpc body (safetensors layout)")


def _check_shape(name: str, shape: Any) -> list[int]:
    """Refuse a shape that no real tensor has, before anything is allocated for it."""
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(f"tensor {name!r} has an invalid shape {str(shape)[:200]}")
    if len(shape) > MAX_NDIM:
        raise _bad(f"tensor {name!r} has {len(shape)} dimensions, more than {MAX_NDIM}")
    # An empty tensor's other dimensions still size its strides: bound them all.
    span = 1
    for d in shape:
        span *= max(d, 1)
        if span > MAX_ELEMENTS:
            raise _bad(
                f"tensor {name!r} has an absurd shape {str(shape)[:200]} "
                f"(over {MAX_ELEMENTS} elements, zeros counted as 1)"
            )
    return shape


def _check_entry(name: str, entry: Any) -> tuple[str, list[int], int, int]:
    if not isinstance(entry, dict):
        raise _bad(f"tensor {name!r} has a non-object header entry")
    dtype = entry.get("dtype")
    offsets = entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _bad(f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = _check_shape(name, entry.get("shape"))
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    numel = 1
    for d in shape:
        numel *= d
    if numel * _DTYPES[dtype][1] != offsets[1] - offsets[0]:
        raise _bad(
            f"tensor {name!r}: shape {shape} of {dtype} needs {numel * _DTYPES[dtype][1]} bytes "
            f"but its byte range holds {offsets[1] - offsets[0]}"
        )
    return dtype, shape, offsets[0], offsets[1]


class _Decoder:
    def __init__(self, buf: Buffer, base: int, entries: dict[str, Any]) -> None:
        self.buf = buf
        self.base = base
        self.entries = entries

    def tensor(self, ref: dict[str, Any]) -> Any:
        name, kind = ref.get(_TENSOR_KEY), ref.get("kind")
        if len(ref) != 2 or not isinstance(name, str) or name not in self.entries:
            raise _bad(f"reference {str(ref)[:200]} names no tensor in the header")
        try:
            return self._build(name, kind)
        except MalformedPayload:
            raise
        except Exception as exc:  # whatever numpy / torch refuse to build is the body's fault
            dtype, shape = self.entries[name][:2]
            raise _bad(
                f"tensor {name!r} ({dtype}, shape {shape}) cannot be built: "
                f"{type(exc).__name__}: {str(exc)[:200]}"
            ) from None

    def _build(self, name: str, kind: Any) -> Any:
        dtype, shape, begin, end = self.entries[name]
        start = self.base + begin
        numel = (end - begin) // _DTYPES[dtype][1]
        if kind == "bytes":
            if dtype != "U8" or len(shape) != 1:
                raise _bad(f"bytes value {name!r} must be a 1-d U8 tensor")
            return bytes(self.buf[start : self.base + end])
        if kind == "numpy":
            np_dtype = _DTYPES[dtype][0]
            if np_dtype is None:
                raise _bad(f"array {name!r} has dtype {dtype}, which numpy cannot hold")
            return np.frombuffer(self.buf, dtype=np_dtype, count=numel, offset=start).reshape(shape)
        if kind == "torch":
            import torch  # lazily: only bodies that carry torch tensors pay for the import

            t_dtype = getattr(torch, _TORCH_NAMES[dtype])
            if numel == 0:
                return torch.empty(shape, dtype=t_dtype)
            flat = torch.frombuffer(self.buf, dtype=t_dtype, count=numel, offset=start)
            return flat.reshape(shape)
        raise _bad(f"tensor {name!r} has unknown kind {str(kind)[:100]!r}")

    def value(self, obj: Any) -> Any:
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, dict):
            if _TENSOR_KEY in obj:
                return self.tensor(obj)
            if len(obj) == 1 and _ESCAPE_KEY in obj:
                inner = obj[_ESCAPE_KEY]
                if not isinstance(inner, dict):
                    raise _bad("escaped dict must hold an object")
                return {k: self.value(v) for k, v in inner.items()}
            return {k: self.value(v) for k, v in obj.items()}
        return obj


def decode(buf: Buffer | bytes) -> Any:
    """Decode a body; tensors and arrays are zero-copy views over `buf` (keep it writable)."""
    if isinstance(buf, bytes):
        buf = bytearray(buf)  # frombuffer views must be writable; bytes are not
    total = len(buf)
    if total < 8:
        raise _bad(f"body is {total} bytes, shorter than the 8-byte header length")
    (head_len,) = struct.unpack_from("<Q", buf, 0)
    if head_len > MAX_HEADER_BYTES or 8 + head_len > total:
        raise _bad(f"header length {head_len} does not fit a body of {total} bytes (truncated?)")
    try:
        header = json.loads(bytes(buf[8 : 8 + head_len]))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not isinstance(meta.get("rpc"), str):
        raise _bad("header has no __metadata__.rpc value")
    entries = {name: _check_entry(name, e) for name, e in header.items()}
    # The byte ranges must tile the data section exactly: no gaps, no overlap, no trailer.
    data_len = total - 8 - head_len
    cursor = 0
    for _, _, begin, end in sorted(entries.values(), key=lambda e: (e[2], e[3])):
        if begin != cursor:
            raise _bad(f"tensor byte ranges leave a gap or overlap at offset {cursor}")
        cursor = end
    if cursor != data_len:
        raise _bad(f"tensors describe {cursor} data bytes but the body carries {data_len}")
    try:
        tree = json.loads(meta["rpc"])
        return _Decoder(buf, 8 + head_len, entries).value(tree)
    except ValueError as exc:
        raise _bad(f"value is not JSON ({exc})") from None
    except RecursionError:
        # A hostile body can nest lists thousands deep; refuse it rather than fail with a 500.
        raise _bad("value is nested too deeply") from None


def encode_call(args: Sequence[Any], kwargs: dict[str, Any]) -> Encoded:
    """Encode call arguments."""
    return encode({"args": list(args), "kwargs": kwargs})


def decode_call(buf: Buffer | bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode call arguments; the body must hold {"args": [...], "kwargs": {...}}."""
    value = decode(buf)
    if (
        not isinstance(value, dict)
        or set(value) != {"args", "kwargs"}
        or not isinstance(value["args"], list)
        or not isinstance(value["kwargs"], dict)
    ):
        raise _bad('a call body must hold {"args": [...], "kwargs": {...}}')
    return value["args"], value["kwargs"]


def encode_result(value: Any) -> Encoded:
    """Encode a procedure's return value."""
    return encode({"value": value})


def decode_result(buf: Buffer | bytes) -> Any:
    """Decode a procedure's return value."""
    value = decode(buf)
    if not isinstance(value, dict) or set(value) != {"value"}:
        raise _bad('a result body must hold {"value": ...}')
    return value["value"]
