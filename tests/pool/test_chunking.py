"""``ChunkSizer``: how big ``pool.map``'s automatic chunks are, without processes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from snakepit.pool.chunking import (
    ALONE_CHUNK_SECONDS,
    CHUNK_SECONDS,
    GROWTH,
    MAX_CHUNKSIZE,
    ChunkSizer,
)

ITEM = 1e-5  # seconds per item: a millisecond is 100 items


def warmed(units: int = 2) -> ChunkSizer:
    """A sizer that has seen a large chunk answered at ``ITEM`` per item."""
    sizer = ChunkSizer(None, ITEM, units)
    sizer.learn(MAX_CHUNKSIZE, MAX_CHUNKSIZE * ITEM)
    return sizer


def test_an_explicit_size_is_honoured_whatever_happens() -> None:
    sizer = ChunkSizer(7, ITEM, 2)
    sizer.learn(7, 1.0)
    assert {sizer.next_size(alone=alone, remaining=r)
            for alone in (True, False) for r in (None, 1, 10**6)} == {7}


def test_the_first_chunk_is_one_item_and_growth_follows_answered_items() -> None:
    sizer = ChunkSizer(None, ITEM, 2)
    assert sizer.next_size(alone=False, remaining=None) == 1
    assert sizer.next_size(alone=False, remaining=None) == 1  # nothing answered yet
    sizer.learn(1, ITEM)
    assert sizer.next_size(alone=False, remaining=None) == GROWTH
    sizer.learn(1, ITEM)  # every answered item counts, not only the largest chunk
    assert sizer.next_size(alone=False, remaining=None) == 2 * GROWTH
    sizer.learn(GROWTH, GROWTH * ITEM)
    assert sizer.next_size(alone=False, remaining=None) == (2 + GROWTH) * GROWTH


def test_a_shared_pool_gets_a_millisecond_of_work_per_chunk() -> None:
    sizer = warmed()
    assert [sizer.next_size(alone=False, remaining=None) for _ in range(5)] == [100] * 5


def test_alone_the_budget_doubles_to_its_limit_and_drops_back_at_once() -> None:
    sizer = warmed()
    sizes = [sizer.next_size(alone=True, remaining=None) for _ in range(6)]
    limit = round(ALONE_CHUNK_SECONDS / ITEM)
    assert sizes[:3] == [200, 400, 800][:3] and sizes[-1] == limit
    assert sizes == sorted(sizes)
    assert sizer.next_size(alone=False, remaining=None) == round(CHUNK_SECONDS / ITEM)
    assert sizer.next_size(alone=True, remaining=None) == 200  # grows again from there


def test_near_the_end_of_a_sized_input_chunks_shrink_but_not_below_a_millisecond() -> None:
    sizer = warmed(units=2)
    for _ in range(6):
        sizer.next_size(alone=True, remaining=10**6)
    assert sizer.next_size(alone=True, remaining=1600) == 400  # a quarter of what is left
    assert sizer.next_size(alone=True, remaining=200) == 100  # a millisecond's worth


@settings(max_examples=200, deadline=None, derandomize=True)
@given(per_item=st.floats(1e-8, 10.0), units=st.integers(1, 64),
       steps=st.lists(st.tuples(st.booleans(), st.none() | st.integers(0, 10**7)),
                      min_size=1, max_size=30))
def test_sizes_stay_within_their_bounds(per_item: float, units: int,
                                        steps: list[tuple[bool, int | None]]) -> None:
    sizer = ChunkSizer(None, per_item, units)
    sizer.learn(64, 64 * per_item)
    for alone, remaining in steps:
        answered = sizer.answered
        size = sizer.next_size(alone=alone, remaining=remaining)
        assert 1 <= size <= min(MAX_CHUNKSIZE, answered * GROWTH)
        # never more than the budget's work, unless one item is more than the budget
        assert size == 1 or size * max(per_item, 1e-7) <= ALONE_CHUNK_SECONDS * (1 + 1e-9)
        if not alone:
            assert size == 1 or size * max(per_item, 1e-7) <= CHUNK_SECONDS * (1 + 1e-9)
