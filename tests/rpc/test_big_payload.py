"""A 100 MB dict of tensors and arrays round-trips bit-exact through a real worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rpc


@pytest.mark.parametrize(
    ("duplex", "mb"),
    # The duplex leg carries 10 MB to keep the suite quick; its path differs only in transport.
    [(False, 100), (True, 10)],
    ids=["simplex-100MB", "duplex-10MB"],
)
def test_large_tensor_dict_roundtrips_bit_exact(
    server: rpc.ServerThread, duplex: bool, mb: int
) -> None:
    # Arrange: 80 % float32 + 10 % bfloat16 (torch) + 10 % uint8 (numpy); 100 MB in total.
    gen = torch.Generator().manual_seed(0)
    n = mb * 1_000_000
    payload = {
        "layer": {"weight": torch.rand(n // 5, generator=gen)},
        "half": torch.rand(n // 20, generator=gen).to(torch.bfloat16),
        "raw": np.random.default_rng(0).integers(0, 256, n // 10, dtype=np.uint8),
        "meta": {"round": 3},
    }
    # Act
    with rpc.connect(server.url, duplex=duplex, timeout=60) as remote:
        out = remote.echo(payload)
    # Assert
    assert out["meta"] == {"round": 3}
    assert out["layer"]["weight"].dtype == torch.float32
    assert torch.equal(out["layer"]["weight"], payload["layer"]["weight"])
    assert out["half"].dtype == torch.bfloat16
    assert torch.equal(out["half"].view(torch.int16), payload["half"].view(torch.int16))
    assert out["raw"].dtype == np.uint8
    assert np.array_equal(out["raw"], payload["raw"])
