"""Hot-standby FuxiMaster: N candidates behind a Nuwa election, with fencing (issue 16 part 3).

On a cluster with Nuwa (``fuxi up``) FuxiMaster runs as ``MASTER_CANDIDATES`` actors named
``FuxiMaster``, ``FuxiMaster-2``, ... (``fuxi.core.leadership.candidate_names``), spread over
nodes where there are several. Each campaigns in the Nuwa election ``fuxi-master-<cluster>``
with a session of ``LEADER_SESSION_TTL_S``. The winner:

1. *claims the term*: sets Nuwa's ``/fuxi/leader``; the node's new version is its term,
   greater than every earlier leader's. From then on each of its store writes is a Nuwa
   transaction that first checks that version (``NuwaStore.fence``): once a newer leader
   claimed, a write from this one is refused (``StaleTerm``), never applied;
2. *takes over* (``take_over``): reads the hard state (job records, quota configuration,
   launch records) from Nuwa, lists the live JobMasters and adopts them
   (``fuxi.shells.adoption``: the ledger is rebuilt from each one's first sync), re-queues
   the jobs that waited in a queue in their order, restarts the loops (services, agents,
   Nuwa supervision) -- then serves.

Standbys answer every call with ``NotLeader`` naming the leader (``leader_only``); a call
that reaches the leader while it is still taking over waits for it (``TAKEOVER_WAIT_S``).
A leader that loses its Nuwa session (paused or partitioned past the TTL) ends its process
at once (fail-stop): Ray starts it again, and it comes back as a standby.

Discovery: callers hold a handle and follow ``NotLeader.leader``; a dead handle means trying
the candidates by name in order (``find_leader`` for drivers, ``MasterLink`` inside
JobMasters). Replies to JobMasters and commands to agents carry the term; they refuse an
older one than they have seen (``fuxi.core.leadership.TermGate``).

Without Nuwa (the embedded default, the test cluster's own FuxiMaster) there is one
candidate, no election, term 0: it serves as soon as it has started, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import time
from typing import Any

import ray

from fuxi.core.leadership import CANDIDATES_MAX, TermGate, check_candidates, next_candidate
from fuxi.shells.candidates import CandidateKeeper
from fuxi.errors import NotLeader

logger = logging.getLogger(__name__)

MASTER_CANDIDATES = 2  # FuxiMaster candidates under `fuxi up` (1 where there is no Nuwa)
LEADER_SESSION_TTL_S = 2.5  # a dead leader's election entry lapses after this long
TAKEOVER_WAIT_S = 30.0  # a call reaching a leader still taking over waits this long
ELECTION_WAIT_S = 10.0  # a call reaching a standby while nobody leads waits this long
LEADER_POLL_S = 0.05  # between looks at the election while waiting for a leader
CAMPAIGN_RETRY_S = 0.5  # after a campaign or take-over that failed
LEADER_NODE = "/fuxi/leader"  # its version after the leader set it is the leader's term
FIND_LEADER_WAIT_S = 60.0  # a driver looking for the leader (across a take-over) waits this long
FIND_LEADER_RETRY_S = 0.2  # between rounds over the candidates
LEADER_INFO_TIMEOUT_S = 10.0
LINK_STAYS_MAX = 20  # a JobMaster's syncs that doubt a hint naming a dead candidate (~5 s)

# Methods a standby answers too: its role, and the keys the authority pushes to every holder.
LEADER_FREE = frozenset({"campaign", "leader_info", "zk_set_keys", "zk_set_acl"})
# Calls other platform actors make by FuxiMaster's first name (the authority's owner lookups,
# Kuafu's proxy for a new node): a standby passes them on to the leader.
FORWARDED = frozenset({"owner_of", "kuafu_start_node"})
FORWARD_TIMEOUT_S = 30.0


def leader_only(cls):
    """Wrap every public method of ``cls`` (an actor class) so that only the serving leader
    runs it; others raise ``NotLeader``. Calls made by the take-over itself pass."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or name in LEADER_FREE or not inspect.isfunction(fn):
            continue
        if inspect.iscoroutinefunction(fn) and name in FORWARDED:
            async def guarded(self, *a, __fn=fn, __name=name, **kw):
                try:
                    await self.leadership.admit(__name)
                except NotLeader as e:
                    return await self.leadership.forward(e, __name, *a, **kw)
                return await __fn(self, *a, **kw)
        elif inspect.iscoroutinefunction(fn):
            async def guarded(self, *a, __fn=fn, __name=name, **kw):
                await self.leadership.admit(__name)
                return await __fn(self, *a, **kw)
        else:
            def guarded(self, *a, __fn=fn, __name=name, **kw):
                self.leadership.admit_now(__name)
                return __fn(self, *a, **kw)
        setattr(cls, name, functools.wraps(fn)(guarded))
    return cls


