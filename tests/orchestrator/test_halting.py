"""DAB's halting lead (orchestrator/runs/halting.py): learnt from answers, bounded, per learner."""

from __future__ import annotations

import math

import pytest

from orchestrator.runs.halting import MAX_SHARE, HaltLead, tail_s


def answer(download_s: object = 0.5, train_s: object = 2.0) -> dict[str, object]:
    return {"download_s": download_s, "train_s": train_s, "samples_trained": 10}


def test_the_tail_is_what_the_answer_took_beyond_the_learners_work() -> None:
    assert tail_s(answer(0.5, 2.0), 2.75) == pytest.approx(0.25)
    assert tail_s(answer(0.5, 2.0), 2.0) == 0.0  # a clock oddity never gives a negative lead


@pytest.mark.parametrize("value", [
    None, "text", [1, 2], {"train_s": 1.0}, answer(download_s=None), answer(train_s="2"),
    answer(train_s=math.nan), answer(download_s=math.inf), answer(train_s=-1.0),
    answer(download_s=True),
])
def test_an_answer_that_does_not_state_its_times_teaches_nothing(value: object) -> None:
    lead = HaltLead()
    assert tail_s(value, 3.0) is None
    lead.observe("a", value, 3.0)
    assert lead.halt_s("a", 4.0) == 4.0


def test_each_learner_halts_earlier_by_its_largest_recent_tail_at_most_a_share_of_d() -> None:
    lead = HaltLead(keep=3)
    assert lead.halt_s("a", 4.0) == 4.0  # nothing learnt yet: halt at D
    for tail in (0.1, 0.3, 0.2):
        lead.observe("a", answer(0.5, 2.0), 2.5 + tail)
    assert lead.halt_s("a", 4.0) == pytest.approx(4.0 - 0.3)
    assert lead.halt_s("b", 4.0) == 4.0  # another learner's answers say nothing about b
    lead.observe("a", answer(0.5, 2.0), 2.6)  # the 0.1 falls out of the window, 0.3 stays
    assert lead.halt_s("a", 4.0) == pytest.approx(4.0 - 0.3)
    for _ in range(3):
        lead.observe("a", answer(0.5, 2.0), 2.55)  # the spike is forgotten after `keep`
    assert lead.halt_s("a", 4.0) == pytest.approx(4.0 - 0.05)
    lead.observe("a", answer(0.0, 0.0), 1e6)  # a learner claiming no work, answering late
    assert lead.halt_s("a", 4.0) == pytest.approx(4.0 * (1 - MAX_SHARE))
