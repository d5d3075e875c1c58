"""A real single-replica Nuwa server with authentication on, in this process (asyncio on
127.0.0.1, real WAL and sockets, no Ray), and a raw-wire client that sends whatever map or
bytes a test gives it. Its guard is a real Zhongkui guard that also records every check it
allowed, so a test can compare what was decided with what was applied."""

from __future__ import annotations

import asyncio
import struct
import time

import msgpack

from nuwa.core.raft import Role
from nuwa.io.server import ReplicaServer, ServerConfig
from nuwa.io.transport import frame, read_frame
from zhongkui.core.acl import ADMIN_GROUP
from zhongkui.guard import Guard, auth_doc
from zhongkui.keys import Keyring

ANSWER_TIMEOUT_S = 10.0
LEADER_TIMEOUT_S = 10.0


class RecordingGuard(Guard):
    """A real guard (no ACL entries: the seed's defaults) that remembers what it allowed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.allowed: list[tuple[str, str, str, str]] = []  # (user, kind, resource, perm)

    async def acheck(self, who, kind, resource, perm, owner=None):
        d = await super().acheck(who, kind, resource, perm, owner)
        self.allowed.append((who.user, kind, resource, perm))
        return d


class Node:
    """One replica (voters [1]) that leads itself, with tokens for a few users."""

    def __init__(self, tmp_path, config: ServerConfig | None = None):
        self.ring = Keyring.new()
        self.auth = auth_doc(True, self.ring)
        self.server = ReplicaServer(1, [1], str(tmp_path / "r1"), config or ServerConfig(),
                                    seed=1, auth=self.auth)
        self.guard = RecordingGuard(self.auth, name="nuwa-1")
        self.server.guard = self.guard  # no FuxiMaster here: keys and entries as given
        self.port = 0

    def token(self, user: str, groups=(), ttl_s: float = 3600.0, age_s: float = 0.0) -> str:
        return self.ring.sign(user, list(groups), now=time.time() - age_s, ttl_s=ttl_s)

    def admin_token(self) -> str:
        return self.token("root", [ADMIN_GROUP])

    async def start(self) -> "Node":
        self.port = await self.server.start("127.0.0.1")
        self.server.set_peers({1: ("127.0.0.1", self.port)})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_TIMEOUT_S
        while self.server.node.role is not Role.LEADER:
            if loop.time() > deadline:
                raise AssertionError(f"replica did not lead within {LEADER_TIMEOUT_S}s")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        await self.server.stop()

    async def raw(self, token: str | None = None) -> "Raw":
        return await Raw.open(self.port, token)


class Raw:
    """A client connection that sends exactly what it is given."""

    def __init__(self, reader, writer, token):
        self.reader, self.writer, self.token = reader, writer, token
        self.ids = 0
        self.pushed: list[dict] = []  # watch messages and answers without an id

    @classmethod
    async def open(cls, port: int, token: str | None = None, hello: bytes = b"C") -> "Raw":
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(frame(hello))
        return cls(r, w, token)

    def send(self, req: dict, with_token: bool = True) -> int:
        self.ids += 1
        msg = dict(req)
        msg.setdefault("id", self.ids)
        if with_token and self.token is not None:
            msg.setdefault("cred", self.token)
        self.writer.write(frame(msgpack.packb(msg, use_bin_type=True)))
        return msg["id"]

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def next(self, timeout_s: float = ANSWER_TIMEOUT_S) -> dict:
        return msgpack.unpackb(await asyncio.wait_for(read_frame(self.reader), timeout_s),
                               raw=False)

    async def answer(self, rid, timeout_s: float = ANSWER_TIMEOUT_S) -> dict:
        for msg in self.pushed:
            if msg.get("id") == rid and ("ok" in msg or "error" in msg):
                self.pushed.remove(msg)
                return msg
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            msg = await self.next(max(0.01, deadline - loop.time()))
            if msg.get("id") == rid and ("ok" in msg or "error" in msg):
                return msg
            self.pushed.append(msg)

    async def call(self, req: dict, **kw) -> dict:
        return await self.answer(self.send(req, **kw))

    async def closed(self, timeout_s: float = ANSWER_TIMEOUT_S) -> list[dict]:
        """Wait for the server to close this connection; returns what it sent before."""
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                got.append(await self.next(max(0.01, deadline - loop.time())))
        except (asyncio.IncompleteReadError, ConnectionError):
            return got

    def close(self) -> None:
        self.writer.close()


def length_word(n: int, more: bool = False) -> bytes:
    return struct.pack("<I", n | ((1 << 31) if more else 0))


def error_type(msg: dict) -> str | None:
    err = msg.get("error")
    return err.get("type") if isinstance(err, dict) else None
