"""Adapters: the pool's codec is negotiated with what the adapter's workers speak."""

from __future__ import annotations

from typing import Any

import pytest

import snakepit
from snakepit import hookspecs, plugins
from snakepit.adapters import LaunchSpec, PythonAdapter


class JsonOnly:
    """The bridge, declared as speaking JSON only (as a Ruby or shell worker might)."""

    name = "json-only"
    codecs = ("json",)

    def launch(self, config: snakepit.PoolConfig, worker_id: str) -> LaunchSpec:
        return PythonAdapter().launch(config, worker_id)


class MsgpackOnly(JsonOnly):
    name = "msgpack-only"
    codecs = ("msgpack",)


class AdapterPlugin:
    @hookspecs.hookimpl
    def snakepit_adapters(self) -> list[Any]:
        return [JsonOnly(), MsgpackOnly()]


@pytest.fixture(autouse=True)
def adapters() -> Any:
    plugin = AdapterPlugin()
    plugins.register_plugin(plugin, name="test-adapters")
    yield
    plugins.unregister_plugin(plugin)


async def test_a_json_only_adapter_needs_no_codec_spelled_out() -> None:
    async with snakepit.open_pool(snakepit.PoolConfig(size=1, adapter="json-only")) as pool:
        assert await pool.execute("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        assert pool.config.codec == "json"
        assert pool.workers()[0].connection.codec.name == "json"


async def test_a_codec_asked_for_and_not_spoken_is_still_refused() -> None:
    config = snakepit.PoolConfig(size=1, adapter="msgpack-only", codec="json")
    with pytest.raises(snakepit.ConfigError, match="speak msgpack, not json"):
        async with snakepit.open_pool(config):
            pass
