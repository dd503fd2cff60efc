"""Shared-memory segments that are reused: one side's set of mapped, pre-faulted files.

Standard library only (the bridge uses it in worker environments).

Writing 64 MiB into a fresh ``/dev/shm`` file cost ~90 ms on the reference box and
into one already touched ~8 ms: page faults, not copies, were the cost of a large
payload. So segments are not thrown away after one message. A segment is **handed
over** with the message that names it: the receiver owns it from then on, reads it, and
keeps it (mapped, its pages in place) in its own :class:`SegmentPool` for the next large
buffer *it* sends. An echo of 64 MiB thus writes into one segment each way that both
sides already have mapped, however many times it runs.

Ownership keeps the crash-safe rules simple. A segment has one owner at a time, and its
name still starts with the prefix of the process that created it
(``snakepit-<run>-<pid>-...``), so whoever cleans up after a dead process needs no
bookkeeping: the host removes, when a worker exits, every segment of that worker's
prefix and of its own prefix for that worker -- which covers every segment the two ever
exchanged, whoever held it last -- and the run registry's reaper removes a dead run's.

A received buffer the receiver gets as a *view* (see
:class:`~snakepit.protocol.shm.SharedMemoryCodec`) belongs to that view: the segment
leaves the pool and its name is unlinked at once; the memory goes when the last view of
it does.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import mmap
import os
import sys

from snakepit.errors import ProtocolError

SEGMENT_DIR = "/dev/shm"

MAX_FREE = 16
"""Free segments a pool keeps; beyond, the largest are unlinked. Enough for a message
of many large buffers (a data frame's columns: with a cap of four, the fifth column
and on were fresh files, page faults and all, on every round trip); the byte cap below
is what bounds the memory."""
MAX_FREE_BYTES = 512 << 20
"""Bytes of free segments a pool keeps at most."""
MAX_LENT = 16
"""Segments lent to views that a pool watches to take back; beyond, the oldest is left
to its view for good (its name unlinked)."""
_GRAIN = 1 << 20
_SMALL_GRAIN = 64 << 10
"""Segments are sized in steps of 64 KiB below 1 MiB and of 1 MiB above: room for a
slightly larger buffer next time, without a 1 MiB file for every 64 KiB one."""


class Segment:
    """One mapped segment file."""

    __slots__ = ("capacity", "map", "name")

    def __init__(self, name: str, map: mmap.mmap, capacity: int) -> None:
        self.name = name
        self.map = map
        self.capacity = capacity


def _populate() -> int:
    return getattr(mmap, "MAP_POPULATE", 0)


class SegmentPool:
    """The segments one side of one connection owns: free ones to write into, and a
    cache of every mapping so that a segment coming back needs no new mapping."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._counter = itertools.count()
        self._free: list[Segment] = []
        self._known: dict[str, Segment] = {}
        """Every segment this side owns and has mapped (free, or being read)."""
        self._away: collections.OrderedDict[str, Segment] = collections.OrderedDict()
        """Segments handed to the peer whose mapping is kept, so that one coming back
        needs no new mapping (at most :data:`MAX_FREE`, the oldest dropped first)."""
        self._lent: collections.deque[Segment] = collections.deque()
        """Segments whose memory views were handed out: free again once no view is left."""
        self.created = 0
        """Segment files created so far (reuse keeps it low)."""

    # -- writing ---------------------------------------------------------------------
    def take(self, size: int) -> Segment | None:
        """A free segment of at least ``size`` bytes (the smallest that fits), or a new
        one; None when none can be created (``/dev/shm`` full)."""
        if self._lent:
            self._reclaim()
        best = None
        for segment in self._free:
            if segment.capacity >= size and (best is None or segment.capacity < best.capacity):
                best = segment
        if best is not None:
            self._free.remove(best)
            return best
        return self._create(size)

    def _create(self, size: int) -> Segment | None:
        grain = _GRAIN if size > _GRAIN else _SMALL_GRAIN
        capacity = -(-size // grain) * grain
        name = f"{self.prefix}{next(self._counter)}"
        path = os.path.join(SEGMENT_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            return None
        try:
            os.ftruncate(fd, capacity)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, capacity)  # ENOSPC now, not SIGBUS later
            mapped = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED | _populate())
        except (OSError, ValueError):
            _unlink(name)
            return None
        finally:
            os.close(fd)
        self.created += 1
        segment = self._known[name] = Segment(name, mapped, capacity)
        return segment

    def write(self, value: bytes | bytearray | memoryview) -> Segment | None:
        """Copy ``value`` into a segment (handed over with the message from now on)."""
        view = memoryview(value).cast("B")
        size = view.nbytes
        segment = self.take(size)
        if segment is None:
            return None
        try:
            segment.map[:size] = view
        except (TypeError, ValueError):  # a non-contiguous view: send it in band
            self.give_back(segment)
            return None
        return segment

    def sent(self, segment: Segment) -> None:
        """``segment`` went to the peer: it is the peer's now. Its mapping is kept a
        while for its return (the peer may also keep it, or unlink it)."""
        self._known.pop(segment.name, None)
        away = self._away
        away[segment.name] = segment
        while len(away) > MAX_FREE:
            _, oldest = away.popitem(last=False)
            with contextlib.suppress(BufferError):
                oldest.map.close()

    # -- reading ---------------------------------------------------------------------
    def open(self, name: str, size: int, max_size: int) -> Segment:
        """The peer handed over segment ``name`` holding ``size`` bytes: map it (or take
        the mapping kept from an earlier visit) -- it is ours now.

        Raises:
            ProtocolError: a bad name, a size over ``max_size``, a segment that is not
                ours to read or shorter than announced.
        """
        if "/" in name or not name.startswith("snakepit-"):
            raise ProtocolError(f"bad shared-memory segment name {name!r}")
        if size > max_size:
            _unlink(name)
            raise ProtocolError(f"shared-memory segment of {size} bytes exceeds "
                                f"max_frame_size {max_size}")
        segment = self._known.get(name) or self._away.pop(name, None)
        if segment is not None and segment.capacity >= size:
            self._known[name] = segment
            return segment
        path = os.path.join(SEGMENT_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise ProtocolError(f"cannot open shared-memory segment {name}: {exc}") from exc
        try:
            stat = os.fstat(fd)
            if stat.st_uid != os.getuid():
                _unlink(name)
                raise ProtocolError(f"shared-memory segment {name} belongs to another user")
            if stat.st_size < size:
                _unlink(name)
                raise ProtocolError(f"shared-memory segment {name} is shorter than the "
                                    f"{size} bytes announced")
            mapped = mmap.mmap(fd, stat.st_size, flags=mmap.MAP_SHARED | _populate())
        finally:
            os.close(fd)
        segment = self._known[name] = Segment(name, mapped, stat.st_size)
        return segment

    def give_back(self, segment: Segment) -> None:
        """``segment`` was read (or not used): keep it for the next write, within the
        pool's bounds."""
        free = self._free
        free.append(segment)
        while len(free) > MAX_FREE or sum(s.capacity for s in free) > MAX_FREE_BYTES:
            largest = max(free, key=lambda s: s.capacity)
            free.remove(largest)
            self.discard(largest)

    def hand_to_view(self, segment: Segment, size: int) -> memoryview:
        """A read-only view of the segment's first ``size`` bytes. The segment is lent
        to it: nothing writes into it while a view of it lives, and once none does it
        is free again. Past :data:`MAX_LENT` lent segments the oldest is left to its
        views for good: its name is unlinked and the memory goes with the last view."""
        lent = self._lent
        lent.append(segment)
        if len(lent) > MAX_LENT:
            oldest = lent.popleft()
            self._known.pop(oldest.name, None)
            _unlink(oldest.name)
        return memoryview(segment.map)[:size].toreadonly()

    def _reclaim(self) -> None:
        """Free the lent segments no view holds any more. A view keeps a reference to
        the segment's mmap object, so a reference count of two (the segment's own, and
        the call's argument) means none is left -- a check of nanoseconds, where trying
        ``mmap.close`` would unmap a segment meant for reuse."""
        for segment in list(self._lent):
            if sys.getrefcount(segment.map) <= 2:
                self._lent.remove(segment)
                self.give_back(segment)

    def discard(self, segment: Segment) -> None:
        """Unmap and unlink ``segment``."""
        self._known.pop(segment.name, None)
        _unlink(segment.name)
        with contextlib.suppress(BufferError):
            segment.map.close()

    def close(self) -> None:
        """Unlink every segment this side holds, unmap those it handed over (its peer
        is gone, or it exits)."""
        self._free.clear()
        self._lent.clear()
        for segment in list(self._known.values()):
            self.discard(segment)
        for segment in self._away.values():
            with contextlib.suppress(BufferError):
                segment.map.close()
        self._away.clear()

    @property
    def free_bytes(self) -> int:
        return sum(s.capacity for s in self._free)

    @property
    def held(self) -> int:
        """Segments this side holds mapped (free or being read)."""
        return len(self._known)


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(SEGMENT_DIR, name))


