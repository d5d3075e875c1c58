"""Kuafu addresses: parsing ``tcp://``, ``unix://`` and ``nuwa://`` URIs, and opening a
connection to a resolved one. Shared by clients, servers attaching to a proxy, and proxies
dialling other proxies (so none of them imports another)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from kuafu.errors import BadRequest, Unavailable

KUAFU_CONNECT_TIMEOUT_S = 5.0        # one connection attempt


def parse_uri(uri: str) -> tuple[str, str, str | None]:
    """(scheme, where, service): tcp -> "host:port", unix -> path, nuwa -> cluster."""
    if not isinstance(uri, str) or "://" not in uri:
        raise BadRequest(f"Kuafu address {uri!r:.100}: expected tcp://host:port[/service], "
                         f"unix:///path or nuwa://<cluster>/<service>")
    u = urlsplit(uri)
    if u.scheme == "tcp":
        if not u.hostname or not u.port:
            raise BadRequest(f"Kuafu address {uri!r}: tcp:// needs host:port")
        svc = u.path.strip("/") or None
        return "tcp", f"{u.hostname}:{u.port}", svc
    if u.scheme == "unix":
        path = u.netloc + u.path if u.netloc else u.path
        if not path.startswith("/"):
            raise BadRequest(f"Kuafu address {uri!r}: unix:// needs an absolute path")
        return "unix", path, None
    if u.scheme == "nuwa":
        svc = u.path.strip("/")
        if not u.netloc or not svc or "/" in svc:
            raise BadRequest(f"Kuafu address {uri!r}: expected nuwa://<cluster>/<service>")
        return "nuwa", u.netloc, svc
    raise BadRequest(f"Kuafu address {uri!r}: unknown scheme {u.scheme!r}; expected tcp, unix "
                     f"or nuwa")


async def open_connection(address: str, factory, timeout_s: float = KUAFU_CONNECT_TIMEOUT_S):
    """(transport, protocol) for ``tcp://host:port`` or ``unix://path``."""
    scheme, where, _ = parse_uri(address)
    loop = asyncio.get_running_loop()
    try:
        if scheme == "tcp":
            host, _, port = where.rpartition(":")
            coro = loop.create_connection(factory, host, int(port))
        elif scheme == "unix":
            coro = loop.create_unix_connection(factory, where)
        else:
            raise BadRequest(f"cannot open a connection to {address!r}; resolve it first")
        return await asyncio.wait_for(coro, timeout_s)
    except (OSError, asyncio.TimeoutError) as e:
        raise Unavailable(f"cannot connect to {address}: {e or 'timed out'}") from None
