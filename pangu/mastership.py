"""The Pangu master's mastership: its role (active or standby), the journal, and the namespace
made durable through it.

High availability (a ``fuxi up`` cluster with Nuwa): two or more masters campaign in a Nuwa
election; the winner claims the Nuwa journal (which fences the previous active master),
replays the checkpoint and the log after it, and serves. Standbys answer ``NotActive`` naming
the active master. Without Nuwa (the embedded default) there is one master with a local
journal.

The namespace (``pangu.core.namespace``) changes only through ``mutate``: the command is
applied, made durable in the journal (``pangu.io.journal``), and only then acknowledged. A
command carrying a request id is applied once; a retry gets the first result.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from typing import Any

from pangu.chunkserver import pangu_root
from pangu.core import fencing as F
from pangu.core.leases import Leases
from pangu.core.namespace import Namespace
from pangu.errors import DiskFailed, NotActive, PanguError, Unavailable
from pangu.eventlog import EventLog
from pangu.io.journal import LocalJournal, NuwaJournal

logger = logging.getLogger(__name__)

NAMESPACE_REQUESTS_REMEMBERED_MAX = 100_000  # request ids kept for retried namespace changes
ELECTION_RETRY_S = 1.0


def chunks_changed(cmd: dict, res: dict) -> set[str]:
    """The chunks whose fate a namespace command changed: those it freed (every command that
    drops chunks reports them in ``freed``) and those it re-versioned (a replica at the old
    version would look stale)."""
    out = set(res.get("freed") or ())
    if cmd.get("op") == "bump_version" and isinstance(res.get("chunk"), str):
        out.add(res["chunk"])
    if res.get("cut"):
        out.add(res["cut"]["chunk"])
    return out


class Mastership:
    def __init__(self, name: str, cluster: str, data_dir: str, nuwa_addresses, guard,
                 leases: Leases, log: EventLog, *, checkpoint_every: int,
                 session_ttl_s: float):
        self.name, self.cluster, self.data_dir = name, cluster, data_dir
        self.nuwa_addresses = nuwa_addresses
        self.guard = guard
        self.leases = leases  # a new term honours none of the last one's
        self.log = log
        self.checkpoint_every = checkpoint_every
        self.session_ttl_s = session_ttl_s
        self.ns = Namespace()
        self.journal: Any = None
        self.active = False
        self.active_since = 0.0
        # Chunks that a namespace change not yet durable freed or re-versioned: the garbage
        # collector leaves them alone until the journal append returns (issue 14, defect 4).
        self.undurable: set[str] = set()
        self.disk_failed: Exception | None = None  # the local journal's disk failed
        self.requests: collections.OrderedDict = collections.OrderedDict()  # id -> result
        self.tasks: list[asyncio.Task] = []
        self.nuwa = None
        self.election = None
        self.mut = asyncio.Lock()

    # ------------------------------------------------------------ start and roles
    def start(self) -> None:
        """Campaign (with Nuwa), or load the local journal and serve."""
        if self.nuwa_addresses:
            from nuwa.client import AsyncNuwa
            from nuwa.recipes import Election

            self.nuwa = AsyncNuwa(self.nuwa_addresses, creator=self.name,
                                  token=self.guard.platform_token if self.guard.enabled else "")
            self.election = Election(self.nuwa, f"pangu-{self.cluster}", self.name)
            self.spawn(self.campaign())
        else:
            self.journal = LocalJournal(os.path.join(pangu_root(self.data_dir, "local"),
                                                     "master"))
            ckpt, entries = self.journal.load()
            self.rebuild(ckpt, entries)
            self.become_active()

    def spawn(self, coro) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    def rebuild(self, ckpt: dict | None, entries: list[dict]) -> None:
        ns = Namespace.restore(ckpt) if ckpt else Namespace()
        self.requests.clear()
        for cmd in entries:
            res = ns.apply(cmd)  # a journaled command was valid when it was written
            if cmd.get("request_id"):
                self.remember(cmd["request_id"], res)
        self.ns = ns
        self.undurable = set()  # the namespace is exactly what is durable again
        self.disk_failed = None

    def become_active(self) -> None:
        self.active = True
        self.active_since = time.monotonic()
        self.leases.clear()
        self.log.record("active", f"{self.name} is the active master (journal at "
                                  f"{self.journal.seq})")

    def session_expired(self) -> bool:
        """With Nuwa: our session (and with it our election entry) is gone, so another master
        may be active now."""
        return self.nuwa is not None and self.nuwa.default_session_expired

    async def campaign(self) -> None:
        from nuwa import errors as NE

        while True:
            try:
                await self.nuwa.default_session(self.session_ttl_s)  # a new one if it expired
                await self.election.campaign()
                journal = NuwaJournal(self.nuwa, f"/pangu/{self.cluster}", self.name)
                await journal.claim()
                ckpt, entries = await journal.load()
                async with self.mut:
                    self.journal = journal
                    self.rebuild(ckpt, entries)
                    self.become_active()
                return
            except asyncio.CancelledError:
                raise
            except (NE.NuwaError, PanguError, OSError) as e:
                logger.warning("%s: campaign failed (%s); retrying", self.name, e)
                with contextlib.suppress(Exception):
                    await self.election.resign()
                await asyncio.sleep(ELECTION_RETRY_S)

    async def step_down(self, why: str) -> None:
        self.active = False
        self.log.record("standby", f"{self.name} stepped down: {why}")
        if self.election is not None:
            with contextlib.suppress(Exception):
                await self.election.resign()
            self.spawn(self.campaign())

    @property
    def epoch(self) -> int:
        """This master's term: the Nuwa journal's epoch (0 with a local journal)."""
        return int(getattr(self.journal, "epoch_version", 0) or 0)

    @property
    def fsid(self) -> str | None:
        return self.journal.fsid if self.journal is not None else None

    @property
    def journal_seq(self) -> int | None:
        return self.journal.seq if self.journal else None

    def role(self) -> dict:
        return {"name": self.name, "active": self.active, "journal_seq": self.journal_seq}

    async def active_master(self) -> str | None:
        if self.active:
            return self.name
        if self.election is not None:
            with contextlib.suppress(Exception):
                return await self.election.leader()
        return None

    async def need_active(self) -> None:
        if self.disk_failed is not None and not self.active:
            # The local journal's disk failed: try to reopen it (a new file holding what is
            # durable); until that works, every call says why.
            async with self.mut:
                if self.disk_failed is not None and not self.active:
                    try:
                        ckpt, entries = self.journal.load()
                    except DiskFailed:
                        raise DiskFailed(self.disk_failed.errno, f"{self.name}: the journal's "
                                         f"disk failed ({self.disk_failed}); the master serves "
                                         f"nothing until it can write again") from None
                    self.rebuild(ckpt, entries)
                    self.become_active()
        if self.active and self.session_expired():
            await self.step_down("its Nuwa session expired")
        if not self.active:
            leader = await self.active_master()
            raise NotActive(f"{self.name} is not the active Pangu master"
                            + (f"; the active one is {leader}" if leader else
                               "; no master is active yet (election in progress)"))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.journal is not None:
            self.journal.close()
        if self.nuwa is not None:
            with contextlib.suppress(Exception):
                await self.election.resign()
            with contextlib.suppress(Exception):
                await self.nuwa.close()

    # ------------------------------------------------------------ the journaled namespace
    async def mutate(self, cmd: dict, request_id: str | None = None) -> dict:
        """Apply one namespace command and make it durable before returning. A command with a
        ``request_id`` already applied (a client retrying after a lost reply or a failover:
        the ids are in the journal) returns the first result instead of applying again."""
        await self.need_active()
        async with self.mut:
            await self.need_active()
            if request_id is not None and request_id in self.requests:
                return self.requests[request_id]
            cmd = dict(cmd, now=time.time())
            if request_id is not None:
                cmd["request_id"] = request_id
            res = self.ns.apply(cmd)  # raises, leaving the namespace unchanged, if invalid
            # Memory is now ahead of the journal: what this change freed is not garbage until
            # the change is durable (a heartbeat may run while the append awaits).
            changed = chunks_changed(cmd, res)
            self.undurable |= changed
            try:
                await self.journal.append(cmd)
            except Exception as e:  # noqa: BLE001 - memory is now ahead of the journal
                await self.step_down(f"journal write failed ({type(e).__name__}: {e})")
                if self.election is None:  # the local journal: reload what is durable
                    try:
                        ckpt, entries = self.journal.load()
                    except DiskFailed as e2:
                        # The disk still refuses: stay down, with what is durable on disk
                        # untouched; a restart (or the disk coming back) recovers.
                        self.disk_failed = e2
                        raise DiskFailed(e2.errno, f"the Pangu master's journal disk failed "
                                                   f"({e2}); it serves nothing until it can "
                                                   f"write again") from None
                    self.rebuild(ckpt, entries)
                    self.become_active()
                if isinstance(e, DiskFailed):  # typed: this change did not happen
                    raise type(e)(e.errno, f"the Pangu master could not make a change durable "
                                           f"({e}); nothing was changed") from None
                raise Unavailable(f"the Pangu master could not make a change durable "
                                  f"({type(e).__name__}: {e}); retry") from None
            self.undurable -= changed
            if request_id is not None:
                self.remember(request_id, res)
            if self.journal.seq % self.checkpoint_every == 0:
                await self.journal.checkpoint(self.ns.snapshot())
            return res

    def remember(self, request_id: str, res: dict) -> None:
        self.requests[request_id] = res
        while len(self.requests) > NAMESPACE_REQUESTS_REMEMBERED_MAX:
            self.requests.popitem(last=False)

    # ------------------------------------------------------------ fencing tokens
    def admit_fence(self, fencing) -> tuple[str, int] | None:
        """A request's fencing token, checked for form (None: the request has none)."""
        return F.admit(self.ns.fencing, fencing)

    async def fence(self, fence: tuple[str, int] | None) -> None:
        """Refuse a stale fencing token; journal a newer one before the write it comes with
        goes on (a failover must not forget it)."""
        if fence is None:
            return
        self.ns.fencing.check(*fence)
        if self.ns.fencing.newer(*fence):
            await self.mutate({"op": "fence", "fencing": list(fence)})