HUGE_COPY = 4 << 20
"""``bytes`` of at least this size are read out of a segment into huge pages."""
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


class _BytesMaker:
    """Makes a ``bytes`` of a segment's contents in memory advised to use huge pages.

    Copying 64 MiB into a fresh ``bytes`` cost 31-63 ms on the reference box, almost all
    of it 16k page faults; with the new object's memory advised ``MADV_HUGEPAGE`` first
    (32 faults), 8 ms -- a warm copy. CPython's ``PyBytes_FromStringAndSize(NULL, n)``
    gives an object whose contents are ours to fill before anyone sees it; the advice
    covers only the whole huge pages inside that object's own allocation.
    """

    def __init__(self) -> None:
        import ctypes

        self.ctypes = ctypes
        self.new = ctypes.pythonapi.PyBytes_FromStringAndSize
        self.new.restype = ctypes.py_object
        self.new.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        self.madvise = ctypes.CDLL(None, use_errno=True).madvise
        self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.offset = bytes.__basicsize__ - 1  # where a bytes object's data begins

    def copy(self, source: mmap.mmap, size: int) -> bytes:
        ctypes = self.ctypes
        value: bytes = self.new(None, size)
        address = id(value) + self.offset
        start = (address + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (address + size) & ~(_HUGE_PAGE - 1)
        if end > start:
            self.madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: errors ignored
        view = ctypes.c_char.from_buffer(source)
        try:
            ctypes.memmove(address, ctypes.addressof(view), size)
        finally:
            del view
        return value


_maker: _BytesMaker | bool | None = None


def read_bytes(segment: Segment, size: int) -> bytes:
    """The first ``size`` bytes of ``segment`` as a new ``bytes`` (huge pages for large
    ones where CPython and Linux allow; a plain slice otherwise)."""
    global _maker
    if size >= HUGE_COPY:
        if _maker is None:
            try:
                _maker = _BytesMaker() if sys.implementation.name == "cpython" else False
            except (ImportError, AttributeError, OSError):
                _maker = False
        if _maker:
            assert isinstance(_maker, _BytesMaker)
            return _maker.copy(segment.map, size)
    return segment.map[:size]


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed large blocks (up to ``limit`` bytes) for reuse
    instead of unmapping them; returns whether it agreed.

    A ``bytes`` read out of a segment is a fresh allocation: 64 MiB from ``mmap`` cost
    57-160 ms of page faults on the reference box, from memory malloc kept 14-18 ms. The
    bridge calls this when it takes up shared memory (its process is ours); the price
    is a worker whose resident size stays near its peak. The host does not: its process
    is the application's (``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in
    its environment do the same there).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, limit) and mallopt(m_trim_threshold, limit))
