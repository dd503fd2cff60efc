"""The value walk names a serializer that fails, and keeps the error's type."""

from __future__ import annotations

from typing import Any

import pytest

from snakepit.bridge.hookspecs import TAG_KEY
from snakepit.bridge.values import Unencodable, decode_value, encode_value


class Point:
    pass


class BrokenSerializer:
    name = "test.Point"

    def claims(self, value: Any) -> bool:
        return isinstance(value, Point)

    def encode(self, value: Any) -> Any:
        raise ValueError("cannot flatten this point")

    def decode(self, data: Any) -> Any:
        raise KeyError("x")


class RefusingSerializer(BrokenSerializer):
    def encode(self, value: Any) -> Any:
        raise Unencodable("keep it in the worker")


def test_a_serializer_that_raises_is_named_and_its_error_keeps_its_type() -> None:
    with pytest.raises(ValueError) as info:
        encode_value({"p": [Point()]}, [BrokenSerializer()])
    assert str(info.value) == ("serializer 'test.Point' (tests.bridge.test_values) failed "
                               "to encode a Point: cannot flatten this point")
    with pytest.raises(KeyError) as decoded:
        decode_value([{TAG_KEY: "test.Point", "data": {}}], [BrokenSerializer()])
    assert "serializer 'test.Point' (tests.bridge.test_values) failed to decode" in str(
        decoded.value)


def test_unencodable_from_a_serializer_is_not_a_failure() -> None:
    with pytest.raises(Unencodable, match=r"^keep it in the worker$"):
        encode_value(Point(), [RefusingSerializer()])
