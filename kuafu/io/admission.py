"""Who gets in at a Kuafu proxy: connection admission and authentication (Zhongkui).

``Admission`` holds the proxy's accepted connections and bounds them (``conn_max``); with
access control on it keeps the connections that have not presented a valid token yet
(``preauth``, oldest first, at most ``preauth_conn_max``: the oldest stranger is evicted), lets
a frame over the pre-auth size in only if its own header carries a valid token, verifies each
caller's token once per connection, decides whether a caller may call an endpoint's service
(the ACL, refreshed at most once before a denial) and closes connections that stay silent,
stall mid-frame or never authenticate."""

from __future__ import annotations

from collections import OrderedDict

from kuafu import frame as F
from kuafu.errors import Denied, KuafuError, Overloaded, Unauthenticated
from kuafu.io.conn import Conn, stale_reason

PROXY_CONNECTIONS_MAX = 16_384            # accepted connections at once; more are closed at once
KUAFU_PREAUTH_FRAME_BYTES_MAX = 16 * 1024  # header + body of a frame before the connection authenticated
PREAUTH_CONNECTIONS_MAX = 1024      # connections not yet authenticated; more evict the oldest


class Admission:
    def __init__(self, guard, counters: dict, *, conn_max: int, preauth_conn_max: int,
                 preauth_frame_bytes_max: int, idle_timeout_s: float, hello_timeout_s: float,
                 partial_timeout_s: float):
        # Zhongkui: every caller presents a token (``cred``), verified here; calls are allowed
        # by ``service:<name> call`` on the endpoint's owner. None: no authentication.
        self.guard = guard
        self.counters = counters
        self.conn_max, self.preauth_conn_max = int(conn_max), int(preauth_conn_max)
        self.preauth_frame_bytes_max = int(preauth_frame_bytes_max)
        self.idle_timeout_s, self.hello_timeout_s = idle_timeout_s, hello_timeout_s
        self.partial_timeout_s = partial_timeout_s
        self.conns: set[Conn] = set()
        self.preauth: OrderedDict[Conn, None] = OrderedDict()  # oldest first
        self.loop = None  # the proxy's event loop, once started

    # ------------------------------------------------------------ connections
    def protocol(self, handler) -> Conn:
        """An accepted connection: with access control on, it may send only small frames
        until it presents a valid token (KUAFU_PREAUTH_FRAME_BYTES_MAX)."""
        return Conn(handler, preauth_bytes_max=self.preauth_frame_bytes_max
                    if self.guard is not None else None)

    def on_open(self, conn: Conn) -> None:
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
            self.preauth[conn] = None
            while len(self.preauth) > self.preauth_conn_max:
                # Legitimate clients authenticate with their first request; the oldest
                # stranger goes (refusing the newest would let strangers lock everyone out).
                old, _ = self.preauth.popitem(last=False)
                self.counters["evicted_preauth"] += 1
                old.reject(Overloaded(f"{self.preauth_conn_max} connections are waiting to "
                                      f"authenticate (PREAUTH_CONNECTIONS_MAX); this was the "
                                      f"oldest"))

    def on_lost(self, conn: Conn) -> None:
        self.conns.discard(conn)
        self.preauth.pop(conn, None)

    def admit(self, conn: Conn, kind: int, header: dict, body_bytes: int) -> bool:
        """May a frame larger than the pre-auth limit arrive on ``conn``? Only if it carries a
        valid token itself (decided before its body is received)."""
        if self.guard is None:
            return True
        if kind != F.REQUEST:
            return False
        who = self.who(conn, header.get("cred"))
        return who is not None and not isinstance(who, KuafuError)

    def close_all(self) -> None:
        for c in list(self.conns):
            c.close()

    # ------------------------------------------------------------ identity
    def authenticated(self, conn: Conn, cred, who) -> None:
        conn.attrs["who"] = (cred, who)
        if conn.preauth:
            conn.authenticated()
        self.preauth.pop(conn, None)

    def who(self, conn: Conn, cred):
        """The verified caller of a request on ``conn`` (tokens are verified once per
        connection and token), an Unauthenticated error, or None when the keyring must be
        fetched first (then ``identify``)."""
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
        self.authenticated(conn, cred, who)
        return who

    async def identify(self, conn: Conn, cred, count: bool = True):
        """The caller, after fetching the keyring; Unauthenticated when the token is bad."""
        from zhongkui.errors import BadCredentials

        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            if count:
                self.counters["unauthenticated"] += 1
            raise Unauthenticated(f"{type(e).__name__}: {e}") from None
        self.authenticated(conn, cred, who)
        return who

    # ------------------------------------------------------------ calls
    def authorize(self, r, ep, again) -> bool:
        """May ``r``'s caller call ``ep``'s service? True: yes. False: being decided again
        with fresh revocations or ACL entries (``again()`` is called then). Denied: no (the
        denial is recorded)."""
        g = self.guard
        if g.must_confirm() and not r.header.get("zk_confirmed"):
            # Identities older than REVOCATION_CONFIRM_S: learn revocations first (Zhongkui's
            # revoke_within_s bound), then decide this call again.
            r.header["zk_confirmed"] = 1

            async def confirmed():
                await g.confirm()
                again()
            self.loop.create_task(confirmed())
            return False
        if g.acl_stale():
            g.refresh_soon()
        if g.decision(r.who, "service", r.svc, "call", ep.owner).allowed:
            r.authorized = True
            return True
        if not r.header.get("zk_refreshed") and g.fetch_acl is not None:
            r.header["zk_refreshed"] = 1  # at most one refresh per call (shared, rate limited)

            async def refreshed():
                await g.refresh_before_denial()
                again()
            self.loop.create_task(refreshed())
            return False
        from zhongkui.errors import Denied as ZDenied

        self.counters["denied"] += 1
        try:
            g.check(r.who, "service", r.svc, "call", ep.owner)  # records the denial
        except ZDenied as e:
            raise Denied(str(e)) from None
        return False

    # ------------------------------------------------------------ sweeping
    def sweep_strangers(self, now: float) -> None:
        """Close the connections that presented no valid token within hello_timeout_s."""
        while self.preauth:  # oldest first: strangers that never authenticated
            c = next(iter(self.preauth))
            if now - c.opened_at <= self.hello_timeout_s:
                break
            del self.preauth[c]
            self.counters["closed_unauthenticated"] += 1
            c.reject(Unauthenticated(f"no valid token within {self.hello_timeout_s:g}s of "
                                     f"connecting (HELLO_TIMEOUT_S)"))

    def sweep_stale(self, now: float, busy: set) -> None:
        """Close connections that stay silent or stall mid-frame (not those in ``busy``:
        they carry calls)."""
        for c in list(self.conns):
            if c in busy:
                continue
            why = stale_reason(c, now, self.idle_timeout_s, self.hello_timeout_s,
                               self.partial_timeout_s)
            if why:
                self.counters["closed_stale"] += 1
                c.close()
