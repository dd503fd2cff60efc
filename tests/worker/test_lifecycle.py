"""The call life cycle's transition table and the in-flight ordering rule, without
processes."""

from __future__ import annotations

import itertools
import math

import pytest

from snakepit.worker.inflight import InFlight
from snakepit.worker.lifecycle import (
    FINAL,
    TRANSITIONS,
    Call,
    CallEvent,
    CallState,
    IllegalTransition,
)

S, E = CallState, CallEvent


def a_call(state: CallState = S.QUEUED, call_id: int = 0) -> Call:
    call = Call("echo", None, math.inf, effective_deadline=math.inf)
    call.state = state
    call.id = call_id
    return call


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=str))
def test_every_listed_transition_is_taken(state: CallState, event: CallEvent) -> None:
    call = a_call(state)
    assert call.advance(event) is TRANSITIONS[state, event]
    assert call.state is TRANSITIONS[state, event]


@pytest.mark.parametrize(("state", "event"), sorted(
    (pair for pair in itertools.product(CallState, CallEvent) if pair not in TRANSITIONS),
    key=str))
def test_every_other_transition_is_refused(state: CallState, event: CallEvent) -> None:
    call = a_call(state)
    with pytest.raises(IllegalTransition):
        call.advance(event)
    assert call.state is state  # unchanged


def test_the_ends_have_no_way_out() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] in FINAL]


def test_a_call_never_runs_twice_by_the_table() -> None:
    """Only a call that cannot have started goes back to the queue: nothing leads from
    STARTED (or from an answer) to QUEUED."""
    back = {state for (state, _), target in TRANSITIONS.items() if target is S.QUEUED}
    assert back == {S.SENT, S.WITHDRAWING}


def test_sent_calls_start_in_order_at_most_capacity_at_once() -> None:
    table = InFlight("w", capacity=2)
    calls = [a_call(call_id=i) for i in range(1, 6)]
    for call in calls:
        table.add(call)
    assert [c.state for c in calls] == [S.STARTED, S.STARTED, S.SENT, S.SENT, S.SENT]
    assert [table.may_have_started(c) for c in calls] == [True, True, False, False, False]
    assert table.behind() == calls[2:]
    assert table.remove(2) is calls[1]
    assert [c.state for c in calls[2:]] == [S.STARTED, S.SENT, S.SENT]  # the next may start
    calls[4].advance(E.WITHDRAW)
    assert table.remove(5) is calls[4]  # withdrawn from behind: nobody else moves
    assert calls[3].state is S.SENT
    started, behind = table.take_all()
    assert started == [calls[0], calls[2]] and behind == [calls[3]]
    assert len(table) == 0


def test_a_withdrawn_call_that_reaches_the_front_is_still_the_workers_to_decide() -> None:
    table = InFlight("w", capacity=1)
    first, second = a_call(call_id=1), a_call(call_id=2)
    table.add(first)
    table.add(second)
    second.advance(E.WITHDRAW)
    table.remove(1)
    assert second.state is S.WITHDRAWING  # it may run or come back: the worker says
    assert table.may_have_started(second)


def test_an_unknown_answer_is_a_protocol_error() -> None:
    from snakepit.errors import ProtocolError

    with pytest.raises(ProtocolError, match="unknown call id 7"):
        InFlight("w").remove(7)
