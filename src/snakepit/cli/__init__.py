"""The ``snakepit`` command (click): a demo, operator views, doctor, cleanup, bench.

Exit codes, the same for every command:

== ==========================================================================
0  success
1  something failed: a doctor check, a plugin that does not load, a refused
   operator request (no such pool or worker)
2  usage error (a bad option or argument; click's own code)
3  no such running instance, or it went away
== ==========================================================================

Shell completion comes from click: ``eval "$(_SNAKEPIT_COMPLETE=bash_source snakepit)"``
(``zsh_source``, ``fish_source`` for those shells); ``RUN`` arguments complete to the
running instances.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

import snakepit

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_INSTANCE = 0, 1, 2, 3

__all__ = ["EXIT_FAILED", "EXIT_NO_INSTANCE", "EXIT_OK", "EXIT_USAGE", "cli", "main"]


def _state_dir(value: str | None) -> Path:
    from snakepit.process.registry import default_state_dir

    return Path(value) if value else default_state_dir()


def _complete_runs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    from click.shell_completion import CompletionItem

    from snakepit.process.registry import live_runs

    state_dir = _state_dir(ctx.params.get("state_dir"))
    return [CompletionItem(run.run_id, help=", ".join(run.pools))
            for run in live_runs(state_dir) if run.run_id.startswith(incomplete)]


state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None,
    help="Registry directory (default: $SNAKEPIT_STATE_DIR, else $XDG_RUNTIME_DIR/snakepit, "
         "else a per-user temp dir) -- the pools' state_dir.")
run_argument = click.argument("run", required=False, shell_complete=_complete_runs)
run_option = click.option("--run", "run", default=None, shell_complete=_complete_runs,
                          help="Run id (or host pid) of the instance; needed when several run.")


def _fail(message: str, code: int) -> None:
    click.echo(f"snakepit: {message}", err=True)
    sys.exit(code)


def _control_call(state_dir: str | None, run: str | None, pool: str | None, op: str,
                  **arguments: Any) -> Any:
    """One operator request to the socket serving ``pool`` of ``run``; exits on failure."""
    from snakepit.control.client import (
        ControlClient,
        ControlError,
        InstanceGone,
        endpoint_for,
        find_run,
    )

    try:
        found = find_run(_state_dir(state_dir), run)
        with ControlClient(endpoint_for(found, pool)) as client:
            return client.request(op, **({"pool": pool} if pool else {}), **arguments)
    except InstanceGone as exc:
        _fail(str(exc), EXIT_NO_INSTANCE)
    except ControlError as exc:
        _fail(str(exc), EXIT_NO_INSTANCE if "running instance" in str(exc) else EXIT_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(snakepit.__version__, message="%(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def cli(verbose: bool) -> None:
    """Pools of worker processes for Trio applications."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--workers", type=click.IntRange(1), default=4, show_default=True,
              help="Worker processes in the demo pool.")
@click.option("--calls", type=click.IntRange(1), default=2000, show_default=True,
              help="Calls in the concurrent burst.")
def demo(workers: int, calls: int) -> None:
    """Run the demo: a burst of calls, a timeout, a crash and its replacement, stats."""
    import trio

    from snakepit.demo import run_demo

    sys.exit(trio.run(run_demo, workers, calls))


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the side-by-side benchmarks (ProcessPoolExecutor, trio-parallel, pebble, the
    raw pipe floor); ARGS go to the runner: `snakepit bench --help` lists them."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from snakepit import benchmarking

    if any(arg in ("-h", "--help") for arg in args):
        sys.exit(benchmarking.main(["--help"]))
    sections = benchmarking.sections_of(list(args))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=Console(stderr=True), transient=True)
    task = progress.add_task("benchmarks", total=len(sections))
    started: list[str] = []

    def on_section(name: str) -> None:
        if started:
            progress.advance(task)
        started.append(name)
        progress.update(task, description=f"benchmarking: {name}")

    with progress:
        code = benchmarking.main(list(args), on_section=on_section)
    sys.exit(code)


@cli.command()
@state_dir_option
def cleanup(state_dir: str | None) -> None:
    """Kill worker processes left behind by dead snakepit hosts, and say which."""
    from snakepit.errors import ConfigError
    from snakepit.process.registry import reap_orphans

    directory = _state_dir(state_dir)
    try:
        reaped = reap_orphans(directory)
    except ConfigError as exc:  # a state dir another user controls: nothing is touched
        raise click.ClickException("; ".join(exc.errors)) from None
    for item in reaped:
        click.echo(f"killed pid {item.pid} ({item.why}) of dead run {item.run_id}")
    click.echo(f"{len(reaped)} orphaned process{'es' if len(reaped) != 1 else ''} killed "
               f"(registry: {directory})")


@cli.command()
def plugins() -> None:
    """List installed plugins, their distributions and the hooks they implement."""
    from snakepit.plugins import installed_plugins

    found = installed_plugins()
    if not found:
        click.echo("no snakepit plugins installed")
    for info in found:
        click.echo(f"{info.name}  [{info.group}]  from {info.distribution} {info.version}  "
                   f"({info.value})")
        if info.error:
            click.echo(f"    FAILED TO LOAD: {info.error}")
        else:
            click.echo(f"    hooks: {', '.join(info.hooks) or '(none)'}")
    sys.exit(EXIT_FAILED if any(info.error for info in found) else EXIT_OK)


