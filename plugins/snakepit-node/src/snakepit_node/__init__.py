"""Node.js workers for snakepit: the ``node`` adapter.

``PoolConfig(adapter="node", options={...})`` starts workers running ``js/worker.js``
(shipped in this package), a Node.js runtime that speaks the same wire protocol as the
Python bridge. Options:

- ``module``: path of the handler module (``.js``/``.cjs``/``.mjs``) whose exported
  functions are the commands (default: none, only the built-in commands); a relative
  path is resolved against the pool's ``cwd`` (else the host's working directory);
- ``node``: the ``node`` executable (default: the one on ``PATH``);
- ``concurrency``: calls one worker runs at once (default: the module's exported
  ``concurrency``, else 1);
- ``node_args``: extra arguments for ``node`` itself (``["--max-old-space-size=512"]``).

Other keys are left alone (they may belong to the pool kind).

The worker's one npm dependency (``@msgpack/msgpack``) is installed by
:func:`ensure_node_modules` when the first pool starts (``npm ci`` against the shipped
lock file, so the npm registry must be reachable once), in a thread so that the event
loop keeps running meanwhile; or ahead of time with ``python -m snakepit_node install``.

The host loads this module through the ``snakepit.adapters`` entry point; it needs
neither pluggy nor trio at import time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snakepit.adapters import BaseAdapter, LaunchSpec
from snakepit.config import PoolConfig
from snakepit.errors import ConfigError

__all__ = ["ADAPTERS", "EXAMPLE_HANDLER", "JS_DIR", "WORKER_JS", "NodeAdapter",
           "ensure_node_modules", "find_node", "installed_dir"]

__version__ = "0.1.0"

JS_DIR = Path(__file__).resolve().parent / "js"
"""The worker's JavaScript package, as shipped inside this Python package."""
WORKER_JS = JS_DIR / "worker.js"
EXAMPLE_HANDLER = str(JS_DIR / "example_handler.js")
"""Path of the example handler module (``greet``, ``count``, ``fail``, ``slow``, ...)."""

# The files that make up the worker package (copied when JS_DIR is read-only): the npm
# manifests and every module beside worker.js (it requires them by relative path).
_JS_FILES = ("package.json", "package-lock.json",
             *sorted(path.name for path in JS_DIR.glob("*.js")))
# Written into node_modules once an install has completed.
_MARKER = ".snakepit-node-installed"
_DEPENDENCY = Path("node_modules", "@msgpack", "msgpack", "package.json")
_INSTALL_TIMEOUT = 600.0

_install_lock = threading.Lock()
# (node executable, $SNAKEPIT_NODE_HOME) -> directory with worker.js and its deps
_ready: dict[tuple[str, str | None], Path] = {}


def find_node(node: str | None = None) -> str:
    """The absolute path of the ``node`` executable to run (``node`` or the one on PATH).

    Raises:
        ConfigError: it cannot be found.
    """
    found = shutil.which(node or "node")
    if found is None:
        if node:
            raise ConfigError([f"options.node: no Node.js executable {node!r} (not found, "
                               "or not executable)"])
        raise ConfigError(["options.node: no 'node' executable on PATH; install Node.js "
                           "(>= 18) or set options.node to its path"])
    return os.path.abspath(found)


def _find_npm(node: str) -> str:
    beside = Path(node).with_name("npm")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("npm")
    if found is None:
        raise ConfigError([f"adapter: the node worker's dependencies are not installed in "
                           f"{JS_DIR} and there is no 'npm' beside {node} or on PATH to "
                           "install them"])
    return found


def _install_dir() -> Path:
    """Where the worker's node_modules live: a copy of the shipped files under
    ``$SNAKEPIT_NODE_HOME`` when it is set; else next to the shipped files when that
    directory is writable (or already installed), else a copy in the user's cache."""
    home = os.environ.get("SNAKEPIT_NODE_HOME")
    if not home:
        if (JS_DIR / "node_modules" / _MARKER).exists() or (JS_DIR / _DEPENDENCY).exists():
            return JS_DIR
        if os.access(JS_DIR, os.W_OK):
            return JS_DIR
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                            "snakepit-node")
    digest = hashlib.sha256()
    for name in _JS_FILES:
        with contextlib.suppress(OSError):
            digest.update((JS_DIR / name).read_bytes())
    target = Path(home) / f"{__version__}-{digest.hexdigest()[:12]}"
    if not (target / "worker.js").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in _JS_FILES:
            if (JS_DIR / name).exists():
                shutil.copy2(JS_DIR / name, target / name)
    return target


