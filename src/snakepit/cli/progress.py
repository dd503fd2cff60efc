"""Progress bars for the CLI while workers start, fed by telemetry.

The library itself prints nothing: it emits ``worker.started`` and ``worker.ready``
events, and a program that wants a bar (like this CLI) renders them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from snakepit import telemetry


@contextmanager
def worker_progress(console: Console, total: int,
                    description: str = "starting workers") -> Iterator[Progress]:
    """Show a bar that advances as each of ``total`` workers completes its handshake.

    Transient: it disappears when the block ends. On a console that is not a terminal
    rich draws nothing, so piped output stays clean.
    """
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task(description, total=total)

    def on_ready(event: str, measurements: Mapping[str, float],
                 metadata: Mapping[str, Any]) -> None:
        progress.advance(task)

    handler = telemetry.attach("worker.ready", on_ready)
    try:
        with progress:
            yield progress
    finally:
        telemetry.detach(handler)
