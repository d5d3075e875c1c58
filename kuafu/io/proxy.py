"""The Kuafu proxy: one per node; clients talk to their local proxy, proxies talk to proxies.

It listens on a Unix socket (processes on its node) and on TCP (other proxies and outside
clients). A connection starts as a *client* connection; one that calls the control service
``kuafu.register`` becomes a *server* connection, and the proxy sends it the requests for the
services it registered. The proxy publishes every registered service in Nuwa as an
ephemeral node ``/services/<service>/<endpoint>`` and watches ``/services`` (one watch, no
per-call lookups), so it knows every endpoint in the cluster.

A request is forwarded without decoding its body: the header's request id is rewritten for
the connection it goes out on, and pieces follow their first frame. The target is chosen by
power of two choices on the requests this proxy has in flight to each endpoint. A request
for an endpoint on another node goes over a pooled, multiplexed connection to that node's
proxy, which delivers it to the named endpoint.

Retries: a request that certainly did not reach a server (no connection to the endpoint's
proxy, the endpoint gone when it arrived) goes to another endpoint; one that may have run is
sent again only when idempotent (the caller said so, or the server declared the method).

Flow control: each connection the proxy sends requests on has a window (requests and bytes
in flight) with a bounded FIFO of requests waiting for room (``SERVICE_QUEUE_MAX``; beyond it
callers get ``Overloaded``). Bytes held for a source connection that are not yet forwarded are
bounded (``SOURCE_QUEUED_BYTES_MAX``): above it the proxy stops reading that connection. A
connection whose kernel buffer is full pauses whoever feeds it. Connections that stay silent
or stall mid-frame are closed (``kuafu.io.conn`` timeouts), and so are connections past
``PROXY_CONNECTIONS_MAX``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import time
from collections import OrderedDict, deque

from kuafu.core import flow
from kuafu import frame as F
from kuafu.io.conn import (HELLO_TIMEOUT_S, IDLE_TIMEOUT_S, PARTIAL_FRAME_TIMEOUT_S,
                        PING_INTERVAL_S, Conn, stale_reason)
from kuafu.errors import (BadRequest, Denied, FrameError, KuafuError, Overloaded, TimedOut,
                          Unauthenticated, Unavailable)
from kuafu.io.server import CONTROL_SERVICE, check_service_name, timeout_from_header

log = logging.getLogger("kuafu.io.proxy")

PROXY_CONNECTIONS_MAX = 16_384            # accepted connections at once; more are closed at once
SERVICE_QUEUE_MAX = 1024            # requests waiting for room toward one connection
SERVER_REQUESTS_IN_FLIGHT_MAX = 256  # requests in flight to one attached server
SOURCE_QUEUED_BYTES_MAX = 32 * 1024 * 1024  # request bytes held for one source, not yet sent
PROXY_RETRIES_MAX = 3               # re-dispatches of one request to other endpoints
PEER_CONNECTIONS_MAX = 2            # pooled connections to one other proxy
PEER_SPREAD_REQUESTS = 64           # open another pooled connection above this many in flight
PEER_DOWN_S = 2.0                   # a proxy we could not reach is skipped this long
PROXY_SWEEP_PERIOD_S = 0.25
ENDPOINTS_PER_SERVICE_MAX = 10_000
SERVICES_PATH = "/services/"  # a Nuwa directory: its path ends with "/"
PROXIES_PATH = "/kuafu/proxies/"
NUWA_TIMEOUT_S = 10.0
LOOKUP_MISS_TTL_S = 0.5  # after Nuwa says a service has no endpoint, fail fast for this long
LATENCIES_KEPT = 1024    # recent reply times kept per service (for backup percentiles)
BACKUP_SAMPLES_MIN = 20  # replies seen before a percentile can time a backup
# Hardening (issue 14): every map filled from what a stranger sends is bounded.
KUAFU_PREAUTH_FRAME_BYTES_MAX = 16 * 1024  # header + body of a frame before the connection authenticated
PREAUTH_CONNECTIONS_MAX = 1024      # connections not yet authenticated; more evict the oldest
SOURCE_REQUESTS_IN_FLIGHT_MAX = 4096  # requests one connection has in flight at this proxy
MISSES_KEPT_MAX = 4096              # services remembered as having no endpoint (oldest evicted)
LOOKUPS_IN_FLIGHT_MAX = 256         # services being looked up in Nuwa at once
LATENCY_SERVICES_MAX = 4096         # services whose reply times are kept (oldest evicted)
ENDPOINTS_PER_CONNECTION_MAX = 64   # endpoints one server connection may register
LOCAL_ENDPOINTS_MAX = 65_536        # endpoints attached to this proxy in all
CLAIMS_MAX = 10_000                 # names claimed at Kuafu (unregistered with Fuxi), in all
CLAIMS_PATH = "/kuafu/claims/"      # persistent: a claimed name stays its claimer's
SERVICE_RECORDS_ROOT = "/fuxi"      # FuxiMaster's store in Nuwa: <root>/services/<name> is a
#                                     registered service, <root>/service-owners/<name> its owner
CLAIM_POLICIES = ("signed-in", "granted")  # who may claim a free name: anyone signed in, or
#                                     only those granted `manage` on it (and administrators)


class Endpoint:
    __slots__ = ("name", "service", "proxy_id", "address", "conn", "idem", "inflight", "node",
                 "owner")

    def __init__(self, name, service, proxy_id, address, conn=None, idem=(), node="",
                 owner=None):
        self.name, self.service, self.proxy_id = name, service, proxy_id
        self.address, self.conn, self.idem = address, conn, set(idem)
        self.inflight, self.node = 0, node
        self.owner = owner  # who registered it (Zhongkui: the service's owner)

    def describe(self) -> dict:
        return {"endpoint": self.name, "service": self.service, "proxy": self.address,
                "node": self.node, "local": self.conn is not None, "in_flight": self.inflight,
                "idempotent": sorted(self.idem), "owner": self.owner}


class Route:
    """One request passing through: from (src, src_id) to (target, tid) at endpoint ep."""

    __slots__ = ("src", "src_id", "svc", "method", "header", "body", "deadline", "idem", "nbytes",
                 "more", "retryable", "target", "tid", "ep", "tried", "sent", "admitted",
                 "queued", "pieces", "held", "retries", "resp_started", "nowait", "looked_up",
                 "twin", "sent_at", "backup_timer", "is_backup", "who", "authorized")

    def __init__(self, src, src_id, header, body, deadline):
        self.src, self.src_id, self.header, self.body = src, src_id, header, body
        self.svc, self.method = header["svc"], header["m"]
        self.deadline = deadline
        self.idem = bool(header.get("idem"))
        self.more = bool(header.get("more"))
        self.nbytes = int(header.get("size", len(body))) if self.more else len(body)
        self.retryable = not self.more  # a request in pieces is not kept whole for a resend
        self.nowait = bool(header.get("nw"))
        self.target = self.tid = self.ep = None
        self.tried: set = set()
        self.sent = self.admitted = self.queued = self.resp_started = False
        self.pieces: list = []
        self.held = 0  # request bytes held here for the source, not yet forwarded
        self.retries = 0
        self.looked_up = False
        self.twin: Route | None = None      # the backup copy (or the original, for a backup)
        self.sent_at = 0.0
        self.backup_timer = None
        self.is_backup = False
        self.who = None          # the verified caller (Zhongkui), when authentication is on
        self.authorized = False  # allowed to call this service


class ProxyCore:
    def __init__(self, proxy_id: str, *, host: str = "127.0.0.1", port: int = 0,
                 uds: str | None = None, nuwa=None, node: str = "",
                 advertise_host: str | None = None,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, hello_timeout_s: float = HELLO_TIMEOUT_S,
                 partial_timeout_s: float = PARTIAL_FRAME_TIMEOUT_S, guard=None,
                 conn_max: int = PROXY_CONNECTIONS_MAX,
                 preauth_frame_bytes_max: int = KUAFU_PREAUTH_FRAME_BYTES_MAX,
                 preauth_conn_max: int = PREAUTH_CONNECTIONS_MAX,
                 claim_policy: str = "signed-in", registry=None,
                 records_root: str = SERVICE_RECORDS_ROOT):
        self.proxy_id, self.host, self.port, self.uds = proxy_id, host, port, uds
        # Zhongkui: every caller presents a token (``cred``), verified here; calls are allowed
        # by ``service:<name> call`` on the endpoint's owner. None: no authentication.
        self.guard = guard if guard is not None and guard.enabled else None
        self.advertise_host = advertise_host or host
        self.nuwa_addresses = nuwa
        self.node = node
        self.idle_timeout_s, self.hello_timeout_s = idle_timeout_s, hello_timeout_s
        self.partial_timeout_s = partial_timeout_s
        if claim_policy not in CLAIM_POLICIES:
            raise BadRequest(f"claim_policy={claim_policy!r}: expected one of {CLAIM_POLICIES}")
        self.conn_max, self.preauth_conn_max = int(conn_max), int(preauth_conn_max)
        self.preauth_frame_bytes_max = int(preauth_frame_bytes_max)
        self.claim_policy = claim_policy
        # Who owns a service name: FuxiMaster's registration record (``registry(name)`` ->
        # {"owner": user} or None; by default read from Nuwa under ``records_root``), else
        # the persistent Kuafu claim of whoever attached it first.
        self.registry = registry
        self.records_root = records_root.rstrip("/")
        self._claims: OrderedDict[str, str] = OrderedDict()  # without Nuwa: name -> owner
        self._preauth: OrderedDict[Conn, None] = OrderedDict()  # oldest first
        self.conns: set[Conn] = set()
        self.local: dict[str, dict[str, Endpoint]] = {}
        self.remote: dict[str, dict[str, Endpoint]] = {}
        self.by_name: dict[str, Endpoint] = {}
        self.routes: dict[tuple, Route] = {}
        self.inbound: dict[tuple, Route] = {}
        self.peers: dict[str, list[Conn]] = {}
        self.peer_waiting: dict[str, list[Route]] = {}
        self.peer_down: dict[str, float] = {}
        self._lookups: dict[str, list[Route]] = {}
        self.latencies: OrderedDict[str, deque] = OrderedDict()
        self._miss_until: OrderedDict[str, float] = OrderedDict()
        self.ep_seq = itertools.count(1)
        self.counters = {"requests": 0, "responses": 0, "errors": 0, "retries": 0,
                         "overloaded": 0, "timed_out": 0, "rejected_frames": 0,
                         "closed_stale": 0, "refused_connections": 0, "held_bytes_max": 0,
                         "accepted": 0, "backups_sent": 0, "backups_won": 0,
                         "unauthenticated": 0, "denied": 0, "closed_unauthenticated": 0,
                         "evicted_preauth": 0, "misses_evicted": 0}
        self.held_bytes = 0
        self.nuwa = None
        self.tcp_address = ""
        self._servers: list = []
        self._tasks: list[asyncio.Task] = []
        self._published: dict[str, str] = {}  # endpoint name -> Nuwa path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> dict:
        self.loop = asyncio.get_running_loop()
        if self.port is not None:
            srv = await self.loop.create_server(self._accept, self.host, self.port,
                                                backlog=1024)
            self._servers.append(srv)
            self.port = srv.sockets[0].getsockname()[1]
            self.tcp_address = f"tcp://{self.advertise_host}:{self.port}"
        if self.uds:
            from zhongkui.files import private_dir

            private_dir(os.path.dirname(self.uds))  # only this user may reach the socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.uds)  # a socket file outlives a killed proxy
            srv = await self.loop.create_unix_server(self._accept, self.uds, backlog=1024)
            self._servers.append(srv)
        self._tasks.append(self.loop.create_task(self._sweep()))
        if self.nuwa_addresses:
            await self._nuwa_start()
        return self.info()

    def info(self) -> dict:
        return {"proxy_id": self.proxy_id, "tcp": self.tcp_address,
                "uds": f"unix://{self.uds}" if self.uds else "", "node": self.node,
                "pid": os.getpid()}

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        for t in self._tasks:
            t.cancel()
        for c in list(self.conns):
            c.close()
        for conns in self.peers.values():
            for c in conns:
                c.close()
        if self.nuwa is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nuwa.close(), NUWA_TIMEOUT_S)
        if self.uds:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.uds)

    # ------------------------------------------------------------ connection events
    def _accept(self) -> Conn:
        """An accepted connection: with access control on, it may send only small frames
        until it presents a valid token (KUAFU_PREAUTH_FRAME_BYTES_MAX)."""
        return Conn(self, preauth_bytes_max=self.preauth_frame_bytes_max
                    if self.guard is not None else None)

    def on_open(self, conn: Conn) -> None:
        if conn.role == "peer":
            return
        if len(self.conns) >= self.conn_max:
            self.counters["refused_connections"] += 1
            conn.reject(Overloaded(f"this proxy holds {len(self.conns)} connections "
                                   f"(PROXY_CONNECTIONS_MAX={self.conn_max})"))
            return
        self.conns.add(conn)
        self.counters["accepted"] += 1
        conn.attrs["held"] = 0
        conn.attrs["inflight"] = 0
        if conn.preauth:
            self._preauth[conn] = None
            while len(self._preauth) > self.preauth_conn_max:
                # Legitimate clients authenticate with their first request; the oldest
                # stranger goes (refusing the newest would let strangers lock everyone out).
                old, _ = self._preauth.popitem(last=False)
                self.counters["evicted_preauth"] += 1
                old.reject(Overloaded(f"{self.preauth_conn_max} connections are waiting to "
                                      f"authenticate (PREAUTH_CONNECTIONS_MAX); this was the "
                                      f"oldest"))

    def admit(self, conn: Conn, kind: int, header: dict, body_bytes: int) -> bool:
        """May a frame larger than the pre-auth limit arrive on ``conn``? Only if it carries a
        valid token itself (decided before its body is received)."""
        if self.guard is None:
            return True
        if kind != F.REQUEST:
            return False
        who = self._who(conn, header.get("cred"))
        return who is not None and not isinstance(who, KuafuError)

    def _authenticated(self, conn: Conn, cred, who) -> None:
        conn.attrs["who"] = (cred, who)
        if conn.preauth:
            conn.authenticated()
        self._preauth.pop(conn, None)

    def _inbound_pop(self, key) -> Route | None:
        r = self.inbound.pop(key, None)
        if r is not None:
            key[0].attrs["inflight"] = key[0].attrs.get("inflight", 1) - 1
        return r

    def on_lost(self, conn: Conn, exc) -> None:
        self.conns.discard(conn)
        self._preauth.pop(conn, None)
        if conn.role == "peer":
            pool = self.peers.get(conn.attrs.get("address"), [])
            if conn in pool:
                pool.remove(conn)
        # Requests this connection was carrying toward a server or another proxy.
        for key in [k for k in self.routes if k[0] is conn]:
            r = self.routes.pop(key)
            r.ep.inflight -= 1
            r.target = None
            r.admitted = False
            if r.queued:
                r.queued = False
            if r.twin is not None:  # its backup (or original) still carries the call
                other, r.twin = r.twin, None
                other.twin = None
                if r.backup_timer is not None:
                    r.backup_timer.cancel()
                if (r.src, r.src_id) in self.inbound:
                    self.inbound[(r.src, r.src_id)] = other
                continue
            if r.is_backup:
                continue  # a lone backup whose call was already answered or dropped
            if not r.sent:
                self._retry(r, "its connection closed before it was sent")
            elif r.idem and r.retryable and not r.resp_started:
                self._retry(r, "the connection carrying it was lost; idempotent, so resent")
            else:
                self._fail(r, Unavailable(
                    f"the endpoint {r.ep.name} of {r.svc!r} went away with the call in flight; "
                    f"it may have run (declare the method idempotent to have it retried)",
                    maybe_executed=True))
        # Requests this connection had sent us.
        for key in [k for k in self.inbound if k[0] is conn]:
            r = self._inbound_pop(key)
            self._drop_outbound(r, cancel=True)
        for name in list(conn.attrs.get("endpoints", ())):
            self._remove_local(name)

    def on_frame(self, conn: Conn, f: F.Frame) -> None:
        kind = f.kind
        if conn.role == "client":
            if kind == F.REQUEST:
                self._on_request(conn, f)
            elif kind == F.PIECE:
                self._on_request_piece(conn, f)
            elif kind == F.CANCEL:
                r = self._inbound_pop((conn, f.request_id))
                if r is not None:
                    self._drop_outbound(r, cancel=True)
            else:
                conn.reject(FrameError(f"a {F.KINDS[kind]} frame from a client; a client sends "
                                       f"REQUEST, PIECE, CANCEL and PING"))
        else:  # server or peer: replies to what we sent it (a server may also call kuafu.*)
            if kind in (F.RESPONSE, F.ERROR, F.PIECE):
                self._on_reply(conn, f)
            elif kind == F.REQUEST and f.header.get("svc") == CONTROL_SERVICE:
                self._control(conn, f)
            elif kind == F.REQUEST:
                conn.write(self._error_frame(f.request_id, BadRequest(
                    "a server connection may only call the control service "
                    f"{CONTROL_SERVICE!r}; make calls on a client connection")))
            elif kind == F.CANCEL:
                pass
            else:
                conn.reject(FrameError(f"a {F.KINDS[kind]} frame from a {conn.role} connection"))

    # ------------------------------------------------------------ requests in
    def _on_request(self, src: Conn, f: F.Frame) -> None:
        h = f.header
        rid = f.request_id
        if not isinstance(rid, int) or (src, rid) in self.inbound:
            src.write(self._error_frame(rid if isinstance(rid, int) else 0, BadRequest(
                f"request id {rid!r:.40} is in use or not an integer")))
            return
        svc, method = h.get("svc"), h.get("m")
        if not isinstance(svc, str) or not isinstance(method, str):
            src.write(self._error_frame(rid, BadRequest(
                "a request header needs 'svc' (service) and 'm' (method) as strings")))
            return
        if svc == CONTROL_SERVICE:
            self._control(src, f)
            return
        try:
            check_service_name(svc)  # it becomes a Nuwa path and a key of bounded maps
        except BadRequest as e:
            src.write(self._error_frame(rid, e))
            return
        if src.attrs.get("inflight", 0) >= SOURCE_REQUESTS_IN_FLIGHT_MAX:
            self.counters["overloaded"] += 1
            src.write(self._error_frame(rid, Overloaded(
                f"this connection has {SOURCE_REQUESTS_IN_FLIGHT_MAX} requests in flight at "
                f"the proxy (SOURCE_REQUESTS_IN_FLIGHT_MAX); not sent")))
            return
        size = h.get("size")
        if h.get("more") and (isinstance(size, bool) or not isinstance(size, int)
                              or not len(f.body) <= size <= F.MESSAGE_BYTES_MAX):
            src.write(self._error_frame(rid, BadRequest(
                f"a message in pieces must announce its size ({len(f.body)}.."
                f"{F.MESSAGE_BYTES_MAX} bytes); got {size!r:.40}")))
            return
        timeout_s = timeout_from_header(h.get("dl"))
        self.counters["requests"] += 1
        r = Route(src, rid, h, f.body, self.loop.time() + timeout_s)
        self.inbound[(src, rid)] = r
        src.attrs["inflight"] = src.attrs.get("inflight", 0) + 1
        self._hold(r, len(f.body))
        if timeout_s <= 0:
            self._fail(r, TimedOut("the deadline had passed when the request reached the proxy;"
                                   " not sent"))
            return
        if self.guard is not None:
            r.who = self._who(src, h.get("cred"))
            if r.who is None:  # a key we have not seen: fetch the keyring, then go on
                self.loop.create_task(self._identify_then_dispatch(r))
                return
            if isinstance(r.who, KuafuError):
                err, r.who = r.who, None
                self._fail(r, err)
                return
        self._dispatch(r)

    # ------------------------------------------------------------ Zhongkui
    def _who(self, conn: Conn, cred):
        """The verified caller of a request on ``conn`` (tokens are verified once per
        connection and token), an Unauthenticated error, or None when the keyring must be
        fetched first."""
        from zhongkui.errors import BadCredentials, UnknownKey

        hit = conn.attrs.get("who")
        if hit is not None and hit[0] == cred and hit[1].expires_at > self.guard.clock():
            return hit[1]
        try:
            who = self.guard.identify(cred)
        except UnknownKey:
            if self.guard.fetch_keys is not None:
                return None
            self.counters["unauthenticated"] += 1
            return Unauthenticated("the token was signed by a key this cluster does not have")
        except BadCredentials as e:
            self.counters["unauthenticated"] += 1
            return Unauthenticated(f"{type(e).__name__}: {e}")
        self._authenticated(conn, cred, who)
        return who

    async def _identify_then_dispatch(self, r: Route) -> None:
        from zhongkui.errors import BadCredentials

        try:
            r.who = await self.guard.aidentify(r.header.get("cred"))
        except BadCredentials as e:
            self.counters["unauthenticated"] += 1
            self._fail(r, Unauthenticated(f"{type(e).__name__}: {e}"))
            return
        self._authenticated(r.src, r.header.get("cred"), r.who)
        if (r.src, r.src_id) in self.inbound:
            self._dispatch(r)

    def _authorized(self, r: Route, ep: Endpoint) -> bool:
        """May ``r``'s caller call ``ep``'s service? False when the call was failed or is
        being decided again with fresh ACL entries."""
        g = self.guard
        if g.must_confirm() and not r.header.get("zk_confirmed"):
            # Identities older than REVOCATION_CONFIRM_S: learn revocations first (Zhongkui's
            # revoke_within_s bound), then decide this call again.
            r.header["zk_confirmed"] = 1

            async def confirmed():
                await g.confirm()
                if (r.src, r.src_id) in self.inbound:
                    r.tried.discard(ep.name)
                    self._dispatch(r)
            self.loop.create_task(confirmed())
            return False
        if g.acl_stale():
            g.refresh_soon()
        if g.decision(r.who, "service", r.svc, "call", ep.owner).allowed:
            r.authorized = True
            return True
        if not r.header.get("zk_refreshed") and g.may_refresh_before_denial():
            r.header["zk_refreshed"] = 1  # at most one refresh per call

            async def again():
                await g.refresh_acl()
                if (r.src, r.src_id) in self.inbound:
                    r.tried.discard(ep.name)
                    self._dispatch(r)
            self.loop.create_task(again())
            return False
        from zhongkui.errors import Denied as ZDenied

        self.counters["denied"] += 1
        try:
            g.check(r.who, "service", r.svc, "call", ep.owner)  # records the denial
        except ZDenied as e:
            self._fail(r, Denied(str(e)))
        return False

    def _on_request_piece(self, src: Conn, f: F.Frame) -> None:
        r = self.inbound.get((src, f.request_id))
        if r is None or not r.more:
            return  # its request failed or was cancelled: drop the rest
        if not f.more:
            r.more = False
        if r.admitted and r.target is not None:
            self._forward_piece(r, f)
        else:
            r.pieces.append(f)
            self._hold(r, len(f.body))

    def _forward_piece(self, r: Route, f: F.Frame) -> None:
        h = {"id": r.tid, "seq": f.header.get("seq"), "more": f.more}
        r.target.write(F.encode(F.PIECE, h, f.body))
        self._backpressure(r.src, r.target)

    # ------------------------------------------------------------ choosing and sending
    def _candidates(self, r: Route) -> list[Endpoint]:
        target = r.header.get("ep")
        if target is not None:  # another proxy chose an endpoint of ours
            ep = self.by_name.get(target)
            return [ep] if ep is not None and ep.name not in r.tried else []
        now = self.loop.time()
        out = [ep for ep in self.local.get(r.svc, {}).values() if ep.name not in r.tried]
        for ep in self.remote.get(r.svc, {}).values():
            if ep.name not in r.tried and self.peer_down.get(ep.address, 0) <= now:
                out.append(ep)
        return out

    def _choose(self, r: Route) -> Endpoint | None:
        eps = self._candidates(r)
        if not eps:
            return None
        if len(eps) == 1:
            return eps[0]
        a, b = random.sample(eps, 2)  # on a tie, the random draw decides: load spreads
        return b if b.inflight < a.inflight else a

    def _dispatch(self, r: Route) -> None:
        if self.loop.time() >= r.deadline:
            self._fail(r, TimedOut(f"the deadline passed before {r.svc!r} could be reached; "
                                   f"not sent"))
            return
        ep = self._choose(r)
        if ep is None and self._may_look_up(r):
            self._look_up(r)
            return
        if ep is None:
            known = len(self.local.get(r.svc, {})) + len(self.remote.get(r.svc, {}))
            if r.header.get("ep") is not None:
                why = f"endpoint {r.header['ep']!r} of {r.svc!r} is not on this proxy any more"
            elif r.tried:
                why = f"all {len(r.tried)} endpoints of {r.svc!r} tried failed"
            elif known:
                why = f"no reachable endpoint of {r.svc!r} ({known} known)"
            else:
                why = f"no endpoint of service {r.svc!r} is registered"
            self._fail(r, Unavailable(why + "; not sent", maybe_executed=False))
            return
        r.ep = ep
        r.tried.add(ep.name)
        if self.guard is not None and not r.authorized and not self._authorized(r, ep):
            return
        if ep.conn is not None:
            self._send_to(ep.conn, r)
            return
        conn = self._peer(ep.address)
        if conn is not None:
            self._send_to(conn, r)
        else:
            self.peer_waiting.setdefault(ep.address, []).append(r)

    def _may_look_up(self, r: Route) -> bool:
        """A service this proxy knows no endpoint of may have been registered a moment ago
        elsewhere (the watch has not told us yet): ask Nuwa once before failing the call."""
        return (self.nuwa is not None and not r.tried and r.header.get("ep") is None
                and not self.remote.get(r.svc) and not self.local.get(r.svc)
                and self._miss_until.get(r.svc, 0) <= self.loop.time()
                and not r.looked_up)

    def _look_up(self, r: Route) -> None:
        r.looked_up = True
        waiting = self._lookups.get(r.svc)
        if waiting is not None:
            waiting.append(r)
            return
        if len(self._lookups) >= LOOKUPS_IN_FLIGHT_MAX:
            self.counters["overloaded"] += 1
            self._fail(r, Overloaded(
                f"no endpoint of {r.svc!r} is known here and {len(self._lookups)} other "
                f"services are being looked up in Nuwa (LOOKUPS_IN_FLIGHT_MAX); not sent"))
            return
        self._lookups[r.svc] = [r]

        async def look():
            from nuwa import errors as NE

            found = {}
            try:
                path = f"{SERVICES_PATH}{r.svc}/"
                for name in await self.nuwa.list(path):
                    with contextlib.suppress(NE.NoNode):
                        value, _ = await self.nuwa.get(path + name)
                        ep = self._endpoint_from(r.svc, name, value)
                        if ep is not None:
                            found[name] = ep
            except Exception:  # noqa: BLE001 - a failed lookup is a miss
                pass
            if found:
                known = self.remote.setdefault(r.svc, {})
                for name, ep in found.items():
                    known.setdefault(name, ep)
            else:
                self._note_miss(r.svc)
            for w in self._lookups.pop(r.svc, []):
                if (w.src, w.src_id) in self.inbound:
                    self._dispatch(w)
        self.loop.create_task(look())

    def _note_miss(self, svc: str) -> None:
        """Remember for LOOKUP_MISS_TTL_S that ``svc`` has no endpoint; at most
        MISSES_KEPT_MAX names (the oldest is forgotten: it only costs another lookup)."""
        self._miss_until.pop(svc, None)
        self._miss_until[svc] = self.loop.time() + LOOKUP_MISS_TTL_S
        while len(self._miss_until) > MISSES_KEPT_MAX:
            self._miss_until.popitem(last=False)
            self.counters["misses_evicted"] += 1

    def _send_to(self, target: Conn, r: Route) -> None:
        ids = target.attrs.get("ids")
        if ids is None:
            target.attrs["ids"] = ids = itertools.count(1)
            w = flow.Window(SERVER_REQUESTS_IN_FLIGHT_MAX if target.role == "server"
                            else flow.REQUESTS_IN_FLIGHT_MAX, flow.BYTES_IN_FLIGHT_MAX)
            target.attrs["waiters"] = flow.Waiters(w, SERVICE_QUEUE_MAX)
        waiters: flow.Waiters = target.attrs["waiters"]
        r.target, r.tid = target, next(ids)
        self.routes[(target, r.tid)] = r
        r.ep.inflight += 1
        try:
            if r.nowait:
                waiters.window.acquire_or_raise(r.nbytes)
                ok = True
            else:
                ok = waiters.arrive(r, r.nbytes)
        except Overloaded as e:
            self.routes.pop((target, r.tid), None)
            r.ep.inflight -= 1
            r.target = None
            self.counters["overloaded"] += 1
            self._fail(r, Overloaded(f"{r.svc!r} at endpoint {r.ep.name}: {e}"))
            return
        if ok:
            self._transmit(r)
        else:
            r.queued = True

    def _transmit(self, r: Route) -> None:
        r.queued = False
        r.admitted = True
        target = r.target
        h = dict(r.header)
        h["id"] = r.tid
        h["dl"] = max(1, int((r.deadline - self.loop.time()) * 1000))
        h.pop("nw", None)
        if r.ep.conn is None:
            h["ep"] = r.ep.name
        else:
            h.pop("ep", None)
        if r.ep.idem and r.method in r.ep.idem:
            r.idem = True
        h.pop("bk", None)  # backups are decided here, by the caller's proxy
        h.pop("zk_refreshed", None)
        if r.ep.conn is not None:
            # To the server: who calls, as verified here; never the caller's token.
            h.pop("cred", None)
            if r.who is not None:
                h["caller"] = r.who.user
            else:
                h.pop("caller", None)
        else:
            h.pop("caller", None)  # the next proxy verifies the token itself
        target.write(F.encode(F.REQUEST, h, r.body))
        r.sent = True
        r.sent_at = self.loop.time()
        if not r.is_backup and r.twin is None and r.backup_timer is None:
            self._arm_backup(r)
        if not r.retryable:
            r.body = b""
        for p in r.pieces:
            self._forward_piece(r, p)
        self._unhold(r, r.held)
        r.pieces = []
        self._backpressure(r.src, target)

    # ------------------------------------------------------------ backup requests
    def _arm_backup(self, r: Route) -> None:
        """``bk`` in the header asks for a second copy of an idempotent call, sent to another
        endpoint if no reply came within ``ms`` milliseconds, or within the service's recent
        ``p``-th latency percentile. The first reply wins; the other copy is cancelled."""
        bk = r.header.get("bk")
        if not isinstance(bk, dict) or not r.idem or not r.retryable:
            return
        delay = None
        ms = bk.get("ms")
        if isinstance(ms, (int, float)) and not isinstance(ms, bool) and 0 <= ms < 3.6e6:
            delay = ms / 1000.0
        pct = bk.get("p")
        if isinstance(pct, (int, float)) and not isinstance(pct, bool) and 0 < pct < 100:
            lat = self._latency_percentile(r.svc, float(pct))
            if lat is not None:
                delay = lat if delay is None else max(delay, lat)
        if delay is None:
            return  # no explicit delay and too few samples for a percentile yet
        r.backup_timer = self.loop.call_later(delay, self._send_backup, r)

    def _latency_percentile(self, svc: str, pct: float) -> float | None:
        lat = self.latencies.get(svc)
        if lat is None or len(lat) < BACKUP_SAMPLES_MIN:
            return None
        ordered = sorted(lat)
        return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100.0))]

    def _send_backup(self, r: Route) -> None:
        r.backup_timer = None
        if ((r.src, r.src_id) not in self.inbound or self.inbound[(r.src, r.src_id)] is not r
                or r.resp_started or r.twin is not None or r.target is None):
            return
        b = Route(r.src, r.src_id, r.header, r.body, r.deadline)
        b.idem, b.is_backup, b.twin, r.twin = True, True, r, b
        b.tried = set(r.tried)
        if not self._candidates(b):
            r.twin = None
            return  # nowhere else to send it
        self.counters["backups_sent"] += 1
        self._dispatch(b)

    def _settle_twin(self, winner: Route) -> None:
        """``winner`` answered first: its twin is cancelled and forgotten."""
        other = winner.twin
        if other is None:
            return
        winner.twin = other.twin = None
        if winner.is_backup:
            self.counters["backups_won"] += 1
            self.inbound[(winner.src, winner.src_id)] = winner
        self._drop_outbound(other, cancel=True)

    def _backpressure(self, src: Conn, target: Conn) -> None:
        """Stop reading ``src`` while ``target``'s write buffer is over its high mark."""
        if target.write_paused and not src.closed:
            src.pause_reading(target)
            target.when_writable(lambda: src.resume_reading(target))

    def _hold(self, r: Route, n: int) -> None:
        if not n:
            return
        r.held += n
        src = r.src
        src.attrs["held"] = src.attrs.get("held", 0) + n
        self.held_bytes += n
        self.counters["held_bytes_max"] = max(self.counters["held_bytes_max"], self.held_bytes)
        if src.attrs["held"] > SOURCE_QUEUED_BYTES_MAX:
            src.pause_reading("held")

    def _unhold(self, r: Route, n: int) -> None:
        if not n:
            return
        r.held -= n
        src = r.src
        src.attrs["held"] = src.attrs.get("held", 0) - n
        self.held_bytes -= n
        if src.attrs["held"] <= SOURCE_QUEUED_BYTES_MAX // 2:
            src.resume_reading("held")

    # ------------------------------------------------------------ replies
    def _on_reply(self, t: Conn, f: F.Frame) -> None:
        r = self.routes.get((t, f.request_id))
        if r is None:
            if f.request_id == 0 and f.kind == F.ERROR:
                t.close()  # it refused our bytes
            return  # a reply to a call that was cancelled or timed out
        if f.kind == F.ERROR and not r.resp_started:
            code = f.header.get("code")
            if code == "Unavailable" and not f.header.get("ex") and r.retryable:
                self._release(r)
                self._retry(r, f"endpoint {r.ep.name}: {f.header.get('msg')}")
                return
            self.counters["errors"] += 1
        if r.twin is not None:
            self._settle_twin(r)
        h = dict(f.header)
        h["id"] = r.src_id
        r.src.write(F.encode(f.kind, h, f.body))
        r.resp_started = True
        if f.kind == F.RESPONSE and not f.more:
            lat = self.latencies.get(r.svc)
            if lat is None:
                lat = self.latencies[r.svc] = deque(maxlen=LATENCIES_KEPT)
                while len(self.latencies) > LATENCY_SERVICES_MAX:
                    self.latencies.popitem(last=False)
            else:
                self.latencies.move_to_end(r.svc)
            lat.append(self.loop.time() - r.sent_at)
        if f.more:
            self._backpressure(t, r.src)
            return
        self.counters["responses"] += 1
        self._inbound_pop((r.src, r.src_id))
        self._release(r)
        self._backpressure(t, r.src)

    def _release(self, r: Route) -> None:
        """The target is done with ``r``: free its slot and admit whoever waits."""
        t = r.target
        if t is None:
            return
        self.routes.pop((t, r.tid), None)
        r.ep.inflight -= 1
        r.target = None
        waiters: flow.Waiters = t.attrs["waiters"]
        if r.admitted:
            r.admitted = False
            for nxt in waiters.release(r.nbytes):
                if nxt.target is t and nxt.queued:
                    self._transmit(nxt)
        elif r.queued:
            r.queued = False
            _, admitted = waiters.leave(r)
            for nxt in admitted:
                if nxt.target is t and nxt.queued:
                    self._transmit(nxt)

    def _drop_outbound(self, r: Route, cancel: bool) -> None:
        if r.backup_timer is not None:
            r.backup_timer.cancel()
            r.backup_timer = None
        twin, r.twin = r.twin, None
        if twin is not None:
            twin.twin = None
            self._drop_outbound(twin, cancel)
        t = r.target
        if t is not None and r.sent and cancel and not t.closed:
            t.write(F.encode(F.CANCEL, {"id": r.tid}))
        self._release(r)
        self._unhold(r, r.held)
        for addr, waiting in self.peer_waiting.items():
            if r in waiting:
                waiting.remove(r)

    def _retry(self, r: Route, why: str) -> None:
        if not r.retryable or r.retries >= PROXY_RETRIES_MAX:
            self._fail(r, Unavailable(f"{r.svc}.{r.method}: {why}; no more retries "
                                      f"(PROXY_RETRIES_MAX={PROXY_RETRIES_MAX})",
                                      maybe_executed=r.sent))
            return
        r.retries += 1
        r.sent = False
        self.counters["retries"] += 1
        self._dispatch(r)

    def _fail(self, r: Route, err: KuafuError) -> None:
        if r.is_backup and r.twin is not None:
            # A backup copy that could not go: the original still carries the call.
            r.twin.twin = None
            r.twin = None
            self._drop_outbound(r, cancel=True)
            return
        if isinstance(err, TimedOut):
            self.counters["timed_out"] += 1
        self.counters["errors"] += 1
        self._inbound_pop((r.src, r.src_id))
        self._drop_outbound(r, cancel=True)
        if not r.src.closed:
            r.src.write(self._error_frame(r.src_id, err))

    @staticmethod
    def _error_frame(rid: int, err: KuafuError) -> list:
        h = err.to_header()
        h["id"] = rid
        return F.encode(F.ERROR, h)

    # ------------------------------------------------------------ other proxies
    def _peer(self, address: str) -> Conn | None:
        pool = self.peers.get(address)
        if pool:
            best = min(pool, key=lambda c: c.attrs["waiters"].window.requests
                       if "waiters" in c.attrs else 0)
            busy = best.attrs["waiters"].window.requests if "waiters" in best.attrs else 0
            if busy >= PEER_SPREAD_REQUESTS and len(pool) < PEER_CONNECTIONS_MAX \
                    and address not in self.peer_waiting:
                self.peer_waiting[address] = []
                self.loop.create_task(self._connect_peer(address))
            return best
        if address not in self.peer_waiting:
            self.peer_waiting[address] = []
            self.loop.create_task(self._connect_peer(address))
        return None

    async def _connect_peer(self, address: str) -> None:
        from kuafu.client import KUAFU_CONNECT_TIMEOUT_S, open_connection

        try:
            _, conn = await open_connection(address, lambda: Conn(self, role="peer"),
                                            KUAFU_CONNECT_TIMEOUT_S)
        except KuafuError as e:
            self.peer_down[address] = self.loop.time() + PEER_DOWN_S
            waiting = self.peer_waiting.pop(address, [])
            for r in waiting:
                for ep in self.remote.get(r.svc, {}).values():
                    if ep.address == address:
                        r.tried.add(ep.name)
                self._retry(r, f"cannot reach the proxy at {address} ({e}); not sent")
            return
        conn.attrs["address"] = address
        if self.guard is not None:  # authenticate the pooled connection at once (id -1: no route)
            conn.write_frames(F.encode_message(F.REQUEST, {
                "id": -1, "svc": CONTROL_SERVICE, "m": "hello", "dl": 10_000,
                "cred": self.guard.platform_token()}, b""))
        self.peers.setdefault(address, []).append(conn)
        for r in self.peer_waiting.pop(address, []):
            if (r.src, r.src_id) in self.inbound:
                self._send_to(conn, r)

    # ------------------------------------------------------------ sweeping
    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(PROXY_SWEEP_PERIOD_S)
            try:
                self._sweep_once()
            except Exception:  # noqa: BLE001 - a sweeper must survive anything
                log.exception("kuafu proxy sweep failed")

    def _sweep_once(self) -> None:
        now = self.loop.time()
        while self._miss_until:  # oldest first; all share one TTL
            svc, until = next(iter(self._miss_until.items()))
            if until > now:
                break
            del self._miss_until[svc]
        for addr in [a for a, t in self.peer_down.items() if t <= now]:
            del self.peer_down[addr]
        while self._preauth:  # oldest first: strangers that never authenticated
            c = next(iter(self._preauth))
            if now - c.opened_at <= self.hello_timeout_s:
                break
            del self._preauth[c]
            self.counters["closed_unauthenticated"] += 1
            c.reject(Unauthenticated(f"no valid token within {self.hello_timeout_s:g}s of "
                                     f"connecting (HELLO_TIMEOUT_S)"))
        for r in [r for r in self.inbound.values() if now >= r.deadline]:
            self._fail(r, TimedOut(f"no reply from {r.svc}.{r.method} by the deadline"
                                   + ("; it may have run" if r.sent else "; not sent")))
        busy = {k[0] for k in self.routes} | {k[0] for k in self.inbound}
        for c in list(self.conns):
            if c in busy:
                continue
            why = stale_reason(c, now, self.idle_timeout_s, self.hello_timeout_s,
                               self.partial_timeout_s)
            if why:
                self.counters["closed_stale"] += 1
                c.close()
        for pool in self.peers.values():
            for c in pool:
                if now - c.last_tx > PING_INTERVAL_S:
                    c.write(F.encode(F.PING, {"id": 0}))

    # ------------------------------------------------------------ control service
    def _control(self, conn: Conn, f: F.Frame, who=None) -> None:
        rid = f.request_id
        try:
            msg = F.unpack_body(f.header.get("type", "bytes"), f.body)
            m = f.header.get("m")
            if self.guard is not None and m != "ping" and who is None:
                who = self._who(conn, f.header.get("cred"))
                if who is None:
                    self.loop.create_task(self._identify_then_control(conn, f))
                    return
                if isinstance(who, KuafuError):
                    raise who
            if m == "ping":
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid}, "pong"))
            elif m == "stats":
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                                   json.dumps(self.stats())))
            elif m == "resolve":
                svc = msg.get("service") if isinstance(msg, dict) else None
                eps = [e.describe() for e in self._all_endpoints(svc)]
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid}, json.dumps(eps)))
            elif m == "hello":  # authenticates the connection (lifts the pre-auth limit)
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                                   {"user": who.user if who else "operator"}))
            elif m == "register":
                self._register(conn, rid, msg, who)
            elif m == "release":
                self.loop.create_task(self._release_claim(conn, rid, msg, who))
            elif m == "unregister":
                self._unregister(conn, rid, msg)
            else:
                raise BadRequest(f"the control service {CONTROL_SERVICE!r} has no method "
                                 f"{m!r:.60}; it offers ping, hello, stats, resolve, "
                                 f"register, unregister, release")
        except KuafuError as e:
            conn.write(self._error_frame(rid, e))

    async def _identify_then_control(self, conn: Conn, f: F.Frame) -> None:
        from zhongkui.errors import BadCredentials

        try:
            who = await self.guard.aidentify(f.header.get("cred"))
        except BadCredentials as e:
            conn.write(self._error_frame(f.request_id, Unauthenticated(f"{type(e).__name__}: {e}")))
            return
        self._authenticated(conn, f.header.get("cred"), who)
        self._control(conn, f, who)

    def _all_endpoints(self, svc: str | None) -> list[Endpoint]:
        out = []
        for table in (self.local, self.remote):
            for s, eps in table.items():
                if svc is None or s == svc:
                    out.extend(eps.values())
        return out

    def _register(self, conn: Conn, rid: int, msg, who=None) -> None:
        if not isinstance(msg, dict) or "service" not in msg:
            raise BadRequest("register takes a map with 'service' (and 'idempotent': "
                             "comma-separated method names)")
        svc = check_service_name(msg["service"])
        if svc == CONTROL_SERVICE:
            raise BadRequest(f"{CONTROL_SERVICE!r} is the proxy's own service")
        idem = [m for m in msg.get("idempotent", "").split(",") if m]
        self._check_may_serve(conn, svc)
        conn.role = "server"
        if self.guard is None:
            self._attach(conn, rid, svc, idem, None)
            return

        async def decide():
            # Who owns the name decides who may serve it: FuxiMaster's registration record,
            # else the persistent claim of whoever attached it first -- never whoever
            # happens to hold a live endpoint now.
            try:
                owner = await self._owner_for(svc, who)
                self._check_may_serve(conn, svc)
            except KuafuError as e:
                conn.write(self._error_frame(rid, e))
                return
            except Exception as e:  # noqa: BLE001 - Nuwa trouble: fail closed
                conn.write(self._error_frame(rid, Unavailable(
                    f"could not decide who owns {svc!r}: {type(e).__name__}: {e}")))
                return
            if not conn.closed:
                self._attach(conn, rid, svc, idem, owner)
        self.loop.create_task(decide())

    def _check_may_serve(self, conn: Conn, svc: str) -> None:
        if conn.role == "client" and any(k[0] is conn for k in self.inbound):
            raise BadRequest("a connection with calls in flight cannot become a server "
                             "connection; attach servers on their own connection")
        if len(self.local.get(svc, {})) >= ENDPOINTS_PER_SERVICE_MAX:
            raise Overloaded(f"{svc!r} has {ENDPOINTS_PER_SERVICE_MAX} endpoints on this proxy "
                             f"(ENDPOINTS_PER_SERVICE_MAX)")
        if len(conn.attrs.get("endpoints", ())) >= ENDPOINTS_PER_CONNECTION_MAX:
            raise Overloaded(f"this connection registered {ENDPOINTS_PER_CONNECTION_MAX} "
                             f"endpoints (ENDPOINTS_PER_CONNECTION_MAX)")
        if len(self.by_name) >= LOCAL_ENDPOINTS_MAX:
            raise Overloaded(f"this proxy holds {LOCAL_ENDPOINTS_MAX} endpoints "
                             f"(LOCAL_ENDPOINTS_MAX)")

    def _attach(self, conn: Conn, rid: int, svc: str, idem: list, owner) -> None:
        name = f"{self.proxy_id}~{next(self.ep_seq)}"
        ep = Endpoint(name, svc, self.proxy_id, self.tcp_address, conn, idem, self.node, owner)
        self.local.setdefault(svc, {})[name] = ep
        self.by_name[name] = ep
        conn.attrs.setdefault("endpoints", set()).add(name)

        async def publish():
            try:
                if self.nuwa is not None:
                    await self._publish(ep)
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                                   {"endpoint": name}))
            except Exception as e:  # noqa: BLE001 - told to the registering server
                self._remove_local(name)
                conn.write(self._error_frame(rid, Unavailable(
                    f"could not publish {svc!r} in Nuwa: {e}")))
        self.loop.create_task(publish())

    # ------------------------------------------------------------ who owns a service name
    def _deny(self, who, svc: str, why: str) -> Denied:
        self.counters["denied"] += 1
        self.guard.report_denial(who.user, "attach", f"service:{svc}", why)
        return Denied(f"{who.user!r} may not attach {svc!r}: {why}")

    async def _owner_for(self, svc: str, who) -> str:
        """The owner the endpoint is published with, or Denied. A name registered as a Fuxi
        service is served only by that service's replicas (a token scoped to it, of its
        owner) and administrators; a free name is claimed by its first attacher (if
        ``claim_policy`` allows) and stays theirs; others need ``manage`` on it."""
        scope = who.scope if isinstance(who.scope, dict) else None
        admin = who.admin and scope is None  # a scoped token acts only for its scope
        own_scope = scope == {"kind": "service", "id": svc}
        rec = await self._registration(svc)
        if rec is not None:
            owner = rec.get("owner") if isinstance(rec.get("owner"), str) else None
            if admin:
                return owner or who.user
            if own_scope and owner in (None, who.user):
                return who.user
            raise self._deny(who, svc, f"it is a registered Fuxi service (owner {owner!r}); "
                                       f"only its replicas (with the service's own token) or an "
                                       f"administrator may attach it")
        if scope is not None and scope.get("kind") == "service" and not own_scope:
            raise self._deny(who, svc, f"a token of service {scope.get('id')!r:.80} attaches "
                                       f"only that service")
        claim = await self._claim_of(svc)
        if claim is None:
            if not (admin or self.claim_policy == "signed-in"
                    or self.guard.decision(who, "service", svc, "manage").allowed):
                raise self._deny(who, svc, "it is not registered and claiming a free name "
                                           "needs `manage` on it (claim_policy='granted')")
            claim = await self._claim(svc, who.user)
        if claim == who.user or admin:
            return claim
        if self.guard.decision(who, "service", svc, "manage", claim).allowed:
            return claim
        if self.guard.may_refresh_before_denial():
            await self.guard.refresh_acl()
            if self.guard.decision(who, "service", svc, "manage", claim).allowed:
                return claim
        raise self._deny(who, svc, f"the name is claimed by {claim!r}, even while no endpoint "
                                   f"of it is live; serving it needs `manage` on it")

    async def _registration(self, svc: str) -> dict | None:
        """FuxiMaster's record of ``svc`` as a registered service ({"owner": user}), or None."""
        if self.registry is not None:
            return await self.registry(svc)
        if self.nuwa is None:
            return None
        from nuwa import errors as NE

        try:
            await asyncio.wait_for(self.nuwa.get(f"{self.records_root}/services/{svc}"),
                                   NUWA_TIMEOUT_S)
        except NE.NoNode:
            return None
        try:
            value, _ = await asyncio.wait_for(
                self.nuwa.get(f"{self.records_root}/service-owners/{svc}"), NUWA_TIMEOUT_S)
            doc = json.loads(value)
        except (NE.NoNode, ValueError):
            doc = {}  # registered a moment ago: its owner is being written
        return {"owner": doc.get("user") if isinstance(doc, dict) else None}

    async def _claim_of(self, svc: str) -> str | None:
        if self.nuwa is None:
            return self._claims.get(svc)
        from nuwa import errors as NE

        try:
            value, _ = await asyncio.wait_for(self.nuwa.get(CLAIMS_PATH + svc), NUWA_TIMEOUT_S)
        except NE.NoNode:
            return None
        try:
            user = json.loads(value).get("user")
        except (ValueError, AttributeError):
            user = None
        if not isinstance(user, str):
            raise Unavailable(f"the claim record of {svc!r} is damaged; an administrator may "
                              f"remove {CLAIMS_PATH}{svc}")
        return user

    async def _claim(self, svc: str, user: str) -> str:
        """Claim ``svc`` for ``user``; returns the owner (another's, if they were first)."""
        if self.nuwa is None:
            if svc not in self._claims and len(self._claims) >= CLAIMS_MAX:
                raise Overloaded(f"{CLAIMS_MAX} names are claimed (CLAIMS_MAX)")
            return self._claims.setdefault(svc, user)
        from nuwa import errors as NE

        try:
            n = len(await asyncio.wait_for(self.nuwa.list(CLAIMS_PATH), NUWA_TIMEOUT_S))
        except NE.NoNode:
            n = 0
        if n >= CLAIMS_MAX:
            raise Overloaded(f"{n} names are claimed at Kuafu (CLAIMS_MAX={CLAIMS_MAX}); "
                             f"register the service with Fuxi or release a claim")
        value = json.dumps({"user": user, "at": time.time()}).encode()
        try:
            await asyncio.wait_for(self.nuwa.create(CLAIMS_PATH + svc, value, parents=True),
                                   NUWA_TIMEOUT_S)
            return user
        except NE.NodeExists:  # someone else was first
            owner = await self._claim_of(svc)
            return owner if owner is not None else user

    async def _release_claim(self, conn: Conn, rid: int, msg, who) -> None:
        try:
            svc = check_service_name(msg.get("service") if isinstance(msg, dict) else None)
            if self.guard is None:
                raise BadRequest("with access control off names are not claimed")
            claim = await self._claim_of(svc)
            if claim is None:
                raise BadRequest(f"{svc!r} is not claimed")
            if claim != who.user and not (who.admin and who.scope is None):
                raise self._deny(who, svc, f"the claim is {claim!r}'s")
            if self._all_endpoints(svc):
                raise BadRequest(f"{svc!r} still has endpoints; detach them first")
            if self.nuwa is None:
                self._claims.pop(svc, None)
            else:
                from nuwa import errors as NE

                with contextlib.suppress(NE.NoNode):
                    await asyncio.wait_for(self.nuwa.delete(CLAIMS_PATH + svc), NUWA_TIMEOUT_S)
        except KuafuError as e:
            conn.write(self._error_frame(rid, e))
            return
        conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid}, {"released": svc}))

    def _unregister(self, conn: Conn, rid: int, msg) -> None:
        svc = msg.get("service") if isinstance(msg, dict) else None
        names = [n for n in conn.attrs.get("endpoints", ())
                 if n in self.by_name and self.by_name[n].service == svc]
        if not names:
            raise BadRequest(f"this connection has no endpoint of {svc!r:.80} registered")

        # From now on no request goes to these endpoints, from this node or from others (a
        # proxy whose view lags gets "not here any more" and goes elsewhere). The reply
        # follows every request already sent on this ordered connection, so once the server
        # has it, what it must finish before leaving is exactly what it has received.
        for n in names:
            ep = self.by_name.pop(n)
            self.local.get(ep.service, {}).pop(n, None)
            if not self.local.get(ep.service):
                self.local.pop(ep.service, None)
            conn.attrs["endpoints"].discard(n)

        async def withdraw():
            for n in names:
                await self._unpublish(n)
            conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                               {"removed": str(len(names))}))
        self.loop.create_task(withdraw())

    def _remove_local(self, name: str) -> None:
        ep = self.by_name.pop(name, None)
        if ep is None:
            return
        self.local.get(ep.service, {}).pop(name, None)
        if not self.local.get(ep.service):
            self.local.pop(ep.service, None)
        if ep.conn is not None:
            ep.conn.attrs.get("endpoints", set()).discard(name)
        if name in self._published and self.nuwa is not None:
            self.loop.create_task(self._unpublish(name))

    # ------------------------------------------------------------ Nuwa
    async def _nuwa_start(self) -> None:
        from nuwa.client import AsyncNuwa

        self.nuwa = AsyncNuwa([tuple(a) for a in self.nuwa_addresses], NUWA_TIMEOUT_S,
                              creator=f"kuafu-proxy:{self.proxy_id}",
                              token=self.guard.platform_token if self.guard else "")
        await self._ensure_dir(SERVICES_PATH)
        await self._ensure_dir(PROXIES_PATH)
        await self._publish_self()
        self._tasks.append(self.loop.create_task(self._follow()))
        self._tasks.append(self.loop.create_task(self._keep_published()))

    async def _ensure_dir(self, path: str) -> None:
        from nuwa import errors as NE

        with contextlib.suppress(NE.NodeExists):
            await self.nuwa.create(path, b"", parents=True)

    async def _create_ephemeral(self, path: str, value: bytes) -> None:
        from nuwa import errors as NE

        try:
            await self.nuwa.create(path, value, ephemeral=True, parents=True)
        except NE.NodeExists:
            # Left by an earlier life of this proxy whose session has not expired yet.
            with contextlib.suppress(NE.NoNode):
                await self.nuwa.delete(path)
            await self.nuwa.create(path, value, ephemeral=True, parents=True)

    async def _publish_self(self) -> None:
        await self._create_ephemeral(f"{PROXIES_PATH}{self.proxy_id}",
                                     json.dumps(self.info()).encode())

    async def _publish(self, ep: Endpoint) -> None:
        path = f"{SERVICES_PATH}{ep.service}/{ep.name}"
        value = json.dumps({"proxy": ep.address, "proxy_id": self.proxy_id, "node": self.node,
                            "idempotent": sorted(ep.idem), "owner": ep.owner}).encode()
        await self._create_ephemeral(path, value)
        self._published[ep.name] = path

    async def _unpublish(self, name: str) -> None:
        from nuwa import errors as NE

        path = self._published.pop(name, None)
        if path is not None and self.nuwa is not None:
            with contextlib.suppress(NE.NoNode, NE.NuwaError):
                await self.nuwa.delete(path)

    async def _keep_published(self) -> None:
        """After a Nuwa session loss (a partition longer than its TTL), publish again."""
        session_id = None
        while True:
            await asyncio.sleep(1.0)
            try:
                s = await self.nuwa._ensure_session()
                if session_id is not None and s.id != session_id:
                    await self._publish_self()
                    for ep in list(self.by_name.values()):
                        if ep.name in self._published:
                            await self._publish(ep)
                session_id = s.id
            except Exception as e:  # noqa: BLE001 - keep trying
                log.warning("kuafu proxy %s: Nuwa session check failed: %s", self.proxy_id, e)

    async def _follow(self) -> None:
        """Keep ``self.remote`` equal to /services in Nuwa: watch first, then list."""
        while True:
            try:
                w = await self.nuwa.watch(SERVICES_PATH, recursive=True)
                self.remote = await self._list_services()
                while True:
                    ev = await w.__anext__()
                    self._apply(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - re-watch and re-list
                log.warning("kuafu proxy %s: watch on %s ended (%s); re-watching",
                            self.proxy_id, SERVICES_PATH, e)
                await asyncio.sleep(0.5)

    async def _list_services(self) -> dict:
        from nuwa import errors as NE

        out: dict[str, dict[str, Endpoint]] = {}
        for svc in await self.nuwa.list(SERVICES_PATH):
            if not svc.endswith("/"):
                continue
            svc = svc[:-1]
            try:
                names = await self.nuwa.list(f"{SERVICES_PATH}{svc}/")
            except NE.NoNode:
                continue
            for name in names:
                try:
                    value, _ = await self.nuwa.get(f"{SERVICES_PATH}{svc}/{name}")
                except NE.NoNode:
                    continue
                ep = self._endpoint_from(svc, name, value)
                if ep is not None:
                    out.setdefault(svc, {})[name] = ep
        return out

    def _endpoint_from(self, svc: str, name: str, value: bytes) -> Endpoint | None:
        try:
            d = json.loads(value)
        except ValueError:
            return None
        if not isinstance(d, dict) or d.get("proxy_id") == self.proxy_id or not d.get("proxy"):
            return None  # our own endpoints are in self.local
        return Endpoint(name, svc, d["proxy_id"], d["proxy"], None, d.get("idempotent", ()),
                        d.get("node", ""), d.get("owner"))

    def _apply(self, ev: dict) -> None:
        parts = ev["path"].split("/")
        if len(parts) != 4 or not parts[3]:  # /services/<svc>/<endpoint>, not a directory
            return
        _, _, svc, name = parts
        if ev["type"] == "deleted":
            eps = self.remote.get(svc)
            if eps is not None:
                eps.pop(name, None)
                if not eps:
                    self.remote.pop(svc, None)
            return
        ep = self._endpoint_from(svc, name, ev.get("value") or b"")
        if ep is not None:
            old = self.remote.get(svc, {}).get(name)
            if old is not None:
                ep.inflight = old.inflight
            self.remote.setdefault(svc, {})[name] = ep

    # ------------------------------------------------------------ status
    def stats(self) -> dict:
        roles: dict[str, int] = {}
        for c in self.conns:
            roles[c.role] = roles.get(c.role, 0) + 1
        roles["peer"] = sum(len(p) for p in self.peers.values())
        return {"proxy_id": self.proxy_id, "tcp": self.tcp_address, "node": self.node,
                "connections": roles, "routes": len(self.routes), "inbound": len(self.inbound),
                "held_bytes": self.held_bytes, "preauth_connections": len(self._preauth),
                "misses_kept": len(self._miss_until), "lookups": len(self._lookups),
                "queued": sum(len(c.attrs["waiters"].queue) for c in
                              list(self.conns) + [c for p in self.peers.values() for c in p]
                              if "waiters" in c.attrs),
                "local_services": {s: len(e) for s, e in self.local.items()},
                "remote_services": {s: len(e) for s, e in self.remote.items()},
                "counters": dict(self.counters), "uptime_s": round(time.time() - self.started_at, 1)}
