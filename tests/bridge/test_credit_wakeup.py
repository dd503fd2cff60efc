"""A frame that lands between a handler's check and its wait must not be missed.

Found through workers on sockets (snakepit-ray): a stream waiting for credit polled the
wire, the poll brought the credit, and the serial bridge then slept in ``select`` until
the call's deadline anyway. The threaded bridge had the same gap between its check and
its condition wait.
"""

from __future__ import annotations

import threading
import time

from snakepit.bridge.context import CallContext, SerialChannel, ThreadedChannel


def test_serial_credit_brought_by_the_poll_is_taken_without_waiting() -> None:
    waits: list[float | None] = []
    ctx: CallContext

    def pump(timeout: float | None) -> None:
        if timeout != 0.0:
            waits.append(timeout)  # a blocking wait: here it would sleep till the deadline
        elif ctx._credit == 0:
            ctx._grant(2)  # the credit frame was already on the wire: the poll reads it

    ctx = CallContext(1, "count", None, session_id=None, deadline=time.time() + 30, window=1,
                      report=lambda frame: None, channel=SerialChannel(pump))
    assert ctx._take_credit()  # the window's one unit
    assert ctx._take_credit()  # out of credit: the poll inside the check brings two more
    assert ctx._take_credit()
    assert waits == []


def test_threaded_credit_granted_before_the_wait_is_not_missed() -> None:
    changed = threading.Condition()
    ctx = CallContext(1, "count", None, session_id=None, deadline=time.time() + 30, window=0,
                      report=lambda frame: None, channel=ThreadedChannel(changed))
    ctx._grant(1)  # applied by the reader after the check, before the wait began
    started = time.monotonic()
    ThreadedChannel(changed).wait(10, lambda: ctx._credit > 0)
    assert time.monotonic() - started < 1
    assert ctx._take_credit()


def test_threaded_wait_still_wakes_on_a_later_frame() -> None:
    changed = threading.Condition()
    ctx = CallContext(1, "nap", None, session_id=None, deadline=None, window=None,
                      report=lambda frame: None, channel=ThreadedChannel(changed))

    def cancel_soon() -> None:
        time.sleep(0.05)
        ctx._cancel()
        with changed:
            changed.notify_all()

    threading.Thread(target=cancel_soon).start()
    assert ctx.wait_cancelled(10)
