"""CallContext's stream credit: produce only against credit, never wait when it came."""

from __future__ import annotations

from snakepit.bridge.context import CallContext


class CreditOnPoll:
    """A control channel whose non-blocking poll brings one credit frame, as the serial
    server's poll does when the host's credit is already in the pipe."""

    def __init__(self) -> None:
        self.context: CallContext | None = None
        self.in_pipe = 0
        """Credit frames the host has written and the worker has not read yet."""
        self.waits = 0

    def poll(self) -> None:
        assert self.context is not None
        if self.in_pipe:
            self.context._grant(self.in_pipe)
            self.in_pipe = 0

    def wait(self, timeout: float | None) -> None:
        self.waits += 1


def test_credit_read_while_checking_for_cancel_is_used_at_once() -> None:
    channel = CreditOnPoll()
    ctx = CallContext(1, "stream", None, session_id=None, deadline=None, window=1,
                      report=lambda frame: None, channel=channel)
    channel.context = ctx
    assert ctx._take_credit()  # the window's own credit
    channel.in_pipe = 1
    # No credit left: the check for a cancel frame reads the host's credit frame.
    # Regression: the context then blocked waiting for credit it already had, until
    # the call's deadline (or forever without one), and the stream stalled.
    assert ctx._take_credit()
    assert channel.waits == 0
