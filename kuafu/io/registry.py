"""Servers attaching to a Kuafu proxy: ``kuafu.register``, ``kuafu.unregister``, and what
happens when a server's connection ends.

A connection that registers a service becomes a *server* connection; the endpoint is
published in Nuwa (``EndpointWatcher.publish``) before the reply. With access control on, who
may attach a name is decided first (``Ownership``). Unregistering stops routing to the
endpoint at once; the reply follows every request already sent on that ordered connection,
so the server then finishes exactly what it has received."""

from __future__ import annotations

import itertools

from kuafu import frame as F
from kuafu.core import routing
from kuafu.errors import BadRequest, KuafuError, Unavailable
from kuafu.io.conn import Conn


class Registrar:
    """``has_calls_from(conn)`` says whether a connection has calls in flight at the proxy
    (such a connection cannot become a server connection)."""

    def __init__(self, proxy_id: str, node: str, endpoints: routing.EndpointTable, watcher,
                 ownership, guard, has_calls_from):
        self.proxy_id, self.node = proxy_id, node
        self.endpoints = endpoints
        self.watcher = watcher
        self.ownership = ownership
        self.guard = guard
        self.has_calls_from = has_calls_from
        self.address = ""  # the proxy's TCP address, which endpoints are published with
        self.ep_seq = itertools.count(1)
        self.loop = None

    def register(self, conn: Conn, rid: int, msg, who=None) -> None:
        if not isinstance(msg, dict) or "service" not in msg:
            raise BadRequest("register takes a map with 'service' (and 'idempotent': "
                             "comma-separated method names; 'version' and 'share': a canary's "
                             "version and its percent of the calls)")
        svc = routing.check_service_name(msg["service"])
        if svc == routing.CONTROL_SERVICE:
            raise BadRequest(f"{routing.CONTROL_SERVICE!r} is the proxy's own service")
        idem = [m for m in str(msg.get("idempotent", "")).split(",") if m]
        never = [m for m in str(msg.get("never", "")).split(",") if m]  # idempotent=False
        # A canary's endpoints say their version and the share of the calls it gets.
        traffic = (routing.check_version(msg.get("version")), routing.check_share(msg.get("share")),
                   never)
        self._check_may_serve(conn, svc)
        conn.role = "server"
        if self.guard is None:
            self._attach(conn, rid, svc, idem, None, traffic)
            return

        async def decide():
            # Who owns the name decides who may serve it: FuxiMaster's registration record,
            # else the persistent claim of whoever attached it first -- never whoever
            # happens to hold a live endpoint now.
            try:
                owner = await self.ownership.owner_for(svc, who)
                self._check_may_serve(conn, svc)
            except KuafuError as e:
                conn.write(F.error_frame(rid, e))
                return
            except Exception as e:  # noqa: BLE001 - Nuwa trouble: fail closed
                conn.write(F.error_frame(rid, Unavailable(
                    f"could not decide who owns {svc!r}: {type(e).__name__}: {e}")))
                return
            if not conn.closed:
                self._attach(conn, rid, svc, idem, owner, traffic)
        self.loop.create_task(decide())

    def _check_may_serve(self, conn: Conn, svc: str) -> None:
        if conn.role == "client" and self.has_calls_from(conn):
            raise BadRequest("a connection with calls in flight cannot become a server "
                             "connection; attach servers on their own connection")
        self.endpoints.check_capacity(svc, len(conn.attrs.get("endpoints", ())))

    def _attach(self, conn: Conn, rid: int, svc: str, idem: list, owner,
                traffic: tuple = ("", None, ())) -> None:
        name = f"{self.proxy_id}~{next(self.ep_seq)}"
        ep = routing.Endpoint(name, svc, self.proxy_id, self.address, conn, idem, self.node,
                              owner, *traffic)
        self.endpoints.add_local(ep)
        conn.attrs.setdefault("endpoints", set()).add(name)

        async def publish():
            try:
                if self.watcher.nuwa is not None:
                    await self.watcher.publish(ep)
                conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                                   {"endpoint": name}))
            except Exception as e:  # noqa: BLE001 - told to the registering server
                self.remove(name)
                conn.write(F.error_frame(rid, Unavailable(
                    f"could not publish {svc!r} in Nuwa: {e}")))
        self.loop.create_task(publish())

    def unregister(self, conn: Conn, rid: int, msg) -> None:
        svc = msg.get("service") if isinstance(msg, dict) else None
        by_name = self.endpoints.by_name
        names = [n for n in conn.attrs.get("endpoints", ())
                 if n in by_name and by_name[n].service == svc]
        if not names:
            raise BadRequest(f"this connection has no endpoint of {svc!r:.80} registered")

        # From now on no request goes to these endpoints, from this node or from others (a
        # proxy whose view lags gets "not here any more" and goes elsewhere). The reply
        # follows every request already sent on this ordered connection, so once the server
        # has it, what it must finish before leaving is exactly what it has received.
        for n in names:
            self.endpoints.remove_local(n)
            conn.attrs["endpoints"].discard(n)

        async def withdraw():
            for n in names:
                await self.watcher.unpublish(n)
            conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid},
                                               {"removed": str(len(names))}))
        self.loop.create_task(withdraw())

    async def release(self, conn: Conn, rid: int, msg, who) -> None:
        """``kuafu.release``: free a claimed name that has no endpoint left."""
        try:
            svc = routing.check_service_name(msg.get("service") if isinstance(msg, dict)
                                             else None)
            await self.ownership.release(svc, who, lambda: bool(self.endpoints.all(svc)))
        except KuafuError as e:
            conn.write(F.error_frame(rid, e))
            return
        conn.write_frames(F.encode_message(F.RESPONSE, {"id": rid}, {"released": svc}))

    def remove(self, name: str) -> None:
        """An endpoint of this proxy is gone (its connection broke, or publishing failed)."""
        ep = self.endpoints.remove_local(name)
        if ep is None:
            return
        if ep.conn is not None:
            ep.conn.attrs.get("endpoints", set()).discard(name)
        self.watcher.withdraw_soon(name)

    def on_lost(self, conn: Conn) -> None:
        for name in list(conn.attrs.get("endpoints", ())):
            self.remove(name)
