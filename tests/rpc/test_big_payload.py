"""A 100 MB dict of tensors and arrays round-trips bit-exact through a real worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rpc


@pytest.mark.parametrize("duplex", [False, True], ids=["simplex", "duplex"])
def test_100mb_tensor_dict_roundtrips_bit_exact(server: rpc.ServerThread, duplex: bool) -> None:
    # Arrange: 80 MB float32 + 10 MB bfloat16 (torch) + 10 MB uint8 (numpy) = 100 MB.
    gen = torch.Generator().manual_seed(0)
    payload = {
        "layer": {"weight": torch.rand(20_000_000, generator=gen)},
        "half": torch.rand(5_000_000, generator=gen).to(torch.bfloat16),
        "raw": np.random.default_rng(0).integers(0, 256, 10_000_000, dtype=np.uint8),
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