class Leadership:
    """One candidate's part in the election: its role, its term, the take-over."""

    def __init__(self, master, me: str, candidates: list[str], nuwa: list | None, token,
                 spawn: tuple | None = None):
        self.master = master
        self.me = me
        self.candidates = check_candidates(candidates)
        self.nuwa_addresses = [tuple(a) for a in nuwa] if nuwa else None
        self.token = token  # the platform token, for the election's Nuwa client
        self.election = None
        self.client = None
        self.term = 0
        self.leading = False  # won the election (taking over, or serving)
        self.serving = self.nuwa_addresses is None  # no election: serves once started
        self.leader: str | None = me if self.serving else None  # as last seen
        self.elected_at: float | None = None
        self.served_at: float | None = time.time() if self.serving else None
        self.takeover_s: float | None = None  # election won -> serving
        self._served = asyncio.Event()
        self._takeover_task: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self.keeper = CandidateKeeper(self, spawn)  # candidates gone with their node: again

    @property
    def elected(self) -> bool:
        return self.nuwa_addresses is not None

    # ------------------------------------------------------------ campaign
    def start(self) -> None:
        """Campaign (once; nothing to do without Nuwa). On the actor's event loop."""
        if not self.elected or self._task is not None:
            return
        from nuwa.client import AsyncNuwa
        from nuwa.recipes import Election

        self.client = AsyncNuwa(self.nuwa_addresses, creator=f"fuxi-{self.me}",
                                token=self.token)
        self.election = Election(self.client, f"fuxi-master-{self.master.cluster}", self.me)
        self.election.on_lost(self._lost)
        self._task = asyncio.get_running_loop().create_task(self._campaign())

    async def _campaign(self) -> None:
        from nuwa import errors as NE

        while True:
            try:
                await self.client.default_session(LEADER_SESSION_TTL_S)
                await self.election.campaign()
                self.elected_at = time.time()
                self.leading, self.leader = True, self.me
                self.term = await self._claim()
                self._takeover_task = asyncio.current_task()
                await self.take_over(self.term)
                self.serving = True
                self.served_at = time.time()
                self.takeover_s = self.served_at - self.elected_at
                self._served.set()
                logger.warning("FuxiMaster %s leads (term %d); took over in %.2fs", self.me,
                               self.term, self.takeover_s)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - retried; a half-done take-over fail-stops
                if self.leading:  # a take-over that failed half-way: start afresh (restart)
                    logger.exception("%s: take-over of term %d failed", self.me, self.term)
                    self._lost(f"take-over failed: {type(e).__name__}: {e}")
                if not isinstance(e, (NE.NuwaError, OSError)):
                    logger.exception("%s: campaign failed", self.me)
                logger.warning("%s: campaign failed (%s); retrying", self.me, e)
                with contextlib.suppress(Exception):
                    await self.election.resign()
                await asyncio.sleep(CAMPAIGN_RETRY_S)

    async def take_over(self, term: int) -> None:
        """This candidate won with ``term``: fence the store, build the leader's state, adopt
        the running jobs, re-queue the waiting ones, start the loops its predecessor ran."""
        from fuxi.shells.adoption import leader_state
        from fuxi.shells.jobrecords import LOOPS_KEY

        m = self.master
        m.store.fence = (LEADER_NODE, term)  # before any write of this leader
        await asyncio.to_thread(leader_state, m, True)
        m.adoption.loops = await m.astore.get(LOOPS_KEY) or {}
        await m._resume()

    async def _claim(self) -> int:
        """Make this leadership's term: set ``LEADER_NODE`` (its version rises by one)."""
        from nuwa import errors as NE

        value = json.dumps({"leader": self.me, "pid": os.getpid(), "at": time.time()}).encode()
        try:
            stat = await self.client.set(LEADER_NODE, value)
        except NE.NoNode:
            with contextlib.suppress(NE.NodeExists):
                await self.client.create(LEADER_NODE, value, parents=True)
            stat = await self.client.set(LEADER_NODE, value)
        return int(stat["version"])

    def _lost(self, why: str = "its Nuwa session ended") -> None:
        """The leadership is gone while held: stop at once (fail-stop). Anything this process
        still sent would carry a stale term and be refused; Ray starts it again as a
        standby."""
        if not self.leading:
            return
        logger.error("FuxiMaster %s lost the leadership of term %d (%s): exiting", self.me,
                     self.term, why)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup may run: it could write

    # ------------------------------------------------------------ the guard
    def _in_takeover(self) -> bool:
        try:
            return asyncio.current_task() is self._takeover_task is not None
        except RuntimeError:
            return False

    def _still_leading(self) -> None:
        if self.elected and not self.election.is_leader:
            self._lost("its Nuwa session is no longer confirmed")

    async def admit(self, what: str) -> None:
        """Let a call through on the serving leader; wait while it takes over; else
        ``NotLeader`` naming the leader."""
        if self.serving:
            self._still_leading()
            return
        if self._in_takeover():
            return
        self.start()  # a call before the campaign's own message: campaign now
        if self.leading:
            try:
                await asyncio.wait_for(self._served.wait(), TAKEOVER_WAIT_S)
            except asyncio.TimeoutError:
                raise NotLeader(f"{what}: FuxiMaster {self.me} won the election but has not "
                                f"taken over within {TAKEOVER_WAIT_S:g}s (TAKEOVER_WAIT_S)",
                                leader=self.me) from None
            return
        deadline = time.monotonic() + ELECTION_WAIT_S
        while True:
            leader = await self._read_leader()
            if leader is not None and leader != self.me:
                raise NotLeader(f"{what}: FuxiMaster {self.me} is a standby; the leader is "
                                f"{leader}", leader=leader)
            if self.serving or self.leading:
                return await self.admit(what)
            if time.monotonic() > deadline:
                raise NotLeader(f"{what}: no FuxiMaster leads yet (election under way for "
                                f"{ELECTION_WAIT_S:g}s, ELECTION_WAIT_S)", leader=None)
            await asyncio.sleep(LEADER_POLL_S)

    async def forward(self, refusal: NotLeader, method: str, *args, **kwargs):
        """A standby passes a FORWARDED call on to the leader ``refusal`` names (else raises
        it): the caller knew only FuxiMaster's first name."""
        if refusal.leader is None or refusal.leader == self.me:
            raise refusal
        handle = await asyncio.to_thread(ray.get_actor, refusal.leader)  # a GCS lookup
        return await asyncio.wait_for(getattr(handle, method).remote(*args, **kwargs),
                                      FORWARD_TIMEOUT_S)

    async def pass_on(self, method: str, *args) -> None:
        """On a standby: send a call it has applied itself on to the leader as well (bounded
        by FORWARD_TIMEOUT_S; a failure is logged -- the leader polls as every guard does)."""
        if not self.elected or self.serving:
            return
        leader = await self._read_leader()
        if leader is None or leader == self.me:
            return
        try:
            await self.forward(NotLeader("", leader=leader), method, *args)
        except Exception as e:  # noqa: BLE001 - the leader's own poll catches up
            logger.warning("%s: passing %s on to %s failed: %s", self.me, method, leader, e)

    def admit_now(self, what: str) -> None:
        """``admit`` for a synchronous method: never waits."""
        if self.serving:
            self._still_leading()
            return
        raise NotLeader(f"{what}: FuxiMaster {self.me} is not serving; the leader is "
                        f"{self.leader or 'not known yet'}", leader=self.leader)

    async def _read_leader(self) -> str | None:
        if self.election is None:
            return None
        try:
            self.leader = await self.election.leader()
        except Exception:  # noqa: BLE001 - Nuwa unreachable: say what was last seen
            pass
        return self.leader

    def info(self) -> dict:
        return {"name": self.me, "candidates": list(self.candidates), "elected": self.elected,
                "leading": self.leading, "serving": self.serving, "term": self.term,
                "leader": self.me if self.serving else self.leader, "pid": os.getpid(),
                "elected_at": self.elected_at, "served_at": self.served_at,
                "takeover_s": self.takeover_s, "respawned": self.keeper.respawned[-CANDIDATES_MAX:]}


