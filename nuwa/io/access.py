"""Who may do what at a replica: Zhongkui's decision on each parsed request, and what one
user may hold of the replica's shared limits (issue 14's hardening).

Every request carries a token (``cred``); a connection belongs to the first user it signs in
as. Each node operation of a command is decided on its path, the node's creator owning it
(a create is decided by the nearest existing ancestor's owner); an operation the guard does
not know is refused. Per-user quotas (``ServerConfig.*_per_user_max``) count what a user
holds plus what is being proposed for them; the platform's own actors are exempt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

from nuwa import errors as E
from nuwa.core import commands as C
from nuwa.core.tree import Tree
from nuwa.core.wire import READ_OPS, WRITE_OPS, Request, command_ops
from nuwa.io.conn import ClientConn


class Access:
    """The replica's access checks. ``tree`` returns the replica's current tree (a snapshot
    replaces it); ``clients`` is the replica's set of open client connections."""

    def __init__(self, replica_id: int, config, guard, tree: Callable[[], Tree],
                 clients: set[ClientConn]) -> None:
        self.id = replica_id
        self.config = config
        self.guard = guard
        self.tree = tree
        self.clients = clients
        self._pending_by_user: dict[str, int] = {}  # user -> requests in flight (bounded
        #                                             by the connections' inflight limits)
        self._reserved: dict[tuple[str, str], int] = {}  # (user, what) -> being proposed

    @contextlib.asynccontextmanager
    async def in_flight(self, who):
        """Count one request of ``who`` in flight for as long as it is served; refuse it
        when the user already has pending_per_user_max (the platform is exempt)."""
        if who is None or who.platform:
            yield
            return
        n = self._pending_by_user.get(who.user, 0)
        if n >= self.config.pending_per_user_max:
            raise self.quota(who.user, "pending_per_user_max",
                             self.config.pending_per_user_max, "requests in flight")
        self._pending_by_user[who.user] = n + 1
        try:
            yield
        finally:
            left = self._pending_by_user[who.user] - 1
            if left:
                self._pending_by_user[who.user] = left
            else:
                del self._pending_by_user[who.user]

    async def who(self, conn: ClientConn, cred):
        """The verified caller (tokens verified once per connection and token). A connection
        belongs to the first user it signs in as: another user's token on it is refused."""
        from zhongkui.errors import BadCredentials

        hit = conn.who
        if hit is not None and hit[0] == cred and hit[1].expires_at > time.time():
            try:  # as the directory has them now (Zhongkui's revocation, issue 14 defect 5)
                return self.guard.current(hit[1])
            except BadCredentials as e:
                raise E.Unauthenticated(f"{type(e).__name__}: {e}") from None
        if not isinstance(cred, str) or not cred:
            raise E.Unauthenticated("no token (cred); expected a Zhongkui token with every "
                                    "request (`fuxi login`)")
        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            raise E.Unauthenticated(f"{type(e).__name__}: {e}") from None
        if conn.user is None:
            if not who.platform and sum(c.user == who.user for c in self.clients) >= \
                    self.config.connections_per_user_max:
                raise self.quota(who.user, "connections_per_user_max",
                                 self.config.connections_per_user_max, "connections")
            conn.user = who.user
        elif conn.user != who.user:
            raise E.Denied(f"this connection is signed in as {conn.user!r}; a token of "
                           f"{who.user!r} needs a connection of its own")
        conn.who = (cred, who)
        conn.signed_in = True
        return who

    def quota(self, user: str, limit: str, value: int, what: str) -> E.QuotaExceeded:
        return E.QuotaExceeded(f"user {user!r} holds {limit}={value} {what} at replica "
                               f"{self.id}; release some first", limit=limit, limit_value=value,
                               user=user)

    def check_quota(self, who, limit: str, what: str, in_use: int, adding: int = 1) -> None:
        """Refuse ``adding`` more of ``what`` when ``who`` would hold more than the named
        per-user limit (counting what is still being proposed). The platform is exempt."""
        if who is None or who.platform or adding <= 0:
            return
        value = getattr(self.config, limit)
        if in_use + self._reserved.get((who.user, what), 0) + adding > value:
            raise self.quota(who.user, limit, value, what)

    @contextlib.contextmanager
    def reserve(self, who, what: str, n: int):
        """Count ``n`` of ``what`` as held by ``who`` while their proposal is in flight."""
        key = (who.user, what) if who is not None and n > 0 else None
        if key is not None:
            self._reserved[key] = self._reserved.get(key, 0) + n
        try:
            yield
        finally:
            if key is not None:
                left = self._reserved[key] - n
                if left:
                    self._reserved[key] = left
                else:
                    del self._reserved[key]

    def _creator(self, path: str) -> str | None:
        """Who created ``path`` (a directory is found with or without its trailing '/'). The
        root belongs to no user: a user named like its creator must not own the cluster."""
        if path == "/":
            return None
        tree = self.tree()  # dict lookups: this runs for every request
        creator = tree.creator_of(path)
        if creator is None:
            creator = tree.creator_of(path.rstrip("/") if path.endswith("/") else path + "/")
        return creator

    async def _allow(self, who, path: str, perm: str, owner_of: str | None = None) -> None:
        from zhongkui.errors import Denied, ZhongkuiError

        try:
            await self.guard.acheck(who, "nuwa", path, perm,
                                    self._creator(owner_of if owner_of is not None else path))
        except Denied as e:
            raise E.Denied(str(e)) from None
        except ZhongkuiError as e:
            raise E.BadRequest(str(e)) from None

    async def _allow_subtree(self, who, path: str) -> None:
        from zhongkui.core.acl import PROTECTED_NUWA_PREFIXES, under

        for prefix in (*PROTECTED_NUWA_PREFIXES, *self.guard.restricted):
            if prefix.rstrip("/") != path.rstrip("/") and under(prefix, path) and \
                    self._creator(prefix) is not None:
                await self._allow(who, prefix, "delete")

    def _nearest(self, path) -> str:
        """The nearest existing ancestor directory of ``path`` (its owner decides a create,
        with parents=True too)."""
        p = self._parent(path)
        while p != "/" and self._creator(p) is None:
            p = self._parent(p)
        return p

    @staticmethod
    def _parent(path) -> str:
        if not isinstance(path, str):
            return "/"
        return path.rstrip("/").rpartition("/")[0] + "/"

    def own_session(self, who, sid: int, action: str, missing=E.NoSession):
        """The open session ``sid`` if ``who`` owns it (administrators may act on any)."""
        sess = self.tree().session(sid)
        if sess is None:
            raise missing(f"session {sid} is not open (expired or closed)", session=sid)
        if sess.owner != who.user and not who.admin:
            self.guard.report_denial(who.user, action, f"session:{sid}", "another user's session")
            raise E.Denied(f"user {who.user!r} may not {action} {sess.owner!r}'s session {sid}")
        return sess

    async def authorize(self, who, r: Request):
        """Zhongkui's decision on the parsed request; returns the command to propose (for
        writes: the parsed command with each creator set to the verified caller). Every node
        operation of the command tree is checked; an op this does not know is refused."""
        op = r.op
        if op in ("auth", "status", "members", "unwatch"):
            return None  # any signed-in user; unwatch touches only the caller's own watches
        if op in READ_OPS or op == "watch":
            await self._allow(who, r.path, "read")
            return None
        if op in ("conf_change", "transfer_leader", "snapshot"):  # a backup reads every entry
            await self._allow(who, "/", "admin")
            return None
        if op == "session_keepalive":
            self.own_session(who, r.session, "keep alive", E.SessionExpired)
            return None
        if op == "session_open":
            return None  # opened in the caller's name (``ReplicaServer``), within their quota
        if op == "session_close" and isinstance(r.cmd, C.SessionClose):
            self.own_session(who, r.cmd.session, "close")
            return r.cmd
        if op in WRITE_OPS and isinstance(r.cmd, (C.Create, C.Set, C.Delete, C.Txn)) and \
                (op == "txn") == isinstance(r.cmd, C.Txn):
            ops = [await self._allow_node_op(who, c) for c in command_ops(r.cmd)]
            return C.Txn(tuple(ops)) if isinstance(r.cmd, C.Txn) else ops[0]
        self.guard.report_denial(who.user, str(op), "nuwa", "an operation the guard does not know")
        raise E.Denied(f"op {op!r} is not one the guard knows; refused")

    async def _allow_node_op(self, who, c):
        if isinstance(c, C.Create):
            await self._allow(who, c.path, "create", self._nearest(c.path))
            if c.ephemeral_session is not None:
                self.own_session(who, c.ephemeral_session, "create an ephemeral node in")
            # The creator owns the node: as verified, not as told.
            return dataclasses.replace(c, creator=who.user)
        if isinstance(c, C.Set):
            await self._allow(who, c.path, "write")
            return c
        if isinstance(c, C.Delete):
            await self._allow(who, c.path, "delete")
            if c.recursive:
                # A subtree may hold protected or restricted prefixes the open namespace
                # does not reach: deleting it needs delete on each of them too.
                await self._allow_subtree(who, c.path)
            return c
        if isinstance(c, C.Check):
            await self._allow(who, c.path, "read")
            return c
        raise E.Denied(f"txn op {type(c).__name__} is not one the guard knows; refused")
