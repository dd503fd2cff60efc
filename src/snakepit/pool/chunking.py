"""How many items ``pool.map`` puts in each chunk when the caller leaves it the choice.

A chunk aims at a budget of *work* (seconds), turned into items by the measured time
per item:

- **While others share the pool**, about :data:`CHUNK_SECONDS`: a call from elsewhere
  waits behind at most about that much of the map's work in a worker's pipe -- the
  pipeline rule every call follows (:mod:`snakepit.pool.pipelining`).
- **While the map has the pool to itself** (nothing queued or in a worker but its own
  chunks), the budget doubles with each chunk up to :data:`ALONE_CHUNK_SECONDS`. Every
  chunk costs the host one wake-up and a call's life cycle; on the 2-core reference box
  that is ~100-140 µs of host CPU taken from the workers, so millisecond chunks of
  CPU-bound items held a lone map to ~0.75x of two workers' ideal rate, where chunks of
  8 ms or more reach ~0.9x. The first call from elsewhere sets the budget back to
  :data:`CHUNK_SECONDS` for the next chunk; that call waits behind the larger chunks
  already sent (a few times :data:`ALONE_CHUNK_SECONDS` at most).
- **Near the end of an input of known length**, chunks shrink to a share of what is
  left, so the workers finish together instead of one running a last large chunk.
- **Never much larger than what was seen to work**: at most :data:`GROWTH` times the
  items answered so far (the first chunk is one item), so a handler slower than it
  looks does not get a huge first chunk; and at most :data:`MAX_CHUNKSIZE` items. (Four
  times the largest chunk answered, as before, took ~35 chunks to reach 8 ms of 10 µs
  items, a window of tiny chunks per step; counting every answered item, ~20.)

An explicit ``chunksize`` is always honoured.
"""

from __future__ import annotations

CHUNK_SECONDS = 0.001
"""Work per chunk while others share the pool: the pipeline budget of one call."""
ALONE_CHUNK_SECONDS = 0.008
"""Most work per chunk while the map has the pool to itself."""
MAX_CHUNKSIZE = 4096
"""Largest chunk ``chunksize=None`` picks."""
GROWTH = 4
"""An automatic chunk is at most this many times the items answered before it."""
TAIL_SHARE = 2
"""Near the end of a sized input, a chunk holds at most ``1 / (TAIL_SHARE * units)``
of the items left."""


class ChunkSizer:
    """The chunk size of one map: an explicit one, or one worked out per chunk."""

    __slots__ = ("answered", "budget", "fixed", "per_item", "units")

    def __init__(self, fixed: int | None, per_item: float, units: int) -> None:
        self.fixed = fixed
        self.per_item = per_item
        """Moving estimate of one item's service time, in seconds."""
        self.units = max(1, units)
        self.budget = CHUNK_SECONDS
        """Seconds of work the next automatic chunk aims at."""
        self.answered = 0
        """Items of this map answered so far."""

    def next_size(self, *, alone: bool, remaining: int | None) -> int:
        """Items for the next chunk; ``alone``: nothing but this map's chunks is queued
        or in a worker; ``remaining``: items left in a sized input (else ``None``)."""
        if self.fixed is not None:
            return self.fixed
        self.budget = min(ALONE_CHUNK_SECONDS, self.budget * 2) if alone else CHUNK_SECONDS
        per_item = max(self.per_item, 1e-7)
        size = int(self.budget / per_item)
        if remaining is not None and self.budget > CHUNK_SECONDS:
            share = remaining // (TAIL_SHARE * self.units)
            size = min(size, max(int(CHUNK_SECONDS / per_item), share))
        return max(1, min(size, MAX_CHUNKSIZE, self.answered * GROWTH))

    def learn(self, items: int, took: float) -> None:
        """A chunk of ``items`` was answered after ``took`` seconds of work."""
        self.answered += items
        if took > 0:
            self.per_item += (took / items - self.per_item) * 0.5
