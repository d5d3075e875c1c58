"""The Nuwa client: ``nuwa.connect(addresses)`` (blocking) or ``AsyncNuwa`` (asyncio).

It talks to the leader over one TCP connection and follows leader changes: a ``NotLeader``
answer carries the leader's address, and a broken connection makes the client try the other
replicas. Every call has a timeout (``timeout_s``).

Retry rules, in the Jepsen sense of ok / fail / info:

* A request the server refused (``NotLeader``, or one that never reached it) is retried on
  the next replica: it cannot have taken effect.
* A *write* whose answer was lost (the connection dropped, the call timed out, the leader
  changed mid-way) raises ``OutcomeUnknown``. It may or may not have happened, and the client
  never retries it silently. Reads in that situation are simply retried.

Watches resume where they left off: one command can make several events at one revision (a
txn, a recursive delete, a session expiry), so every event carries its position
(``revision``, ``index``). The client remembers the position of the last event it delivered
and re-subscribes from exactly there after a reconnect, so every event is delivered once, in
order. It either misses nothing or raises ``Compacted`` when the server no longer holds that
history.

Sessions have a state, like kazoo's (``SessionState``)::

    CONNECTED --keep-alive fails--> SUSPENDED --keep-alive answered--> CONNECTED
    CONNECTED / SUSPENDED --expired on the server, or no keep-alive answered within
                            the TTL--> LOST          (final)
    CONNECTED / SUSPENDED --close()--> CLOSED        (final)

``LOST`` is declared by the client itself once no keep-alive was answered within the TTL
(counted on the monotonic clock from when the last answered one was *sent*), which is never
later than the server can expire it: whoever holds a lock under a session stops claiming it
before anyone else can get it. Listeners (``Session.add_listener``,
``AsyncNuwa.add_session_listener``) hear every change. A lost session never comes back; the
client opens a new, distinct session (a new id) for later ephemeral creates, and the recipes
(``nuwa.recipes``) bound to the old one report their loss instead of carrying on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import itertools
import logging
import random
import threading
from typing import Any, AsyncIterator, Iterator, Sequence

import msgpack

from nuwa import errors as E
from nuwa.io.transport import CONNECT_TIMEOUT_S, frame, read_frame

REQUEST_TIMEOUT_S = 5.0
LEADER_RETRY_BACKOFF_S = 0.05
WATCH_QUEUE_MAX = 100_000  # events buffered for one watch before the watch is failed
SESSION_TTL_DEFAULT_S = 10.0
SNAPSHOT_ATTEMPTS_MAX = 3  # a backup image started again after a leader change, at most
SESSION_CLOSE_TIMEOUT_S = 2.0  # a lost session is closed on the server at best effort, this long

logger = logging.getLogger(__name__)


class SessionState(str, enum.Enum):
    CONNECTED = "connected"  # keep-alives are answered
    SUSPENDED = "suspended"  # the last keep-alive failed; the session may still be alive
    LOST = "lost"            # expired, or not confirmed within its TTL: gone for good
    CLOSED = "closed"        # closed by its owner


_SESSION_MOVES = {
    SessionState.CONNECTED: {SessionState.SUSPENDED, SessionState.LOST, SessionState.CLOSED},
    SessionState.SUSPENDED: {SessionState.CONNECTED, SessionState.LOST, SessionState.CLOSED},
    SessionState.LOST: set(),
    SessionState.CLOSED: set(),
}


class _Connection:
    def __init__(self, reader, writer, on_watch, on_lost):
        self.reader, self.writer = reader, writer
        self.futures: dict[int, asyncio.Future] = {}
        self.on_watch = on_watch
        self.on_lost = on_lost
        self.ids = itertools.count(1)
        self.task = asyncio.get_running_loop().create_task(self._read())
        self.closed = False
        self.dropped = False  # we closed it on purpose (e.g. NotLeader): no resubscription

    async def _read(self) -> None:
        try:
            while True:
                msg = msgpack.unpackb(await read_frame(self.reader), raw=False)
                if "watch" in msg and "id" not in msg:
                    self.on_watch(msg)
                    continue
                if msg.get("id") is None and "error" in msg:
                    break  # the replica is closing this connection (idle, or a bad frame)
                fut = self.futures.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except Exception:
            pass
        finally:
            self.closed = True
            for fut in self.futures.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection to the replica was lost"))
            self.futures.clear()
            self.on_lost(self)

    def request(self, req: dict) -> asyncio.Future:
        rid = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.futures[rid] = fut
        self.writer.write(frame(msgpack.packb({**req, "id": rid}, use_bin_type=True)))
        return fut

    def close(self) -> None:
        self.closed = True
        self.task.cancel()
        self.writer.close()


WATCH_RECONNECT_TIMEOUT_S = 60.0  # a watch whose replicas stay unreachable this long fails
WATCH_EARLY_MAX = 1024  # watches whose backlog may wait for the subscribe reply at once


class AsyncNuwa:
    def __init__(self, addresses: Sequence[tuple[str, int]], timeout_s: float = REQUEST_TIMEOUT_S,
                 creator: str = "anonymous", token=None):
        """``token``: what each request presents to a cluster with authentication (Zhongkui)
        -- a string, a function returning one (platform actors renew theirs), or None for
        this process's token (``zhongkui.creds``)."""
        if not addresses:
            raise E.BadRequest("no Nuwa replica addresses given; expected host:port pairs")
        self.addresses = [tuple(a) for a in addresses]
        self.timeout_s = timeout_s
        self.creator = creator
        self.token = token
        self.conn: _Connection | None = None
        self.leader: tuple[str, int] | None = None
        self._connecting = asyncio.Lock()
        self._watches: dict[int, "_Watch"] = {}  # server watch id -> watch
        self._session: Session | None = None
        self._sessions: set[Session] = set()  # open ones, told when the connection drops
        self._session_listeners: list = []
        self._closing = False
        self._early: dict[int, list] = {}  # watch id -> messages that arrived before its reply

    # ------------------------------------------------------------ plumbing

    async def _connect(self, deadline: float) -> _Connection:
        async with self._connecting:
            if self.conn is not None and not self.conn.closed:
                return self.conn
            order = ([self.leader] if self.leader else []) + [
                a for a in random.sample(self.addresses, len(self.addresses)) if a != self.leader]
            last: Exception | None = None
            loop = asyncio.get_running_loop()
            while loop.time() < deadline:
                for host, port in order:
                    try:
                        r, w = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                      min(CONNECT_TIMEOUT_S, max(0.01, deadline - loop.time())))
                        w.write(frame(b"C"))
                        self._early.clear()  # watch ids belong to a connection
                        conn = _Connection(r, w, self._on_watch, self._on_lost)
                        await self._sign_in(conn, deadline)
                        self.conn = conn
                        self.leader = (host, port)
                        await self._resubscribe()
                        return self.conn
                    except (OSError, asyncio.TimeoutError) as e:
                        last = e
                await asyncio.sleep(LEADER_RETRY_BACKOFF_S)
            raise E.Unavailable(f"no Nuwa replica reachable at {self.addresses}: {last!r}")

    async def _sign_in(self, conn: _Connection, deadline: float) -> None:
        """Show the token in a small first request: a replica with authentication on takes
        only small frames (NUWA_PREAUTH_FRAME_BYTES_MAX) before it has seen a valid one."""
        cred = self._cred()
        if not cred:
            return
        loop = asyncio.get_running_loop()
        try:
            msg = await asyncio.wait_for(conn.request({"op": "auth", "cred": cred}),
                                         max(0.01, deadline - loop.time()))
        except (ConnectionError, asyncio.TimeoutError):
            conn.close()
            raise
        if "error" in msg:
            conn.dropped = True
            conn.close()
            raise E.error_from_dict(msg["error"])

    def _cred(self) -> str:
        if self.token is None:
            from zhongkui import creds

            return creds.token()
        return self.token() if callable(self.token) else self.token

    async def _call(self, req: dict, write: bool, timeout_s: float | None = None) -> Any:
        cred = self._cred()
        if cred:
            req["cred"] = cred
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s if timeout_s is not None else self.timeout_s)
        while True:
            conn = await self._connect(deadline)
            if write:
                await asyncio.sleep(0)  # let an EOF the kernel already delivered be noticed
                if conn.closed or conn.reader.at_eof() or conn.writer.is_closing():
                    self._drop(conn)  # dead before we sent anything: safe to go elsewhere
                    continue
            fut = conn.request(req)
            try:
                msg = await asyncio.wait_for(fut, max(0.01, deadline - loop.time()))
            except asyncio.TimeoutError:
                if write:
                    raise E.OutcomeUnknown(f"{req['op']} {req.get('cmd', {}).get('path', '')}: no "
                                           f"answer within {self.timeout_s}s; it may or may not "
                                           f"have happened") from None
                raise E.Timeout(f"{req['op']}: no answer within {self.timeout_s}s") from None
            except ConnectionError:
                if write:
                    raise E.OutcomeUnknown(f"{req['op']}: the connection was lost before the "
                                           f"answer; it may or may not have happened") from None
                self._drop(conn)
                continue
            if "error" in msg:
                err = E.error_from_dict(msg["error"])
                if isinstance(err, E.Unauthenticated):
                    # A replica closes a connection whose first request has no valid token:
                    # the next call must not be sent on it (it would be lost unanswered and
                    # reported OutcomeUnknown although it never ran).
                    self._drop(conn)
                if isinstance(err, E.NotLeader):
                    self._drop(conn)
                    hint = getattr(err, "leader_hint", None)
                    self.leader = tuple(hint) if hint else None
                    if loop.time() >= deadline:
                        raise E.Unavailable(f"{req['op']}: no leader within {self.timeout_s}s")
                    if not hint:
                        await asyncio.sleep(LEADER_RETRY_BACKOFF_S)  # an election is under way
                    continue
                raise err
            return msg["ok"]

    def _drop(self, conn: _Connection) -> None:
        conn.dropped = True
        conn.close()
        if self.conn is conn:
            self.conn = None

    # ------------------------------------------------------------ namespace

    async def create(self, path: str, value: bytes = b"", *, ephemeral: bool = False,
                     sequential: bool = False, parents: bool = False,
                     session: "Session | None" = None) -> str:
        """``ephemeral``: the node lives as long as ``session`` (default: this client's
        default session, opened on first use and replaced by a new one once lost)."""
        if ephemeral:
            s = session if session is not None else await self._ensure_session()
            if not s.alive:
                raise E.SessionExpired(f"cannot create ephemeral {path}: session {s.id} is "
                                       f"{s.state.value}", session=s.id)
            sid = s.id
        else:
            s, sid = None, None
        try:
            res = await self._call({"op": "create", "cmd": {
                "op": "create", "path": path, "value": bytes(value), "creator": self.creator,
                "ephemeral_session": sid, "sequential": sequential, "parents": parents}}, True)
        except E.NoSession:
            if s is not None:  # the server no longer has it: it expired
                s._end(SessionState.LOST, "the server says it is not open")
            raise
        return res["path"]

    async def get(self, path: str) -> tuple[bytes, dict]:
        res = await self._call({"op": "get", "path": path}, False)
        return res["value"], res["stat"]

    async def set(self, path: str, value: bytes, version: int | None = None) -> dict:
        res = await self._call({"op": "set", "cmd": {"op": "set", "path": path, "value": bytes(value),
                                                     "expected_version": version}}, True)
        return res.get("stat", res)

    async def delete(self, path: str, version: int | None = None, recursive: bool = False) -> None:
        await self._call({"op": "delete", "cmd": {"op": "delete", "path": path,
                                                  "expected_version": version,
                                                  "recursive": recursive}}, True)

    async def list(self, path: str) -> list[str]:
        return (await self._call({"op": "list", "path": path}, False))["children"]

    async def stat(self, path: str) -> dict:
        return (await self._call({"op": "stat", "path": path}, False))["stat"]

    async def exists(self, path: str) -> bool:
        return (await self._call({"op": "exists", "path": path}, False))["exists"]

    async def txn(self, ops: list[dict]) -> dict:
        for op in ops:
            if op.get("op") == "create":
                op.setdefault("creator", self.creator)
        return await self._call({"op": "txn", "cmd": {"op": "txn", "ops": ops}}, True)

    async def status(self) -> dict:
        return await self._call({"op": "status"}, False)

    async def change_membership(self, change: str, member: int,
                                timeout_s: float | None = None) -> dict:
        """One single-server membership change at the leader: ``add_learner``, ``promote`` or
        ``remove`` replica ``member``. Returns the new configuration once the change has
        committed. Refused (``BadRequest``) when invalid; ``Unavailable`` while another change
        is in flight. Operators use ``nuwa.group.Group.replace_replica``, which does the
        whole add-catch-up-promote-remove sequence."""
        return await self._call({"op": "conf_change", "change": change, "member": member},
                                True, timeout_s)

    async def snapshot(self, timeout_s: float | None = None) -> tuple[dict, bytes]:
        """One consistent image of the whole tree, from the leader (administrators only):
        ``(meta, image)``, the image checked against the leader's SHA-256. A leader change
        in the middle starts it again, at most ``SNAPSHOT_ATTEMPTS_MAX`` times."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout_s or self.timeout_s)
        for attempt in range(SNAPSHOT_ATTEMPTS_MAX):
            left = lambda: max(0.01, deadline - loop.time())  # noqa: E731
            part = await self._call({"op": "snapshot"}, False, left())
            meta, parts, got = part["meta"], [part["data"]], len(part["data"])
            try:
                while got < meta["image_bytes"] and part["data"]:
                    part = await self._call({"op": "snapshot", "export": part["export"],
                                             "offset": got}, False, left())
                    parts.append(part["data"])
                    got += len(part["data"])
            except E.BadRequest:
                continue  # the export went (a new leader, or idle too long): take a new one
            image = b"".join(parts)
            if hashlib.sha256(image).hexdigest() == meta["sha256"]:
                return meta, image
        raise E.Unavailable(f"snapshot: no complete image in {SNAPSHOT_ATTEMPTS_MAX} attempts "
                            f"(SNAPSHOT_ATTEMPTS_MAX)")

    async def transfer_leader(self, to: int) -> dict:
        """Ask the leader to hand its leadership to voter ``to`` (returns at once)."""
        return await self._call({"op": "transfer_leader", "to": to}, True)

    # ------------------------------------------------------------ sessions

    async def session(self, ttl_s: float = SESSION_TTL_DEFAULT_S) -> "Session":
        sent_at = asyncio.get_running_loop().time()
        res = await self._call({"op": "session_open", "cmd": {
            "op": "session_open", "ttl_s": float(ttl_s), "owner": self.creator}}, True)
        s = Session(self, res["session"], float(res["ttl_s"]), sent_at)
        self._sessions.add(s)
        s.start()
        self._tell(s, SessionState.CONNECTED)
        return s

    async def _ensure_session(self, ttl_s: float | None = None) -> "Session":
        """The default session; a lost one is replaced by a new, distinct session (new id,
        announced as CONNECTED to the listeners): never silently revived."""
        s = self._session
        if s is not None and not s.alive:
            s._end(SessionState.LOST, f"no keep-alive answered within {s.ttl_s}s")
        if s is None or s.expired:
            self._session = await (self.session() if ttl_s is None else self.session(ttl_s))
        return self._session

    async def default_session(self, ttl_s: float | None = None) -> "Session":
        """This client's default session (the one ephemeral creates use unless told); when a
        new one must be made, with ``ttl_s`` (default SESSION_TTL_DEFAULT_S)."""
        return await self._ensure_session(ttl_s)

    @property
    def default_session_expired(self) -> bool:
        """True when this client has no live default session (none yet, or it expired): its
        ephemeral nodes, and an election entry made with it, are gone."""
        return self._session is None or self._session.expired

    def add_session_listener(self, fn) -> None:
        """``fn(session, state)`` on every state change of every session of this client
        (a new session is announced as CONNECTED). Called on the client's event loop; it must
        not block. Exceptions are logged, never propagated."""
        self._session_listeners.append(fn)

    def remove_session_listener(self, fn) -> None:
        with contextlib.suppress(ValueError):
            self._session_listeners.remove(fn)

    def _tell(self, session: "Session", state: SessionState) -> None:
        for fn in list(self._session_listeners):
            try:
                fn(session, state)
            except Exception:  # noqa: BLE001 - one bad listener must not stop the others
                logger.exception("session listener %r failed", fn)

    # ------------------------------------------------------------ watches

    async def watch(self, path: str, recursive: bool = False,
                    from_revision: int | None = None, from_index: int | None = None) -> "_Watch":
        """Events after ``from_revision`` (default: from now on). With ``from_index`` too,
        the events of ``from_revision`` after that index are also delivered: pass a
        watch's ``position`` to resume it exactly."""
        w = _Watch(self, path, recursive, from_revision, from_index)
        await w.subscribe(initial=True)
        return w

    def _on_lost(self, conn: _Connection) -> None:
        """A connection dropped: if watches depend on it, reconnect now and resubscribe them
        from their last position (they must not wait for the next call to notice); sessions
        are suspended until a keep-alive is answered again."""
        if self.conn is conn:
            self.conn = None
        if not self._closing and not conn.dropped:
            for s in list(self._sessions):
                s._connection_lost()
        if self._watches and not self._closing and not conn.dropped:
            asyncio.get_running_loop().create_task(self._rewatch())

    async def _rewatch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._connect(loop.time() + WATCH_RECONNECT_TIMEOUT_S)
        except E.NuwaError as e:
            for w in list(self._watches.values()):
                w.queue.put_nowait(e)

    def _on_watch(self, msg: dict) -> None:
        w = self._watches.get(msg["watch"])
        if w is not None:
            w.deliver(msg)
        elif len(self._early) < WATCH_EARLY_MAX:
            # The server sends a watch's backlog before its reply to the subscribe call:
            # hold it until the reply registers the watch (same connection, so in order).
            self._early.setdefault(msg["watch"], []).append(msg)

    async def _resubscribe(self) -> None:
        old = list(self._watches.values())
        self._watches.clear()
        for w in old:
            asyncio.get_running_loop().create_task(w.subscribe())

    async def close(self) -> None:
        self._closing = True
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
        for s in list(self._sessions):  # the others end with the client (not closed remotely)
            s._end(SessionState.CLOSED, "the client was closed")
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Session:
    """A client session: its ephemeral nodes vanish when it closes or stops being kept alive.

    ``state`` follows ``SessionState`` (see the module docstring); ``alive`` is what a lock
    holder asks before acting as the owner; ``ended`` is set once it is LOST or CLOSED."""

    def __init__(self, client: AsyncNuwa, session_id: int, ttl_s: float, sent_at: float):
        self.client, self.id, self.ttl_s = client, session_id, ttl_s
        self._loop = asyncio.get_running_loop()
        self.state = SessionState.CONNECTED
        # Monotonic (event-loop) time until which the server surely still holds the session:
        # the send time of the last answered keep-alive (or the open) plus the TTL.
        self.confirmed_until = sent_at + ttl_s
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self._listeners: list = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def expired(self) -> bool:
        """True once LOST or CLOSED (kept for callers that asked before states existed)."""
        return self.state in (SessionState.LOST, SessionState.CLOSED)

    @property
    def alive(self) -> bool:
        """Not ended, and confirmed by the server within the TTL as of now. Checked against
        the clock, so it turns False at the deadline even before the keep-alive task runs."""
        return not self.expired and self._loop.time() < self.confirmed_until

    def add_listener(self, fn) -> None:
        """``fn(session, state)`` on each change; called at once if the session already
        ended (a recipe that subscribes late still hears of it)."""
        self._listeners.append(fn)
        if self.expired:
            self._call_listener(fn, self.state)

    def remove_listener(self, fn) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(fn)

    def _call_listener(self, fn, state: SessionState) -> None:
        try:
            fn(self, state)
        except Exception:  # noqa: BLE001 - one bad listener must not stop the others
            logger.exception("session listener %r failed", fn)

    def _move(self, state: SessionState, why: str = "") -> None:
        if state is self.state or self.expired:
            return  # LOST and CLOSED are final
        if state not in _SESSION_MOVES[self.state]:
            raise AssertionError(f"session {self.id}: illegal move {self.state} -> {state}")
        logger.info("nuwa session %s: %s -> %s %s", self.id, self.state.value, state.value, why)
        self.state = state
        if self.expired:
            self.end_reason = why
            self.ended.set()
            self.client._sessions.discard(self)
            if self._task is not None and self._task is not asyncio.current_task():
                self._task.cancel()
        for fn in list(self._listeners):
            self._call_listener(fn, state)
        self.client._tell(self, state)

    def _end(self, state: SessionState, why: str) -> None:
        was_open = not self.expired
        self._move(state, why)
        if was_open and state is SessionState.LOST:
            # The server may still hold it (we stopped hearing from it first): close it
            # there, so its ephemerals (a lock we no longer claim) free up now.
            self._loop.create_task(self._close_remote("expired"))

    def _connection_lost(self) -> None:
        if self.state is SessionState.CONNECTED:
            self._move(SessionState.SUSPENDED, "(the connection dropped)")
        self._wake.set()  # keep alive at once over the next connection

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keepalive())

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.ttl_s / 3
        while not self.expired:
            left = self.confirmed_until - loop.time()
            wait = period if self.state is SessionState.CONNECTED else period / 2
            if left > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(wait, left))
            self._wake.clear()
            if self.expired:
                return
            sent = loop.time()
            if sent >= self.confirmed_until:
                self._end(SessionState.LOST, f"no keep-alive answered within {self.ttl_s}s")
                return
            try:
                # Each try ends before the deadline, so the loss is noticed on time.
                await self.client._call({"op": "session_keepalive", "session": self.id}, False,
                                        timeout_s=max(0.01, min(self.client.timeout_s, period,
                                                                self.confirmed_until - sent)))
            except E.SessionExpired:
                self._end(SessionState.LOST, "the server expired it")
                return
            except E.NuwaError as e:
                self._move(SessionState.SUSPENDED, f"(keep-alive failed: {e})")
                continue  # a leader change: the new leader grants a full TTL
            self.confirmed_until = max(self.confirmed_until, sent + self.ttl_s)
            self._move(SessionState.CONNECTED, "(keep-alive answered)")

    async def _close_remote(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.client._call({"op": "session_close", "cmd": {
                "op": "session_close", "session": self.id, "reason": reason}}, True,
                timeout_s=SESSION_CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if not self.expired:
            self._move(SessionState.CLOSED, "(closed by its owner)")
            await self.client._call({"op": "session_close", "cmd": {
                "op": "session_close", "session": self.id, "reason": "closed"}}, True)


class _Watch:
    """Events for a path, in (revision, index) order, each exactly once, across reconnects;
    ``async for ev in watch``.

    ``last_revision``/``last_index`` is the position of the last event delivered; an index of
    None means "every event of that revision" (where a watch starts)."""

    def __init__(self, client: AsyncNuwa, path: str, recursive: bool, from_revision: int | None,
                 from_index: int | None = None):
        self.client, self.path, self.recursive = client, path, recursive
        self.last_revision = from_revision
        self.last_index = from_index if from_revision is not None else None
        self.queue: asyncio.Queue = asyncio.Queue(WATCH_QUEUE_MAX)
        self.server_id: int | None = None

    @property
    def position(self) -> tuple[int | None, int | None]:
        """(revision, index) of the last event delivered: ``watch(..., *position)`` resumes."""
        return (self.last_revision, self.last_index)

    def _seen(self, ev: dict) -> bool:
        if self.last_revision is None:
            return False
        rev, idx = ev["revision"], ev.get("index", 0)
        if rev != self.last_revision:
            return rev < self.last_revision
        return self.last_index is None or idx <= self.last_index

    async def subscribe(self, initial: bool = False) -> None:
        """(Re)subscribe from our position. A refusal of the first subscription (a bad path
        or position, Compacted) is raised; later ones end the watch with that error."""
        req = {"op": "watch", "path": self.path, "recursive": self.recursive}
        if self.last_revision is not None:
            req["from_revision"] = self.last_revision
            if self.last_index is not None:
                req["from_index"] = self.last_index
        try:
            res = await self.client._call(req, False)
        except E.NuwaError as e:
            if initial:
                raise
            self.queue.put_nowait(e)
            return
        self.server_id = res["watch"]
        self.client._watches[self.server_id] = self
        for msg in self.client._early.pop(self.server_id, []):
            self.deliver(msg)
        if self.last_revision is None:
            self.last_revision = res["revision"]

    def deliver(self, msg: dict) -> None:
        if "error" in msg:
            self.queue.put_nowait(E.error_from_dict(msg["error"]))
            return
        for ev in msg["events"]:
            if self._seen(ev):
                continue  # a resubscription may replay what we already delivered
            try:
                self.queue.put_nowait(ev)
                self.last_revision, self.last_index = ev["revision"], ev.get("index", 0)
            except asyncio.QueueFull:
                self.queue = asyncio.Queue(1)
                self.queue.put_nowait(E.NuwaError(
                    f"watch on {self.path} fell {WATCH_QUEUE_MAX} events behind "
                    f"(WATCH_QUEUE_MAX); re-watch from position {self.position}"))
                return

    def __aiter__(self) -> AsyncIterator[dict]:
        return self

    async def __anext__(self) -> dict:
        item = await self.queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def next(self, timeout_s: float) -> dict:
        return await asyncio.wait_for(self.__anext__(), timeout_s)

    async def cancel(self) -> None:
        if self.server_id is not None:
            self.client._watches.pop(self.server_id, None)
            with contextlib.suppress(Exception):
                await self.client._call({"op": "unwatch", "watch": self.server_id}, False)


# The blocking client's calls that only read; every other call may write, and a write whose
# answer did not come in time is OutcomeUnknown, never a plain TimeoutError.
READ_METHODS = frozenset({"get", "list", "stat", "exists", "status", "snapshot"})
BLOCKING_SLACK_S = 1.0  # a blocking call waits this much longer than its own timeouts
LOOP_GRACE_S = 1.0  # ... and this much more for the client's own event loop (if it is stuck)


class Nuwa:
    """Blocking client: the same calls as ``AsyncNuwa``, run on a private event-loop thread.

    Every call ends with its answer, a typed error, or -- for a call that may write, when the
    answer did not come within the call's timeouts -- ``OutcomeUnknown`` (the call is then
    cancelled: nothing more of it is sent). Reads that time out raise ``nuwa.errors.Timeout``.
    """

    def __init__(self, addresses: Sequence[tuple[str, int]], timeout_s: float = REQUEST_TIMEOUT_S,
                 creator: str = "anonymous", token=None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nuwa-client", daemon=True)
        self._thread.start()
        self.timeout_s = timeout_s
        self._async = self._run(self._make(addresses, timeout_s, creator, token), write=False)

    async def _make(self, addresses, timeout_s, creator, token) -> AsyncNuwa:
        return AsyncNuwa(addresses, timeout_s, creator, token)

    def _run(self, coro, write: bool = True, bound_s: float | None = None, what: str = "call"):
        """Run ``coro`` on the client's loop for at most ``bound_s``; the outcome is its
        result, a NuwaError, or (timed out) OutcomeUnknown for a write, Timeout for a read."""
        bound_s = self.timeout_s + BLOCKING_SLACK_S if bound_s is None else bound_s

        def not_in_time(why: str) -> E.NuwaError:
            if write:
                return E.OutcomeUnknown(f"{what}: {why}; it may or may not have happened")
            return E.Timeout(f"{what}: {why}")

        async def bounded():
            try:
                return await asyncio.wait_for(coro, bound_s)  # cancels coro when it overruns
            except asyncio.TimeoutError:
                raise not_in_time(f"no answer within {bound_s:g}s") from None
            except E.NuwaError:
                raise  # the replica's answer (Denied is a PermissionError, an OSError, too)
            except (ConnectionError, OSError) as e:
                if write:
                    raise not_in_time(f"the connection failed ({e!r})") from None
                raise E.Unavailable(f"{what}: the connection failed ({e!r})") from None
            except asyncio.CancelledError:
                raise not_in_time("cancelled (the client is closing)") from None

        cf = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            return cf.result(bound_s + LOOP_GRACE_S)
        except concurrent.futures.TimeoutError:
            cf.cancel()  # the client's loop is stuck: the call must not go on once it runs
            raise not_in_time(f"the client's event loop did not finish it within "
                              f"{bound_s + LOOP_GRACE_S:g}s") from None
        except concurrent.futures.CancelledError:
            raise not_in_time("cancelled (the client is closing)") from None

    def _bound_s(self, name: str, kw: dict) -> float:
        """How long a blocking call may take: its own timeouts (an ephemeral create opens a
        session first: two calls), plus slack."""
        per_call = max(self.timeout_s, kw.get("timeout_s") or 0.0)
        calls = 2 if name == "create" and kw.get("ephemeral") else 1
        return calls * per_call + BLOCKING_SLACK_S

    def __getattr__(self, name: str):
        attr = getattr(self._async, name)
        if not callable(attr) or not asyncio.iscoroutinefunction(attr):
            return attr
        return lambda *a, **kw: self._run(attr(*a, **kw), write=name not in READ_METHODS,
                                          bound_s=self._bound_s(name, kw), what=name)

    def watch(self, path: str, recursive: bool = False, from_revision: int | None = None,
              from_index: int | None = None):
        w = self._run(self._async.watch(path, recursive, from_revision, from_index),
                      write=False, what="watch")
        return _BlockingWatch(self, w)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> "Nuwa":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _BlockingWatch:
    def __init__(self, client: Nuwa, w: _Watch):
        self.client, self.w = client, w

    def next(self, timeout_s: float = REQUEST_TIMEOUT_S) -> dict:
        return asyncio.run_coroutine_threadsafe(self.w.next(timeout_s), self.client._loop).result(
            timeout_s + 1.0)

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield self.next()

    def cancel(self) -> None:
        self.client._run(self.w.cancel())


def connect(addresses: Sequence[tuple[str, int]] | str, timeout_s: float = REQUEST_TIMEOUT_S,
            creator: str = "anonymous", token=None) -> Nuwa:
    """Connect to a Nuwa group: a list of (host, port), "host:port,host:port", or the name of a
    running `fuxi up` cluster ("default"), whose replicas are found in its record and whose
    signed-in token (`fuxi login`) is sent unless ``token`` is given."""
    if isinstance(addresses, str) and ":" not in addresses:
        from base.cluster import find_cluster
        from zhongkui import creds

        rec = find_cluster(addresses)
        if rec is None or not rec.nuwa:
            raise E.Unavailable(f"no running cluster {addresses!r} with Nuwa: start one with "
                                f"`fuxi up`, or give the replicas as 'host:port,host:port'")
        token = creds.token(addresses) if token is None else token
        addresses = [tuple(a) for a in rec.nuwa]
    if isinstance(addresses, str):
        addresses = [(h, int(p)) for h, _, p in (a.strip().rpartition(":") for a in addresses.split(","))]
    return Nuwa(addresses, timeout_s, creator, token)
