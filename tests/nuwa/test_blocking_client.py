"""The blocking Nuwa client never reports a write that may still land as a plain
``TimeoutError`` (issue 14, defect 15): every write ends ok, with a typed definite failure, or
with ``OutcomeUnknown`` -- and a call given up on is cancelled, so nothing more of it is sent.

A real replica runs on its own event-loop thread; "stalled" means its loop (or the client's)
is blocked for a while, like a process paused with SIGSTOP."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from nuwa import errors as E
from nuwa.client import connect
from nuwa.core.raft import Role
from nuwa.io.server import ReplicaServer, ServerConfig

pytestmark = pytest.mark.timeout(120)


class Replica:
    def __init__(self, tmp_path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ReplicaServer(1, [1], str(tmp_path / "r1"), ServerConfig(), seed=1)
        self.port = self.run(self.server.start("127.0.0.1"))
        deadline = time.monotonic() + 10
        while self.server.node.role is not Role.LEADER:
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.02)

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stall(self, seconds: float) -> None:
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def stop(self):
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def replica(tmp_path):
    r = Replica(tmp_path)
    yield r
    r.stop()


def test_a_write_on_a_stuck_client_loop_is_outcome_unknown_and_is_not_sent(replica):
    c = connect([("127.0.0.1", replica.port)], timeout_s=1.0)
    try:
        c.create("/w", b"1")
        c._loop.call_soon_threadsafe(time.sleep, 4.0)  # the client's own loop is stuck
        t0 = time.monotonic()
        with pytest.raises(E.OutcomeUnknown):
            c.set("/w", b"2")
        assert time.monotonic() - t0 < 3.9  # given up on, not waited out
        time.sleep(4.5)  # the loop runs again: the abandoned call must not go out now
        assert c.get("/w")[0] == b"1"
    finally:
        c.close()


def test_a_read_on_a_stuck_client_loop_is_a_typed_timeout(replica):
    c = connect([("127.0.0.1", replica.port)], timeout_s=1.0)
    try:
        c.create("/r", b"1")
        c._loop.call_soon_threadsafe(time.sleep, 3.5)
        with pytest.raises(E.Timeout):
            c.get("/r")
    finally:
        c.close()


def test_a_write_with_its_own_longer_timeout_on_a_stalled_replica(replica):
    """change_membership takes its own timeout_s, longer than the client's: the blocking call
    waits for it and ends with the write's real outcome (here OutcomeUnknown: the replica
    stalls past it), not a TimeoutError after the client's shorter timeout."""
    c = connect([("127.0.0.1", replica.port)], timeout_s=1.0)
    try:
        c.exists("/")
        replica.stall(6.0)
        t0 = time.monotonic()
        with pytest.raises(E.OutcomeUnknown):
            c.change_membership("add_learner", 9, timeout_s=4.0)
        assert time.monotonic() - t0 >= 3.5  # it waited for the call's own timeout
    finally:
        c.close()


def test_every_outcome_of_a_write_on_a_stalling_replica_is_typed(replica):
    c = connect([("127.0.0.1", replica.port)], timeout_s=0.5)
    outcomes = []
    try:
        c.create("/s/", parents=True)
        for i in range(12):
            if i % 3 == 0:
                replica.stall(0.8)
            try:
                c.create(f"/s/n{i}", b"x", ephemeral=(i % 2 == 0))
                outcomes.append("ok")
            except E.NuwaError as e:  # a builtin TimeoutError would fail the test here
                outcomes.append(type(e).__name__)
        assert set(outcomes) <= {"ok", "OutcomeUnknown", "NodeExists", "Unavailable"}, outcomes
    finally:
        c.close()
