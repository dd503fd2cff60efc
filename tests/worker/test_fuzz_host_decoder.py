"""Fuzzing the host's decoder: whatever a worker writes, the host neither crashes nor
hangs, other workers' calls are untouched, and at most that worker is replaced.

Each example is a real worker (``tests/support/fuzz_worker.py``) that, asked to
``emit``, writes an answer frame built from the example -- a map with fields valid,
missing or of the wrong type, for the call's own id or another -- corrupted by byte
mutations and followed by byte soup, and exits. A second pool's worker keeps answering
in the same Trio run meanwhile. The examples are derandomized (the same in every run,
no example database): a failure prints the example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snakepit
from tests.conftest import SUPPORT

FUZZ_WORKER = str(SUPPORT / "fuzz_worker.py")
MAX_FRAME = 4096

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=10))
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
ids = st.just("$id") | st.integers(-3, 2**64 - 1)
# What each worker frame carries, and values each field may validly hold.
SCHEMAS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "result": {"id": ids, "value": junk},
    "error": {"id": ids | st.none(), "kind": st.sampled_from(
        ["handler", "unknown_command", "cancelled", "expired", "payload", "protocol"]),
              "etype": st.text(max_size=10), "msg": st.text(max_size=10),
              "tb": st.text(max_size=10), "retryable": st.booleans()},
    "chunk": {"id": ids, "value": junk},
    "end": {"id": ids},
    "progress": {"id": ids, "done": st.floats(0, 10), "total": st.floats(0, 10),
                 "msg": st.text(max_size=5)},
    "pong": {"id": ids},
    "beat": {},
    "welcome": {"version": st.integers(0, 2), "pid": st.integers(1, 99), "codec": st.just("json"),
                "concurrency": st.integers(-1, 4)},
}


@st.composite
def answers(draw: st.DrawFn) -> dict[str, Any] | None:
    """A worker frame whose fields are each valid, missing, or of the wrong type;
    now and then a message type a worker never sends, or no frame at all."""
    tag = draw(st.sampled_from(sorted(SCHEMAS)) | st.sampled_from(["result", "error", "end"])
               | st.sampled_from(["call", "nonsense"]) | junk | st.none())
    if tag is None:
        return None
    frame: dict[str, Any] = {"t": tag}
    for name, valid in SCHEMAS.get(tag, {}).items() if isinstance(tag, str) else ():
        choice = draw(st.sampled_from(["valid", "valid", "valid", "junk", "missing"]))
        if choice != "missing":
            frame[name] = draw(valid if choice == "valid" else junk)
    return frame


mutations = st.just([]) | st.lists(
    st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 300),
              st.integers(0, 255)), min_size=1, max_size=3)
tails = (st.just(b"") | st.binary(max_size=40)
         | st.just(b"\x00\x00\x10\x01")  # a header one byte over max_frame_size
         | st.binary(min_size=4, max_size=4))  # any header, maybe of a frame never sent


def pool_config(name: str, codec: str) -> snakepit.PoolConfig:
    return snakepit.PoolConfig(
        name=name, size=1, codec=codec, max_frame_size=MAX_FRAME, kill_timeout=0.5,
        shutdown_grace=0.5, cancel_grace=0.5, command=(sys.executable, FUZZ_WORKER),
        restart=snakepit.RestartPolicy(backoff_initial=0.01, backoff_max=0.02))


async def survive(codec: str, answer: dict[str, Any] | None, mutated: list[Any],
                  tail: bytes) -> None:
    emit = {"answer": answer, "mutations": [list(m) for m in mutated],
            "tail": tail.hex() if codec == "json" else tail}
    with trio.fail_after(60):  # never a hang
        async with snakepit.open_pool(pool_config("fuzzed", codec)) as fuzzed, \
                snakepit.open_pool(pool_config("steady", codec)) as steady:
            steady_pid, fuzzed_pid = steady.workers()[0].pid, fuzzed.workers()[0].pid
            answered: list[int] = []
            gone = trio.Event()

            def on_exit(event: str, measurements: object, metadata: dict[str, object]) -> None:
                if metadata.get("pid") == fuzzed_pid:
                    gone.set()

            async def steady_calls() -> None:
                for n in range(5):
                    answered.append(await steady.execute("echo", n))

            handler = snakepit.telemetry.attach("worker.exited", on_exit)  # type: ignore[arg-type]
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(steady_calls)
                    try:
                        # a deadline, for a frame that announces more than ever comes
                        await fuzzed.execute("emit", emit, timeout=10)
                    except snakepit.SnakepitError:
                        pass  # any typed error is fine; anything else fails the test
                assert answered == list(range(5))  # the other worker's calls, untouched
                await gone.wait()  # the fuzzing worker exits after emitting, every time
            finally:
                snakepit.telemetry.detach(handler)
            await fuzzed.wait_ready()
            assert await fuzzed.execute("echo", "again") == "again"  # its replacement
            assert fuzzed.stats().restarts <= 1
            assert steady.workers()[0].pid == steady_pid and steady.stats().restarts == 0


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@settings(max_examples=20, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(answer=answers(), mutated=mutations, tail=tails)
def test_the_host_survives_whatever_a_worker_writes(
        codec: str, answer: dict[str, Any] | None, mutated: list[Any], tail: bytes) -> None:
    if codec == "msgpack":
        msgpack.packb(answer)  # the strategies only draw values both codecs carry
    trio.run(survive, codec, answer, mutated, tail)

