"""One client connection as the replica's server sees it, and the cap on how many it accepts.

``ClientConn`` is what the request handling (``nuwa.io.server``), the access checks
(``nuwa.io.access``) and the watches (``nuwa.io.watches``) share about a connection: its
writer, who signed in on it, the requests in flight, and when it was last used.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time

import msgpack

from nuwa.io.transport import frame

logger = logging.getLogger(__name__)

CONN_BUFFER_BYTES_MAX = 256 * 1024 * 1024  # unsent bytes to one client before it is cut off


def connections_cap(connections_max: int, fds_reserved: int) -> int:
    """connections_max, kept fds_reserved below this process's file descriptor limit: a
    flood of connections must never take the descriptors the WAL and snapshots need."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return connections_max
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return connections_max
    return max(1, min(connections_max, soft - min(fds_reserved, soft // 2)))


class ClientConn:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.who = None  # (token, Principal) last verified on this connection
        self.user: str | None = None  # the user this connection signed in as
        self.signed_in = False  # a valid token was shown (always, with authentication off)
        self.inflight: set[asyncio.Task] = set()
        self.opened_at = self.last_request_at = time.monotonic()

    def send(self, msg: dict) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(frame(msgpack.packb(msg, use_bin_type=True)))
        if self.writer.transport.get_write_buffer_size() > CONN_BUFFER_BYTES_MAX:
            # A client that does not read (a stalled watcher) must not grow our memory without
            # bound: drop it; its watches resubscribe from their last revision on reconnect.
            logger.warning("closing a client %s bytes behind (CONN_BUFFER_BYTES_MAX)",
                           self.writer.transport.get_write_buffer_size())
            self.writer.close()


def plain(obj):
    """``obj`` as msgpack can carry it to any client: enums as their names, map keys as str."""
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in obj]
    return obj
