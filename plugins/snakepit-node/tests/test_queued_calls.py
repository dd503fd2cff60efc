"""Calls waiting in worker.js's queue, frame by frame, as src/snakepit/protocol/wire.py
says: ``withdraw`` drops a queued call and answers ``withdrawn`` (it never runs) and
leaves any other call alone; a ``cancel`` for a queued call is answered at once and the
call never starts; a queued call whose deadline passes is answered ``expired`` and
never starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# `hold` says that it runs (a progress frame) and waits until cancelled; `note` records
# that it ran; `ran` lists the calls that ran, in order.
RECORDER = """'use strict';
const { setTimeout: sleep } = require('node:timers/promises');
const ran = [];
module.exports = {
  async hold(args, ctx) {
    ran.push(ctx.id);
    ctx.progress(0, 1, 'holding');
    try {
      await sleep(30000, undefined, { signal: ctx.signal });
    } catch (err) {
      ctx.throwIfCancelled();
      throw err;
    }
  },
  note(args, ctx) { ran.push(ctx.id); return ctx.id; },
  ran() { return ran; },
};
"""

# RawWorker (conftest.py) is typed as Any here: conftest is not an importable module.
RawWorker = Any
Start = Callable[..., RawWorker]


@pytest.fixture
def recorder(raw: Start, tmp_path: Path) -> Start:
    """A worker serving RECORDER, handshaken with msgpack; arguments go to worker.js."""
    handler = tmp_path / "recorder.js"
    handler.write_text(RECORDER)

    def start(*args: str) -> RawWorker:
        worker = raw("--handler", str(handler), *args)
        assert "withdraw" in worker.handshake(["msgpack"])["capabilities"]
        return worker

    return start


def holding(worker: RawWorker, call_id: int) -> None:
    """Send a ``hold`` call and wait until it runs."""
    worker.send({"t": "call", "id": call_id, "cmd": "hold"})
    started = worker.read()
    assert started == {"t": "progress", "id": call_id, "done": 0, "total": 1,
                       "msg": "holding"}


def next_is_pong(worker: RawWorker, ping_id: int) -> None:
    """Nothing was answered before a ping sent now: frames are handled in order, so
    anything a frame sent earlier caused would come before the pong."""
    worker.send({"t": "ping", "id": ping_id})
    assert worker.read() == {"t": "pong", "id": ping_id}


def test_a_queued_call_is_withdrawn_and_never_runs(recorder: Start) -> None:
    worker = recorder()  # concurrency 1: `note` waits behind `hold`
    holding(worker, 1)
    worker.send({"t": "call", "id": 2, "cmd": "note"})
    worker.send({"t": "withdraw", "id": 2})
    assert worker.read() == {"t": "withdrawn", "id": 2}
    worker.send({"t": "withdraw", "id": 2})  # again: it is gone, nothing to say
    next_is_pong(worker, 3)
    worker.send({"t": "cancel", "id": 1})
    cancelled = worker.read()
    assert cancelled is not None and cancelled["t"] == "error" and cancelled["id"] == 1
    assert cancelled["kind"] == "cancelled"
    worker.send({"t": "call", "id": 4, "cmd": "ran"})
    assert worker.read() == {"t": "result", "id": 4, "value": [1]}  # `note` never ran


def test_a_started_or_finished_call_answers_for_itself(recorder: Start) -> None:
    worker = recorder()
    worker.send({"t": "call", "id": 1, "cmd": "note"})
    assert worker.read() == {"t": "result", "id": 1, "value": 1}
    worker.send({"t": "withdraw", "id": 1})  # already ran: only its result, sent before
    worker.send({"t": "withdraw", "id": 99})  # never seen
    next_is_pong(worker, 2)
    holding(worker, 3)
    worker.send({"t": "withdraw", "id": 3})  # running: it goes on
    next_is_pong(worker, 4)
    worker.send({"t": "cancel", "id": 3})
    cancelled = worker.read()
    assert cancelled is not None and cancelled["id"] == 3 and cancelled["kind"] == "cancelled"
    worker.send({"t": "call", "id": 5, "cmd": "ran"})
    assert worker.read() == {"t": "result", "id": 5, "value": [1, 3]}


def test_with_concurrency_only_calls_past_the_limit_are_withdrawn(recorder: Start) -> None:
    worker = recorder("--concurrency", "2")
    holding(worker, 1)
    holding(worker, 2)
    for call_id in (3, 4, 5):
        worker.send({"t": "call", "id": call_id, "cmd": "note"})
    worker.send({"t": "withdraw", "id": 4})
    worker.send({"t": "withdraw", "id": 2})  # running: nothing
    assert worker.read() == {"t": "withdrawn", "id": 4}
    next_is_pong(worker, 6)
    worker.send({"t": "cancel", "id": 1})
    answers: list[dict[str, Any] | None] = [worker.read() for _ in range(3)]
    assert answers[0] is not None and answers[0]["id"] == 1
    assert answers[0]["kind"] == "cancelled"
    # the queue moved on, skipping the withdrawn call
    assert answers[1:] == [{"t": "result", "id": 3, "value": 3},
                           {"t": "result", "id": 5, "value": 5}]
    worker.send({"t": "cancel", "id": 2})
    cancelled = worker.read()
    assert cancelled is not None and cancelled["id"] == 2
    worker.send({"t": "call", "id": 7, "cmd": "ran"})
    assert worker.read() == {"t": "result", "id": 7, "value": [1, 2, 3, 5]}


def test_a_withdraw_without_an_integer_id_is_a_protocol_error(recorder: Start) -> None:
    worker = recorder()
    worker.send({"t": "withdraw", "id": "2"})
    error = worker.read()
    assert error is not None and error["t"] == "error" and error["kind"] == "protocol"
    assert "withdraw" in error["msg"]
    assert worker.wait() == 2


def test_a_queued_call_cancelled_is_answered_at_once_and_never_runs(recorder: Start) -> None:
    worker = recorder()
    holding(worker, 1)
    worker.send({"t": "call", "id": 2, "cmd": "note"})
    worker.send({"t": "cancel", "id": 2})
    worker.send({"t": "ping", "id": 3})
    cancelled = worker.read()  # before the pong: not when `hold` ends
    assert cancelled is not None and cancelled["t"] == "error" and cancelled["id"] == 2
    assert cancelled["kind"] == "cancelled" and "before it started" in cancelled["msg"]
    assert worker.read() == {"t": "pong", "id": 3}
    worker.send({"t": "withdraw", "id": 2})  # answered already: nothing more to say
    next_is_pong(worker, 4)
    worker.send({"t": "cancel", "id": 1})
    running = worker.read()
    assert running is not None and running["id"] == 1 and running["kind"] == "cancelled"
    worker.send({"t": "call", "id": 5, "cmd": "ran"})
    assert worker.read() == {"t": "result", "id": 5, "value": [1]}


def test_a_queued_call_past_its_deadline_is_expired_and_never_runs(recorder: Start) -> None:
    worker = recorder()
    holding(worker, 1)
    deadline = time.time() + 0.2
    worker.send({"t": "call", "id": 2, "cmd": "note", "dl": deadline})
    next_is_pong(worker, 3)  # it arrived in time and waits
    while time.time() <= deadline:  # the wall clock passing the deadline is the point
        time.sleep(deadline - time.time() + 0.01)
    worker.send({"t": "cancel", "id": 1})
    answers = [worker.read(), worker.read()]
    assert answers[0] is not None and answers[0]["id"] == 1
    assert answers[1] is not None and answers[1]["t"] == "error" and answers[1]["id"] == 2
    assert answers[1]["kind"] == "expired" and "before the worker started it" in answers[1]["msg"]
    worker.send({"t": "call", "id": 4, "cmd": "ran"})
    assert worker.read() == {"t": "result", "id": 4, "value": [1]}
