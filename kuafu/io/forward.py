"""Call forwarding at a Kuafu proxy: requests in, replies back, without decoding bodies.

A request's header id is rewritten for the connection it goes out on, and pieces follow
their first frame. The endpoint is chosen by ``kuafu.core.routing`` (power of two choices on
the requests in flight, a seeded rng); a request for an endpoint on another node goes over a
pooled connection to that node's proxy (``PeerPool``), which delivers it to the endpoint it
names (``ep``).

Retries: a request that certainly did not reach a server (no connection to the endpoint's
proxy, the endpoint gone when it arrived) goes to another endpoint, up to
``PROXY_RETRIES_MAX``; one that may have run is sent again only when idempotent (the caller
said so, or the server declared the method). An idempotent call may ask for a backup copy
(``bk``): the first reply wins and the other copy is cancelled.

Flow control: each connection requests are sent on has a window (requests and bytes in
flight) with a bounded FIFO of requests waiting for room (``SERVICE_QUEUE_MAX``; beyond it
callers get ``Overloaded``). Request bytes held for a source connection and not yet
forwarded are bounded (``SOURCE_QUEUED_BYTES_MAX``): above it the proxy stops reading that
connection. A connection whose write buffer is full pauses whoever feeds it."""

from __future__ import annotations

import itertools

from kuafu import frame as F
from kuafu.core import coldhold, flow, hotroute, routing
from kuafu.core.frame import check_announced_size, timeout_from_header
from kuafu.errors import (BadRequest, KuafuError, Overloaded, TimedOut, Unavailable,
                          UnavailableInFlight)
from kuafu.io.conn import Conn

SERVICE_QUEUE_MAX = 1024            # requests waiting for room toward one connection
SERVER_REQUESTS_IN_FLIGHT_MAX = 256  # requests in flight to one attached server
SOURCE_QUEUED_BYTES_MAX = 32 * 1024 * 1024  # request bytes held for one source, not yet sent
SOURCE_REQUESTS_IN_FLIGHT_MAX = 4096  # requests one connection has in flight at this proxy
PROXY_RETRIES_MAX = 3               # re-dispatches of one request to other endpoints


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


