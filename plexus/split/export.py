"""The trained split model back: as one network, or as its device and server halves.

A split task's model versions (`GET /v1/tasks/{id}/model`) hold the whole split network:
`device.*` (layers to the cut, encoders, gate) and `server.*` (decoders, the rest). The task's
spec rebuilds the architecture (`plexus task show ID --json` has it). `save_halves` writes the
two halves as separate safetensors files (the device keeps its half, the server its own);
`load_network` joins either form again into a `SplitNetwork` (inference routes each sample by
the gate and quantises as on the wire).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plexus.split.model import SplitNetwork


def _network(spec: Any) -> SplitNetwork:
    from plexus.spec import load_spec
    from plexus.split.model import network_for_task

    return network_for_task(load_spec(spec))


def load_network(path: str | Path, spec: Any, *, server: str | Path | None = None
                 ) -> SplitNetwork:
    """The split network of task spec `spec` (a dict, file or `TaskSpec`) with the parameters
    of `path` (the whole model), or of `path` (device half) and `server` (server half)."""
    from plexus.tensors import decode_state

    net = _network(spec)
    if server is None:
        state, _ = decode_state(Path(path).read_bytes(), net.state_dict())
    else:
        dev, _ = decode_state(Path(path).read_bytes(), net.device.state_dict())
        srv, _ = decode_state(Path(server).read_bytes(), net.server.state_dict())
        state = {**{f"device.{k}": v for k, v in dev.items()},
                 **{f"server.{k}": v for k, v in srv.items()}}
    net.load_state_dict(state)
    return net.eval()


def save_halves(path: str | Path, spec: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """Split the whole model at `path` into `device.safetensors` and `server.safetensors`
    under `out_dir`; returns their paths."""
    from plexus.tensors import encode_state

    net = load_network(path, spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part, module in (("device", net.device), ("server", net.server)):
        target = out / f"{part}.safetensors"
        target.write_bytes(encode_state(module.state_dict(), {"part": part}))
        written.append(target)
    return written[0], written[1]
