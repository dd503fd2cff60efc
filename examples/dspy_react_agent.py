"""A DSPy ReAct agent that runs in a pool worker and uses the application's own tools.

Run it with ``python examples/dspy_react_agent.py``. It works offline: the worker's LM
is ``dspy.utils.DummyLM``, scripted to call both tools and then answer. With a real LM,
replace the script by ``dspy.LM(...)`` in :meth:`AgentHandler.configure_lm`.

What it shows (docs/host-tools.md):

- **Host tools**: the agent runs in the worker, but its tools are the application's --
  ``check_stock`` is async (it awaits, as a call to another service would) and
  ``lookup_order`` queries an in-memory SQLite database through ``trio.to_thread``.
  ``pool.register_tool`` makes them reachable; in the worker,
  ``snakepit_dspy.host_tool(name)`` turns each into a ``dspy.Tool``.
- **Deadlines**: the question runs under ``timeout=``; each tool runs in the host under
  that same deadline and would be cancelled with the call.
- **Set-up on every worker**: ``pool.setup("configure_lm", ...)`` runs
  ``dspy.configure`` on every worker now and on every replacement later, before it
  takes calls.

This file is also the workers' handler module (``dspy_react_agent:AgentHandler``): the
pool starts workers with this directory on their ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from snakepit.bridge import CallContext, CommandHandler, command

HERE = Path(__file__).resolve().parent

# What the offline LM "decides", step by step (ReAct's fields, then the final answer).
SCRIPT: list[dict[str, Any]] = [
    {"next_thought": "Is the tea in stock?", "next_tool_name": "check_stock",
     "next_tool_args": {"sku": "green-tea"}},
    {"next_thought": "Now the customer's order.", "next_tool_name": "lookup_order",
     "next_tool_args": {"order_id": 42}},
    {"next_thought": "I have both answers.", "next_tool_name": "finish", "next_tool_args": {}},
    {"reasoning": "The tea is in stock and order 42 has shipped.",
     "answer": "Order 42 (2 x green-tea) shipped on 2026-12-01; 17 more are in stock."},
]


# -- the worker side: the agent --------------------------------------------------------
class AgentHandler(CommandHandler):
    """Runs in the worker: DSPy lives here, the tools live in the host."""

    @command
    def configure_lm(self, args: dict[str, Any]) -> str:
        """Set-up (``pool.setup``): the LM every later ``ask`` on this worker uses."""
        import dspy

        dspy.configure(lm=dspy.utils.DummyLM(args["script"]))
        return "configured"

    @command
    def ask(self, args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        """Answer ``question`` with a ReAct agent whose tools are host tools."""
        import dspy

        from snakepit_dspy import host_tool

        tools = [
            host_tool("check_stock", args={"sku": {"type": "string"}}),
            host_tool("lookup_order", args={"order_id": {"type": "integer"}}),
        ]
        agent = dspy.ReAct("question -> answer", tools=tools, max_iters=5)
        prediction = agent(question=args["question"])
        trajectory = prediction.trajectory
        steps = [{"tool": trajectory[f"tool_name_{n}"], "args": trajectory[f"tool_args_{n}"],
                  "returned": trajectory[f"observation_{n}"]}
                 for n in range(len(trajectory))
                 if trajectory.get(f"tool_name_{n}") not in (None, "finish")]
        return {"answer": prediction.answer, "steps": steps}


# -- the host side: the application and its tools ----------------------------------------
def open_database() -> sqlite3.Connection:
    """The application's database (in memory here), used from worker threads."""
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("create table orders (id integer primary key, sku text, qty integer, "
               "status text, shipped text)")
    db.execute("insert into orders values (42, 'green-tea', 2, 'shipped', '2026-12-01')")
    db.execute("insert into orders values (43, 'oolong', 1, 'packing', null)")
    return db


async def main() -> None:
    import trio

    import snakepit

    db = open_database()
    db_lock = trio.CapacityLimiter(1)  # one thread at a time on the connection
    stock = {"green-tea": 17, "oolong": 0}

    async def check_stock(args: dict[str, Any]) -> str:
        """How many of an item (by its sku) are in stock."""
        await trio.sleep(0.01)  # stands for a call to the inventory service
        return f"{stock.get(args['sku'], 0)} x {args['sku']} in stock"

    async def lookup_order(args: dict[str, Any]) -> str:
        """An order's items and shipping status, by its id."""
        def query() -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = db.execute(
                "select sku, qty, status, shipped from orders where id = ?",
                (args["order_id"],)).fetchone()
            return row
        row = await trio.to_thread.run_sync(query, limiter=db_lock)
        if row is None:
            return f"no order {args['order_id']}"
        sku, qty, status, shipped = row
        return f"order {args['order_id']}: {qty} x {sku}, {status}" + (
            f" on {shipped}" if shipped else "")

    config = snakepit.PoolConfig(
        size=1, handler="dspy_react_agent:AgentHandler",
        env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})
    async with snakepit.open_pool(config) as pool:
        pool.register_tool("check_stock", check_stock)
        pool.register_tool("lookup_order", lookup_order)
        await pool.setup("configure_lm", {"script": SCRIPT}, timeout=30)
        result = await pool.execute("ask", {"question": "Where is my order 42, and can I "
                                                        "order more green tea?"}, timeout=60)
    for step in result["steps"]:
        print(f"{step['tool']}({step['args']}) returned: {step['returned']}")
    print(f"answer: {result['answer']}")


if __name__ == "__main__":
    import trio

    trio.run(main)
