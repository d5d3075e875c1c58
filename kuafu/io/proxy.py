"""The Kuafu proxy: one per node; clients talk to their local proxy, proxies talk to proxies.

It listens on a Unix socket (processes on its node) and on TCP (other proxies and outside
clients). A connection starts as a *client* connection; one that calls the control service
``kuafu.register`` becomes a *server* connection, and the proxy sends it the requests for the
services it registered. The proxy publishes every registered service in Nuwa as an
ephemeral node ``/services/<service>/<endpoint>`` and watches ``/services`` (one watch, no
per-call lookups), so it knows every endpoint in the cluster.

``ProxyCore`` composes one object per concern and routes connection events to them:

* ``Admission`` (``kuafu.io.admission``): connection limits, pre-authentication bounds,
  verified identities, the ACL of each call;
* ``Forwarder`` (``kuafu.io.forward``): requests in, choosing an endpoint
  (``kuafu.core.routing``), flow control, retries, backups, replies back;
* ``PeerPool`` (``kuafu.io.peers``): pooled connections to other proxies;
* ``EndpointWatcher`` (``kuafu.io.watcher``): the Nuwa watch of ``/services`` and what this
  proxy publishes;
* ``Registrar`` and ``Ownership`` (``kuafu.io.registry``, ``kuafu.io.ownership``): servers
  attaching and leaving, and who may attach a name.

It also answers the control service ``kuafu`` (ping, hello, stats, resolve, register,
unregister, release) and sweeps: deadlines, stale connections, strangers that never
authenticate, expired misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time

from base import metrics
from kuafu import frame as F
from kuafu.core import routing
from kuafu.core.routing import CONTROL_SERVICE
from kuafu.errors import BadRequest, FrameError, KuafuError
from kuafu.io.admission import (KUAFU_PREAUTH_FRAME_BYTES_MAX, PREAUTH_CONNECTIONS_MAX,
                                PROXY_CONNECTIONS_MAX, Admission)
from kuafu.io.conn import HELLO_TIMEOUT_S, IDLE_TIMEOUT_S, PARTIAL_FRAME_TIMEOUT_S, Conn
from kuafu.io.forward import Forwarder
from kuafu.io.ownership import SERVICE_RECORDS_ROOT, Ownership
from kuafu.io.peers import PeerPool
from kuafu.io.registry import Registrar
from kuafu.io.watcher import EndpointWatcher

log = logging.getLogger("kuafu.io.proxy")

PROXY_SWEEP_PERIOD_S = 0.25
COUNTERS = ("requests", "responses", "errors", "retries", "overloaded", "timed_out",
            "rejected_frames", "closed_stale", "refused_connections", "held_bytes_max",
            "accepted", "backups_sent", "backups_won", "unauthenticated", "denied",
            "closed_unauthenticated", "evicted_preauth", "misses_evicted", "redirected",
            "cold_held", "cold_refused")

PROXY_EVENTS = metrics.counter(
    "kuafu_proxy_events_total",
    "What Kuafu proxies did and refused (accepted, denied, overloaded, retries, backups, ...).",
    labels=("kind",))


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
                 records_root: str = SERVICE_RECORDS_ROOT, rng: random.Random | None = None):
        """``registry(name)`` -> {"owner": user} or None stands in for FuxiMaster's records of
        registered services (read from Nuwa under ``records_root`` by default). ``rng``
        draws the endpoint choices (default: a fresh ``random.Random()``)."""
        self.proxy_id, self.host, self.port, self.uds = proxy_id, host, port, uds
        # Zhongkui: every caller presents a token (``cred``), verified here; calls are allowed
        # by ``service:<name> call`` on the endpoint's owner. None: no authentication.
        self.guard = guard if guard is not None and guard.enabled else None
        self.advertise_host = advertise_host or host
        self.nuwa_addresses = nuwa
        self.node = node
        # Each count also goes to the process's metrics (base.metrics), for the operators' view.
        self.counters = metrics.CountsDict(PROXY_EVENTS, {k: 0 for k in COUNTERS})
        self.endpoints = routing.EndpointTable(proxy_id)
        self.admission = Admission(self.guard, self.counters, conn_max=conn_max,
                                   preauth_conn_max=preauth_conn_max,
                                   preauth_frame_bytes_max=preauth_frame_bytes_max,
                                   idle_timeout_s=idle_timeout_s,
                                   hello_timeout_s=hello_timeout_s,
                                   partial_timeout_s=partial_timeout_s)
        self.watcher = EndpointWatcher(proxy_id, node, self.endpoints, nuwa,
                                       self.guard.platform_token if self.guard else "",
                                       self.counters)
        self.ownership = Ownership(self.guard, self.watcher, self.counters,
                                   claim_policy=claim_policy, registry=registry,
                                   records_root=records_root)
        self.forwarder = Forwarder(self.endpoints, self.admission, self.watcher, self.counters,
                                   rng if rng is not None else random.Random())
        self.peers = PeerPool(self, self.guard, self.forwarder.peer_ready,
                              self.forwarder.peer_unreachable)
        self.forwarder.peers = self.peers
        self.registrar = Registrar(proxy_id, node, self.endpoints, self.watcher, self.ownership,
                                   self.guard, self.forwarder.has_calls_from)
        self.tcp_address = ""
        self.extra: dict = {}  # more to publish in info() (the HTTP front door's URL)
        self._servers: list = []
        self._tasks: list[asyncio.Task] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started_at = time.time()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> dict:
        self.loop = asyncio.get_running_loop()
        for part in (self.admission, self.forwarder, self.peers, self.registrar):
            part.loop = self.loop
        if self.port is not None:
            srv = await self.loop.create_server(self._accept, self.host, self.port,
                                                backlog=1024)
            self._servers.append(srv)
            self.port = srv.sockets[0].getsockname()[1]
            self.tcp_address = f"tcp://{self.advertise_host}:{self.port}"
        self.registrar.address = self.tcp_address
        if self.uds:
            from zhongkui.files import private_dir

            private_dir(os.path.dirname(self.uds))  # only this user may reach the socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.uds)  # a socket file outlives a killed proxy
            srv = await self.loop.create_unix_server(self._accept, self.uds, backlog=1024)
            self._servers.append(srv)
        self._tasks.append(self.loop.create_task(self._sweep()))
        if self.nuwa_addresses:
            await self.watcher.start(self.info())
        return self.info()

    def info(self) -> dict:
        return {"proxy_id": self.proxy_id, "tcp": self.tcp_address,
                "uds": f"unix://{self.uds}" if self.uds else "", "node": self.node,
                "pid": os.getpid(), **self.extra}

    async def stop(self) -> None:
        for srv in self._servers:
            srv.close()
        for t in self._tasks:
            t.cancel()
        self.admission.close_all()
        self.peers.close_all()
        await self.watcher.close()
        if self.uds:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.uds)

    # ------------------------------------------------------------ connection events
    def _accept(self) -> Conn:
        return self.admission.protocol(self)

    def on_open(self, conn: Conn) -> None:
        if conn.role != "peer":
            self.admission.on_open(conn)

    def admit(self, conn: Conn, kind: int, header: dict, body_bytes: int) -> bool:
        return self.admission.admit(conn, kind, header, body_bytes)

    def on_lost(self, conn: Conn, exc) -> None:
        self.admission.on_lost(conn)
        if conn.role == "peer":
            self.peers.on_lost(conn)
        self.forwarder.on_lost(conn)
        self.registrar.on_lost(conn)

    def on_frame(self, conn: Conn, f: F.Frame) -> None:
        kind = f.kind
        if conn.role == "client":
            if kind == F.REQUEST:
                self._on_request(conn, f)
            elif kind == F.PIECE:
                self.forwarder.on_request_piece(conn, f)
            elif kind == F.CANCEL:
                self.forwarder.on_cancel(conn, f.request_id)
            else:
                conn.reject(FrameError(f"a {F.KINDS[kind]} frame from a client; a client sends "
                                       f"REQUEST, PIECE, CANCEL and PING"))
        else:  # server or peer: replies to what we sent it (a server may also call kuafu.*)
            if kind in (F.RESPONSE, F.ERROR, F.PIECE):
                self.forwarder.on_reply(conn, f)
            elif kind == F.REQUEST and f.header.get("svc") == CONTROL_SERVICE:
                self._control(conn, f)
            elif kind == F.REQUEST:
                conn.write(F.error_frame(f.request_id, BadRequest(
                    "a server connection may only call the control service "
                    f"{CONTROL_SERVICE!r}; make calls on a client connection")))
            elif kind == F.CANCEL:
                pass
            else:
                conn.reject(FrameError(f"a {F.KINDS[kind]} frame from a {conn.role} connection"))

    def _on_request(self, src: Conn, f: F.Frame) -> None:
        h = f.header
        rid = f.request_id
        if not isinstance(rid, int) or self.forwarder.is_in_use(src, rid):
            src.write(F.error_frame(rid if isinstance(rid, int) else 0, BadRequest(
                f"request id {rid!r:.40} is in use or not an integer")))
            return
        if not isinstance(h.get("svc"), str) or not isinstance(h.get("m"), str):
            src.write(F.error_frame(rid, BadRequest(
                "a request header needs 'svc' (service) and 'm' (method) as strings")))
            return
        if h["svc"] == CONTROL_SERVICE:
            self._control(src, f)
            return
        self.forwarder.on_request(src, f)

    # ------------------------------------------------------------ control service
    def _control(self, conn: Conn, f: F.Frame, who=None) -> None:
        rid = f.request_id
        try:
            msg = F.unpack_body(f.header.get("type", "bytes"), f.body)
            m = f.header.get("m")
            if self.guard is not None and m != "ping" and who is None:
                who = self.admission.who(conn, f.header.get("cred"))
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
                eps = [e.describe() for e in self.endpoints.all(svc)]
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid}, json.dumps(eps)))
            elif m == "hello":  # authenticates the connection (lifts the pre-auth limit)
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                                   {"user": who.user if who else "operator"}))
            elif m == "register":
                self.registrar.register(conn, rid, msg, who)
            elif m == "release":
                self.loop.create_task(self.registrar.release(conn, rid, msg, who))
            elif m == "unregister":
                self.registrar.unregister(conn, rid, msg)
            else:
                raise BadRequest(f"the control service {CONTROL_SERVICE!r} has no method "
                                 f"{m!r:.60}; it offers ping, hello, stats, resolve, "
                                 f"register, unregister, release")
        except KuafuError as e:
            conn.write(F.error_frame(rid, e))

    async def _identify_then_control(self, conn: Conn, f: F.Frame) -> None:
        try:
            who = await self.admission.identify(conn, f.header.get("cred"), count=False)
        except KuafuError as e:
            conn.write(F.error_frame(f.request_id, e))
            return
        self._control(conn, f, who)

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
        self.watcher.sweep(now)
        self.peers.sweep(now)
        self.admission.sweep_strangers(now)
        self.forwarder.sweep(now)
        self.admission.sweep_stale(now, self.forwarder.busy_connections())
        self.peers.ping_idle(now)

    # ------------------------------------------------------------ scale to zero
    def cold(self, asleep: dict) -> dict:
        """The service manager's word on which services are asleep ({service: ttl_s}); the
        answer is {service: calls held here} for those that want a replica now."""
        now = self.loop.time()
        self.forwarder.cold.set_asleep(asleep, now)
        self.forwarder.cold.expired(now, self.forwarder._live)  # ended calls want nothing
        return self.forwarder.cold.wanted()

    # ------------------------------------------------------------ status
    def stats(self) -> dict:
        roles: dict[str, int] = {}
        for c in self.admission.conns:
            roles[c.role] = roles.get(c.role, 0) + 1
        peer_conns = self.peers.connections()
        roles["peer"] = len(peer_conns)
        fw = self.forwarder
        return {"proxy_id": self.proxy_id, "tcp": self.tcp_address, "node": self.node,
                "connections": roles, "routes": len(fw.routes), "inbound": len(fw.inbound),
                "held_bytes": fw.held_bytes, "preauth_connections": len(self.admission.preauth),
                "misses_kept": len(self.watcher.misses), "lookups": len(self.watcher.lookups),
                "queued": sum(len(c.attrs["waiters"].queue) for c in
                              list(self.admission.conns) + peer_conns
                              if "waiters" in c.attrs),
                "local_services": {s: len(e) for s, e in self.endpoints.local.items()},
                "remote_services": {s: len(e) for s, e in self.endpoints.remote.items()},
                "hot": fw.hot.snapshot(),
                "cold": {"asleep": sorted(fw.cold.asleep), "held": fw.cold.wanted()},
                "counters": dict(self.counters), "uptime_s": round(time.time() - self.started_at, 1)}