# ------------------------------------------------------------ callers finding the leader

def find_leader(namespace: str, candidates: list[str], handle=None,
                timeout_s: float = FIND_LEADER_WAIT_S):
    """The serving leader's handle (blocking; drivers only): ask ``handle`` (or the first
    candidate), follow ``leader`` hints, try the candidates in order; ``NotLeader`` once
    ``timeout_s`` passed with none serving."""
    deadline = time.monotonic() + timeout_s
    current, hint, tried, last = None, None, 0, "no candidate answered"
    while True:
        if handle is None:
            name = next_candidate(candidates, current, hint, tried)
            if name is None:  # every candidate asked: a round is over
                if time.monotonic() > deadline:
                    raise NotLeader(f"no FuxiMaster serves within {timeout_s:g}s "
                                    f"(FIND_LEADER_WAIT_S): {last}")
                time.sleep(FIND_LEADER_RETRY_S)
                current, hint, tried = None, None, 0
                continue
            current, tried = name, tried + 1
            try:
                handle = ray.get_actor(name, namespace=namespace)
            except ValueError:
                last = f"{name} does not exist"
                continue
        try:
            info = ray.get(handle.leader_info.remote(), timeout=LEADER_INFO_TIMEOUT_S)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as e:
            last, handle = f"{current or 'the handle'}: {type(e).__name__}", None
            continue
        if info.get("serving"):
            return handle
        last, hint, handle = f"{info.get('name')} is a standby", info.get("leader"), None
        if hint is not None and hint != info.get("name"):
            tried = 0 if current is None else tried  # a new hint: worth its own try


