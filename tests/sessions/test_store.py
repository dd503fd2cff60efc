"""The session store's operations and TTLs, on a clock the test controls."""

import pytest

from snakepit.errors import ConfigError, SessionNotFound
from snakepit.sessions.store import Session, SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_create_get_touch_update_delete(clock: Clock) -> None:
    ended: list[tuple[str, str]] = []
    store = SessionStore(clock, on_end=lambda s, why: ended.append((s.id, why)))
    session = store.create(metadata={"user": "ada"}, mode="strict")
    assert store.get(session.id) is session and session.id in store and len(store) == 1
    assert session.mode == "strict" and session.metadata == {"user": "ada"}
    clock.now += 5
    assert store.touch(session.id).last_used == 1005.0
    store.update_metadata(session.id, step=2)
    assert session.metadata == {"user": "ada", "step": 2}
    store.delete(session.id)
    assert ended == [(session.id, "deleted")]
    with pytest.raises(SessionNotFound):
        store.get(session.id)
    with pytest.raises(SessionNotFound):
        store.delete(session.id)
    assert store.stats().created == 1 and store.stats().deleted == 1


def test_ids_are_unique_and_chosen_ids_are_checked(clock: Clock) -> None:
    store = SessionStore(clock)
    ids = {store.create().id for _ in range(100)}
    assert len(ids) == 100
    store.create("mine")
    with pytest.raises(ConfigError, match="already exists"):
        store.create("mine")


def test_bad_ttl_and_mode_are_config_errors(clock: Clock) -> None:
    store = SessionStore(clock)
    with pytest.raises(ConfigError) as info:
        store.create(ttl=-1, mode="sometimes")  # type: ignore[arg-type]
    assert [e.split(":")[0] for e in info.value.errors] == ["ttl", "mode"]


def test_ttl_counts_from_last_use_and_expiry_is_lazy_and_swept(clock: Clock) -> None:
    ended: list[tuple[str, str]] = []
    store = SessionStore(clock, default_ttl=10, on_end=lambda s, why: ended.append((s.id, why)))
    kept, dropped, defaulted = store.create("kept"), store.create("dropped"), store.create(
        "defaulted", ttl=None)
    assert defaulted.ttl == 10  # None means "the store's default"
    clock.now += 8
    store.touch("kept")
    assert store.next_expiry() == 1010.0
    clock.now += 3  # t = 1011: "dropped" is past its TTL, "kept" was used at 1008
    assert sorted(store.expire_due(), key=lambda s: s.id) == [defaulted, dropped]
    assert sorted(ended) == [("defaulted", "expired"), ("dropped", "expired")]
    assert "kept" in store
    clock.now += 7  # t = 1018: kept expires at 1018
    with pytest.raises(SessionNotFound, match="expired"):
        store.get("kept")  # lazily, before the sweeper looked
    assert ("kept", "expired") in ended
    assert store.stats().expired >= 2
    assert isinstance(kept, Session)


def test_worker_loss_unbinds_only_that_processes_sessions(clock: Clock) -> None:
    store = SessionStore(clock)
    a, b, c = store.create(), store.create(), store.create()
    store.bind(a, "pool-0", 100)
    store.bind(b, "pool-0", 100)
    store.bind(c, "pool-1", 200)
    assert sorted(s.id for s in store.worker_lost("pool-0", 100)) == sorted([a.id, b.id])
    assert a.lost and b.lost and a.worker is None and not c.lost
    assert store.worker_lost("pool-1", 999) == []  # another incarnation: not c's process
    assert c.worker == "pool-1"
    store.bind(a, "pool-1", 200)
    assert not a.lost and a.worker_pid == 200


def test_infinite_ttl_never_expires_and_sessions_in_use_do_not_expire(clock: Clock) -> None:
    import math

    store = SessionStore(clock, default_ttl=10)
    forever = store.create("forever", ttl=math.inf)
    busy = store.create("busy")
    busy.in_use = 1
    clock.now += 1e6
    assert store.expire_due() == []
    assert store.get("forever") is forever and store.get("busy") is busy
    busy.in_use = 0  # its call ended; the sweeper looks again one TTL later
    clock.now += 10
    assert store.expire_due() == [busy]


def test_removed_sessions_do_not_pile_up_in_the_expiry_heap(clock: Clock) -> None:
    store = SessionStore(clock, default_ttl=3600)
    kept = [store.create() for _ in range(100)]
    for _ in range(50_000):  # a high churn of short-lived sessions, within one TTL
        store.delete(store.create().id)
        clock.now += 0.01
    # the heap stays within a small multiple of the live sessions, not 50 000 entries
    assert len(store._expiry_heap) <= 2 * len(store) + 1024
    # and the sessions that remain still expire on time
    clock.now += 3600
    assert sorted(s.id for s in store.expire_due()) == sorted(s.id for s in kept)
    assert len(store) == 0


def test_holders_are_the_bound_worker_and_the_workers_it_visited(clock: Clock) -> None:
    store = SessionStore(clock)
    session = store.create()
    assert session.holders() == []
    store.bind(session, "pool-0", 100)
    store.visit(session, "pool-0", 100)  # the bound worker is not a visit
    store.visit(session, "pool-1", 200)  # a prefer-mode fallback
    store.visit(session, "pool-1", 200)
    assert session.holders() == [("pool-0", 100), ("pool-1", 200)]
