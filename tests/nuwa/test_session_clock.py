"""Session expiry under wall-clock jumps (issue 14, fault "wall-clock jumps during session
expiry"). The leader counts session deadlines in its own ticks and the client times its
keep-alives and its loss detection on the event loop's monotonic clock, so neither a ±1 h
jump of ``time.time()`` nor a jump of any clock the server could read expires a live
session or keeps a dead one. A real 3-replica group in this process, no Ray."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types

import pytest

from nuwa.io import access as access_mod
from nuwa.io import conn as conn_mod
from nuwa.io import server as server_mod
from nuwa.client import AsyncNuwa, SessionState
from tests.nuwa.test_group_local import LocalGroup

LEADER_STABLE_TRIES_MAX = 3  # scenarios tried when an election under load moves the leader
pytestmark = pytest.mark.timeout(120)
TTL_S = 1.5
DEAD_GONE_WITHIN_S = TTL_S + 2.5  # the TTL, then one tick, a commit and a read


async def _live_and_dead(tmp_path, jump) -> None:
    """A live session (kept alive) and a dead one (its keep-alive stopped, like a crashed
    client), each with an ephemeral; ``jump(step)`` moves the clocks at steps 0, 1, 2..."""
    g = LocalGroup(tmp_path)
    await g.start_all()
    live = AsyncNuwa(list(g.addresses.values()), timeout_s=5)
    dead = AsyncNuwa(list(g.addresses.values()), timeout_s=5)
    try:
        await g.leader()
        s_live = await live.session(ttl_s=TTL_S)
        s_dead = await dead.session(ttl_s=TTL_S)
        await live.create("/live", b"", ephemeral=True, session=s_live)
        await dead.create("/dead", b"", ephemeral=True, session=s_dead)
        s_dead._task.cancel()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        gone_at = None
        for step in range(int(TTL_S * 4 / 0.25)):  # four TTLs, clocks jumping meanwhile
            if step % 4 == 0:
                jump(step // 4)
            await asyncio.sleep(0.25)
            if gone_at is None and not await live.exists("/dead"):
                gone_at = loop.time() - t0
        assert await live.exists("/live"), "a live session expired after a clock jump"
        assert s_live.state is SessionState.CONNECTED and s_live.alive
        assert gone_at is not None and gone_at < DEAD_GONE_WITHIN_S, \
            f"the dead session's ephemeral went after {gone_at}s"
    finally:
        for c in (live, dead):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)
        await g.close()


@pytest.mark.parametrize("hours", [+1, -1])
def test_a_wall_clock_jump_neither_expires_live_sessions_nor_keeps_dead_ones(
        tmp_path, monkeypatch, hours):
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])

    def jump(step: int) -> None:  # +1 h, back, +1 h, ... (or the other way round)
        offset[0] = hours * 3600.0 if step % 2 == 0 else 0.0

    asyncio.run(asyncio.wait_for(_live_and_dead(tmp_path, jump), 100))


def test_session_expiry_counts_leader_ticks_not_any_clock_the_server_reads(
        tmp_path, monkeypatch):
    """Every clock the server modules can read (wall and monotonic) jumps an hour ahead;
    expiry follows the leader's ticks, so the live session stays and the dead one goes on
    time. (With deadlines on time.monotonic(), the jump would expire every session.)"""
    offset = [0.0]
    fake = types.SimpleNamespace(time=lambda: time.time() + offset[0],
                                 monotonic=lambda: time.monotonic() + offset[0])
    for mod in (server_mod, access_mod, conn_mod):  # the replica's modules that read clocks
        monkeypatch.setattr(mod, "time", fake)

    def jump(step: int) -> None:
        offset[0] = 3600.0 * (step + 1)

    asyncio.run(asyncio.wait_for(_live_and_dead(tmp_path, jump), 100))


LEADER_TICKS_WAIT_MAX = 200  # 50 ms polls for a new leader's timers to start (10 s)


def test_a_keepalive_after_the_deadline_is_refused_even_before_the_close_commits(tmp_path):
    """The leader has decided a session expired (its close is proposed, not yet applied):
    a keep-alive arriving now must not be answered ok, or the client would count on a
    session that is about to vanish (and a lock that another client is about to get)."""
    from nuwa import errors as E

    async def main():
        g = LocalGroup(tmp_path)
        await g.start_all()
        c = AsyncNuwa(list(g.addresses.values()), timeout_s=5)
        try:
            for attempt in range(LEADER_STABLE_TRIES_MAX):
                lid = await g.leader()
                leader = g.servers[lid]
                term = leader.node.term
                s = await c.session(ttl_s=TTL_S)
                s._task.cancel()
                # A close is proposed only once the leader's timers run (its first tick after
                # winning: ``lead``); before that a keep-alive only renews, by design.
                for _ in range(LEADER_TICKS_WAIT_MAX):
                    if leader.sessions.leading:
                        break
                    await asyncio.sleep(0.05)
                # Its deadline passed and its close is proposed: _leader_duties has dropped
                # the timer (the close commits a moment later; the tree still has it).
                leader.sessions.closing(s.id)
                assert any(x["session"] == s.id for x in leader.tree.sessions())
                try:
                    await c._call({"op": "session_keepalive", "session": s.id}, False)
                except E.SessionExpired:
                    return  # refused, as promised
                # Answered ok: allowed only if another replica took over meanwhile (a new
                # leader gives every session a full TTL, by design); then try again.
                if await g.leader() == lid and leader.node.term == term:
                    raise AssertionError("the leader that had decided the session expired "
                                         "answered its keep-alive")
            pytest.fail(f"the leader changed in each of {LEADER_STABLE_TRIES_MAX} tries")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)
            await g.close()

    asyncio.run(asyncio.wait_for(main(), 100))