class MasterLink:
    """A JobMaster's way to its FuxiMaster (passed in place of the bare handle): the handle,
    the candidates to try when it fails, and the highest term heard (``TermGate``).
    ``link.sync`` is the handle's ``sync``; ``failed(e)`` after a failed sync picks whom to
    ask next; ``fresh(reply)`` is False for a reply from a deposed leader (ignored)."""

    def __init__(self, handle, name: str, candidates: list[str], term: int = 0):
        self.handle, self.name = handle, name
        self.candidates = check_candidates(candidates)
        self.gate = TermGate(term)
        self._tried = 0
        self.dead: str | None = None  # the candidate whose call last failed outright
        self._stays = 0  # failures in a row that kept this handle (LINK_STAYS_MAX)

    @property
    def sync(self):
        return self.handle.sync

    @property
    def agent_heartbeat(self):
        return self.handle.agent_heartbeat

    def check(self, term: Any, what: str) -> None:
        """A command from FuxiMaster (cancel): refused when its term is older than seen."""
        self.gate.admit(0 if term is None else term, what)

    def fresh(self, reply: Any) -> bool:
        if not isinstance(reply, dict) or not self.gate.fresh(reply.get("term", 0)):
            return False
        self._tried, self.dead, self._stays = 0, None, 0
        return True

    def failed(self, error: BaseException) -> None:
        """The last call failed (a standby's NotLeader, a dead or silent handle): follow the
        standby's hint, else the next candidate (one GCS lookup; once all were tried it
        starts over with the next failure)."""
        from base.actors import translate

        err = translate(error, "sync")
        if not isinstance(err, NotLeader):
            self.dead = self.name  # dead, restarting or silent: not where a hint should lead
        elif (err.leader is None or err.leader == self.dead) and self._stays < LINK_STAYS_MAX:
            self._stays += 1  # a standby while the election settles (it may be next): ask
            return  # it again -- for a bounded while: the dead one may come back and lead
        self._stays = 0
        hint = err.leader if isinstance(err, NotLeader) else None
        name = next_candidate(self.candidates, self.name, hint, self._tried)
        if name is None:
            self._tried, name = 0, self.candidates[0]
        self._tried += 1
        try:
            self.handle, self.name = ray.get_actor(name), name
        except ValueError:
            self.name = name  # gone: the next failure moves on
