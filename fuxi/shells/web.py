"""The platform's one HTTP server, on aiohttp: the head's ``/metrics`` endpoint now, the web
console (issue 17 part 4) later -- both add their routes to the same ``WebServer``.

    web = WebServer()
    web.route("GET", "/metrics", handler)        # handler(request) -> aiohttp.web.Response
    host, port = web.start_in_thread("127.0.0.1", 0)
    ...
    web.stop()

The server runs its own asyncio loop in a daemon thread, so it can live in any process (a
sync Ray actor, a test) and keeps answering while the host process is busy elsewhere.
Handlers run on that loop: a handler that calls Ray awaits ``base.actors.acall``.

Garbage is answered, not crashed on: aiohttp refuses malformed request lines and headers (400),
unknown paths (404) and methods a route does not take (405); on top of that a path or query
longer than ``REQUEST_TARGET_BYTES_MAX`` is 414, a body over ``REQUEST_BODY_BYTES_MAX`` is 413, and a
handler's unexpected exception is a plain 500 with no traceback sent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Awaitable, Callable

from aiohttp import web

logger = logging.getLogger(__name__)

REQUEST_TARGET_BYTES_MAX = 2048  # request target (path and query) longer than this: 414
REQUEST_BODY_BYTES_MAX = 64 * 1024  # request bodies (the console's forms, later): 413 beyond
WEB_START_TIMEOUT_S = 30.0  # binding the port and starting the loop
WEB_STOP_TIMEOUT_S = 10.0
HANDLER_TIMEOUT_S = 30.0  # a handler that runs longer answers 503
CONNECTIONS_MAX = 256  # open connections at once; more wait in the kernel's backlog
KEEPALIVE_S = 15.0  # an idle keep-alive connection is closed after this

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if len(request.raw_path.encode("utf-8", "replace")) > REQUEST_TARGET_BYTES_MAX:
        return web.Response(status=414, text=f"request target over {REQUEST_TARGET_BYTES_MAX} bytes "
                                             f"(REQUEST_TARGET_BYTES_MAX)\n")
    try:
        return await asyncio.wait_for(handler(request), HANDLER_TIMEOUT_S)
    except web.HTTPException:
        raise  # 404, 405, 413, ... as aiohttp means them
    except asyncio.TimeoutError:
        return web.Response(status=503, text=f"no answer within {HANDLER_TIMEOUT_S:g} s "
                                             f"(HANDLER_TIMEOUT_S)\n")
    except Exception:  # noqa: BLE001 - logged here; the client gets no traceback
        logger.exception("%s %s failed", request.method, request.path)
        return web.Response(status=500, text="internal error (see the server's log)\n")


class WebServer:
    """An aiohttp application other modules add routes to, then started once."""

    def __init__(self):
        self.app = web.Application(middlewares=[_guard], client_max_size=REQUEST_BODY_BYTES_MAX)
        self.host: str | None = None
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler`` (before ``start_in_thread``)."""
        if self._runner is not None:
            raise RuntimeError("routes are added before the server starts")
        self.app.router.add_route(method, path, handler)

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start_in_thread(self, host: str, port: int) -> tuple[str, int]:
        """Bind ``host:port`` (0: a free port) and serve from a daemon thread; returns the
        bound (host, port). A port in use is an ``OSError`` naming it."""
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"port {port!r}: expected an int in [0, 65535] (0: any free port)")
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        async def boot() -> None:
            runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=KEEPALIVE_S,
                                   handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, host, port, backlog=CONNECTIONS_MAX)
            await site.start()
            self._runner = runner
            sock = runner.addresses[0]
            self.host, self.port = host, int(sock[1])

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(boot())
            except BaseException as e:  # noqa: BLE001 - handed to the starting thread
                failure.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fuxi-web", daemon=True)
        self._thread.start()
        if not started.wait(WEB_START_TIMEOUT_S):
            raise TimeoutError(f"the web server did not start within {WEB_START_TIMEOUT_S:g} s")
        if failure:
            raise OSError(f"cannot serve on {host}:{port}: {failure[0]}") from failure[0]
        return self.host, self.port

    def run(self, coro, timeout_s: float):
        """Run ``coro`` on the server's loop from another thread; its result (at most
        ``timeout_s``: a ``TimeoutError`` after)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the server is not started")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout_s)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None:
            return
        fut = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
        try:
            fut.result(WEB_STOP_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(WEB_STOP_TIMEOUT_S)
            self._runner = None
