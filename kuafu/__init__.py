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

    kuafu.attach({"echo": Echo()}, kuafu.deploy.local_proxy("default"))  # through a proxy

See docs/kuafu.md. The layers inside: ``kuafu.core`` (frame layout, flow control, routing
decisions: pure), ``kuafu.io`` (connections, servers, the proxy), ``kuafu.deploy`` (proxies
on Ray) and ``kuafu.client``."""

from kuafu import deploy
from kuafu.client import CALL_DEADLINE_S, AsyncClient, Client, Handle, aconnect, connect
from kuafu.errors import (BadRequest, Denied, FrameError, KuafuError, Overloaded, RemoteError,
                          TimedOut, TooLarge, Unauthenticated, Unavailable, UnavailableInFlight)
from kuafu.io.addresses import parse_uri
from kuafu.io.server import Context, Server, ServerHandle, attach, context, method, serve

__all__ = ["AsyncClient", "Client", "Handle", "aconnect", "connect", "parse_uri",
           "CALL_DEADLINE_S", "deploy",
           "BadRequest", "FrameError", "KuafuError", "Overloaded", "RemoteError", "TimedOut",
           "TooLarge", "Unavailable", "UnavailableInFlight", "Unauthenticated", "Denied",
           "Context", "Server", "ServerHandle", "attach", "context", "method", "serve"]
