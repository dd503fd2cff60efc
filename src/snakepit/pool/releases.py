"""Releasing worker objects the host no longer holds a :class:`~snakepit.Ref` to.

A result the enhanced bridge keeps in a worker's global store (outside sessions) lives
as long as the host holds a Ref to it. The worker counts every ref marker it sends; the
host counts the Refs it makes from them. When the last host Ref to an object is
garbage-collected, the host sends back how many markers it received, and the worker
frees the object once every marker it sent has come back. Counting markers, not Refs,
is what makes this safe when the worker hands out the same ref again while a release is
on its way.

``Ref.__del__`` may run in any thread and at any bytecode, so it only appends to a deque
and wakes the releaser through the Trio token (thread-safe, reentrant); all counting
happens in the Trio thread.
"""

from __future__ import annotations

import collections
import contextlib
import gc
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from snakepit.errors import SnakepitError

if TYPE_CHECKING:
    from snakepit.pool.calls import CallPath
    from snakepit.worker.worker import Worker

RefKey = tuple[str, int, str]
"""A counted ref: the worker slot, its pid, the ref id."""


class RefReleases:
    """One pool's count of host Refs to counted worker objects, and their release."""

    def __init__(self, calls: CallPath, slot_worker: Callable[[str], Worker | None]) -> None:
        self._calls = calls
        self._slot_worker = slot_worker
        self._token = trio.lowlevel.current_trio_token()
        self._live: dict[RefKey, int] = {}      # host Refs alive
        self._received: dict[RefKey, int] = {}  # markers received since the last release
        self._dropped: collections.deque[RefKey] = collections.deque()
        self._pending: dict[tuple[str, int], dict[str, int]] = {}
        self._wake = trio.Event()
        self._sending = trio.Lock()

    def made(self, key: RefKey) -> None:
        """A Ref for ``key`` was made from a marker (Trio thread)."""
        self._live[key] = self._live.get(key, 0) + 1
        self._received[key] = self._received.get(key, 0) + 1

    def dropped(self, key: RefKey) -> None:
        """A Ref for ``key`` was garbage-collected (any thread, any moment)."""
        self._dropped.append(key)
        with contextlib.suppress(trio.RunFinishedError, RuntimeError):
            self._token.run_sync_soon(self._wake_up, idempotent=True)

    def _wake_up(self) -> None:
        self._wake.set()

    def _settle(self) -> None:
        """Turn dropped Refs into pending releases, per worker."""
        while self._dropped:
            key = self._dropped.popleft()
            left = self._live.get(key, 0) - 1
            if left > 0:
                self._live[key] = left
                continue
            self._live.pop(key, None)
            count = self._received.pop(key, 0)
            if count:
                worker, pid, ref_id = key
                refs = self._pending.setdefault((worker, pid), {})
                refs[ref_id] = refs.get(ref_id, 0) + count

    async def flush(self) -> None:
        """Send every pending release to its worker and wait for the answers. A worker
        that has gone took its objects with it: its releases are dropped."""
        async with self._sending:
            self._settle()
            batch, self._pending = self._pending, {}
            for (worker_id, pid), refs in batch.items():
                worker = self._slot_worker(worker_id)
                if worker is None or worker.pid != pid:
                    continue
                with contextlib.suppress(SnakepitError):  # it died or the pool is closing
                    await self._calls.run("release", {"refs": refs}, None, None, None,
                                          pinned=worker)

    async def collect(self) -> None:
        """Garbage-collect now, then :meth:`flush`."""
        gc.collect()
        await self.flush()

    async def run(self) -> None:
        """Release in the background as Refs are dropped, for the pool's life."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.flush()
