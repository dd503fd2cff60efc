"""examples/dspy_react_agent.py runs as users run it: a DSPy ReAct agent in a worker
calls two host tools (one async, one SQLite through trio.to_thread) and answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dspy_react_agent.py"


def test_the_react_agent_example_runs_offline_and_prints_what_the_tools_returned() -> None:
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "check_stock({'sku': 'green-tea'}) returned: 17 x green-tea in stock",
        "lookup_order({'order_id': 42}) returned: order 42: 2 x green-tea, shipped on "
        "2026-12-01",
        "answer: Order 42 (2 x green-tea) shipped on 2026-12-01; 17 more are in stock.",
    ]
