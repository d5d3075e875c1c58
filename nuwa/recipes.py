"""Coordination recipes on the Nuwa client, in the style of kazoo and etcd's concurrency package.

All of them use ephemeral, sequential nodes: a waiter creates ``<dir>/<prefix>-NNNNNNNNNN``
in its session, and the lowest sequence number holds the lock or leads. Each waiter watches
only its predecessor, so a release wakes one waiter, not all of them. Ephemeral nodes vanish
when the session expires, so a crashed holder frees the lock after its TTL.

* ``Lock``: ``token = await lock.acquire(timeout_s)``. The *fencing token* is the Raft
  revision at which this holder's node was created. It is strictly greater than any earlier
  holder's, so storage that remembers the highest token seen can refuse a write from a
  holder that has lost the lock without knowing it.
* ``Election``: ``campaign`` (blocks until leader), ``leader()``, ``observe()`` (an async
  iterator of leader changes), ``resign``.
* ``ServiceRegistry``: ``register(name, id, address)`` creates an ephemeral
  ``/services/<name>/<id>``; ``list(name)``; ``watch(name)``. This is the seed's
  load-balancing example.
* ``Barrier``: ``await barrier.wait(n, timeout_s)`` returns once n members have entered.

Lost sessions. Every recipe is bound to the session it joined with (the client's default
session unless given one) and listens to its state (``nuwa.client.SessionState``). When that
session is LOST (expired on the server, or not confirmed within its TTL -- which the client
declares no later than the server could expire it) or CLOSED, the recipe stops claiming at
once: ``Lock.is_held`` and ``Election.is_leader`` turn False, the fencing token is marked
``stale``, the ``on_lost`` callbacks fire and the ``lost`` event is set; a waiter (acquire,
campaign, barrier wait) raises ``LockLost``. A recipe never moves to a new session by itself:
acquire again (a new session, a new node, a new and greater token).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import logging

from nuwa import errors as E
from nuwa.client import AsyncNuwa, Session, SessionState

LOCK_WAIT_S_MAX = 3600.0

logger = logging.getLogger(__name__)
_ENDED = (SessionState.LOST, SessionState.CLOSED)


class FencingToken(int):
    """A lock's (or a leadership's) fencing token: the Raft revision at which the holder's
    node was created, an int that grows with every new holder. ``stale`` turns True as soon
    as the holder no longer holds (its session was lost or closed, or it released): pass it
    to storage that refuses older tokens, and check ``stale`` before acting on it locally."""

    lock_path: str
    session_id: int

    def __new__(cls, value: int, lock_path: str, session_id: int, stale: bool = False):
        t = super().__new__(cls, value)
        t.lock_path, t.session_id, t._stale = lock_path, session_id, stale
        return t

    @property
    def stale(self) -> bool:
        return self._stale

    def check(self) -> None:
        """Raise ``LockLost`` if this token no longer stands for a live holder."""
        if self._stale:
            raise E.LockLost(f"fencing token {int(self)} of {self.lock_path} is stale: its "
                             f"holder lost or released it", session=self.session_id)

    def __reduce__(self):
        return (FencingToken, (int(self), self.lock_path, self.session_id, self._stale))

    def __repr__(self) -> str:
        return f"FencingToken({int(self)}, {self.lock_path!r}{', stale' if self._stale else ''})"


async def _ensure_dir(client: AsyncNuwa, path: str) -> None:
    with contextlib.suppress(E.NodeExists):
        await client.create(path, parents=True)


def _seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


class _Queue:
    """Ordered ephemeral-sequential membership under one directory."""

    def __init__(self, client: AsyncNuwa, directory: str, prefix: str, value: bytes = b"",
                 session: Session | None = None):
        if not directory.endswith("/"):
            raise E.BadPath(f"{directory!r}: a recipe directory must end with '/'")
        self.client, self.dir, self.prefix, self.value = client, directory, prefix, value
        self.node: str | None = None
        self.token: FencingToken | None = None
        self._session_given = session
        self.session: Session | None = None  # the session our node lives in
        self.held = False  # set by the recipe once it owns (first in line, session alive)
        self.lost = asyncio.Event()  # set when the session ended while we were in line
        self.lost_reason: str | None = None
        self._on_lost: list = []

    async def join(self) -> None:
        """Create our ephemeral sequential node. "Protected" like kazoo's: the name carries a
        per-attempt GUID, so if the create's answer is lost (OutcomeUnknown) we can still find
        the node it may have made, instead of leaving an orphan that blocks everyone."""
        await self.ready_to_join()
        session = self._session_given or await self.client.default_session()
        if not session.alive:
            raise E.LockLost(f"cannot join {self.dir}: session {session.id} is "
                             f"{session.state.value}", session=session.id)
        if self.session is not session:
            if self.session is not None:
                self.session.remove_listener(self._on_session)
            self.session = session
            self.lost.clear()
            self.lost_reason = None
            session.add_listener(self._on_session)
        await _ensure_dir(self.client, self.dir)
        guid = secrets.token_hex(8)
        try:
            self.node = await self.client.create(f"{self.dir}{self.prefix}-{guid}-", self.value,
                                                 ephemeral=True, sequential=True,
                                                 session=session)
        except E.OutcomeUnknown:
            mine = [c for c in await self.client.list(self.dir) if f"-{guid}-" in c]
            if not mine:
                raise  # it did not happen: the caller may try again
            self.node = self.dir + mine[0]
        self.token = FencingToken((await self.client.stat(self.node))["created_rev"], self.dir,
                                  session.id, stale=session.expired)

    async def ready_to_join(self) -> None:
        """Refuse to join twice; after a loss, first forget the node of the ended session
        (the next join makes a new node in a new session, with a new token)."""
        if self.node is not None and self.lost.is_set():
            await self.leave()
        if self.node is not None:
            raise E.BadRequest(f"already in line or holding at {self.node}; release (or "
                               f"resign, leave) first")

    @property
    def owns(self) -> bool:
        """Held, and the session confirmed alive as of now (not merely not yet declared
        lost: the clock is checked, so a stalled keep-alive task cannot extend a claim)."""
        return self.held and self.session is not None and self.session.alive

    def add_lost_callback(self, fn) -> None:
        self._on_lost.append(fn)

    def _on_session(self, session: Session, state: SessionState) -> None:
        if session is self.session and state in _ENDED:
            self._lose(f"session {session.id} is {state.value}: {session.end_reason}")

    def _lose(self, why: str) -> None:
        was_held, self.held = self.held, False
        if self.token is not None:
            self.token._stale = True
        if self.node is None or self.lost.is_set():
            return
        self.lost_reason = why
        self.lost.set()
        logger.warning("%s: %s", self.node, why)
        if was_held:
            for fn in list(self._on_lost):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                    logger.exception("lost callback %r of %s failed", fn, self.node)

    def lost_error(self) -> E.LockLost:
        return E.LockLost(f"{self.node or self.dir}: {self.lost_reason or 'session ended'}",
                          session=self.session.id if self.session else None)

    async def until_lost(self, aw, timeout_s: float):
        """Await ``aw`` (at most ``timeout_s``), or raise LockLost as soon as the session
        ends; asyncio.TimeoutError on the timeout."""
        nxt = asyncio.ensure_future(aw)
        end = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({nxt, end}, timeout=timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (nxt, end):
                if not t.done():
                    t.cancel()
        if self.lost.is_set():
            raise self.lost_error()
        if nxt not in done:
            raise asyncio.TimeoutError
        return nxt.result()

    async def members(self) -> list[str]:
        try:
            kids = await self.client.list(self.dir)
        except E.NoNode:
            return []  # nobody has joined yet
        return sorted((c for c in kids if c.startswith(self.prefix + "-")), key=_seq)

    async def wait_first(self, timeout_s: float) -> None:
        """Return once our node is the lowest; watch only the predecessor meanwhile."""
        name = self.node.rsplit("/", 1)[1]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.lost.is_set():
                raise self.lost_error()
            members = await self.members()
            if name not in members:
                raise E.LockLost(f"{self.node} vanished: our session expired while waiting",
                                 session=self.session.id if self.session else None)
            i = members.index(name)
            if i == 0:
                if not self.session.alive:
                    raise self.lost_error()
                return
            pred = self.dir + members[i - 1]
            w = await self.client.watch(pred)
            try:
                if not await self.client.exists(pred):
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise E.Timeout(f"not first in {self.dir} within {timeout_s}s")
                while True:
                    ev = await self.until_lost(w.next(remaining), remaining)
                    if ev["type"] == "deleted":
                        break
            except asyncio.TimeoutError:
                raise E.Timeout(f"not first in {self.dir} within {timeout_s}s") from None
            finally:
                await w.cancel()

    async def take(self, timeout_s: float) -> FencingToken:
        """Join and wait to be first; returns the fencing token. On a timeout, a cancel or a
        lost session the entry is left (an abandoned entry must not win later)."""
        await self.ready_to_join()  # before the try: failing must not release what we hold
        try:
            await self.join()
            await self.wait_first(timeout_s)
        except BaseException:
            await self.leave()
            raise
        self.held = True
        return self.token

    async def leave(self) -> None:
        self.held = False
        if self.token is not None:
            self.token._stale = True
        if self.node is not None:
            try:
                await self.client.delete(self.node)
            except E.NoNode:
                pass
            except E.NuwaError:
                if self.session is None or not self.session.expired:
                    raise
                # The node goes with the ended session anyway (the client closes it).
            self.node = self.token = None


class _Held:
    """What the queue-based recipes share: the loss event, its callbacks and the token."""

    q: _Queue

    @property
    def lost(self) -> asyncio.Event:
        """Set when the session ended while in line or holding."""
        return self.q.lost

    def on_lost(self, fn) -> None:
        """``fn()`` (on the client's loop, must not block) when it is lost while held."""
        self.q.add_lost_callback(fn)

    @property
    def token(self) -> FencingToken | None:
        """The fencing token while in line or holding (``stale`` once lost); None after
        release."""
        return self.q.token


class Lock(_Held):
    """A mutex. ``is_held`` is True only while this holder owns it under a live session;
    ``on_lost(fn)`` runs ``fn()`` when the session ends while held; ``async with lock:``
    raises ``LockLost`` at the end of a block during which the lock was lost."""

    def __init__(self, client: AsyncNuwa, name: str, identity: str = "",
                 session: Session | None = None):
        self.q = _Queue(client, f"/locks/{name}/", "lock", identity.encode(), session)

    async def acquire(self, timeout_s: float = 30.0) -> FencingToken:
        """Block until held; returns the fencing token. Raises ``Timeout`` (and leaves the
        queue) if not acquired within ``timeout_s`` (at most LOCK_WAIT_S_MAX), ``LockLost``
        if the session ends first."""
        if not 0 < timeout_s <= LOCK_WAIT_S_MAX:
            raise E.BadRequest(f"timeout_s={timeout_s}; expected 0 < timeout_s <= {LOCK_WAIT_S_MAX}")
        return await self.q.take(timeout_s)

    async def release(self) -> None:
        await self.q.leave()

    @property
    def is_held(self) -> bool:
        return self.q.owns

    async def __aenter__(self) -> FencingToken:
        return await self.acquire()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        lost = self.q.lost.is_set() or (self.q.held and not self.q.owns)
        err = self.q.lost_error() if lost else None
        await self.release()
        if err is not None and exc_type is None:
            raise err  # the block ran (partly) without the lock: say so


class Election(_Held):
    """Leader election. ``is_leader`` is True only while this candidate leads under a live
    session; ``on_lost(fn)`` runs ``fn()`` when it loses the leadership with its session."""

    def __init__(self, client: AsyncNuwa, name: str, identity: str,
                 session: Session | None = None):
        self.client = client
        self.q = _Queue(client, f"/elections/{name}/", "candidate", identity.encode(), session)

    async def campaign(self, timeout_s: float = LOCK_WAIT_S_MAX) -> FencingToken:
        """Become a candidate and wait to lead; returns the leadership's fencing token. On a
        timeout or cancel it leaves the race (an abandoned candidate must not win later)."""
        return await self.q.take(timeout_s)

    @property
    def is_leader(self) -> bool:
        return self.q.owns

    async def leader(self) -> str | None:
        members = await self.q.members()
        if not members:
            return None
        with contextlib.suppress(E.NoNode):
            value, _ = await self.client.get(self.q.dir + members[0])
            return value.decode()
        return None

    async def observe(self):
        """Yield the leader's identity each time it changes (None while there is none)."""
        await _ensure_dir(self.client, self.q.dir)
        w = await self.client.watch(self.q.dir)
        last = object()
        try:
            while True:
                cur = await self.leader()
                if cur != last:
                    last = cur
                    yield cur
                await w.__anext__()
        finally:
            await w.cancel()

    async def resign(self) -> None:
        await self.q.leave()


class ServiceRegistry:
    ROOT = "/services/"

    def __init__(self, client: AsyncNuwa, session: Session | None = None):
        self.client = client
        self.session = session
        self.registered: dict[str, Session] = {}  # path -> its session, while it lives
        self._on_lost: list = []

    def on_lost(self, fn) -> None:
        """``fn(path)`` when a registration goes with its session (register it again)."""
        self._on_lost.append(fn)

    async def register(self, name: str, replica_id: str, address: str) -> str:
        """An ephemeral ``/services/<name>/<id>`` holding the address; gone with the session
        (then it leaves ``registered`` and the ``on_lost`` callbacks run)."""
        await _ensure_dir(self.client, f"{self.ROOT}{name}/")
        session = self.session or await self.client.default_session()
        path = await self.client.create(f"{self.ROOT}{name}/{replica_id}", address.encode(),
                                        ephemeral=True, session=session)
        self.registered[path] = session

        def ended(s: Session, state: SessionState) -> None:
            if state in _ENDED and self.registered.get(path) is s:
                del self.registered[path]
                s.remove_listener(ended)
                for fn in list(self._on_lost):
                    try:
                        fn(path)
                    except Exception:  # noqa: BLE001
                        logger.exception("lost callback %r of %s failed", fn, path)
        session.add_listener(ended)
        return path

    async def list(self, name: str) -> dict[str, str]:
        d = f"{self.ROOT}{name}/"
        out = {}
        with contextlib.suppress(E.NoNode):
            for child in await self.client.list(d):
                with contextlib.suppress(E.NoNode):
                    value, _ = await self.client.get(d + child)
                    out[child] = value.decode()
        return out

    async def watch(self, name: str):
        await _ensure_dir(self.client, f"{self.ROOT}{name}/")
        return await self.client.watch(f"{self.ROOT}{name}/")


class Barrier(_Held):
    """``entered`` is True while this member is in the barrier under a live session; a
    session lost while waiting makes ``wait`` raise ``LockLost`` (our entry is gone)."""

    def __init__(self, client: AsyncNuwa, name: str, identity: str = "",
                 session: Session | None = None):
        self.q = _Queue(client, f"/barriers/{name}/", "member", identity.encode(), session)

    @property
    def entered(self) -> bool:
        return self.q.owns

    async def wait(self, count: int, timeout_s: float = 60.0) -> None:
        """Enter, then return once ``count`` members have entered (Timeout otherwise)."""
        await self.q.join()
        self.q.held = True
        w = await self.q.client.watch(self.q.dir)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                if not self.q.owns:
                    raise self.q.lost_error()
                if len(await self.q.members()) >= count:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise E.Timeout(f"barrier {self.q.dir}: fewer than {count} within {timeout_s}s")
                with contextlib.suppress(asyncio.TimeoutError):
                    await self.q.until_lost(w.next(remaining), remaining)
        finally:
            await w.cancel()

    async def leave(self) -> None:
        await self.q.leave()


__all__ = ["Lock", "Election", "ServiceRegistry", "Barrier", "Session", "SessionState",
           "FencingToken"]
