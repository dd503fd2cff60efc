"""Rendering a running instance's snapshot for people: ``snakepit top`` and ``stats``.

``render`` turns the plain data of the control socket's ``stats`` answer into rich
tables; ``watch`` redraws it every interval until Ctrl-C or until the instance goes away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from snakepit.control.client import ControlError, InstanceGone

STATE_STYLES = {"ready": "green", "starting": "yellow", "restarting": "yellow",
                "stopping": "magenta", "waiting": "yellow", "failed": "bold red",
                "dead": "red", "stopped": "dim"}


def milliseconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


def mebibytes(size: int | None) -> str:
    return "-" if not size else f"{size / (1 << 20):.1f} MiB"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _pool_table(pool: dict[str, Any]) -> Table:
    workers = pool["workers"]
    gpu = any("device" in (w.get("info") or {}) for w in workers)
    state = " [bold red]DRAINING[/]" if pool.get("draining") else ""
    title = (f"pool [bold]{pool['name']}[/]{state} — {len(workers)} workers, "
             f"queue {pool['queue_depth']}, in flight {pool['in_flight']}, "
             f"sessions {pool['sessions']}, calls {pool['calls']} "
             f"({pool['succeeded']} ok, {pool['failed']} failed), "
             f"p50 {milliseconds(pool['latency_p50'])}, p99 {milliseconds(pool['latency_p99'])}")
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("worker", "pid", "state", "calls", "in flight", "p50", "p99", "RSS",
                   "restarts"):
        table.add_column(column, justify="left" if column in ("worker", "state") else "right")
    if gpu:
        table.add_column("GPU", justify="left")
    for worker in workers:
        row = [worker["id"], str(worker["pid"] or "-"),
               Text(worker["state"], style=STATE_STYLES.get(worker["state"], "")),
               str(worker["calls_served"]), str(worker["in_flight"]),
               milliseconds(worker.get("latency_p50")), milliseconds(worker.get("latency_p99")),
               mebibytes(worker.get("rss")), str(worker["restarts"])]
        if gpu:
            info = worker.get("info") or {}
            row.append(f"{info.get('device', '-')} {info.get('name', '')}".strip())
        table.add_row(*row)
    return table


def _describe(event: dict[str, Any]) -> str:
    metadata = {k: v for k, v in event["metadata"].items() if k != "pool" and v is not None}
    numbers = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in event["measurements"].items())
    words = ", ".join(f"{k}={v}" for k, v in metadata.items())
    return "; ".join(part for part in (words, numbers) if part)


def render(snapshot: dict[str, Any], *, events: int = 8) -> RenderableType:
    """One frame: the instance, a table per pool, the latest events."""
    pools = snapshot["pools"]
    header = Text.from_markup(
        f"[bold]snakepit[/] run [cyan]{snapshot['run_id']}[/] · host pid "
        f"{snapshot['host_pid']} · up {duration(snapshot.get('uptime', 0.0))} · "
        f"{len(pools)} pool{'s' if len(pools) != 1 else ''}")
    parts: list[RenderableType] = [header]
    parts += [_pool_table(pool) for pool in pools.values()]
    recent = snapshot.get("events", [])[-events:]
    log = Table(title="latest events", title_justify="left", show_header=True)
    for column in ("time", "event", "pool", "details"):
        log.add_column(column)
    for event in recent:
        log.add_row(time.strftime("%H:%M:%S", time.localtime(event["time"])), event["event"],
                    str(event["metadata"].get("pool", "")), _describe(event))
    if not recent:
        log.add_row("", "(none yet)", "", "")
    parts.append(log)
    return Group(*parts)


def watch(fetch: Callable[[], dict[str, Any]], console: Console, *, interval: float = 1.0,
          frames: int | None = None) -> str:
    """Redraw ``fetch()`` every ``interval`` seconds; return why it stopped.

    Stops on Ctrl-C (``"interrupted"``), when the instance goes away (``"gone"``), or
    after ``frames`` frames (``"done"``; for tests and scripts).
    """
    shown = 0
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while frames is None or shown < frames:
                try:
                    snapshot = fetch()
                except (InstanceGone, ControlError):
                    return "gone"
                live.update(render(snapshot), refresh=True)
                shown += 1
                if frames is None or shown < frames:
                    time.sleep(interval)
    except KeyboardInterrupt:
        return "interrupted"
    return "done"