@cli.command(name="ls")
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_runs(state_dir: str | None, as_json: bool) -> None:
    """List the running instances on this machine (dead ones are ignored)."""
    import time

    from rich.console import Console
    from rich.table import Table

    from snakepit.cli.view import duration
    from snakepit.process.registry import live_runs

    runs = live_runs(_state_dir(state_dir))
    if as_json:
        click.echo(json.dumps([{"run_id": r.run_id, "host_pid": r.host_pid,
                                "pools": list(r.pools), "workers": r.workers,
                                "started": r.started, "sockets": [p for p, _ in r.endpoints]}
                               for r in runs], indent=2))
        return
    table = Table("run", "host pid", "pools", "workers", "uptime", box=None)
    for run in runs:
        table.add_row(run.run_id, str(run.host_pid), ", ".join(run.pools) or "-",
                      str(run.workers), duration(time.time() - run.started))
    console = Console()
    console.print(table if runs else "no running snakepit instances")


def _snapshot_fetcher(state_dir: str | None, run: str | None) -> Any:
    from snakepit.control.client import find_run, run_snapshot

    directory = _state_dir(state_dir)
    run_id = find_run(directory, run).run_id  # pinned: a new instance is not this one

    def fetch() -> dict[str, Any]:
        return run_snapshot(find_run(directory, run_id))

    return fetch


@cli.command()
@run_argument
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
def stats(run: str | None, state_dir: str | None, as_json: bool) -> None:
    """Show a running instance's pools, workers and latest events, once."""
    from rich.console import Console

    from snakepit.cli.view import render
    from snakepit.control.client import ControlError

    try:
        snapshot = _snapshot_fetcher(state_dir, run)()
    except ControlError as exc:
        _fail(str(exc), EXIT_NO_INSTANCE)
    if as_json:
        click.echo(json.dumps(snapshot, indent=2))
    else:
        Console().print(render(snapshot))


@cli.command()
@run_argument
@state_dir_option
@click.option("--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between refreshes.")
def top(run: str | None, state_dir: str | None, interval: float) -> None:
    """Attach to a running instance and show a live view; Ctrl-C leaves."""
    from rich.console import Console

    from snakepit.cli.view import watch
    from snakepit.control.client import ControlError

    try:
        fetch = _snapshot_fetcher(state_dir, run)
    except ControlError as exc:
        _fail(str(exc), EXIT_NO_INSTANCE)
    console = Console()
    if watch(fetch, console, interval=interval) == "gone":
        console.print("the instance went away")


@cli.command()
@click.argument("worker")
@click.option("--pool", default=None, help="The worker's pool (default: from its id).")
@run_option
@state_dir_option
@click.option("--no-wait", is_flag=True, help="Return at once, not when the replacement is up.")
def recycle(worker: str, pool: str | None, run: str | None, state_dir: str | None,
            no_wait: bool) -> None:
    """Recycle WORKER (e.g. general-0): it finishes its calls and a fresh one replaces it."""
    pool = pool or worker.rpartition("-")[0] or None
    value = _control_call(state_dir, run, pool, "recycle", worker=worker, wait=not no_wait)
    replaced = f", replaced by pid {value['new_pid']}" if value.get("new_pid") else ""
    click.echo(f"recycling {value['worker']} (pid {value['old_pid']}){replaced}")


def _pool_action(op: str, summary: str, done: str) -> None:
    """Register ``snakepit OP POOL``: one operator action on a pool, saying ``done``."""

    @cli.command(name=op, help=summary)
    @click.argument("pool")
    @run_option
    @state_dir_option
    def action(pool: str, run: str | None, state_dir: str | None) -> None:
        value = _control_call(state_dir, run, pool, op)
        click.echo(done.format(**value))


_pool_action("drain", "Drain POOL: refuse new calls (PoolDraining) while those running finish.",
             "pool {pool} drained ({in_flight} calls in flight)")
_pool_action("resume", "Resume a drained POOL: it takes new calls again.",
             "pool {pool} takes calls again")


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(config: str | None, as_json: bool) -> None:
    """Check that CONFIG's pools can start here (default: ./snakepit.toml, else
    [tool.snakepit] in ./pyproject.toml, else one default pool)."""
    import trio
    from rich.console import Console
    from rich.table import Table

    from snakepit.cli.doctor import as_data, diagnose, load_config
    from snakepit.cli.progress import worker_progress
    from snakepit.errors import ConfigError

    try:
        loaded, source = load_config(config)
    except (ConfigError, OSError) as exc:
        errors = exc.errors if isinstance(exc, ConfigError) else (str(exc),)
        if as_json:
            click.echo(json.dumps([{"scope": "config", "check": "load", "status": "fail",
                                    "detail": error, "fix": "correct the config"}
                                   for error in errors], indent=2))
        else:
            click.echo(f"snakepit doctor: the config cannot be used ({config}):", err=True)
            for error in errors:
                click.echo(f"  {error}", err=True)
        sys.exit(EXIT_FAILED)
    console = Console(stderr=True)
    with worker_progress(console, len(loaded.pools), "starting one worker per pool"):
        findings = trio.run(diagnose, loaded)
    failed = any(f.status == "fail" for f in findings)
    if as_json:
        click.echo(json.dumps(as_data(findings), indent=2))
    else:
        table = Table("", "scope", "check", "detail", "fix", title=f"snakepit doctor: {source}",
                      title_justify="left")
        marks = {"pass": "[green]✔ pass[/]", "warn": "[yellow]! warn[/]", "fail": "[red]✘ fail[/]"}
        for finding in findings:
            table.add_row(marks[finding.status], finding.scope, finding.check, finding.detail,
                          finding.fix)
        out = Console()
        out.print(table)
        out.print("[red]some checks failed[/]" if failed else "[green]all checks passed[/]")
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (for ``python -m snakepit``)."""
    try:
        cli.main(args=argv, prog_name="snakepit", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_FAILED)
    return EXIT_OK
