"""Fencing tokens for Pangu writes (pure: no I/O, no clock).

A Nuwa ``Lock`` hands its holder a *fencing token*: the Raft revision at which the holder's
node was created, strictly greater than any earlier holder's. A Pangu write may carry
``(lock path, token)``; the file system remembers the newest token it has seen per lock path
and refuses a write whose token is older (``StaleFencingToken``): the holder that lost the lock
without knowing it (paused, partitioned) is stopped at the storage layer, as Chubby's
sequencers and Kleppmann's fencing tokens prescribe.

The table lives in the master's namespace state, so it is journaled and checkpointed with it
and a failover or restart does not forget it. It is bounded (``FENCING_LOCKS_MAX``): when full,
the entry with the oldest token is dropped and its token becomes the table's ``floor``; a
token below the floor for a lock path the table does not hold is refused too (it may be stale:
Nuwa revisions are one counter for every lock, so the floor errs on refusing, never on
allowing).
"""

from __future__ import annotations

from pangu.errors import BadRequest, StaleFencingToken

FENCING_LOCKS_MAX = 10_000  # lock paths remembered
LOCK_PATH_CHARS_MAX = 1024
FENCING_TOKEN_MAX = 2 ** 63 - 1


def parse(fencing) -> tuple[str, int] | None:
    """``None``, or a valid ``(lock path, token)`` from a caller's ``fencing`` value (a pair,
    list or tuple); ``BadRequest`` saying what was expected otherwise."""
    if fencing is None:
        return None
    if not isinstance(fencing, (list, tuple)) or len(fencing) != 2:
        raise BadRequest(f"fencing {fencing!r:.80}: expected (lock path, token)")
    lock, token = fencing
    if not isinstance(lock, str) or not lock.startswith("/") or \
            not 1 < len(lock) <= LOCK_PATH_CHARS_MAX or any(ord(ch) < 32 for ch in lock):
        raise BadRequest(f"fencing lock path {lock!r:.80}: expected an absolute Nuwa path of "
                         f"at most {LOCK_PATH_CHARS_MAX} characters (LOCK_PATH_CHARS_MAX), "
                         f"without control characters")
    if isinstance(token, bool) or not isinstance(token, int) or \
            not 0 < token <= FENCING_TOKEN_MAX:
        raise BadRequest(f"fencing token {token!r:.40}: expected an int in "
                         f"1..{FENCING_TOKEN_MAX} (a Nuwa lock's token)")
    return lock, token


def admit(table: "FencingTable", fencing) -> tuple[str, int] | None:
    """A caller's fencing value parsed and checked against ``table`` (stale is refused first,
    so a stale holder learns that rather than what its stale view of a file got wrong)."""
    fence = parse(fencing)
    if fence is not None:
        table.check(*fence)
    return fence


def with_fence(cmd: dict, fence: tuple[str, int] | None) -> dict:
    """A namespace command carrying ``fence`` (checked and recorded when applied)."""
    return dict(cmd, fencing=list(fence)) if fence is not None else cmd


class FencingTable:
    def __init__(self, limit: int = FENCING_LOCKS_MAX):
        self.newest: dict[str, int] = {}
        self.floor = 0  # the newest token of any entry dropped to stay within the limit
        self.limit = limit

    def check(self, lock: str, token: int) -> None:
        """Refuse (``StaleFencingToken``) a token older than the newest seen for ``lock``."""
        seen = self.newest.get(lock)
        if seen is not None and token < seen:
            raise StaleFencingToken(f"fencing token {token} of lock {lock} is older than "
                                    f"{seen}, the newest seen for it: this writer no longer "
                                    f"holds the lock (take it again)")
        if seen is None and token < self.floor:
            raise StaleFencingToken(f"fencing token {token} of lock {lock} is older than "
                                    f"{self.floor}, the oldest token still remembered "
                                    f"(FENCING_LOCKS_MAX={self.limit} lock paths): it may be "
                                    f"stale; take the lock again for a newer token")

    def newer(self, lock: str, token: int) -> bool:
        """True when recording ``token`` would change the table (it must be journaled)."""
        return token > self.newest.get(lock, 0)

    def record(self, lock: str, token: int) -> None:
        """Remember ``token`` (already checked) as the newest for ``lock``."""
        if token <= self.newest.get(lock, 0):
            return
        self.newest[lock] = token
        while len(self.newest) > self.limit:
            oldest = min(self.newest, key=lambda k: (self.newest[k], k))
            self.floor = max(self.floor, self.newest.pop(oldest))

    def snapshot(self) -> dict:
        return {"newest": dict(self.newest), "floor": self.floor}

    @classmethod
    def restore(cls, doc: dict | None, limit: int = FENCING_LOCKS_MAX) -> "FencingTable":
        t = cls(limit)
        if doc:
            t.newest = {str(k): int(v) for k, v in doc.get("newest", {}).items()}
            t.floor = int(doc.get("floor", 0))
        return t
