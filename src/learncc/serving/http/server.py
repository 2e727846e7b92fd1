"""Running the app: start, serve until told to stop, drain, close.

Shutdown order, on SIGINT/SIGTERM or ``stop``: the app starts refusing new
queries (503 with Retry-After, readiness 503), the listening socket closes,
requests in flight get up to ``drain_timeout_s`` to finish, then the frontend
is closed, which fails whatever is still pending with ``FrontendClosedError``.
Requests still sending their body when draining starts get 503 at once: they
were never admitted, and a stalled client must not hold the shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import signal
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from learncc.errors import ConfigError
from learncc.serving.frontend import Frontend
from learncc.serving.http.app import SERVICE, make_app

logger = logging.getLogger(__name__)


class _MalformedRequestFilter(logging.Filter):
    """aiohttp answers a request its parser cannot read (a malformed
    Content-Length, a bad request line) with 400 itself, and logs it as an
    ERROR with the parser's traceback: a client's mistake reads as a server
    fault. Such records become one WARNING line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and exc.code == 400:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            reason = " ".join(str(exc.message).split())
            record.msg, record.args = "refused a malformed request: %s", (reason,)
            record.exc_info = record.exc_text = None
        return True


_MALFORMED = _MalformedRequestFilter()

# How long aiohttp keeps reading (and dropping) the rest of a body it answered
# early (413, 408) so the client can read the answer; its default of 10 s let
# one stalled client hold a shutdown that long.
LINGER_S = 1.0


def check_server_options(*, port: int, drain_timeout_s: float) -> None:
    """Check the listening options before anything starts.

    Raises:
        ConfigError: naming the option that is out of range.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
    if not (math.isfinite(drain_timeout_s) and drain_timeout_s >= 0):
        raise ConfigError(
            f"drain_timeout_s must be a finite number >= 0, got {drain_timeout_s}"
        )


def check_bindable(host: str, port: int) -> None:
    """Fail early if ``host:port`` cannot be listened on (in use, not an
    address of this machine), before minutes go into starting instances.

    The socket is closed again at once, so another process could still take
    the port before the server binds it; the server's own bind then fails.

    Raises:
        ConfigError: the host does not resolve or the port cannot be bound.
    """
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"cannot serve on {host}:{port}: {e}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # as aiohttp binds: SO_REUSEADDR, so a port in TIME_WAIT is fine
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    why = "the port is in use (is another server running?)"
                else:
                    why = e.strerror or str(e)
                raise ConfigError(f"cannot serve on {host}:{port}: {why}") from None


class HttpServer:
    """The app on a TCP socket, with a graceful shutdown.

    Args:
        frontend: started by ``start`` and closed by ``shutdown``.
        host: bind address; 127.0.0.1 accepts only this machine.
        port: TCP port; 0 picks a free one (read ``port`` after ``start``).
        drain_timeout_s: longest ``shutdown`` waits for requests in flight.
        access_log: log every request at INFO (costly at high rates).
        app_options: passed to ``make_app``.
    """

    def __init__(
        self,
        frontend: Frontend,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        drain_timeout_s: float = 10.0,
        access_log: bool = False,
        **app_options: Any,
    ) -> None:
        check_server_options(port=port, drain_timeout_s=drain_timeout_s)
        self.frontend, self.host, self.port = frontend, host, port
        self.drain_timeout_s = drain_timeout_s
        self.app = make_app(frontend, **app_options)
        kwargs: dict[str, Any] = {} if access_log else {"access_log": None}
        self._runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=drain_timeout_s,
            lingering_time=LINGER_S,
            **kwargs,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start the frontend, then listen.

        Raises:
            OSError: the address cannot be bound (in use, not ours).
        """
        await self.frontend.start()
        server_log = logging.getLogger("aiohttp.server")
        if _MALFORMED not in server_log.filters:
            server_log.addFilter(_MALFORMED)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        logger.info("serving on %s", self.url)

    async def shutdown(self) -> None:
        """Stop accepting, drain requests in flight, close the frontend."""
        self.app[SERVICE].draining = True
        pending = self.frontend.statistics().pending
        logger.info(
            "draining: %d queries pending, waiting up to %g s",
            pending,
            self.drain_timeout_s,
        )
        try:
            await self._runner.cleanup()
        finally:
            left = self.frontend.statistics().pending
            if left:
                logger.warning(
                    "closing with %d queries still pending; they fail with "
                    "FrontendClosedError (raise drain_timeout_s to wait longer)",
                    left,
                )
            await self.frontend.close()
            logger.info("stopped")


def _install_signal_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError, NotImplementedError):
            # only the main thread's loop can own signals
            logger.debug(
                "cannot handle %s in this thread; stop the server with 'stop'", sig
            )
            continue
        installed.append(sig)
    return installed


async def serve_http(
    frontend: Frontend,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    drain_timeout_s: float = 10.0,
    handle_signals: bool = True,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[HttpServer], None] | None = None,
    **app_options: Any,
) -> None:
    """Start the frontend and serve HTTP until SIGINT/SIGTERM or ``stop``,
    then drain in-flight requests and close (see the module docstring).

    Args:
        handle_signals: stop on SIGINT and SIGTERM (main thread only).
        ready: set once the socket listens.
        stop: set it to shut down.
        on_ready: called with the server once the socket listens (its
            ``url`` holds the bound port).
        app_options: ``make_app`` options and ``HttpServer``'s ``access_log``.

    Raises:
        OSError: the address cannot be bound.
        ConfigError: an option is out of range (the message names it).
    """
    stop = stop if stop is not None else asyncio.Event()
    server = HttpServer(
        frontend, host=host, port=port, drain_timeout_s=drain_timeout_s, **app_options
    )
    installed = _install_signal_handlers(stop) if handle_signals else []
    try:
        await server.start()
        if ready is not None:
            ready.set()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await server.shutdown()
