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
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

from nuwa import errors as E
from nuwa.client import AsyncNuwa, Session

LOCK_WAIT_S_MAX = 3600.0


async def _ensure_dir(client: AsyncNuwa, path: str) -> None:
    with contextlib.suppress(E.NodeExists):
        await client.create(path, parents=True)


def _seq(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


class _Queue:
    """Ordered ephemeral-sequential membership under one directory."""

    def __init__(self, client: AsyncNuwa, directory: str, prefix: str, value: bytes = b""):
        if not directory.endswith("/"):
            raise E.BadPath(f"{directory!r}: a recipe directory must end with '/'")
        self.client, self.dir, self.prefix, self.value = client, directory, prefix, value
        self.node: str | None = None
        self.token: int | None = None

    async def join(self) -> None:
        """Create our ephemeral sequential node. "Protected" like kazoo's: the name carries a
        per-attempt GUID, so if the create's answer is lost (OutcomeUnknown) we can still find
        the node it may have made, instead of leaving an orphan that blocks everyone."""
        await _ensure_dir(self.client, self.dir)
        guid = secrets.token_hex(8)
        try:
            self.node = await self.client.create(f"{self.dir}{self.prefix}-{guid}-", self.value,
                                                 ephemeral=True, sequential=True)
        except E.OutcomeUnknown:
            mine = [c for c in await self.client.list(self.dir) if f"-{guid}-" in c]
            if not mine:
                raise  # it did not happen: the caller may try again
            self.node = self.dir + mine[0]
        self.token = (await self.client.stat(self.node))["created_rev"]

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
            members = await self.members()
            if name not in members:
                raise E.SessionExpired(f"{self.node} vanished: our session expired while waiting")
            i = members.index(name)
            if i == 0:
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
                    ev = await w.next(remaining)
                    if ev["type"] == "deleted":
                        break
            except asyncio.TimeoutError:
                raise E.Timeout(f"not first in {self.dir} within {timeout_s}s") from None
            finally:
                await w.cancel()

    async def leave(self) -> None:
        if self.node is not None:
            with contextlib.suppress(E.NoNode):
                await self.client.delete(self.node)
            self.node = self.token = None


class Lock:
    def __init__(self, client: AsyncNuwa, name: str, identity: str = ""):
        self.q = _Queue(client, f"/locks/{name}/", "lock", identity.encode())

    async def acquire(self, timeout_s: float = 30.0) -> int:
        """Block until held; returns the fencing token. Raises ``Timeout`` (and leaves the
        queue) if not acquired within ``timeout_s`` (at most LOCK_WAIT_S_MAX)."""
        if not 0 < timeout_s <= LOCK_WAIT_S_MAX:
            raise E.BadRequest(f"timeout_s={timeout_s}; expected 0 < timeout_s <= {LOCK_WAIT_S_MAX}")
        try:
            await self.q.join()
            await self.q.wait_first(timeout_s)
        except BaseException:
            await self.q.leave()
            raise
        return self.q.token

    async def release(self) -> None:
        await self.q.leave()

    @property
    def token(self) -> int | None:
        return self.q.token

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, *exc) -> None:
        await self.release()


class Election:
    def __init__(self, client: AsyncNuwa, name: str, identity: str):
        self.client = client
        self.q = _Queue(client, f"/elections/{name}/", "candidate", identity.encode())

    async def campaign(self, timeout_s: float = LOCK_WAIT_S_MAX) -> int:
        """Become a candidate and wait to lead; returns the leadership's fencing token. On a
        timeout or cancel it leaves the race (an abandoned candidate must not win later)."""
        await self.q.join()
        try:
            await self.q.wait_first(timeout_s)
        except BaseException:
            await self.q.leave()
            raise
        return self.q.token

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

    def __init__(self, client: AsyncNuwa):
        self.client = client

    async def register(self, name: str, replica_id: str, address: str) -> str:
        """An ephemeral ``/services/<name>/<id>`` holding the address; gone with the session."""
        await _ensure_dir(self.client, f"{self.ROOT}{name}/")
        return await self.client.create(f"{self.ROOT}{name}/{replica_id}", address.encode(),
                                        ephemeral=True)

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


class Barrier:
    def __init__(self, client: AsyncNuwa, name: str, identity: str = ""):
        self.q = _Queue(client, f"/barriers/{name}/", "member", identity.encode())

    async def wait(self, count: int, timeout_s: float = 60.0) -> None:
        """Enter, then return once ``count`` members have entered (Timeout otherwise)."""
        await self.q.join()
        w = await self.q.client.watch(self.q.dir)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while len(await self.q.members()) < count:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise E.Timeout(f"barrier {self.q.dir}: fewer than {count} within {timeout_s}s")
                with contextlib.suppress(asyncio.TimeoutError):
                    await w.next(remaining)
        finally:
            await w.cancel()

    async def leave(self) -> None:
        await self.q.leave()


__all__ = ["Lock", "Election", "ServiceRegistry", "Barrier", "Session"]
