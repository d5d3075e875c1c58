"""A Kuafu proxy's pooled connections to other proxies.

Calls for an endpoint on another node go over a pooled, multiplexed connection to that
node's proxy: at most ``PEER_CONNECTIONS_MAX`` per proxy, a second opened above
``PEER_SPREAD_REQUESTS`` in flight on the least busy one. Requests wait (``waiting``) while
the first connection opens; a proxy that cannot be reached is skipped for ``PEER_DOWN_S``.
With access control on, a pooled connection authenticates with ``kuafu.hello`` and the
proxy's platform token as soon as it opens."""

from __future__ import annotations

from kuafu import frame as F
from kuafu.core.routing import CONTROL_SERVICE
from kuafu.errors import KuafuError
from kuafu.io.addresses import KUAFU_CONNECT_TIMEOUT_S, open_connection
from kuafu.io.conn import PING_INTERVAL_S, Conn

PEER_CONNECTIONS_MAX = 2            # pooled connections to one other proxy
PEER_SPREAD_REQUESTS = 64           # open another pooled connection above this many in flight
PEER_DOWN_S = 2.0                   # a proxy we could not reach is skipped this long


def _busy(c: Conn) -> int:
    return c.attrs["waiters"].window.requests if "waiters" in c.attrs else 0


class PeerPool:
    """``ready(conn, routes)`` is called with the requests that waited for a new connection;
    ``unreachable(address, routes, err)`` with those that waited in vain."""

    def __init__(self, handler, guard, ready, unreachable):
        self.handler = handler  # what the connections report their frames to (the proxy)
        self.guard = guard
        self.ready, self.unreachable = ready, unreachable
        self.pools: dict[str, list[Conn]] = {}
        self.waiting: dict[str, list] = {}
        self.down: dict[str, float] = {}  # address -> loop time until which it is skipped
        self.loop = None  # the proxy's event loop, once started

    def get(self, address: str) -> Conn | None:
        """A pooled connection to ``address``, or None while the first one opens (queue the
        request with ``wait``)."""
        pool = self.pools.get(address)
        if pool:
            best = min(pool, key=_busy)
            if _busy(best) >= PEER_SPREAD_REQUESTS and len(pool) < PEER_CONNECTIONS_MAX \
                    and address not in self.waiting:
                self.waiting[address] = []
                self.loop.create_task(self._connect(address))
            return best
        if address not in self.waiting:
            self.waiting[address] = []
            self.loop.create_task(self._connect(address))
        return None

    def wait(self, address: str, r) -> None:
        self.waiting.setdefault(address, []).append(r)

    def forget(self, r) -> None:
        """``r`` no longer waits for a connection."""
        for waiting in self.waiting.values():
            if r in waiting:
                waiting.remove(r)

    async def _connect(self, address: str) -> None:
        try:
            _, conn = await open_connection(address, lambda: Conn(self.handler, role="peer"),
                                            KUAFU_CONNECT_TIMEOUT_S)
        except KuafuError as e:
            self.down[address] = self.loop.time() + PEER_DOWN_S
            self.unreachable(address, self.waiting.pop(address, []), e)
            return
        conn.attrs["address"] = address
        if self.guard is not None:  # authenticate the pooled connection at once (id -1: no route)
            conn.write_frames(F.encode_message(F.REQUEST, {
                "id": -1, "svc": CONTROL_SERVICE, "m": "hello", "dl": 10_000,
                "cred": self.guard.platform_token()}, b""))
        self.pools.setdefault(address, []).append(conn)
        self.ready(conn, self.waiting.pop(address, []))

    def on_lost(self, conn: Conn) -> None:
        pool = self.pools.get(conn.attrs.get("address"), [])
        if conn in pool:
            pool.remove(conn)

    def sweep(self, now: float) -> None:
        """Forget proxies marked down long enough."""
        for addr in [a for a, t in self.down.items() if t <= now]:
            del self.down[addr]

    def ping_idle(self, now: float) -> None:
        for pool in self.pools.values():
            for c in pool:
                if now - c.last_tx > PING_INTERVAL_S:
                    c.write(F.encode(F.PING, {"id": 0}))

    def connections(self) -> list[Conn]:
        return [c for p in self.pools.values() for c in p]

    def close_all(self) -> None:
        for conns in self.pools.values():
            for c in conns:
                c.close()
