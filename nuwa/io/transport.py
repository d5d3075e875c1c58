"""Framed asyncio TCP for Nuwa: replica-to-replica Raft messages, and client requests.

Ray method calls cost ~1 ms; a Python asyncio TCP round trip inside an actor costs ~25 µs
(RAY_NOTES.md), so consensus traffic and client calls go over plain sockets. Every frame is
``[u32 length][payload]``, at most ``FRAME_BYTES_MAX``. A connection starts with a hello frame
(at most ``HELLO_BYTES_MAX``) saying who is calling: ``b"C"`` for a client, ``b"P"`` for a peer.
A peer then proves, and checks, membership of this cluster with a mutual HMAC challenge over the
cluster's peer secret (``nuwa.core.peer_auth``) within ``HANDSHAKE_TIMEOUT_S``. A replica given no
secret uses one drawn at random for its process (``PROCESS_PEER_SECRET``): replicas in one
process (tests, an embedded group) reach each other, nobody outside can. Every message on an
authenticated peer connection is handed up with the peer's authenticated id (the shell drops
those whose ``frm`` differs).

Outgoing peer traffic is written straight to the peer's socket, up to
``PEER_BUFFER_BYTES_MAX`` unsent bytes; while a peer is not connected it waits in a bounded
queue (``PEER_QUEUE_MAX`` messages). Beyond either bound messages are dropped: Raft retransmits, and
blocking the replica on a slow peer would be worse. Connections are re-established with
capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import struct
from typing import Awaitable, Callable

from nuwa.core import peer_auth

logger = logging.getLogger(__name__)

FRAGMENT_BYTES_MAX = 8 * 1024 * 1024  # one frame on the wire; bigger messages are split
FRAME_BYTES_MAX = 1024 * 1024 * 1024  # one whole message after reassembly (a snapshot)
_MORE = 1 << 31  # top bit of the length word: more fragments of this message follow
PEER_QUEUE_MAX = 4096  # messages waiting for one peer while it is not connected
PEER_BUFFER_BYTES_MAX = 64 * 1024 * 1024  # unsent bytes to one peer; beyond it, messages are dropped
CONNECT_TIMEOUT_S = 1.0
HELLO_BYTES_MAX = 1024  # the first frame of a connection, read before anyone is authenticated
HANDSHAKE_FRAME_BYTES_MAX = 256  # challenge and proof frames of the peer handshake
HANDSHAKE_TIMEOUT_S = 5.0  # hello to proof, on either side
# The secret of replicas given none: random per process, so it proves only "same process".
PROCESS_PEER_SECRET = secrets.token_bytes(peer_auth.SECRET_BYTES)
RECONNECT_BACKOFF_MAX_S = 1.0
_LEN = struct.Struct("<I")


class FrameError(Exception):
    """A peer sent something that is not a valid frame."""


CLIENT_CONNECTIONS_MAX = 4096  # accepted connections; beyond it, new ones are closed at once


def frame(payload: bytes) -> bytes:
    """One message as one or more fragments of at most FRAGMENT_BYTES_MAX (snapshots and big
    watch batches exceed one fragment; they are split here rather than refused)."""
    if len(payload) > FRAME_BYTES_MAX:
        raise FrameError(f"message of {len(payload)} bytes exceeds FRAME_BYTES_MAX={FRAME_BYTES_MAX}")
    if len(payload) <= FRAGMENT_BYTES_MAX:
        return _LEN.pack(len(payload)) + payload
    view = memoryview(payload)
    parts = []
    for off in range(0, len(payload), FRAGMENT_BYTES_MAX):
        chunk = view[off:off + FRAGMENT_BYTES_MAX]
        last = off + FRAGMENT_BYTES_MAX >= len(payload)
        parts.append(_LEN.pack(len(chunk) | (0 if last else _MORE)))
        parts.append(bytes(chunk))
    return b"".join(parts)


async def read_frame(reader: asyncio.StreamReader, bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """One whole message of at most ``bytes_max`` bytes (FrameError beyond, before reading it)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        (word,) = _LEN.unpack(await reader.readexactly(_LEN.size))
        n, more = word & ~_MORE, bool(word & _MORE)
        if n > FRAGMENT_BYTES_MAX:
            raise FrameError(f"incoming fragment of {n} bytes exceeds FRAGMENT_BYTES_MAX="
                             f"{FRAGMENT_BYTES_MAX}")
        total += n
        if total > bytes_max:
            raise FrameError(f"incoming message of {total}+ bytes exceeds its limit of "
                             f"{bytes_max} bytes")
        chunks.append(await reader.readexactly(n))
        if not more:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Peer:
    """The outgoing link to one peer. While connected, a message is written to the socket at
    once (no hop through a queue and a task: a leader's early APPEND must leave before its own
    fsync starts, or the two fsyncs run one after the other). While not connected, messages
    wait in a bounded queue and are flushed, in order, as soon as the link is up."""

    def __init__(self, peer_id: int, host: str, port: int, my_id: int, secret: bytes):
        self.peer_id = peer_id
        self.host, self.port = host, port
        self.queue: collections.deque[bytes] = collections.deque()
        self.my_id = my_id
        self._secret = secret
        self.task: asyncio.Task | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.dropped = 0
        self.auth_failures = 0

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Prove our membership to the peer and check its proof (``nuwa.core.peer_auth``)."""
        n_mine = secrets.token_bytes(peer_auth.NONCE_BYTES)
        writer.write(frame(peer_auth.hello(self.my_id, n_mine)))
        got = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        n_theirs = peer_auth.open_challenge(self._secret, got, self.my_id, self.peer_id, n_mine)
        writer.write(frame(peer_auth.proof(self._secret, self.my_id, self.peer_id, n_mine,
                                           n_theirs)))

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            try:
                await asyncio.wait_for(self._handshake(reader, writer), HANDSHAKE_TIMEOUT_S)
            except (peer_auth.PeerAuthFailed, FrameError, OSError, ConnectionError,
                    asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                # Not our peer, not of this cluster, or it refused us (not yet a member):
                # back off and try again, without resetting the backoff.
                self.auth_failures += 1
                if self.auth_failures & (self.auth_failures - 1) == 0:  # 1, 2, 4, ...: rate-limited
                    logger.warning("replica %s: peer handshake with replica %s at %s:%s failed "
                                   "(%s times): %s", self.my_id, self.peer_id, self.host,
                                   self.port, self.auth_failures, type(e).__name__ + ": " + str(e))
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
                continue
            backoff = 0.05
            try:
                if self.queue:
                    self._write(writer, list(self.queue))
                    self.queue.clear()
                self.writer = writer
                # The peer never writes on this connection: EOF or an error means it is gone.
                await reader.read(1)
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.writer = None
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def _write(self, writer: asyncio.StreamWriter, payloads: list[bytes]) -> None:
        if writer.transport.get_write_buffer_size() > PEER_BUFFER_BYTES_MAX:
            self.dropped += len(payloads)  # a slow peer: drop, Raft retransmits
            return
        frames = []
        for payload in payloads:
            try:
                frames.append(frame(payload))
            except FrameError as e:  # drop that one message, keep the link
                self.dropped += 1
                logger.error("dropping a message to replica %s: %s", self.peer_id, e)
        if frames:
            writer.write(frames[0] if len(frames) == 1 else b"".join(frames))  # one syscall

    def send(self, payloads: list[bytes]) -> None:
        w = self.writer
        if w is not None and not w.is_closing():
            self._write(w, payloads)
            return
        for payload in payloads:
            if len(self.queue) < PEER_QUEUE_MAX:
                self.queue.append(payload)
            else:
                self.dropped += 1


class Transport:
    """One listening socket per replica; peers and clients both connect to it."""

    def __init__(self, replica_id: int,
                 on_peer_message: Callable[[int, bytes], None],
                 on_client: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                 peer_secret: bytes | None = None,
                 is_member: Callable[[int], bool] = lambda peer_id: False):
        """``on_peer_message(peer_id, payload)`` gets each frame of an authenticated peer;
        ``is_member(peer_id)`` says whether a peer may connect now; ``peer_secret`` None:
        ``PROCESS_PEER_SECRET``."""
        self.replica_id = replica_id
        self.on_peer_message = on_peer_message
        self.on_client = on_client
        self._secret = peer_auth.check_secret(
            PROCESS_PEER_SECRET if peer_secret is None else peer_secret)
        self.is_member = is_member
        self.peers: dict[int, _Peer] = {}
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._accepted: set[asyncio.StreamWriter] = set()
        self.peer_auth_failures = 0  # incoming peer handshakes refused
        self.peer_frame_errors = 0  # authenticated peer connections cut by a broken frame
        self.connections_max = CLIENT_CONNECTIONS_MAX
        self.refused = 0  # connections closed at once because connections_max were open

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """Connect to these peers (id -> (host, port)); replaces earlier addresses."""
        for pid, (host, port) in peers.items():
            if pid == self.replica_id:
                continue
            old = self.peers.get(pid)
            if old is not None and (old.host, old.port) == (host, port):
                continue
            if old is not None and old.task is not None:
                old.task.cancel()
            p = _Peer(pid, host, port, self.replica_id, self._secret)
            p.task = asyncio.get_running_loop().create_task(p.run())
            self.peers[pid] = p

    def send(self, to: int, payload: bytes) -> None:
        p = self.peers.get(to)
        if p is not None:
            p.send([payload])

    def send_many(self, messages: list[tuple[int, bytes]]) -> None:
        """Send (peer id, payload) pairs: each peer's in order, in one write per peer."""
        by_peer: dict[int, list[bytes]] = {}
        for to, payload in messages:
            by_peer.setdefault(to, []).append(payload)
        for to, payloads in by_peer.items():
            p = self.peers.get(to)
            if p is not None:
                p.send(payloads)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._accepted) >= self.connections_max:
            self.refused += 1  # the descriptors left are the WAL's and the snapshots'
            writer.close()
            return
        self._accepted.add(writer)
        try:
            hello = await asyncio.wait_for(read_frame(reader, HELLO_BYTES_MAX),
                                           CONNECT_TIMEOUT_S * 5)
            if hello[:1] == b"P":
                await self._serve_peer(hello, reader, writer)
            elif hello[:1] == b"C":
                await self.on_client(reader, writer)
            else:
                raise FrameError(f"unknown hello {hello[:8]!r}; expected b'P'+id or b'C'")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, FrameError):
            pass
        except Exception:
            logger.exception("connection handler failed")
        finally:
            self._accepted.discard(writer)
            writer.close()

    async def _authenticate(self, hello: bytes, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> int:
        """The id the dialling peer proved (``nuwa.core.peer_auth``); PeerAuthFailed otherwise."""
        peer_id, n_theirs = peer_auth.parse_hello(hello)
        if peer_id == self.replica_id or not self.is_member(peer_id):
            raise peer_auth.PeerAuthFailed(f"replica {peer_id} is not a current member")
        n_mine = secrets.token_bytes(peer_auth.NONCE_BYTES)
        writer.write(frame(peer_auth.challenge(self._secret, self.replica_id, peer_id, n_theirs,
                                               n_mine)))
        got = await read_frame(reader, HANDSHAKE_FRAME_BYTES_MAX)
        peer_auth.check_proof(self._secret, got, peer_id, self.replica_id, n_theirs, n_mine)
        return peer_id

    async def _serve_peer(self, hello: bytes, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            peer_id = await asyncio.wait_for(self._authenticate(hello, reader, writer),
                                             HANDSHAKE_TIMEOUT_S)
        except (peer_auth.PeerAuthFailed, FrameError, asyncio.TimeoutError,
                asyncio.IncompleteReadError) as e:
            self.peer_auth_failures += 1
            n = self.peer_auth_failures
            if n & (n - 1) == 0:  # 1, 2, 4, ...: a flood of bad handshakes cannot flood the log
                peer = writer.get_extra_info("peername")
                logger.warning("replica %s refused a peer connection from %s (%s refused so "
                               "far): %s: %s", self.replica_id, peer, n, type(e).__name__, e)
            return
        while True:
            try:
                payload = await read_frame(reader)
            except FrameError as e:  # the stream is out of step: only a new connection helps
                self.peer_frame_errors += 1
                logger.warning("replica %s: dropping the connection of replica %s: %s",
                               self.replica_id, peer_id, e)
                return
            try:
                self.on_peer_message(peer_id, payload)
            except Exception:  # the handler never raises; if it does, one message is lost
                logger.exception("replica %s: handling a message of replica %s failed",
                                 self.replica_id, peer_id)

    async def close(self) -> None:
        """Stop listening and drop every connection, in and out."""
        for p in self.peers.values():
            if p.task is not None:
                p.task.cancel()
        if self.server is not None:
            self.server.close()
        for w in list(self._accepted):
            w.close()
        self._accepted.clear()
