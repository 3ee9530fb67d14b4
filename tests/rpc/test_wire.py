"""The wire codec: values, tensors and arrays round-trip bit-exact; bad bodies are refused."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import pytest
import torch

import rpc


def roundtrip(value: Any) -> Any:
    return rpc.decode(bytearray(rpc.encode(value).join()))


def test_json_values_roundtrip() -> None:
    value = {"i": 3, "f": 1.5, "s": "ü", "n": None, "b": True, "l": [1, [2, {"x": []}]]}
    assert roundtrip(value) == value


def test_tuples_arrive_as_lists_and_numpy_scalars_as_python() -> None:
    assert roundtrip({"t": (1, 2), "s": np.float32(0.5), "k": np.int64(7)}) == {
        "t": [1, 2],
        "s": 0.5,
        "k": 7,
    }


def test_reserved_keys_are_escaped() -> None:
    value = {"__tensor__": "t0", "kind": "torch", "inner": {"__dict__": 1}}
    assert roundtrip(value) == value


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.uint8,
        np.int8,
        np.int16,
        np.uint16,
        np.float16,
        np.int32,
        np.uint32,
        np.float32,
        np.int64,
        np.uint64,
        np.float64,
    ],
)
def test_numpy_dtypes_roundtrip_bit_exact(dtype: Any) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 2, size=(3, 5)) if dtype is np.bool_ else rng.random((3, 5)) * 100
    arr = arr.astype(dtype)
    out = roundtrip({"a": arr})["a"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.uint8]
)
def test_torch_dtypes_roundtrip_bit_exact(dtype: torch.dtype) -> None:
    t = (torch.randn(4, 3) * 10).to(dtype)
    out = roundtrip([t])[0]
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == t.shape
    assert torch.equal(out, t)


def test_non_contiguous_big_endian_zero_dim_and_empty() -> None:
    t = torch.arange(12.0).reshape(3, 4).t()  # non-contiguous view
    be = np.arange(5, dtype=">i4")
    value = {"t": t, "be": be, "scalar": torch.tensor(3.5), "empty": np.zeros((0, 4), np.float32)}
    out = roundtrip(value)
    assert torch.equal(out["t"], t)
    np.testing.assert_array_equal(out["be"], be)
    assert out["scalar"].shape == () and out["scalar"].item() == 3.5
    assert out["empty"].shape == (0, 4)


def test_decoded_tensors_are_writable_views() -> None:
    out = roundtrip({"a": np.ones(4, np.float32)})["a"]
    out[0] = 5.0  # the receive buffer is a bytearray: writable, no copy needed
    assert out[0] == 5.0


def test_body_is_a_valid_safetensors_file() -> None:
    from safetensors.numpy import load

    body = rpc.encode({"w": np.arange(6, dtype=np.float32), "b": np.int8(1)}).join()
    tensors = load(body)
    np.testing.assert_array_equal(next(iter(tensors.values())), np.arange(6, dtype=np.float32))


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(rpc.UnsupportedValue, match="set"):
        rpc.encode({1, 2})
    with pytest.raises(rpc.UnsupportedValue, match="str keys"):
        rpc.encode({1: 2})
    with pytest.raises(rpc.UnsupportedValue, match="complex"):
        rpc.encode(np.zeros(2, np.complex64))


def header_body(header: dict[str, Any], data: bytes = b"") -> bytearray:
    head = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(head)) + head + data)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (bytearray(b"\x80\x04K\x01."), "shorter than"),
        (bytearray(struct.pack("<Q", 1 << 40) + b"{}"), "does not fit"),
        (bytearray(struct.pack("<Q", 5) + b"{nope"), "not JSON"),
        (header_body({"__metadata__": {}}), "no __metadata__.rpc"),
        (header_body({"__metadata__": {"rpc": "{bad"}}), "value is not JSON"),
        (
            header_body(
                {
                    "__metadata__": {"rpc": "1"},
                    "t0": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]},
                },
                b"\x00" * 8,
            ),
            "unknown dtype",
        ),
        (
            header_body(
                {
                    "__metadata__": {"rpc": "1"},
                    "t0": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
                },
                b"\x00" * 8,
            ),
            "needs 12 bytes",
        ),
        (
            header_body(
                {
                    "__metadata__": {"rpc": "1"},
                    "t0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                },
                b"\x00" * 4,
            ),
            "carries 4",
        ),
        (
            header_body(
                {"__metadata__": {"rpc": '{"__tensor__": "zz", "kind": "numpy"}'}},
            ),
            "names no tensor",
        ),
    ],
)
def test_malformed_bodies_raise_malformed_payload(body: bytearray, match: str) -> None:
    with pytest.raises(rpc.MalformedPayload, match=match):
        rpc.decode(body)


def test_truncated_body_is_refused() -> None:
    body = rpc.encode({"a": np.ones(1000, np.float32)}).join()
    with pytest.raises(rpc.MalformedPayload, match="data bytes"):
        rpc.decode(bytearray(body[:-100]))


@pytest.mark.parametrize("size", [1 << 18, 4096, 100])
def test_chunks_cover_the_body_exactly_and_respect_the_size(size: int) -> None:
    rng = np.random.default_rng(1)
    value = {
        "small": [rng.random(n).astype(np.float32) for n in (0, 1, 7, 300)],
        "big": rng.random(300_000),
        "raw": b"x" * 70_000,
    }
    encoded = rpc.encode(value)
    chunks = [bytes(c) for c in encoded.chunks(size)]
    assert b"".join(chunks) == encoded.join()
    assert all(0 < len(c) <= size for c in chunks)
    assert sum(map(len, chunks)) == encoded.nbytes


def test_deeply_nested_values_are_refused_not_crashing() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(rpc.MalformedPayload, match="nested too deeply"):
        rpc.decode(header_body({"__metadata__": {"rpc": deep}}))
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(rpc.UnsupportedValue, match="deeply"):
        rpc.encode(loop)


def test_mutated_bodies_only_ever_raise_malformed_payload() -> None:
    # Seeded mutation fuzzing: flipped bytes, cuts, and odd values in the header's entries.
    import random

    rng = random.Random(0)
    base = rpc.encode(
        {
            "args": [np.arange(10, dtype=np.float32), torch.ones(3, dtype=torch.bfloat16), b"xy"],
            "kwargs": {"k": {"a": [1, None]}},
        }
    ).join()
    head_len = struct.unpack_from("<Q", base, 0)[0]
    header = json.loads(base[8 : 8 + head_len])
    odd = [None, 1, -1, "x", [], {}, [1, 2], [[1]], {"dtype": "F32"}, 1e308, True, ["F32"]]
    for _ in range(2000):
        body = bytearray(base)
        op = rng.random()
        if op < 0.4:
            for _ in range(rng.randint(1, 5)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        elif op < 0.6:
            body = body[: rng.randrange(len(body))]
        else:
            h = json.loads(json.dumps(header))
            name = rng.choice([k for k in h if k != "__metadata__"])
            field = rng.choice(["dtype", "shape", "data_offsets"])
            h[name][field] = rng.choice(odd)
            raw = json.dumps(h).encode()
            raw += b" " * (-len(raw) % 8)
            body = bytearray(struct.pack("<Q", len(raw)) + raw + base[8 + head_len :])
        with contextlib.suppress(rpc.MalformedPayload):
            rpc.decode(body)