class Forwarder:
    def __init__(self, endpoints: routing.EndpointTable, admission, watcher, counters: dict,
                 rng):
        self.endpoints = endpoints
        self.admission = admission  # identities and the ACL (its guard is None: no auth)
        self.watcher = watcher      # Nuwa lookups of services not known yet (or None)
        self.counters = counters
        self.rng = rng              # a random.Random: the draw of power of two choices
        self.peers = None           # the PeerPool, wired by the proxy
        self.latencies = routing.Latencies()
        self.hot = hotroute.HotEndpoints()  # hot replicas, steered away from (issue 20 part 2)
        # Calls to services scaled to zero, held until a replica is up (issue 20 part 1).
        self.cold = coldhold.ColdHolds()
        endpoints.on_added = self._endpoint_added
        self.routes: dict[tuple, Route] = {}   # (target conn, its id) -> route
        self.inbound: dict[tuple, Route] = {}  # (source conn, its id) -> route
        self.held_bytes = 0
        self.loop = None  # the proxy's event loop, once started

    @property
    def guard(self):
        return self.admission.guard

    # ------------------------------------------------------------ requests in
    def on_request(self, src: Conn, f: F.Frame) -> None:
        """A REQUEST for a service (not the control service) from a client connection."""
        h = f.header
        rid = f.request_id
        svc = h["svc"]
        try:
            routing.check_service_name(svc)  # it becomes a Nuwa path and a key of bounded maps
        except BadRequest as e:
            src.write(F.error_frame(rid, e))
            return
        if src.attrs.get("inflight", 0) >= SOURCE_REQUESTS_IN_FLIGHT_MAX:
            self.counters["overloaded"] += 1
            src.write(F.error_frame(rid, Overloaded(
                f"this connection has {SOURCE_REQUESTS_IN_FLIGHT_MAX} requests in flight at "
                f"the proxy (SOURCE_REQUESTS_IN_FLIGHT_MAX); not sent")))
            return
        size = h.get("size")
        if h.get("more") and not check_announced_size(size, len(f.body)):
            src.write(F.error_frame(rid, BadRequest(
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
            self.fail(r, TimedOut("the deadline had passed when the request reached the proxy;"
                                  " not sent"))
            return
        if self.guard is not None:
            r.who = self.admission.who(src, h.get("cred"))
            if r.who is None:  # a key we have not seen: fetch the keyring, then go on
                self.loop.create_task(self._identify_then_dispatch(r))
                return
            if isinstance(r.who, KuafuError):
                err, r.who = r.who, None
                self.fail(r, err)
                return
        self.dispatch(r)

    def is_in_use(self, src: Conn, rid) -> bool:
        return (src, rid) in self.inbound

    async def _identify_then_dispatch(self, r: Route) -> None:
        try:
            r.who = await self.admission.identify(r.src, r.header.get("cred"))
        except KuafuError as e:
            self.fail(r, e)
            return
        if self._live(r):
            self.dispatch(r)

    def _live(self, r: Route) -> bool:
        return (r.src, r.src_id) in self.inbound

    def on_request_piece(self, src: Conn, f: F.Frame) -> None:
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

    def on_cancel(self, src: Conn, rid) -> None:
        r = self.inbound_pop((src, rid))
        if r is not None:
            self.drop_outbound(r, cancel=True)

    def _forward_piece(self, r: Route, f: F.Frame) -> None:
        h = {"id": r.tid, "seq": f.header.get("seq"), "more": f.more}
        r.target.write(F.encode(F.PIECE, h, f.body))
        self._backpressure(r.src, r.target)

    def inbound_pop(self, key) -> Route | None:
        r = self.inbound.pop(key, None)
        if r is not None:
            key[0].attrs["inflight"] = key[0].attrs.get("inflight", 1) - 1
        return r

    def has_calls_from(self, conn: Conn) -> bool:
        return any(k[0] is conn for k in self.inbound)

    # ------------------------------------------------------------ choosing and sending
    def _candidates(self, r: Route) -> list:
        return self.endpoints.candidates(r.svc, r.tried, r.header.get("ep"),
                                         self.peers.down, self.loop.time())

    def _avoid(self, r: Route) -> frozenset:
        """The service's hot endpoints (none for a call pinned to one); each flag change
        becomes an event and a metric."""
        if r.header.get("ep") is not None:
            return frozenset()
        out = self.hot.avoid(r.svc, self.loop.time(), self.rng,
                             lambda: {e.name for e in self.endpoints.all(r.svc)})
        if self.hot.pending:
            from kuafu.io.hotspots import report

            report(self.hot.changes(), self.hot)
        return out

    def dispatch(self, r: Route) -> None:
        if self.loop.time() >= r.deadline:
            self.fail(r, TimedOut(f"the deadline passed before {r.svc!r} could be reached; "
                                  f"not sent"))
            return
        ep = routing.choose(self._candidates(r), self.rng, self._avoid(r))
        if ep is None and r.header.get("ep") is None and not self.endpoints.has_any(r.svc) \
                and self.cold.is_asleep(r.svc, self.loop.time()):
            self._hold_cold(r)
            return
        if ep is None and self.watcher is not None and self.watcher.nuwa is not None \
                and routing.may_look_up(self.endpoints, self.watcher.misses, r.svc,
                                        tried=bool(r.tried), pinned=r.header.get("ep"),
                                        looked_up=r.looked_up, now=self.loop.time()):
            self._look_up(r)
            return
        if ep is None:
            why = routing.no_endpoint_reason(r.svc, r.header.get("ep"), len(r.tried),
                                             self.endpoints.known(r.svc))
            self.fail(r, Unavailable(why + "; not sent", maybe_executed=False))
            return
        r.ep = ep
        r.tried.add(ep.name)
        if self.guard is not None and not r.authorized:
            try:
                if not self.admission.authorize(r, ep, lambda: self._again(r, ep)):
                    return
            except KuafuError as e:
                self.fail(r, e)
                return
        if ep.conn is not None:
            self._send_to(ep.conn, r)
            return
        conn = self.peers.get(ep.address)
        if conn is not None:
            self._send_to(conn, r)
        else:
            self.peers.wait(ep.address, r)

    # ------------------------------------------------------------ services scaled to zero
    def _hold_cold(self, r: Route) -> None:
        """No replica of ``r``'s service runs (scaled to zero): hold the call (never sent yet,
        so sent once later) until one is up, or refuse it at once when too many wait."""
        now = self.loop.time()
        why = self.cold.hold(r.svc, r, now, self._live)
        if why is not None:
            self.counters["cold_refused"] += 1
            self.fail(r, Unavailable(why + "; not sent", maybe_executed=False))
            return
        self.counters["cold_held"] += 1
        self.loop.call_later(max(0.0, r.deadline - coldhold.COLD_DEADLINE_MARGIN_S - now),
                             self._cold_deadline, r)

    def _cold_deadline(self, r: Route) -> None:
        if self._live(r) and not r.sent and r.target is None and r.svc in self.cold.held \
                and any(h.key is r for h in self.cold.held[r.svc]):
            self.fail(r, TimedOut(f"{r.svc}.{r.method}: the deadline came while the service "
                                  f"woke from zero (held at the proxy); not sent"))

    def _endpoint_added(self, svc: str) -> None:
        if svc in self.cold.held and self.loop is not None:
            self.loop.call_soon(self._release_cold, svc)  # not inside the table's update

    def _release_cold(self, svc: str) -> None:
        if not self.endpoints.has_any(svc):
            return
        for r in self.cold.release(svc):
            if self._live(r):
                self.dispatch(r)

    def cold_sweep(self, now: float) -> None:
        """Held calls past COLD_CALL_WAIT_S fail, not sent; a missed endpoint event is
        caught here too."""
        for svc in [s for s in self.cold.held if self.endpoints.has_any(s)]:
            self._release_cold(svc)
        for r in self.cold.expired(now, self._live):
            self.fail(r, Unavailable(
                f"{r.svc!r} is scaled to zero and no replica of it was up within "
                f"COLD_CALL_WAIT_S={self.cold.wait_s:g}s; not sent", maybe_executed=False))

    def _again(self, r: Route, ep) -> None:
        """Decide ``r`` again (fresh ACL entries or revocations), if it is still wanted."""
        if self._live(r):
            r.tried.discard(ep.name)
            self.dispatch(r)

    def _look_up(self, r: Route) -> None:
        r.looked_up = True
        try:
            self.watcher.look_up(r.svc, r, self._looked_up)
        except Overloaded as e:
            self.counters["overloaded"] += 1
            self.fail(r, e)

    def _looked_up(self, waiting: list) -> None:
        for w in waiting:
            if self._live(w):
                self.dispatch(w)

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
            self.fail(r, Overloaded(f"{r.svc!r} at endpoint {r.ep.name}: {e}"))
            return
        if ok:
            self._transmit(r)
        else:
            r.queued = True

    def _transmit(self, r: Route) -> None:
        r.queued = False
        r.admitted = True
        target = r.target
        if r.ep.conn is not None and self.endpoints.by_name.get(r.ep.name) is not r.ep:
            # Its endpoint unregistered (a drain) while the call waited here for room: it was
            # never written, so it goes elsewhere -- on the next turn of the loop, since this
            # may run inside another call's release.
            self.loop.call_soon(self._redirect, r, target)
            return
        h = dict(r.header)
        h["id"] = r.tid
        h["dl"] = max(1, int((r.deadline - self.loop.time()) * 1000))
        h.pop("nw", None)
        if r.ep.conn is None:
            h["ep"] = r.ep.name
        else:
            h.pop("ep", None)
        r.idem = routing.call_idempotent(r.method, bool(r.header.get("idem")), r.ep.idem,
                                         r.ep.never)
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

    def _redirect(self, r: Route, target: Conn) -> None:
        if r.target is not target or r.sent or not self._live(r):
            return  # answered, cancelled or timed out meanwhile
        self._release(r)
        self.counters["redirected"] += 1
        self._retry(r, f"endpoint {r.ep.name} was withdrawn before the call was sent to it; "
                       f"not sent")

    # ------------------------------------------------------------ other proxies
    def peer_ready(self, conn: Conn, waiting: list) -> None:
        for r in waiting:
            if self._live(r):
                self._send_to(conn, r)

    def peer_unreachable(self, address: str, waiting: list, err: KuafuError) -> None:
        for r in waiting:
            for ep in self.endpoints.remote.get(r.svc, {}).values():
                if ep.address == address:
                    r.tried.add(ep.name)
            self._retry(r, f"cannot reach the proxy at {address} ({err}); not sent")

    # ------------------------------------------------------------ backup requests
    def _arm_backup(self, r: Route) -> None:
        """``bk`` in the header asks for a second copy of an idempotent call, sent to another
        endpoint if no reply came within ``ms`` milliseconds, or within the service's recent
        ``p``-th latency percentile. The first reply wins; the other copy is cancelled."""
        delay = routing.backup_delay(r.header.get("bk"), r.idem, r.retryable,
                                     lambda pct: self.latencies.percentile(r.svc, pct))
        if delay is not None:
            r.backup_timer = self.loop.call_later(delay, self._send_backup, r)

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
        self.dispatch(b)

    def _settle_twin(self, winner: Route) -> None:
        """``winner`` answered first: its twin is cancelled and forgotten."""
        other = winner.twin
        if other is None:
            return
        winner.twin = other.twin = None
        if winner.is_backup:
            self.counters["backups_won"] += 1
            self.inbound[(winner.src, winner.src_id)] = winner
        self.drop_outbound(other, cancel=True)

    # ------------------------------------------------------------ holding and backpressure
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
    def on_reply(self, t: Conn, f: F.Frame) -> None:
        r = self.routes.get((t, f.request_id))
        if r is None:
            if f.request_id == 0 and f.kind == F.ERROR:
                t.close()  # it refused our bytes
            return  # a reply to a call that was cancelled or timed out
        if f.kind == F.ERROR and not r.resp_started:
            code = f.header.get("code")
            if code == "Unavailable" and not f.header.get("ex") and routing.may_resend(
                    sent=r.sent, idempotent=r.idem, retryable=r.retryable, answered=False,
                    not_run=True):  # the server says it did not run it
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
            self.latencies.record(r.svc, self.loop.time() - r.sent_at)
            self.hot.record(r.svc, r.ep.name, self.loop.time() - r.sent_at)
        if f.more:
            self._backpressure(t, r.src)
            return
        self.counters["responses"] += 1
        self.inbound_pop((r.src, r.src_id))
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

    def drop_outbound(self, r: Route, cancel: bool) -> None:
        if r.backup_timer is not None:
            r.backup_timer.cancel()
            r.backup_timer = None
        twin, r.twin = r.twin, None
        if twin is not None:
            twin.twin = None
            self.drop_outbound(twin, cancel)
        t = r.target
        if t is not None and r.sent and cancel and not t.closed:
            t.write(F.encode(F.CANCEL, {"id": r.tid}))
        self._release(r)
        self._unhold(r, r.held)
        self.peers.forget(r)

    def _retry(self, r: Route, why: str) -> None:
        if not r.retryable or r.retries >= PROXY_RETRIES_MAX:
            self.fail(r, Unavailable(f"{r.svc}.{r.method}: {why}; no more retries "
                                     f"(PROXY_RETRIES_MAX={PROXY_RETRIES_MAX})",
                                     maybe_executed=r.sent))
            return
        r.retries += 1
        r.sent = False
        self.counters["retries"] += 1
        self.dispatch(r)

    def fail(self, r: Route, err: KuafuError) -> None:
        if r.is_backup and r.twin is not None:
            # A backup copy that could not go: the original still carries the call.
            r.twin.twin = None
            r.twin = None
            self.drop_outbound(r, cancel=True)
            return
        if isinstance(err, TimedOut):
            self.counters["timed_out"] += 1
        self.counters["errors"] += 1
        self.inbound_pop((r.src, r.src_id))
        self.drop_outbound(r, cancel=True)
        if not r.src.closed:
            r.src.write(F.error_frame(r.src_id, err))

    # ------------------------------------------------------------ connections ending
    def on_lost(self, conn: Conn) -> None:
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
            if routing.may_resend(sent=r.sent, idempotent=r.idem, retryable=r.retryable,
                                  answered=r.resp_started):
                self._retry(r, "its connection closed before it was sent" if not r.sent else
                            "the connection carrying it was lost; idempotent, so resent")
            elif not r.sent:
                self._retry(r, "its connection closed before it was sent")  # fails: not kept
            else:
                never = r.method in r.ep.never
                self.fail(r, UnavailableInFlight(
                    f"the endpoint {r.ep.name} of {r.svc!r} went away with the call in flight; "
                    f"it may have run " + ("(its method is declared never idempotent: not "
                                           "resent)" if never else
                                           "(declare the method idempotent to have it "
                                           "retried)"), no_resend=never))
        # Requests this connection had sent us.
        for key in [k for k in self.inbound if k[0] is conn]:
            r = self.inbound_pop(key)
            self.drop_outbound(r, cancel=True)

    # ------------------------------------------------------------ sweeping
    def sweep(self, now: float) -> None:
        """Fail the calls past their deadline."""
        for r in [r for r in self.inbound.values() if now >= r.deadline]:
            cold = not r.sent and r.svc in self.cold.held
            self.fail(r, TimedOut(f"no reply from {r.svc}.{r.method} by the deadline"
                                  + ("; it may have run" if r.sent else
                                     "; held while the service woke from zero, not sent"
                                     if cold else "; not sent")))
        self.cold_sweep(now)

    def busy_connections(self) -> set:
        return {k[0] for k in self.routes} | {k[0] for k in self.inbound}
