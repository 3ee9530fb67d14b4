"""Local training of simulated clients on a Ray cluster (`plexus simulate CONFIG --ray`).

Only training moves: the event loop, the aggregator core and the virtual clock stay in the
driver, which calls :class:`RayTrainer` exactly where the embedded engine calls
:func:`~orchestrator.simulation.trainer.train_jobs`, so the order of events is the same. The
jobs in flight are cut into the same chunks the embedded trainer vectorises (config ``chunk``)
and each chunk is one Ray task, trained by the very same function; a run with Ray therefore
gives the same trace and accuracies as one without it (with the same ``threads``).

What travels: the training split is put in Ray's object store once per run, each global model
version once (every job that starts from it refers to the same object), and a job itself is only
its sample indices, epochs, seed and budget. Tensors go as NumPy arrays (Ray's zero-copy
path), never as pickled torch objects.

``ray`` is an optional dependency (``pip install 'plexus-edge[ray]'``); this module imports it
only when a :class:`RayTrainer` is made.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator.simulation.trainer import Job, one_at_a_time, train_chunk, train_one

# Ray's own minimum is 75 MiB; a simulation's objects (the training split, a few model
# versions, one chunk's results) fit in far less than the default 30 % of RAM.
DEFAULT_OBJECT_STORE_BYTES = 128 * 1024 * 1024
_KEEP_VERSIONS = 8  # model versions kept in the object store (jobs in flight start from these)

NpState = dict[str, np.ndarray]


@dataclass(frozen=True)
class _ChunkSpec:
    """What a worker needs besides the tensors: the model to build and the SGD settings."""

    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    lr: float
    batch_size: int
    vectorised: bool
    threads: int | None


def _to_numpy(state: Mapping[str, torch.Tensor]) -> NpState:
    return {n: t.detach().cpu().numpy() for n, t in state.items()}


def _to_torch(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # Copies: arrays from the object store are read-only views into shared memory.
    return {n: torch.tensor(a) for n, a in arrays.items()}


_MODELS: dict[tuple[str, tuple[int, ...], int], torch.nn.Module] = {}


def _worker_model(spec: _ChunkSpec) -> torch.nn.Module:
    from plexus.models import build_model

    key = (spec.model, spec.input_shape, spec.num_classes)
    if key not in _MODELS:
        _MODELS[key] = build_model(spec.model, spec.input_shape, spec.num_classes)
    return _MODELS[key]


def train_chunk_task(
    spec: _ChunkSpec,
    x: np.ndarray,
    y: np.ndarray,
    jobs: list[tuple[int, np.ndarray, int, int, int | None]],
    *bases: NpState,
) -> tuple[str, list[tuple[NpState, int]]]:
    """Run on a Ray worker: train one chunk of jobs; return the worker's node id and
    ``(state, samples_trained)`` for each job.

    ``jobs`` holds ``(base index into bases, sample indices, epochs, seed, budget)``.
    """
    import ray

    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays from the object store
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    states = [_to_torch(b) for b in bases]
    chunk = [
        Job(base=states[b], indices=idx, epochs=ep, seed=seed, budget=budget)
        for b, idx, ep, seed, budget in jobs
    ]
    model = _worker_model(spec)
    if spec.vectorised:
        train_chunk(model, chunk, xt, yt, lr=spec.lr, batch_size=spec.batch_size)
    else:
        for job in chunk:
            train_one(model, job, xt, yt, lr=spec.lr, batch_size=spec.batch_size)
    out: list[tuple[NpState, int]] = []
    for job in chunk:
        assert job.result is not None
        out.append((_to_numpy(job.result), job.samples_trained))
    return str(ray.get_runtime_context().get_node_id()), out


class RayTrainer:
    """A :class:`~orchestrator.simulation.trainer.TrainBackend` that trains on Ray workers.

    ``address``: ``None`` starts a private single-node Ray in this process (its object store
    ``object_store_bytes`` bytes); ``"auto"`` or ``"HOST:PORT"`` joins a running cluster
    (``ray start --head`` plus ``ray start --address HOST:PORT`` on every other node).
    """

    def __init__(
        self,
        address: str | None,
        *,
        model: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        threads: int | None = None,
        object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
    ) -> None:
        import ray

        self._ray: Any = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if address is None:
                kwargs["object_store_memory"] = object_store_bytes
            ray.init(address=address, **kwargs)
        # SPREAD: chunks go round the nodes, so a cluster shares the work even when a single
        # node could take every chunk (Ray's default packs tasks onto the driver's node first).
        self._remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(train_chunk_task)
        self._model = (model, tuple(input_shape), num_classes)
        self._threads = threads
        self._data: tuple[int, int, Any, Any] | None = None  # id(x), id(y), refs
        self._versions: dict[int, tuple[Mapping[str, torch.Tensor], Any]] = {}
        self.tasks = 0  # Ray tasks submitted (one per chunk)
        self.nodes_used: set[str] = set()  # ids of the nodes whose workers trained a chunk

    def nodes(self) -> int:
        """Alive nodes in the cluster."""
        return sum(1 for n in self._ray.nodes() if n.get("Alive"))

    def _data_refs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any]:
        if self._data is None or self._data[:2] != (id(x), id(y)):
            self._data = (id(x), id(y), self._ray.put(x.numpy()), self._ray.put(y.numpy()))
        return self._data[2], self._data[3]

    def _version_ref(self, state: Mapping[str, torch.Tensor]) -> Any:
        # A global model version is one object, shared by every job that starts from it; the
        # state itself is kept with its ref so its id() cannot be reused while cached.
        key = id(state)
        if key not in self._versions:
            if len(self._versions) >= _KEEP_VERSIONS:
                self._versions.pop(next(iter(self._versions)))
            self._versions[key] = (state, self._ray.put(_to_numpy(state)))
        return self._versions[key][1]

    def __call__(
        self,
        model: torch.nn.Module,
        jobs: Sequence[Job],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        lr: float,
        batch_size: int,
        chunk: int = 128,
        batched: bool = True,
    ) -> None:
        """Train ``jobs`` on the cluster, one Ray task per chunk; fill each job's result."""
        name, shape, classes = self._model
        spec = _ChunkSpec(name, shape, classes, lr, batch_size,
                          not one_at_a_time(model, jobs, batched), self._threads)
        x_ref, y_ref = self._data_refs(x, y)
        chunks = [list(jobs[lo : lo + chunk]) for lo in range(0, len(jobs), chunk)]
        pending = []
        for part in chunks:
            refs: list[Any] = []
            index: dict[int, int] = {}
            specs = []
            for job in part:
                if id(job.base) not in index:
                    index[id(job.base)] = len(refs)
                    refs.append(self._version_ref(job.base))
                specs.append((index[id(job.base)], np.asarray(job.indices), job.epochs,
                              job.seed, job.budget))
            pending.append(self._remote.remote(spec, x_ref, y_ref, specs, *refs))
        self.tasks += len(pending)
        for part, ref in zip(chunks, pending, strict=True):
            node, results = self._ray.get(ref)
            self.nodes_used.add(node)
            for job, (state, trained) in zip(part, results, strict=True):
                job.result = _to_torch(state)
                job.samples_trained = trained

    def close(self) -> None:
        """Disconnect from the cluster (and stop the private one, if this trainer started it)."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
