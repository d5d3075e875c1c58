"""Lost sessions are events the recipes surface (issue 14, defect 14).

A real 3-replica Nuwa group in this process (no Ray). A session ends on the server while a
recipe holds something under it -- closed there by the leader, or expired while the holder's
process is paused -- and the holder must stop claiming at once: ``is_held`` False, the
fencing token stale, its callbacks run, within a bound; a second client then gets the lock.
A short disconnect only suspends a session, and a lost one is never silently revived.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from nuwa import errors as E
from nuwa.client import AsyncNuwa, Nuwa, SessionState
from nuwa.recipes import Barrier, Election, Lock, ServiceRegistry
from tests.nuwa.test_group_local import LocalGroup

pytestmark = pytest.mark.timeout(120)
TTL_S = 2.0
LOST_WITHIN_S = TTL_S + 2.0  # a keep-alive every TTL/3, each try ending within the TTL


async def _until(pred, what: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.02)


def _run(tmp_path, body):
    async def main():
        g = LocalGroup(tmp_path)
        await g.start_all()
        clients = []

        def client() -> AsyncNuwa:
            clients.append(AsyncNuwa(list(g.addresses.values()), timeout_s=5))
            return clients[-1]
        try:
            await g.leader()
            await body(g, client)
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.close(), 5)
            await g.close()
    asyncio.run(asyncio.wait_for(main(), 100))


async def _close_on_server(g: LocalGroup, session_id: int) -> None:
    """The leader ends the session itself, as its expiry timer would."""
    leader = g.servers[await g.leader()]
    res = await leader._propose({"op": "session_close", "session": session_id,
                                 "reason": "expired"})
    assert "error" not in res, res


def test_a_lock_whose_session_the_server_ends_is_reported_lost_and_passes_on(tmp_path):
    async def body(g, client):
        a, b = client(), client()
        states = []
        a.add_session_listener(lambda s, st: states.append((s.id, st)))
        s = await a.session(ttl_s=TTL_S)
        lock = Lock(a, "res", "a", session=s)
        lost_calls = []
        lock.on_lost(lambda: lost_calls.append(time.monotonic()))
        token = await lock.acquire(timeout_s=5)
        assert lock.is_held and not token.stale
        t0 = time.monotonic()
        await _close_on_server(g, s.id)
        await asyncio.wait_for(lock.lost.wait(), LOST_WITHIN_S)
        assert not lock.is_held and token.stale and lost_calls
        assert lost_calls[0] - t0 < LOST_WITHIN_S
        assert s.state is SessionState.LOST and (s.id, SessionState.LOST) in states
        with pytest.raises(E.LockLost):
            token.check()
        other = Lock(b, "res", "b")
        token_b = await other.acquire(timeout_s=5)
        assert other.is_held and token_b > token and not lock.is_held
        await other.release()
        # The old holder acquires again only as a new, distinct session (a new token).
        new_s = await a.session(ttl_s=TTL_S)
        lock2 = Lock(a, "res", "a", session=new_s)
        token_a2 = await lock2.acquire(timeout_s=5)
        assert new_s.id != s.id and token_a2 > token_b and token.stale
        await lock2.release()
    _run(tmp_path, body)


def test_a_lock_holder_paused_past_its_ttl_knows_it_lost_the_lock(tmp_path):
    """The holder's process (its client loop) is frozen longer than the TTL; the server
    expires the session and another client takes the lock. The holder's ``is_held`` is False
    from the moment its TTL ran out, and on waking it reports the loss."""
    async def body(g, client):
        holder = Nuwa(list(g.addresses.values()), timeout_s=5)
        try:
            s = await asyncio.to_thread(holder._run, holder._async.session(ttl_s=TTL_S))
            lock = Lock(holder._async, "paused", "holder", session=s)
            lost_calls = []
            lock.on_lost(lambda: lost_calls.append(1))
            token = await asyncio.to_thread(holder._run, lock.acquire(timeout_s=5))
            assert lock.is_held
            holder._loop.call_soon_threadsafe(time.sleep, TTL_S * 3)  # freeze the holder
            other = Lock(client(), "paused", "other")
            token_b = await other.acquire(timeout_s=TTL_S * 3)  # its session expired
            assert token_b > token
            assert not lock.is_held, "a frozen holder must not claim past its TTL"
            await _until(lambda: bool(lost_calls), "the woken holder reports the loss",
                         TTL_S * 3 + LOST_WITHIN_S)
            assert token.stale and s.state is SessionState.LOST and other.is_held
        finally:
            await asyncio.to_thread(holder.close)
    _run(tmp_path, body)


def test_a_short_disconnect_suspends_the_session_without_losing_the_lock(tmp_path):
    async def body(g, client):
        a = client()
        s = await a.session(ttl_s=TTL_S)
        states = []
        s.add_listener(lambda _s, st: states.append(st))
        lock = Lock(a, "keep", session=s)
        await lock.acquire(timeout_s=5)
        a.conn.close()  # the connection drops; a keep-alive goes out again at once
        await _until(lambda: states[-2:] == [SessionState.SUSPENDED, SessionState.CONNECTED],
                     f"suspended, then connected again (saw {states})", LOST_WITHIN_S)
        await asyncio.sleep(TTL_S * 1.5)
        assert lock.is_held and s.state is SessionState.CONNECTED and not lock.lost.is_set()
        await lock.release()
    _run(tmp_path, body)


def test_election_barrier_and_registry_stop_claiming_when_the_session_is_lost(tmp_path):
    async def body(g, client):
        a, b = client(), client()
        sa = await a.session(ttl_s=TTL_S)
        lead = Election(a, "svc", "alpha", session=sa)
        fired = []
        lead.on_lost(lambda: fired.append("election"))
        await lead.campaign(timeout_s=5)
        assert lead.is_leader
        reg = ServiceRegistry(a, session=sa)
        reg.on_lost(lambda path: fired.append(path))
        path = await reg.register("echo", "r1", "tcp://x:1")
        assert path in reg.registered
        barrier = Barrier(a, "never", "alpha", session=sa)
        waiting = asyncio.create_task(barrier.wait(2, timeout_s=30))
        await _until(lambda: barrier.entered, "alpha entered the barrier", 5)
        follower = Election(b, "svc", "beta")
        campaign_b = asyncio.create_task(follower.campaign(timeout_s=30))
        await _close_on_server(g, sa.id)
        with pytest.raises(E.LockLost):
            await asyncio.wait_for(waiting, LOST_WITHIN_S)
        assert not lead.is_leader and not barrier.entered and lead.token.stale
        assert "election" in fired and path in fired and path not in reg.registered
        await asyncio.wait_for(campaign_b, 10)
        assert follower.is_leader and await Election(b, "svc", "x").leader() == "beta"
    _run(tmp_path, body)


def test_a_lost_default_session_is_replaced_by_a_distinct_one_and_never_revived(tmp_path):
    async def body(g, client):
        a = client()
        seen = []
        a.add_session_listener(lambda s, st: seen.append((s.id, st)))
        lock = Lock(a, "dflt")  # on the client's default session
        token = await lock.acquire(timeout_s=5)
        old = await a.default_session()
        await _close_on_server(g, old.id)
        await asyncio.wait_for(lock.lost.wait(), LOST_WITHIN_S)
        await a.create("/after", b"", ephemeral=True)  # opens a new default session
        new = await a.default_session()
        assert new.id != old.id and (new.id, SessionState.CONNECTED) in seen
        assert not lock.is_held and token.stale  # the lock does not move to the new one
        with pytest.raises(E.LockLost):
            async with Lock(a, "ctx", session=new) as t:
                await _close_on_server(g, new.id)
                await asyncio.wait_for(new.ended.wait(), LOST_WITHIN_S)
                assert t.stale
        token2 = await lock.acquire(timeout_s=5)  # again: a new node, a new token
        assert lock.is_held and token2 > token and not token2.stale
        await lock.release()
        assert token2.stale  # released: no longer stands for a holder
    _run(tmp_path, body)
