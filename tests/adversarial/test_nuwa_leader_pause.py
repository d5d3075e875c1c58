"""A Nuwa leader paused with SIGSTOP past its lease, then resumed (issue 14, faults).

Three replicas, each its own OS process (``tests.adversarial.nuwa_proc``, no Ray). The leader
is frozen for well over the election timeout while the other two elect a new leader and take
writes. Requests are queued in the frozen leader's socket -- writes, and a linearizable read
of a key the new leader has since changed -- and then it is resumed, first deaf to its peers
(a one-way partition: it has not heard of the new term and still believes it leads), then
hearing again. It must step down without acknowledging anything of its old term (the writes
fail with NotLeader or OutcomeUnknown and never land; the read never returns the old value),
and every write acknowledged by anyone must be there at the end, on every replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys

import msgpack
import pytest

from nuwa import errors as E
from nuwa.client import AsyncNuwa
from nuwa.io.server import ServerConfig
from nuwa.io.transport import frame, read_frame

pytestmark = pytest.mark.timeout(180)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ELECTION_TIMEOUT_MAX_S = 2 * ServerConfig().election_ticks * ServerConfig().tick_s
PAUSE_S = max(2.0, 4 * ELECTION_TIMEOUT_MAX_S)  # well past the election timeout and the lease
WAIT_S = 20.0


class ProcGroup:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.ids = [1, 2, 3]
        self.secret = secrets.token_bytes(32)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.pids: dict[int, int] = {}
        self.addresses: dict[int, tuple[str, int]] = {}

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        for rid in self.ids:
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.adversarial.nuwa_proc", cwd=ROOT, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self.procs[rid] = p
            p.stdin.write((json.dumps({"id": rid, "voters": self.ids, "dir": self.dir(rid),
                                       "secret": self.secret.hex()}) + "\n").encode())
            await p.stdin.drain()
            got = json.loads(await asyncio.wait_for(p.stdout.readline(), WAIT_S))
            self.pids[rid] = got["pid"]
            self.addresses[rid] = ("127.0.0.1", got["port"])
        peers = json.dumps({"peers": {str(k): list(v) for k, v in self.addresses.items()}})
        for p in self.procs.values():
            p.stdin.write((peers + "\n").encode())
            await p.stdin.drain()

    def dir(self, rid: int) -> str:
        return str(self.tmp / f"r{rid}")

    def status(self, rid: int) -> dict | None:
        try:
            with open(os.path.join(self.dir(rid), "status.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    async def wait_for(self, what: str, pred, timeout_s: float = WAIT_S):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            got = pred()
            if got:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"not within {timeout_s}s: {what}; status "
                             f"{ {r: self.status(r) for r in self.ids} }")

    def leader_among(self, ids) -> tuple[int, int] | None:
        """(leader, term) if exactly one of ``ids`` leads the newest term among them."""
        sts = {r: self.status(r) for r in ids}
        if any(s is None for s in sts.values()):
            return None
        top = max(s["term"] for s in sts.values())
        leaders = [r for r, s in sts.items() if s["role"] == "LEADER" and s["term"] == top]
        return (leaders[0], top) if len(leaders) == 1 else None

    async def close(self) -> None:
        for rid, p in self.procs.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pids[rid], signal.SIGCONT)
            with contextlib.suppress(Exception):
                p.stdin.close()
        for p in self.procs.values():
            try:
                await asyncio.wait_for(p.wait(), 10)
            except asyncio.TimeoutError:
                p.kill()
                await p.wait()


class Writer:
    """Creates /w/<tag><i> in a loop; remembers what was acknowledged and what is unknown."""

    def __init__(self, addresses, tag: str):
        self.client = AsyncNuwa(addresses, timeout_s=1.0)
        self.tag = tag
        self.acked: list[str] = []
        self.unknown: list[str] = []
        self.stopping = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        i = 0
        while not self.stopping:
            name = f"{self.tag}{i}"
            i += 1
            try:
                await self.client.create(f"/w/{name}", b"x")
                self.acked.append(name)
            except (E.OutcomeUnknown, E.Unavailable, E.Timeout, E.NotLeader):
                self.unknown.append(name)
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        # A flag, not just cancel(): asyncio.wait_for (before 3.12) can swallow a cancel.
        self.stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), WAIT_S)
        except asyncio.TimeoutError:
            self.task.cancel()
        await self.client.close()


async def raw_requests(addr, reqs: list[dict]):
    """Queue requests on a fresh client connection (the kernel accepts it even while the
    replica is frozen); returns the reader for the answers."""
    r, w = await asyncio.open_connection(*addr)
    w.write(frame(b"C") + b"".join(frame(msgpack.packb(q, use_bin_type=True)) for q in reqs))
    await w.drain()
    return r, w


async def answers(reader, n: int) -> dict:
    out = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while len(out) < n and loop.time() < deadline:
        try:
            msg = msgpack.unpackb(await asyncio.wait_for(read_frame(reader),
                                                         deadline - loop.time()), raw=False)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            break  # no (more) answers: the connection was dropped, or nothing came
        if "id" in msg:
            out[msg["id"]] = msg
    return out


def _create(path: str, value: bytes) -> dict:
    return {"op": "create", "path": path, "value": value, "creator": "t",
            "ephemeral_session": None, "sequential": False, "parents": False}


def test_a_paused_leader_resumed_steps_down_and_acknowledges_nothing(tmp_path):
    async def main():
        g = ProcGroup(tmp_path)
        await g.start()
        writers: list[Writer] = []
        try:
            old, old_term = await g.wait_for("a leader", lambda: g.leader_among(g.ids))
            c = AsyncNuwa(list(g.addresses.values()), timeout_s=5)
            await c.create("/w/", parents=True)
            await c.create("/k", b"old")
            await c.close()
            writers.append(Writer(list(g.addresses.values()), "a"))
            await g.wait_for("writes before the pause", lambda: len(writers[0].acked) >= 20)

            os.kill(g.pids[old], signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            paused_at = loop.time()
            rest = [r for r in g.ids if r != old]
            new, new_term = await g.wait_for(
                "a new leader among the others",
                lambda: (lambda x: x if x and x[1] > old_term else None)(g.leader_among(rest)))
            survivors = [g.addresses[r] for r in rest]
            writers.append(Writer(survivors, "b"))
            c = AsyncNuwa(survivors, timeout_s=5)
            await c.set("/k", b"new")
            await g.wait_for("writes at the new leader", lambda: len(writers[1].acked) >= 20)
            # Queued at the frozen leader, which still believes it leads term old_term.
            reader, w = await raw_requests(g.addresses[old], [
                {"id": 1, "op": "create", "cmd": _create("/stale", b"from the old leader")},
                {"id": 2, "op": "get", "path": "/k"},
                {"id": 3, "op": "set", "cmd": {"op": "set", "path": "/k", "value": b"stale",
                                               "expected_version": None}},
            ])
            deaf = os.path.join(g.dir(old), "deaf")
            open(deaf, "w").close()  # it resumes without hearing of the new term
            await asyncio.sleep(max(0.0, PAUSE_S - (loop.time() - paused_at)))
            os.kill(g.pids[old], signal.SIGCONT)

            got = await answers(reader, 3)
            w.close()
            assert set(got) == {1, 2, 3}, f"unanswered requests: {got}"
            for rid in (1, 3):  # the writes: never acknowledged by the deposed leader
                assert "error" in got[rid], f"the paused leader acknowledged {got[rid]}"
                err = E.error_from_dict(got[rid]["error"])
                assert isinstance(err, (E.NotLeader, E.OutcomeUnknown)), err
            # The read: never the value from before the pause (a stale leader serving from a
            # lease it no longer holds would answer b"old").
            assert "error" in got[2], f"a deaf deposed leader served a read: {got[2]}"
            assert isinstance(E.error_from_dict(got[2]["error"]), (E.NotLeader, E.Timeout))
            # Deaf, it still stops leading on its own (check-quorum): no lease outlives that.
            await g.wait_for("the old leader stepping down while deaf",
                             lambda: (lambda s: s and s["role"] != "LEADER")(g.status(old)))
            os.unlink(deaf)

            # Hearing again, it follows the new term and catches up.
            await g.wait_for("the old leader following a newer term", lambda: (
                lambda s: s and s["role"] == "FOLLOWER" and s["term"] >= new_term)(g.status(old)))
            acked = {n for wr in writers for n in wr.acked}
            for wr in writers:
                await wr.stop()
            writers.clear()
            assert (await c.get("/k"))[0] == b"new"
            assert not await c.exists("/stale")
            missing = acked - set(await c.list("/w/"))
            assert not missing, f"acknowledged writes lost: {sorted(missing)[:10]}"
            await c.close()
            # Every replica, the deposed leader included, ends with every acknowledged write.
            for rid in g.ids:
                local = AsyncNuwa([g.addresses[rid]], timeout_s=5)
                try:
                    async def has_all():
                        res = await local._call({"op": "list", "path": "/w/",
                                                 "linearizable": False}, False)
                        return acked <= set(res["children"])
                    deadline = loop.time() + WAIT_S
                    while not await has_all():
                        assert loop.time() < deadline, f"replica {rid} lacks acknowledged writes"
                        await asyncio.sleep(0.05)
                finally:
                    await local.close()
        finally:
            for wr in writers:
                await wr.stop()
            await g.close()

    asyncio.run(asyncio.wait_for(main(), 170))
