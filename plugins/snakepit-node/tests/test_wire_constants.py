"""worker.js repeats the wire's constants in JavaScript (js/wire.js); these tests keep
them equal to Python's :mod:`snakepit.protocol.wire`, so that a message, error kind or
capability added or renamed on one side cannot silently drift from the other."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from snakepit.protocol import wire
from snakepit_node import ensure_node_modules

# Prints every plain constant wire.js exports (strings, numbers, lists) as JSON.
DUMP = """
const exported = require(process.argv[1]);
const constants = {};
for (const [name, value] of Object.entries(exported)) {
  if (['string', 'number'].includes(typeof value) || Array.isArray(value)) constants[name] = value;
}
process.stdout.write(JSON.stringify(constants));
"""

# Python names in wire.py that are neither message tags nor error kinds.
NOT_TAGS = {"TAG", "SHM", "BATCH", "ALLOWED_TARGETS_ENV"}


@pytest.fixture(scope="module")
def js() -> dict[str, Any]:
    """wire.js's constants, as node sees them (the installed copy the workers run)."""
    wire_js = ensure_node_modules() / "wire.js"
    done = subprocess.run([shutil.which("node") or "node", "-e", DUMP, str(wire_js)],
                          capture_output=True, text=True, timeout=30, check=True)
    constants: dict[str, Any] = json.loads(done.stdout)
    return constants


def python_constants(select: Any) -> dict[str, Any]:
    return {name: value for name, value in vars(wire).items()
            if name.isupper() and isinstance(value, str) and select(name)}


def test_protocol_version_and_frame_limit(js: dict[str, Any]) -> None:
    assert js["PROTOCOL_VERSION"] == wire.PROTOCOL_VERSION
    assert js["DEFAULT_MAX_FRAME_SIZE"] == wire.DEFAULT_MAX_FRAME_SIZE


def test_every_message_tag(js: dict[str, Any]) -> None:
    tags = python_constants(lambda name: not name.startswith("KIND_") and name not in NOT_TAGS)
    assert "WITHDRAWN" in tags  # the selection finds the tags
    assert js["TAG"] == wire.TAG
    js_tags = {name: value for name, value in js.items()
               if isinstance(value, str) and not name.startswith("KIND_") and name != "TAG"}
    assert js_tags == tags


def test_every_error_kind(js: dict[str, Any]) -> None:
    kinds = python_constants(lambda name: name.startswith("KIND_"))
    assert len(kinds) >= 6
    assert {name: value for name, value in js.items() if name.startswith("KIND_")} == kinds


def test_announced_capabilities_exist_in_python(js: dict[str, Any], raw: Any) -> None:
    assert js["CAPABILITIES"] and set(js["CAPABILITIES"]) <= set(wire.CAPABILITIES)
    worker = raw()
    assert worker.handshake()["capabilities"] == js["CAPABILITIES"]
