"""An exception leaving ``open_pool``/``open_pools`` keeps its own chaining."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest

import snakepit


class Original(Exception):
    pass


class Raised(Exception):
    pass


def _opened(which: str) -> AbstractAsyncContextManager[object]:
    if which == "open_pool":
        return snakepit.open_pool(size=1, control=False)
    return snakepit.open_pools({"pools": {"p": {"size": 1, "control": False}}})


OPENERS = ["open_pool", "open_pools"]


async def _raise_inside(which: str, body: Callable[[], None]) -> Raised:
    with pytest.raises(Raised) as info:
        async with _opened(which):
            body()
    return info.value


@pytest.mark.parametrize("which", OPENERS)
async def test_raise_from_keeps_its_cause(which: str) -> None:
    original = Original("root cause")

    def body() -> None:
        raise Raised("wrapped") from original

    error = await _raise_inside(which, body)
    assert error.__cause__ is original
    assert error.__suppress_context__ is True


@pytest.mark.parametrize("which", OPENERS)
async def test_raise_in_except_keeps_its_context(which: str) -> None:
    def body() -> None:
        try:
            raise Original("while handling")
        except Original:
            raise Raised("second")  # noqa: B904

    error = await _raise_inside(which, body)
    assert error.__cause__ is None
    assert isinstance(error.__context__, Original)
    assert error.__suppress_context__ is False


@pytest.mark.parametrize("which", OPENERS)
async def test_raise_from_none_keeps_its_suppressed_context(which: str) -> None:
    def body() -> None:
        try:
            raise Original("hidden")
        except Original:
            raise Raised("clean") from None

    error = await _raise_inside(which, body)
    assert error.__cause__ is None
    assert error.__suppress_context__ is True
    assert isinstance(error.__context__, Original)


@pytest.mark.parametrize("which", OPENERS)
async def test_a_plain_raise_has_no_chaining(which: str) -> None:
    def body() -> None:
        raise Raised("alone")

    error = await _raise_inside(which, body)
    assert error.__cause__ is None and error.__context__ is None
    assert error.__suppress_context__ is False

