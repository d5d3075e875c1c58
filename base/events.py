"""The event log every component reports to: what happened, where, how bad — a bounded ring
of structured records an operator (or a test) can read back, newest last.

    from base import events
    events.emit("nuwa", "leader_changed", "replica 2 leads term 7", term=7, leader=2)
    events.LOG.since(0)            # [Event(seq=1, source='nuwa', kind='leader_changed', ...)]

Events are for changes an operator cares about (a leader lost, a node drained, a job failed,
a replica repaired), not per-request logging. Each process holds its own log; a component
hands its events out through its own status call. The ring keeps ``EVENTS_KEPT_MAX`` records;
older ones are dropped and counted (``dropped``), so a reader can tell it missed some.
"""

from __future__ import annotations

import collections
import enum
import itertools
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

EVENTS_KEPT_MAX = 10_000  # records kept per process
EVENT_MESSAGE_BYTES_MAX = 1024  # a longer message is cut (and marked with "...")
EVENT_FIELDS_MAX = 16  # extra fields on one event
EVENT_FIELD_BYTES_MAX = 256  # one field's value, as text


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Event:
    seq: int
    at: float
    source: str
    kind: str
    message: str
    severity: Severity = Severity.INFO
    fields: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


def _cut(s: str, limit: int) -> str:
    b = str(s).encode("utf-8", "replace")
    return s if len(b) <= limit else b[:limit - 3].decode("utf-8", "ignore") + "..."


class EventLog:
    def __init__(self, events_max: int = EVENTS_KEPT_MAX, clock: Callable[[], float] = time.time):
        if not (isinstance(events_max, int) and 1 <= events_max <= 1_000_000):
            raise ValueError(f"events_max={events_max!r}: expected an int in [1, 1000000]")
        self._ring: collections.deque[Event] = collections.deque(maxlen=events_max)
        self._lock = threading.Lock()
        self._seq = 0
        self.dropped = 0
        self.clock = clock

    def emit(self, source: str, kind: str, message: str, severity: Severity | str = Severity.INFO,
             **fields) -> Event:
        sev = Severity(severity)
        if len(fields) > EVENT_FIELDS_MAX:
            raise ValueError(f"event {source}/{kind}: {len(fields)} fields; at most {EVENT_FIELDS_MAX} "
                             f"(EVENT_FIELDS_MAX)")
        clean = {str(k)[:64]: (v if isinstance(v, (int, float, bool)) or v is None
                               else _cut(str(v), EVENT_FIELD_BYTES_MAX)) for k, v in fields.items()}
        with self._lock:
            self._seq += 1
            if len(self._ring) == self._ring.maxlen:
                self.dropped += 1
            ev = Event(self._seq, self.clock(), _cut(source, 64), _cut(kind, 64),
                       _cut(message, EVENT_MESSAGE_BYTES_MAX), sev, clean)
            self._ring.append(ev)
            return ev

    def since(self, seq: int = 0, limit: int = EVENTS_KEPT_MAX) -> list[Event]:
        """Events with a sequence number above ``seq``, oldest first, at most ``limit``."""
        with self._lock:
            # Sequence numbers are contiguous: the newer ones are the last ``_seq - seq``
            # records, read from the right (a reader that keeps up costs O(new), not O(ring)).
            newer = min(len(self._ring), max(0, self._seq - seq))
            out = list(itertools.islice(reversed(self._ring), newer))
            out.reverse()
            return out[:max(0, limit)]

    def last_seq(self) -> int:
        with self._lock:
            return self._seq


LOG = EventLog()
emit = LOG.emit
BOOT = uuid.uuid4().hex[:12]  # this process: a restarted one numbers its events from 1 again
REPORT_EVENTS_MAX = 500  # events one report hands out (a collector asks again for more)


def report(seq: int = 0, limit: int = REPORT_EVENTS_MAX) -> dict:
    """This process's events after ``seq``, for a collector that pulls by sequence number:
    ``{"boot": BOOT, "events": [...]}`` (``fuxi.shells.clusterlog``)."""
    n = limit if isinstance(limit, int) and 0 < limit <= REPORT_EVENTS_MAX else REPORT_EVENTS_MAX
    s = seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else 0
    return {"boot": BOOT, "events": [e.to_dict() for e in LOG.since(s, n)]}
