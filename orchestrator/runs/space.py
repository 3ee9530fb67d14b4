"""Store writes that wait for space instead of giving up.

A driver's last word on a task or job (its state `finished` / `failed`, a job task's end after
its last GUC) is a database write like any other: on a full data directory it raises
`StorageFull`. Rounds and GUCs already wait and run again (`_round_when_space` in `sync.py`
and `jobs.py`); a state write that failed the same way used to end the driver, whose fallback
`set_state(failed)` failed too, so the task stayed `running` with nobody driving it until the
next restart (found by the chaos matrix: `dab / disk_full`, the limit hit the final
`set_state`). `when_space` retries such a write with back-off (1 s doubling up to 30 s) until
it goes through; the store rolled the failed attempt back, so a retry is the same write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from orchestrator.errors import StorageFull

log = logging.getLogger("orchestrator.runs.space")
T = TypeVar("T")
# A write (or a round / GUC, `_round_when_space`) that failed for lack of space runs again
# after this long, doubling up to the maximum, seconds.
RETRY_S = 1.0
RETRY_MAX_S = 30.0


async def when_space(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in a thread, run again while it raises `StorageFull`."""
    delay = RETRY_S
    while True:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except StorageFull as exc:
            log.error("%s: %s; trying again in %.0f s", what, exc.detail, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX_S)
