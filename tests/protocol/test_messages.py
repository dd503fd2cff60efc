from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snakepit.errors import PayloadError, ProtocolError
from snakepit.protocol import messages as m
from snakepit.protocol.codecs import JSON, MSGPACK, get_codec
from snakepit.protocol.framing import FrameDecoder

CODECS = [JSON, MSGPACK]

# Values both codecs carry unchanged (JSON has no bytes, tuples or non-string keys).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
ids = st.integers(0, 2**53)
texts = st.text(max_size=30)
opt_texts = st.none() | texts
numbers = st.floats(allow_nan=False, allow_infinity=False)

any_message = st.one_of(
    st.builds(m.Hello, st.integers(0, 10), st.lists(texts, max_size=3), st.integers(1, 2**31),
              texts, st.none() | st.floats(0.01, 100)),
    st.builds(m.Beat),
    st.builds(m.Welcome, st.integers(0, 10), st.integers(1, 2**22), texts, st.integers(1, 64),
              st.lists(texts, max_size=3), texts, texts),
    st.builds(m.Call, ids, texts, json_values, opt_texts, st.none() | numbers,
              st.none() | st.integers(1, 1000)),
    st.builds(m.Cancel, ids),
    st.builds(m.Credit, ids, st.integers(0, 1000)),
    st.builds(m.Shutdown),
    st.builds(m.Ping, ids),
    st.builds(m.Pong, ids),
    st.builds(m.Drop, texts),
    st.builds(m.Result, ids, json_values),
    st.builds(m.Error, st.none() | ids, texts, texts, texts, texts, st.booleans()),
    st.builds(m.Chunk, ids, json_values),
    st.builds(m.End, ids),
    st.builds(m.Progress, ids, numbers, st.none() | numbers, opt_texts),
)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(message=any_message)
def test_every_message_round_trips_through_both_codecs(codec: Any, message: m.Message) -> None:
    assert m.from_wire(codec.decode(codec.encode(m.to_wire(message)))) == message


def test_msgpack_carries_bytes_as_bin() -> None:
    assert MSGPACK is not None
    message = m.Result(1, b"\x00\xff" * 10)
    assert m.from_wire(MSGPACK.decode(MSGPACK.encode(m.to_wire(message)))) == message


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
@given(soup=st.binary(max_size=200))
def test_random_bytes_yield_messages_or_protocol_error(codec: Any, soup: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=256)
    try:
        for payload in decoder.feed(soup):
            message = m.from_wire(codec.decode(payload))
            assert type(message) in m._TAGS
    except ProtocolError:
        pass


@given(data=st.dictionaries(st.sampled_from(["t", "id", "cmd", "args", "value", "n", "kind"]),
                            json_values | st.sampled_from(["call", "result", "error", "credit"])))
def test_random_maps_yield_messages_or_protocol_error(data: dict[str, Any]) -> None:
    try:
        message = m.from_wire(data)
    except ProtocolError:
        return
    assert type(message) in m._TAGS


def test_wire_form_is_tagged_and_compact() -> None:
    wire = m.to_wire(m.Call(7, "echo", {"x": 1}, session_id="s1"))
    assert wire == {"t": "call", "id": 7, "cmd": "echo", "args": {"x": 1}, "sid": "s1"}


def test_retryable_is_an_optional_key_of_the_error_answer() -> None:
    # a worker (or host) that predates the key: absent means False, and False is not sent
    old = {"t": "error", "id": 3, "kind": "handler", "etype": "ValueError", "msg": "no"}
    assert m.from_wire(old) == m.Error(3, "handler", "ValueError", "no")
    assert m.to_wire(m.Error(3, "handler", "ValueError", "no")) == old
    marked = m.to_wire(m.Error(3, "handler", "Busy", "later", retryable=True))
    assert marked == {**old, "etype": "Busy", "msg": "later", "retryable": True}
    assert m.from_wire(marked).retryable is True  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    {"t": "call", "id": "7", "cmd": "echo"},       # id must be an int, not coerced
    {"t": "call", "id": 7},                          # command missing
    {"t": "nonsense", "id": 7},
    {"id": 7},
    {"t": "progress", "id": 1, "done": "half"},
    {"t": "error", "id": 1, "kind": "handler", "retryable": "yes"},  # a bool, not truthy
])
def test_malformed_maps_are_protocol_errors(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        m.from_wire(bad)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
def test_unencodable_values_are_payload_errors(codec: Any) -> None:
    with pytest.raises(PayloadError):
        codec.encode({"value": object()})


def test_json_cannot_carry_bytes() -> None:
    with pytest.raises(PayloadError):
        JSON.encode({"value": b"raw"})


def test_unknown_codec_is_named() -> None:
    with pytest.raises(ValueError, match="unknown codec 'yaml'"):
        get_codec("yaml")
