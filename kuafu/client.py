"""Kuafu clients: call a service by URI.

    tcp://host:port[/service]     a proxy or a standalone server, directly
    unix:///path/to/socket        a proxy's Unix socket (processes on its node)
    nuwa://<cluster>/<service>    a service published in the cluster's Nuwa; calls go to the
                                  local proxy, which resolves the service with a watch and
                                  balances across its endpoints

Three ways to call, over one multiplexed connection per client:

* ``client.call_async(method, message)`` returns a ``Handle`` at once;
  ``handle.result(timeout_s)`` receives the reply (the seed's asynchronous call);
* ``client.call(method, message)`` waits for it (the synchronous call wraps the async one);
* ``await aclient.acall(method, message)`` in asyncio programs (``kuafu.aconnect``).

Every call has a deadline (``timeout_s``, default ``CALL_DEADLINE_S``), sent with the request and
inherited inside a Kuafu method. A full flow-control window makes the caller wait (bounded by
its deadline) or, with ``wait=False``, raises ``Overloaded``. A call that certainly did not
reach a server is retried (``UNAVAILABLE_RETRIES_MAX``); one that may have run is retried only
when declared idempotent (``idempotent=True`` here, or ``@kuafu.method(idempotent=True)`` on
the server)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

from kuafu import deploy
from kuafu.io.addresses import parse_uri
from kuafu.io.channel import CALL_DEADLINE_S, Channel
from kuafu.io.loops import LoopThread
from kuafu.errors import BadRequest, TimedOut

# ------------------------------------------------------------------ resolving addresses

def _resolver(uri: str, proxy: str | None, nuwa: list | None = None):
    scheme, where, _ = parse_uri(uri)
    if scheme in ("tcp", "unix"):
        address = f"tcp://{where}" if scheme == "tcp" else f"unix://{where}"

        async def fixed():
            return address
        return fixed
    cluster = where

    async def local_proxy():
        if proxy:
            return proxy
        env = os.environ.get("KUAFU_PROXY")
        if env:
            return env
        loop = asyncio.get_running_loop()
        if nuwa:
            return await loop.run_in_executor(None, deploy.proxy_from_nuwa, nuwa)
        return await loop.run_in_executor(None, find_proxy, cluster)
    return local_proxy


def find_proxy(cluster: str) -> str:
    """The address of a Kuafu proxy for ``cluster``: this node's Unix socket inside Ray; from
    outside Ray, a proxy listed in the cluster's Nuwa (its Unix socket when it is on this
    machine)."""
    return deploy.find_proxy(cluster)


class AsyncClient:
    """A client whose connection lives on the running event loop (``kuafu.aconnect``).

    ``proxy`` names the proxy to use for ``nuwa://`` (default: this node's, found through Ray
    or the cluster's record); ``nuwa`` gives the Nuwa addresses to find one in instead."""

    def __init__(self, uri: str, *, service: str | None = None, timeout_s: float = CALL_DEADLINE_S,
                 proxy: str | None = None, nuwa: list | None = None, credentials=None,
                 **window):
        _, _, svc = parse_uri(uri)
        self.uri = uri
        self.service = service or svc
        self.timeout_s = timeout_s
        if credentials is None:
            scheme, where, _ = parse_uri(uri)
            if scheme == "nuwa":  # the token the user signed in to that cluster with
                from zhongkui import creds

                credentials = creds.token(where) or None
        self.credentials = credentials
        self.channel = Channel(_resolver(uri, proxy, nuwa), **window)

    async def acall(self, method: str, message=b"", *, service: str | None = None,
                    timeout_s: float | None = None, idempotent: bool = False,
                    wait: bool = True, backup: float | str | None = None):
        """``backup``: for an idempotent call, have the proxy send a second copy to another
        endpoint when no reply came within this many milliseconds, or within the service's
        recent latency percentile ("p95"); the first reply wins."""
        svc = service or self.service
        if not svc:
            raise BadRequest(f"no service named: give one in the address ({self.uri}/<service>)"
                             f" or as service=")
        return await self.channel.request(svc, method, message,
                                          self.timeout_s if timeout_s is None else timeout_s,
                                          idempotent, wait, self.credentials, backup)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


_bg_lock = threading.Lock()
_bg = None  # the LoopThread of blocking clients


def _background_loop() -> asyncio.AbstractEventLoop:
    """One event-loop thread per process carries every blocking client's connections."""
    global _bg
    with _bg_lock:
        if _bg is None or not _bg.alive():
            _bg = LoopThread("kuafu-client")
        return _bg.loop


class Handle:
    """The pending result of ``call_async``."""

    def __init__(self, fut: concurrent.futures.Future, timeout_s: float):
        self._fut, self._timeout_s = fut, timeout_s

    def result(self, timeout_s: float | None = None):
        """The reply, or the call's typed error. Waits at most ``timeout_s`` (default: until
        the call's own deadline, which always ends it)."""
        wait = self._timeout_s + 5.0 if timeout_s is None else timeout_s
        try:
            return self._fut.result(wait)
        except concurrent.futures.TimeoutError:
            if self._fut.done():
                raise
            raise TimedOut(f"no reply within result(timeout_s={wait:g}); the call goes on "
                           f"until its deadline") from None

    def done(self) -> bool:
        return self._fut.done()

    def cancel(self) -> bool:
        """Stop waiting; the server is told to stop the call (it may already have run)."""
        return self._fut.cancel()


class Client:
    """A blocking client; its connection lives on a shared background event loop."""

    def __init__(self, uri: str, **kw):
        self._loop = _background_loop()

        async def make():
            return AsyncClient(uri, **kw)
        self._async = asyncio.run_coroutine_threadsafe(make(), self._loop).result(10)
        self.uri = uri

    @property
    def service(self):
        return self._async.service

    def call_async(self, method: str, message=b"", *, service: str | None = None,
                   timeout_s: float | None = None, idempotent: bool = False,
                   wait: bool = True, backup: float | str | None = None) -> Handle:
        t = self._async.timeout_s if timeout_s is None else timeout_s
        fut = asyncio.run_coroutine_threadsafe(
            self._async.acall(method, message, service=service, timeout_s=t,
                              idempotent=idempotent, wait=wait, backup=backup), self._loop)
        return Handle(fut, t)

    def call(self, method: str, message=b"", **kw):
        return self.call_async(method, message, **kw).result()

    async def acall(self, method: str, message=b"", **kw):
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            self._async.acall(method, message, **kw), self._loop))

    def stats(self) -> dict:
        async def s():
            return self._async.channel.stats()
        return asyncio.run_coroutine_threadsafe(s(), self._loop).result(10)

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._async.close(), self._loop).result(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(uri: str, **kw) -> Client:
    """A blocking client for ``uri`` (see the module docstring)."""
    return Client(uri, **kw)


def aconnect(uri: str, **kw) -> AsyncClient:
    """An asyncio client for ``uri``, bound to the running event loop."""
    return AsyncClient(uri, **kw)


__all__ = ["AsyncClient", "Client", "Handle", "connect", "aconnect", "parse_uri", "CALL_DEADLINE_S"]
