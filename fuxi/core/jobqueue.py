"""Jobs that wait for room: one queue per quota group, served by priority with ageing.

FuxiMaster runs at most ``jobs_running_max`` jobs at once (each has a JobMaster actor); a job
submitted beyond that is not refused but waits here, in its quota group's queue, until a
running job ends. Order: the highest *effective* priority first, where a job's effective
priority is its own plus ``ageing_per_s`` for every second it has waited, so a low-priority
job cannot starve behind a stream of higher ones (at the default, +1 a minute: a priority-0
job waiting 100 minutes ranks with a fresh priority-100 one); among equals, the earlier submit
first. Groups take turns (the group whose best job ranks highest goes first), and a group at
its own limit is skipped until one of its jobs ends.

Because every job ages at the same rate, the order of two waiting jobs never changes while
they wait (effective priority minus ``now * ageing_per_s`` is a constant per job): each group
is a heap on that constant, and starting the next job costs O(G + log N) for G groups.

Pure: time is passed in. Bounded: at most ``queued_max`` jobs wait (a submit past that gets
``QueueFull``, a typed error the CLI reports with exit 2).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Mapping

from fuxi.errors import BadInput

__all__ = ["AGEING_PER_S", "JOBS_QUEUED_MAX", "JobQueue", "QueueFull", "Queued"]

JOBS_QUEUED_MAX = 10_000   # jobs waiting, all groups together
AGEING_PER_S = 1.0 / 60.0  # effective priority gained per second of waiting: +1 per minute


class QueueFull(BadInput):
    """``JOBS_QUEUED_MAX`` jobs are waiting already."""


@dataclass(frozen=True)
class Queued:
    job_id: str
    group: str
    priority: int
    seq: int  # submit order
    queued_at: float

    def effective(self, now: float, ageing_per_s: float) -> float:
        return self.priority + max(0.0, now - self.queued_at) * ageing_per_s


@dataclass
class JobQueue:
    queued_max: int = JOBS_QUEUED_MAX
    ageing_per_s: float = AGEING_PER_S
    _jobs: dict[str, Queued] = field(default_factory=dict)
    # group -> heap of (rank, seq, job_id); entries of removed jobs are skipped lazily
    _heaps: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def _rank(self, q: Queued) -> float:
        # Smaller is better: minus (priority - queued_at * rate), the per-job constant.
        return -(q.priority - q.queued_at * self.ageing_per_s)

    def add(self, job_id: str, group: str, priority: int, seq: int, now: float) -> Queued:
        if job_id in self._jobs:
            raise ValueError(f"job {job_id!r} is queued already")
        if len(self._jobs) >= self.queued_max:
            raise QueueFull(f"{len(self._jobs)} jobs are waiting to run; JOBS_QUEUED_MAX is "
                            f"{self.queued_max}; submit again when some have started")
        q = Queued(job_id, group, int(priority), int(seq), float(now))
        self._jobs[job_id] = q
        heapq.heappush(self._heaps.setdefault(group, []), (self._rank(q), q.seq, job_id))
        return q

    def remove(self, job_id: str) -> Queued | None:
        return self._jobs.pop(job_id, None)  # its heap entry is dropped when it surfaces

    def _head(self, group: str) -> Queued | None:
        heap = self._heaps.get(group)
        while heap:
            q = self._jobs.get(heap[0][2])
            if q is not None and q.group == group and q.seq == heap[0][1]:
                return q
            heapq.heappop(heap)  # removed (or re-added under a new entry): stale
        self._heaps.pop(group, None)
        return None

    def order(self, now: float) -> list[Queued]:
        """Every waiting job, in the order they would start if room came for all."""
        return sorted(self._jobs.values(), key=lambda q: (self._rank(q), q.seq))

    def positions(self, now: float) -> dict[str, dict]:
        """Per job: its place in the whole queue (1 = next), in its group's queue, and its
        effective priority now."""
        out: dict[str, dict] = {}
        per_group: dict[str, int] = {}
        for i, q in enumerate(self.order(now), start=1):
            per_group[q.group] = per_group.get(q.group, 0) + 1
            out[q.job_id] = {"position": i, "group": q.group, "group_position": per_group[q.group],
                             "queued_at": q.queued_at,
                             "effective_priority": round(q.effective(now, self.ageing_per_s), 3)}
        return out

    def pop_next(self, now: float, group_has_room: Callable[[str], bool]) -> Queued | None:
        """The next job to start: the best-ranked group head whose group has room; None if
        no group with room has a waiting job."""
        best: Queued | None = None
        for group in list(self._heaps):
            q = self._head(group)
            if q is None or not group_has_room(group):
                continue
            if best is None or (self._rank(q), q.seq) < (self._rank(best), best.seq):
                best = q
        if best is not None:
            del self._jobs[best.job_id]
            heapq.heappop(self._heaps[best.group])
        return best

    def by_group(self) -> Mapping[str, int]:
        counts: dict[str, int] = {}
        for q in self._jobs.values():
            counts[q.group] = counts.get(q.group, 0) + 1
        return counts
