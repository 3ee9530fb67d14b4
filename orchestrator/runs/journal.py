"""A task's journal: each event is logged (one line) and kept in the store's events table.

The drivers call `note` (or `round_notes` when a round closes); `plexus task logs` and the
dashboard read the events back with a cursor. Keeping an event never fails a task: a store
error is logged and the task goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.store import Store, add_event

log = logging.getLogger("orchestrator.events")


def note(store: Store, task_id: int, kind: str, message: str,
         data: dict[str, Any] | None = None) -> None:
    """Log and keep one event of a task (see `orchestrator.store.events` for the kinds)."""
    log.info("task %s %s: %s", task_id, kind, message,
             extra={"task_id": task_id, "event": kind})
    try:
        add_event(store, task_id, kind, message, time.time(), data)
    except Exception as exc:  # an event is worth less than the round it describes
        log.warning("task %s: could not keep a %s event: %s", task_id, kind, exc)


def round_notes(store: Store, task_id: int, index: int, names: dict[str, str], *,
                left_out: dict[str, str], samples: dict[str, int], version: int,
                round_time_s: float, truancy: float, accuracy: float | None,
                loss: float | None) -> None:
    """The events of a closed round: who was left out and why, the aggregation, the close."""
    for key, why in sorted(left_out.items()):
        name = names.get(key, key)
        note(store, task_id, "left_out", f"round {index}: {name} left out: {why}",
             {"round": index, "learner": name, "why": why})
    trained = {names.get(k, k): n for k, n in samples.items() if n > 0}
    note(store, task_id, "aggregated",
         f"round {index}: {len(trained)} update(s), {sum(trained.values())} samples -> "
         f"model version {version}", {"round": index, "samples": trained, "version": version})
    acc = "-" if accuracy is None else f"{accuracy:.1%}"
    los = "-" if loss is None else f"{loss:.3f}"
    note(store, task_id, "round_closed",
         f"round {index} closed: {round_time_s:.2f} s, truancy {100 * truancy:+.1f} %, "
         f"accuracy {acc}, loss {los}",
         {"round": index, "round_time_s": round_time_s, "truancy": truancy,
          "accuracy": accuracy, "loss": loss})
