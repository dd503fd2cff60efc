"""The enhanced bridge's object store: identity reuse and counted refs."""

from __future__ import annotations

import fractions

import pytest

from snakepit.bridge.objects import ObjectStore, RefNotFound, new_ids


def test_the_same_object_gets_the_same_ref_and_counts_each_marker() -> None:
    store = ObjectStore(new_ids(), counted=True)
    value = fractions.Fraction(1, 3)
    assert store.issue(value) == ("r1", True)
    assert store.issue(value) == ("r1", True)  # a method returning self: no new entry
    assert store.issue(fractions.Fraction(1, 3)) == ("r2", True)  # equal, not the same
    assert len(store) == 2
    assert store.release({"r1": 1}) == 0  # one of two markers back: still held
    assert store.get("r1", "here") is value
    assert store.release({"r1": 1, "r2": 1, "r9": 3}) == 2  # unknown refs are ignored
    assert len(store) == 0
    with pytest.raises(RefNotFound, match="no object 'r1' in here"):
        store.get("r1", "here")
    assert store.issue(value) == ("r3", True)  # freed: a new ref, never a reused id


def test_a_release_crossing_a_new_marker_keeps_the_object() -> None:
    store = ObjectStore(new_ids(), counted=True)
    value = object()
    key, _ = store.issue(value)  # the host received it once and dropped it...
    store.issue(value)           # ...while the worker sent it again
    assert store.release({key: 1}) == 0  # the release of the first marker arrives
    assert store.get(key, "here") is value
    assert store.release({key: 1}) == 1


def test_named_objects_are_not_counted_and_sessions_count_nothing() -> None:
    ids = new_ids()
    store = ObjectStore(ids, counted=True)
    value = object()
    store.put("model", value)
    assert store.issue(value) == ("model", False)
    assert store.release({"model": 5}) == 0 and "model" in store
    assert store.delete("model") is True and store.delete("model") is False
    session = ObjectStore(ids, counted=False)
    assert session.issue(value) == ("r1", False)
    assert session.issue(value) == ("r1", False)
    assert session.release({"r1": 2}) == 0 and len(session) == 1
