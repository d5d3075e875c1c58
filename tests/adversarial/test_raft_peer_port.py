"""The Nuwa Raft peer port on the raw wire, against a real 3-replica group on 127.0.0.1 (asyncio
servers, real WAL and sockets, no Ray): forged and replayed handshakes, a wrong secret, a
member impersonating another, forged APPENDs, a HEARTBEAT with term 2**64-1, garbage frames.

Every test keeps a client writing to the group the whole time: nothing the attacker sends may
stop a replica or a write, and nothing forged may reach a replica's namespace tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import struct

import msgpack
import pytest

from nuwa import errors as E
from nuwa.core import peer_auth as A
from nuwa.client import AsyncNuwa
from nuwa.core.codec import encode_message
from nuwa.core.raft import Entry, Message, MsgType, Role
from nuwa.io.server import ReplicaServer, ServerConfig
from nuwa.io.transport import frame, read_frame
from nuwa.io.wal import Wal

pytestmark = pytest.mark.timeout(180)
CFG = ServerConfig()
SECRET = secrets.token_bytes(32)
U64_MAX = (1 << 64) - 1
WAIT_S = 10.0


class PeerGroup:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.ids = [1, 2, 3]
        self.servers: dict[int, ReplicaServer] = {}
        self.addresses: dict[int, tuple[str, int]] = {}

    async def start(self, rid: int, port: int = 0) -> None:
        s = ReplicaServer(rid, self.ids, str(self.tmp / f"r{rid}"), CFG, seed=rid,
                          peer_secret=SECRET)
        self.addresses[rid] = ("127.0.0.1", await s.start("127.0.0.1", port))
        self.servers[rid] = s

    async def start_all(self) -> None:
        for rid in self.ids:
            await self.start(rid)
        self.publish()
        await self.leader()

    def publish(self) -> None:
        for s in self.servers.values():
            s.set_peers(self.addresses)

    async def leader(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while loop.time() < deadline:
            leaders = [r for r, s in self.servers.items() if s.node.role is Role.LEADER]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no single leader within {WAIT_S}s")

    async def follower(self) -> tuple[int, int]:
        lead = await self.leader()
        return lead, next(r for r in self.ids if r != lead)

    def alive(self) -> None:
        for rid, s in self.servers.items():
            assert not s.stopped, f"replica {rid} stopped"

    async def close(self) -> None:
        for s in self.servers.values():
            with contextlib.suppress(Exception):
                await s.stop()


class Writer:
    """A client writing all the time; every write must succeed and be there afterwards."""

    def __init__(self, group: PeerGroup):
        self.group = group
        self.acked: list[str] = []
        self.unknown = 0
        self.stopping = False
        self.client = AsyncNuwa(list(group.addresses.values()), timeout_s=5)

    async def __aenter__(self):
        await self.client.create("/live/", parents=True)
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self):
        i = 0
        while not self.stopping:
            path = f"/live/n{i}"
            i += 1
            try:
                await self.client.create(path, b"x")
            except (E.OutcomeUnknown, E.Unavailable, E.Timeout):
                # Only an election (a loaded CI machine) explains these; what counts is that
                # writes go on succeeding, checked on exit.
                self.unknown += 1
                continue
            self.acked.append(path)
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc):
        before = len(self.acked)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while len(self.acked) <= before + 5 and loop.time() < deadline:  # still writing after
            await asyncio.sleep(0.05)
        assert not self.task.done(), f"the writer failed: {self.task.exception()!r}"
        assert len(self.acked) > before + 5, "writes stopped succeeding after the attack"
        # A flag, not just cancel(): asyncio.wait_for (before 3.12) can swallow a cancel.
        self.stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), WAIT_S)
        except asyncio.TimeoutError:
            self.task.cancel()
        names = set(await self.client.list("/live/"))
        assert {p.rsplit("/", 1)[1] for p in self.acked} <= names
        await self.client.close()
        self.group.alive()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 150))


@pytest.fixture
def group(tmp_path):
    return PeerGroup(tmp_path)


# ------------------------------------------------------------------ raw-wire helpers


async def dial(group: PeerGroup, rid: int):
    return await asyncio.open_connection(*group.addresses[rid])


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (EOF or reset) within WAIT_S."""
    try:
        while await asyncio.wait_for(reader.read(4096), WAIT_S):
            pass
    except asyncio.TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def handshake(reader, writer, me: int, them: int, secret: bytes = SECRET):
    """A real handshake as replica ``me``; returns the frames we sent (hello, proof)."""
    na = secrets.token_bytes(32)
    hello = A.hello(me, na)
    writer.write(frame(hello))
    ch = await asyncio.wait_for(read_frame(reader), WAIT_S)
    nb = A.open_challenge(secret, ch, me, them, na)
    proof = A.proof(secret, me, them, na, nb)
    writer.write(frame(proof))
    await writer.drain()
    return hello, proof


