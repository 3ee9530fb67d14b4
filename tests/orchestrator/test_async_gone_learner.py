"""A FedBuff task whose selected learner is gone goes on without it.

FedBuff waits for K updates with no timeout, and a selected learner holds its training slot
until it pushes. Found by the chaos matrix (`link_down_long`, a link down for longer than
`alive_after_s`): the learner selected for the round was unreachable, the round's slots were
"covered" by its outstanding training plus one buffered update, so no selection was ever drawn
again and the other learners idled (their new data unused) until it came back; had it never come
back the task would have hung. The orchestrator now releases a learner it declares gone
(`AsyncTaskRunner.release_gone`, called by the driver's sweep, for a learner not alive that has
not pulled or pushed for `alive_after_s` either): its slot is drawn again at once,
and the update it pushes once it is back, from the model it was sent, is still taken.
"""

from __future__ import annotations

import torch

from orchestrator.aggregation import build_aggregator
from orchestrator.runs.async_runner import AsyncTaskRunner
from plexus.tensors import encode_state

INITIAL = {"w": torch.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": torch.zeros(3)}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _push(runner: AsyncTaskRunner, learner: str, version: int) -> dict[str, object]:
    return runner.push(learner, encode_state(INITIAL, {"base_version": version,
                                                       "n_samples": 8}))


def _drawn_fedbuff(clock: Clock) -> AsyncTaskRunner:
    """FedBuff with K = 2 whose first draw dispatched all three learners a, b, c."""
    runner = AsyncTaskRunner(build_aggregator("fedbuff", INITIAL, k=2, pi_s=0.5,
                                              selection_interval_s=0.5, seed=0,
                                              start_time=clock()), clock=clock)
    for c in "abc":
        assert runner.pull(c, 8) is None  # held data, not yet drawn
    runner.tick()  # the first draw: all three hold data, all three dispatched
    return runner


def test_a_gone_learner_frees_its_fedbuff_slot_and_its_late_update_is_taken() -> None:
    clock = Clock()
    runner = _drawn_fedbuff(clock)
    sent = {c: runner.pull(c, 8) for c in "abc"}
    assert all(v is not None and v[0] == 0 for v in sent.values())
    # `c` goes away with its model. `a` and `b` push: version 1.
    _push(runner, "a", 0)
    _push(runner, "b", 0)
    assert runner.core.version == 1
    # `a` holds new data, is drawn, trains and pushes; its update waits for a second one.
    assert runner.pull("a", 8) is None
    clock.t += 0.6
    runner.tick()
    got = runner.pull("a", 8)
    assert got is not None and got[0] == 1
    _push(runner, "a", 1)
    # `b` holds new data, but the round counts on `c` (outstanding) + the buffered update:
    # no draw, however long one waits.
    assert runner.pull("b", 8) is None
    assert runner.core.next_deadline() is None
    clock.t += 1e6
    runner.tick()
    assert runner.pull("b", 8) is None and runner.core.version == 1
    # The orchestrator no longer sees `c` alive: its slot is drawn again at once.
    assert runner.release_gone(["a", "b"]) == ["c"]
    assert runner.release_gone(["a", "b"]) == []  # nothing left to release
    got = runner.pull("b", 8)
    assert got is not None and got[0] == 1
    _push(runner, "b", 1)
    assert runner.core.version == 2
    # `c` comes back and pushes what it trained from version 0: accepted, not refused.
    answer = _push(runner, "c", 0)
    assert answer["accepted"] is True
    assert len(runner.core.queue) == 1
    # An alive learner's slot is never released; nor that of one not (yet) seen alive again
    # that pulled within quiet_s (back from an outage before its next heartbeat).
    assert runner.pull("a", 8) is None
    clock.t += 0.6
    runner.tick()
    assert "a" in runner.core.outstanding
    assert runner.release_gone(["a", "b", "c"]) == []
    assert runner.release_gone(["b", "c"], quiet_s=5.0) == []
    assert "a" in runner.core.outstanding
    clock.t += 6.0
    assert runner.release_gone(["b", "c"], quiet_s=5.0) == ["a"]


def test_a_learner_that_enrolled_again_gives_up_its_slot_at_once() -> None:
    # Arrange: FedBuff with K = 2; all three learners drawn and sent version 0.
    runner = _drawn_fedbuff(Clock())
    assert all(runner.pull(c, 8) is not None for c in "abc")
    _push(runner, "a", 0)
    # Act: `c`'s agent restarted (it enrolled again while alive): the driver releases it,
    # without waiting for alive_after_s as for a gone learner. `b` still trains: kept.
    freed = runner.release(["c", "c", "nobody"])
    # Assert: only `c` held a slot; releasing twice frees nothing more; `b` pushes and the
    # round (K = 2) merges; `c`'s late update from version 0 is still taken.
    assert freed == ["c"]
    assert runner.release(["c"]) == []
    assert "b" in runner.core.outstanding and "c" not in runner.core.outstanding
    _push(runner, "b", 0)
    assert runner.core.version == 1
    assert _push(runner, "c", 0)["accepted"] is True
    runner.finish("done")
    assert runner.release(["a", "b"]) == []  # a finished task releases nothing
