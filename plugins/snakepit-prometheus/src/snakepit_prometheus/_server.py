"""The scrape endpoint: started by the application, or by the environment, never by default.

prometheus-client's WSGI server answers scrapes in its own daemon thread, so serving
costs the Trio tasks nothing; starting it binds one socket. Without configuration no
server starts and the plugin only collects, so installing it never opens a port.
"""

from __future__ import annotations

import logging
import os
import threading
from wsgiref.simple_server import WSGIServer

import attrs
from prometheus_client import start_http_server

from snakepit.errors import ConfigError
from snakepit_prometheus._metrics import REGISTRY

__all__ = ["ADDR_VARIABLE", "PORT_VARIABLE", "MetricsServer", "serve", "serve_from_environment",
           "servers"]

log = logging.getLogger("snakepit_prometheus")

PORT_VARIABLE = "SNAKEPIT_PROMETHEUS_PORT"
ADDR_VARIABLE = "SNAKEPIT_PROMETHEUS_ADDR"
DEFAULT_ADDR = "127.0.0.1"


@attrs.define(eq=False)
class MetricsServer:
    """A running scrape endpoint; :meth:`close` stops it."""

    addr: str
    """The address it is bound to."""
    port: int
    """The port it listens on (the one the system chose, when started with port 0)."""
    _httpd: WSGIServer = attrs.field(repr=False)
    _thread: threading.Thread = attrs.field(repr=False)

    @property
    def url(self) -> str:
        """The URL to scrape, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (waits for the server thread, briefly)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        if self in _servers:
            _servers.remove(self)


_servers: list[MetricsServer] = []
_lock = threading.Lock()
_environment_read = False


def servers() -> list[MetricsServer]:
    """The scrape endpoints running in this process (from :func:`serve` or the
    environment)."""
    return list(_servers)


def serve(port: int, addr: str = DEFAULT_ADDR) -> MetricsServer:
    """Serve snakepit's metrics at ``http://<addr>:<port>/metrics``, in a daemon thread.

    Args:
        port: the TCP port; 0 lets the system choose a free one (read it from
            :attr:`MetricsServer.port`).
        addr: the address to bind; loopback unless you mean to expose the metrics to
            other machines (``"0.0.0.0"``, ``"::"``). Give an address, not a host name:
            a name would be resolved here, which can block.

    Returns:
        The running server.

    Raises:
        snakepit.ConfigError: ``port`` is not an integer in 0..65535, or ``addr`` is
            empty.
        OSError: the address cannot be bound (the port is taken, say).
    """
    errors = []
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        errors.append(f"port: must be an integer in 0..65535 (got {port!r})")
    if not isinstance(addr, str) or not addr:
        errors.append(f"addr: must be an IP address such as '127.0.0.1' (got {addr!r})")
    if errors:
        raise ConfigError(errors)
    httpd, thread = start_http_server(port, addr=addr, registry=REGISTRY)
    server = MetricsServer(addr, httpd.server_port, httpd, thread)
    with _lock:
        _servers.append(server)
    log.info("snakepit metrics served at %s", server.url)
    return server


def serve_from_environment() -> MetricsServer | None:
    """Start the server that ``SNAKEPIT_PROMETHEUS_PORT`` (and ``_ADDR``) ask for, once.

    Called by the plugin when the first telemetry event arrives. Does nothing when the
    port is unset or empty, or when the application already called :func:`serve`. A
    bad value or a port that cannot be bound is logged (``snakepit_prometheus``) and
    the plugin goes on collecting: raising here would detach it from telemetry.
    """
    global _environment_read
    with _lock:
        if _environment_read:
            return None
        _environment_read = True
        if _servers:
            return None
    port_text = os.environ.get(PORT_VARIABLE, "").strip()
    if not port_text:
        return None
    addr = os.environ.get(ADDR_VARIABLE, "").strip() or DEFAULT_ADDR
    try:
        return serve(int(port_text), addr)
    except ValueError:  # ConfigError is a ValueError too
        log.error("%s=%r is not a port (an integer in 0..65535); metrics are collected "
                  "but not served", PORT_VARIABLE, port_text)
    except OSError as exc:
        log.error("cannot serve snakepit metrics on %s port %s (%s); they are collected "
                  "but not served", addr, port_text, exc)
    return None