def forged_append(server: ReplicaServer, frm: int, path: str = "/pwned") -> Message:
    """An APPEND that, if believed, commits and applies a create of ``path`` on ``server``."""
    node = server.node
    last, last_term = node.log.last_index(), node.log.last_term()
    cmd = {"op": "create", "path": path, "value": b"owned", "creator": "mallory",
           "ephemeral_session": None, "sequential": False, "parents": False}
    data = msgpack.packb({"rid": "forged", "cmd": cmd}, use_bin_type=True)
    return Message(MsgType.APPEND, frm, server.id, node.term, log_term=last_term, index=last,
                   entries=(Entry(node.term, last + 1, data),), commit=last + 1)


async def settle() -> None:
    await asyncio.sleep(0.5)  # several ticks and heartbeats: anything believed would be applied


def untouched(group: PeerGroup, path: str = "/pwned") -> None:
    for rid, s in group.servers.items():
        assert not s.tree.exists(path), f"replica {rid} applied a forged entry"


# ------------------------------------------------------------------ tests


def test_the_old_unauthenticated_hello_is_refused_and_its_append_not_applied(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                r, w = await dial(group, fol)
                w.write(frame(b"P" + struct.pack("<I", lead)))  # the hello before issue 14
                w.write(frame(encode_message(forged_append(group.servers[fol], lead))))
                assert await closed_by_server(r)
                await settle()
                untouched(group)
                assert group.servers[fol].transport.peer_auth_failures >= 1
        finally:
            await group.close()

    run(main())


def test_a_peer_with_the_wrong_secret_is_disconnected(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                wrong = secrets.token_bytes(32)
                r, w = await dial(group, fol)
                na = secrets.token_bytes(32)
                w.write(frame(A.hello(lead, na)))
                ch = await asyncio.wait_for(read_frame(r), WAIT_S)
                with pytest.raises(A.PeerAuthFailed):  # we cannot check the replica either
                    A.open_challenge(wrong, ch, lead, fol, na)
                nb = ch[4:36]
                w.write(frame(A.proof(wrong, lead, fol, na, nb)))
                w.write(frame(encode_message(forged_append(group.servers[fol], lead))))
                assert await closed_by_server(r)
                await settle()
                untouched(group)
        finally:
            await group.close()

    run(main())


def test_a_recorded_handshake_replayed_is_refused(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                # Record a genuine handshake (as a member would make it) ...
                r, w = await dial(group, fol)
                hello, proof = await handshake(r, w, lead, fol)
                w.close()
                # ... and replay it verbatim, with a forged APPEND behind it.
                r, w = await dial(group, fol)
                w.write(frame(hello) + frame(proof))
                w.write(frame(encode_message(forged_append(group.servers[fol], lead))))
                assert await closed_by_server(r)
                await settle()
                untouched(group)
        finally:
            await group.close()

    run(main())


def test_a_non_member_with_the_secret_is_refused(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                _, fol = await group.follower()
                r, w = await dial(group, fol)
                w.write(frame(A.hello(9, secrets.token_bytes(32))))
                assert await closed_by_server(r)  # no challenge for an id that is not a member
        finally:
            await group.close()

    run(main())


def test_an_authenticated_member_cannot_speak_for_another(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                other = next(r for r in group.ids if r not in (lead, fol))
                r, w = await dial(group, fol)
                await handshake(r, w, other, fol)  # a real member ...
                # ... claiming to be the leader, forging an entry.
                w.write(frame(encode_message(forged_append(group.servers[fol], lead))))
                await w.drain()
                await settle()
                untouched(group)
                assert group.servers[fol].peer_dropped["impersonation"] >= 1
        finally:
            await group.close()

    run(main())


def test_a_heartbeat_with_term_2_64_minus_1_is_not_adopted_and_the_replica_restarts(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                term = group.servers[fol].node.term
                r, w = await dial(group, fol)
                await handshake(r, w, lead, fol)  # the leader's own identity, even
                for t in (U64_MAX, U64_MAX - 1, term + (1 << 33), (1 << 62) + 1):
                    w.write(frame(encode_message(Message(MsgType.HEARTBEAT, lead, fol, t))))
                await w.drain()
                await settle()
                s = group.servers[fol]
                assert s.node.term < term + (1 << 32)
                assert s.peer_dropped["term_out_of_range"] >= 4
                w.close()
                # What it persisted is sane, and it restarts from its disk and rejoins.
                port = group.addresses[fol][1]
                await s.stop()
                wal = Wal(str(group.tmp / f"r{fol}"))
                try:
                    assert wal.recover().hard_state.term < term + (1 << 32)
                finally:
                    wal.close()
                await group.start(fol, port)
                group.publish()
                await asyncio.sleep(0.5)
            s = group.servers[fol]
            assert not s.stopped and s.node.term < term + (1 << 32)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while s.applied < group.servers[await group.leader()].applied and loop.time() < deadline:
                await asyncio.sleep(0.05)
            assert s.tree.exists("/live/n0")  # it caught up with the writes
        finally:
            await group.close()

    run(main())


GARBAGE_BEFORE_HELLO = [
    b"",                                    # connect and close
    b"\xff\xff\xff\xff",                    # a huge length word (and the "more" bit)
    b"\x00\x00\x00\x7f" + b"x" * 10,        # a hello frame cut short
    struct.pack("<I", 5000) + b"P" * 5000,  # a hello over the pre-authentication limit
    frame(b"Z" * 20),                       # an unknown hello
    frame(b"P"),                            # a peer hello without id or nonce
    frame(b"P\x01\x00\x00\x00\x02"),        # ... without a nonce
    frame(b"P\x07" + b"\x00\x00\x00\x02" + b"n" * 32),  # an unknown version
    os.urandom(64),
]


def test_garbage_on_the_peer_port_stops_no_replica(group):
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                for raw in GARBAGE_BEFORE_HELLO:
                    for target in (lead, fol):
                        r, w = await dial(group, target)
                        w.write(raw)
                        w.write_eof()
                        assert await closed_by_server(r), raw[:16]
                # After a genuine handshake: malformed messages are dropped one by one ...
                r, w = await dial(group, fol)
                await handshake(r, w, lead, fol)
                good = encode_message(Message(MsgType.HEARTBEAT, lead, fol, group.servers[fol].node.term))
                for bad in (b"", b"\x00", os.urandom(200), good[:-1], good + b"\x00",
                            b"\x02\x63" + good[2:], good[:2] + b"\xff" * 8 + good[10:],
                            msgpack.packb({"type": 5, "frm": lead, "term": 2**63})):
                    w.write(frame(bad))
                await w.drain()
                await settle()
                assert sum(group.servers[fol].peer_dropped.values()) >= 8
                # ... and a broken frame (a huge length word) costs only this connection.
                w.write(b"\xff\xff\xff\x7f")
                assert await closed_by_server(r)
                await settle()
                untouched(group)
        finally:
            await group.close()

    run(main())


def test_real_peers_reconnect_after_a_replica_restarts(group):
    """The handshake runs on every (re)connection: a restarted follower rejoins."""
    async def main():
        await group.start_all()
        try:
            async with Writer(group):
                lead, fol = await group.follower()
                port = group.addresses[fol][1]
                await group.servers[fol].stop()
                await asyncio.sleep(0.3)
                await group.start(fol, port)
                group.publish()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + WAIT_S
                s = group.servers[fol]
                while loop.time() < deadline and s.applied < group.servers[lead].applied:
                    await asyncio.sleep(0.05)
                assert s.applied >= group.servers[lead].applied - 5 and s.node.status()["leader"]
                assert all(x.transport.peer_auth_failures == 0 for x in group.servers.values())
        finally:
            await group.close()

    run(main())