def ensure_node_modules(node: str | None = None) -> Path:
    """Install the worker's npm dependencies if they are missing; return the directory
    holding ``worker.js`` and its ``node_modules``.

    Runs ``npm ci --omit=dev --no-audit --no-fund`` (``npm install`` without a lock
    file) once, under a file lock, so concurrent pools and processes install only once.
    Quick (a stat) once installed.

    Raises:
        ConfigError: no node or npm, or the install failed (the npm registry must be
            reachable the first time).
    """
    node = find_node(node)
    ready = _ready.get(_ready_key(node))
    if ready is not None:
        return ready
    with _install_lock:
        target = _install_dir()
        modules = target / "node_modules"
        installed_read_only = (target / _DEPENDENCY).exists() and not os.access(target, os.W_OK)
        if not (modules / _MARKER).exists() and not installed_read_only:
            with open(target / ".install.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if not (modules / _MARKER).exists():
                        if not (target / _DEPENDENCY).exists():  # not installed by hand
                            _npm_install(node, target)
                        (modules / _MARKER).write_text("installed by snakepit-node\n")
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        _ready[_ready_key(node)] = target
        return target


def _ready_key(node: str) -> tuple[str, str | None]:
    return node, os.environ.get("SNAKEPIT_NODE_HOME")


def installed_dir(node: str) -> Path:
    """The directory holding ``worker.js`` and its installed ``node_modules`` for
    ``node``, without installing anything (quick: the event loop may call it).

    Raises:
        ConfigError: the dependencies are not installed yet.
    """
    ready = _ready.get(_ready_key(node))
    if ready is not None:
        return ready
    target = _install_dir()
    if (target / "node_modules" / _MARKER).exists() or (target / _DEPENDENCY).exists():
        _ready[_ready_key(node)] = target
        return target
    raise ConfigError([f"adapter: the node worker's npm dependencies are not installed in "
                       f"{target}; a pool installs them as it starts, or run "
                       "'python -m snakepit_node install'"])


def _npm_install(node: str, target: Path) -> None:
    npm = _find_npm(node)
    verb = "ci" if (target / "package-lock.json").exists() else "install"
    argv = [npm, verb, "--omit=dev", "--no-audit", "--no-fund", "--no-update-notifier"]
    env = dict(os.environ)
    # npm is a node script: make it run under the same node as the workers
    env["PATH"] = os.pathsep.join([os.path.dirname(node), env.get("PATH", "")])
    try:
        done = subprocess.run(argv, cwd=target, env=env, capture_output=True, text=True,
                              timeout=_INSTALL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError([f"adapter: installing the node worker's dependencies "
                           f"({' '.join(argv[1:])} in {target}) failed: {exc}"]) from exc
    if done.returncode != 0 or not (target / _DEPENDENCY).exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ConfigError([f"adapter: installing the node worker's dependencies "
                           f"({' '.join(argv[1:])} in {target}) failed with exit code "
                           f"{done.returncode} (the npm registry must be reachable once):\n"
                           f"{tail}"])


def _option_errors(options: Mapping[str, Any]) -> list[str]:
    errors = []
    module = options.get("module")
    if module is not None and not (isinstance(module, str) and module):
        errors.append("options.module: must be the path of a .js handler module")
    node = options.get("node")
    if node is not None and not (isinstance(node, str) and node):
        errors.append("options.node: must be the path (or name) of the node executable")
    concurrency = options.get("concurrency")
    if concurrency is not None and not (isinstance(concurrency, int)
                                        and not isinstance(concurrency, bool)
                                        and concurrency >= 1):
        errors.append("options.concurrency: must be an integer >= 1")
    node_args = options.get("node_args", ())
    if not (isinstance(node_args, list | tuple) and all(isinstance(a, str) for a in node_args)):
        errors.append("options.node_args: must be a list of strings")
    return errors


def _checked_options(config: PoolConfig) -> tuple[str | None, str]:
    """The handler module's absolute path (or None) and the node executable.

    Raises:
        ConfigError: bad options, no node, or a missing handler module.
    """
    options: Mapping[str, Any] = config.options
    errors = _option_errors(options)
    module = options.get("module")
    if not errors and module is not None:
        base = config.cwd or os.getcwd()
        module = os.path.abspath(os.path.join(base, os.path.expanduser(module)))
        if not os.path.isfile(module):
            errors.append(f"options.module: no such file {module!r}")
    if errors:
        raise ConfigError(errors)
    return module, find_node(options.get("node"))


class NodeAdapter(BaseAdapter):
    """Starts workers running ``worker.js`` under Node.js (``PoolConfig.adapter="node"``)."""

    name = "node"
    codecs = ("msgpack", "json")

    async def prepare(self, config: PoolConfig) -> None:
        """At pool start: check the options and install the npm dependencies if they are
        missing, in a thread (``npm ci`` may take a while; the event loop goes on).

        A cancelled pool start waits for a running ``npm`` to finish (at most
        10 minutes), so that no process outlives the pool.

        Raises:
            ConfigError: bad options, no node, or the install failed (with npm's output).
        """
        import trio  # the host side only: workers never import this module

        _, node = _checked_options(config)
        await trio.to_thread.run_sync(ensure_node_modules, node)

    def launch(self, config: PoolConfig, worker_id: str) -> LaunchSpec:
        """The command for one worker: ``node [node_args] worker.js [--handler MODULE]``.
        Quick: it installs nothing (:meth:`prepare` did).

        Raises:
            ConfigError: bad options, no node, a missing handler module, or the npm
                dependencies are not installed.
        """
        module, node = _checked_options(config)
        options: Mapping[str, Any] = config.options
        js_dir = installed_dir(node)
        argv = [node, *options.get("node_args", ()), str(js_dir / "worker.js")]
        if module is not None:
            argv += ["--handler", module]
        if options.get("concurrency") is not None:
            argv += ["--concurrency", str(options["concurrency"])]
        return LaunchSpec(tuple(argv), {}, config.cwd)

    def __repr__(self) -> str:
        return "<NodeAdapter>"


ADAPTERS = [NodeAdapter()]
