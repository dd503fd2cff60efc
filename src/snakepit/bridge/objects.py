"""The enhanced bridge's object stores (worker side, standard library only).

A store holds two kinds of entries:

- **named** ones, put there by ``store`` or a call's ``store_as``: they live until
  ``delete`` (or until their session ends);
- **refs**, made for results that cannot travel (``r1``, ``r2``, ...). The same object
  always gets the same ref while it is stored, so a method that returns ``self`` does
  not add an entry.

In the worker's *global* store (calls outside sessions) refs are counted: each ref
marker sent to the host counts once, and the host sends back ``release`` counts as its
:class:`~snakepit.Ref` objects are garbage-collected; the entry goes when the counts
balance, or at once on ``delete``. A session's store needs no counting: it goes with
the session.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping
from typing import Any


class RefNotFound(LookupError):
    """No object under that ref or name in this worker (and session)."""


class ObjectStore:
    """Named objects and refs of one scope (the worker's global store, or a session's).

    Safe to share between the threads of a handler with ``concurrency`` > 1.
    """

    def __init__(self, ids: Iterator[int], *, counted: bool) -> None:
        self.counted = counted
        """Whether refs are counted and released by the host (the global store)."""
        self._lock = threading.RLock()
        self._ids = ids
        self._objects: dict[str, Any] = {}
        self._key_of: dict[int, str] = {}   # id(object) -> its key, while it is stored
        self._issued: dict[str, int] = {}   # counted ref -> markers sent, not yet released

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def items(self) -> list[tuple[str, Any]]:
        return list(self._objects.items())

    def get(self, key: str, where: str) -> Any:
        """The object under ``key``.

        Raises:
            RefNotFound: nothing is stored under ``key`` (released, deleted, or another
                worker's or session's).
        """
        try:
            return self._objects[key]
        except (KeyError, TypeError):
            raise RefNotFound(f"no object {key!r} in {where} (released, deleted, or "
                              "another worker's or session's)") from None

    def put(self, name: str, value: Any) -> None:
        """Keep ``value`` under ``name`` until it is deleted (a name is never counted)."""
        with self._lock:
            if name in self._objects:
                self.delete(name)
            self._objects[name] = value
            self._key_of.setdefault(id(value), name)

    def issue(self, value: Any) -> tuple[str, bool]:
        """The ref for ``value`` about to be sent to the host, made if it has none;
        returns its key and whether the host must count it."""
        with self._lock:
            key = self._key_of.get(id(value))
            if key is None or self._objects.get(key) is not value:
                key = f"r{next(self._ids)}"
                self._objects[key] = value
                self._key_of[id(value)] = key
                if self.counted:
                    self._issued[key] = 0
            if key not in self._issued:
                return key, False  # a named object: it lives until deleted
            self._issued[key] += 1
            return key, True

    def delete(self, key: str) -> bool:
        """Forget ``key`` now, whatever its counts; True if it was stored."""
        with self._lock:
            if key not in self._objects:
                return False
            value = self._objects.pop(key)
            if self._key_of.get(id(value)) == key:
                del self._key_of[id(value)]
            self._issued.pop(key, None)
            return True

    def release(self, counts: Mapping[str, int]) -> int:
        """The host dropped ``counts[key]`` of its Refs to each key; entries whose every
        marker has come back are freed. Unknown keys are ignored (already deleted).
        Returns how many entries were freed."""
        with self._lock:
            freed = 0
            for key, count in counts.items():
                if key not in self._issued:
                    continue
                self._issued[key] -= int(count)
                if self._issued[key] <= 0:
                    freed += self.delete(key)
            return freed


def new_ids() -> Iterator[int]:
    """Ref numbers for one worker: unique across all its stores."""
    return itertools.count(1)
