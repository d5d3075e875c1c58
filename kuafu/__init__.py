"""Kuafu: message RPC addressed by tcp:// and nuwa:// URIs, through per-node proxies.

    import kuafu
    c = kuafu.connect("nuwa://default/echo")        # or tcp://host:port/echo
    c.call("echo", b"hi")                             # synchronous
    h = c.call_async("echo", "hi"); h.result(5)       # asynchronous handle
    await kuafu.aconnect(uri).acall("echo", {"k": "v"})  # asyncio

    class Echo:
        @kuafu.method(idempotent=True)
        def echo(self, msg):
            return msg
    kuafu.serve({"echo": Echo()}, port=9000)          # standalone, no Ray

See docs/kuafu.md."""

from kuafu.client import AsyncClient, Client, Handle, aconnect, connect, parse_uri
from kuafu.errors import (BadRequest, Denied, FrameError, KuafuError, Overloaded, RemoteError,
                          TimedOut, TooLarge, Unauthenticated, Unavailable)
from kuafu.io.server import Context, Server, ServerHandle, attach, context, method, serve

__all__ = ["AsyncClient", "Client", "Handle", "aconnect", "connect", "parse_uri",
           "BadRequest", "FrameError", "KuafuError", "Overloaded", "RemoteError", "TimedOut",
           "TooLarge", "Unavailable", "Unauthenticated", "Denied", "Context", "Server", "ServerHandle", "attach", "context",
           "method", "serve"]
