"""Speculative execution: when to start a backup instance for a straggler.

A task of N instances usually finishes in a tight band of durations; a few
instances on a slow or overloaded machine ("stragglers") hold the whole task
back. Like Fuxi and MapReduce, the job master starts a *backup* attempt of a
straggler on another machine and keeps whichever attempt finishes first.

This module is a pure policy: the caller (the job master) passes in what it
knows — durations of finished instances, how long each running one has been
running — and gets back which instances deserve a backup now. No clocks, no
Ray, no I/O, so the policy can be replayed on synthetic timelines.

Backups are wasted work when the whole task is simply slow, so the policy
waits until a fraction of instances has finished (to know what "normal" is),
only flags instances far slower than the median, and caps how many backups
run at once.

The job master asks every tick, so the answer must not cost a pass over the task's history:
``RunningMedian`` keeps the exact median of finished durations as they arrive (two heaps), and
``StartOrder`` keeps running attempts oldest first, so that only those already past the
threshold are looked at (``pick_stragglers`` is ``pick_backups`` on those precomputed facts).
"""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = [
    "SpeculationPolicy",
    "RunningInstance",
    "pick_backups",
    "pick_stragglers",
    "enough_done",
    "RunningMedian",
    "StartOrder",
    "straggler_threshold_s",
    "backup_cap",
]

# Products like 0.3 * 10 come out as 3.0000000000000004; without slack
# "3 of 10 done" would not count as 30 %.
_FRACTION_EPSILON = 1e-9


@dataclass(frozen=True)
class SpeculationPolicy:
    """When to back up stragglers. All limits are validated on construction."""

    enabled: bool = True
    # Wait until this fraction of instances has finished before judging anyone slow.
    min_done_fraction: float = 0.5
    # An instance is a straggler once it has run this many times the median duration.
    slowdown: float = 2.0
    # ...and at least this long: never back up very short instances, the backup costs more.
    min_runtime_s: float = 1.0
    # At most this fraction of the task's instances may have a backup running at once.
    max_backup_fraction: float = 0.1

    def __post_init__(self) -> None:
        _check_range("min_done_fraction", self.min_done_fraction, 0.0, 1.0, "0 < x <= 1", low_open=True)
        _check_range("slowdown", self.slowdown, 1.0, math.inf, ">= 1")
        _check_range("min_runtime_s", self.min_runtime_s, 0.0, math.inf, ">= 0")
        _check_range("max_backup_fraction", self.max_backup_fraction, 0.0, 1.0, "0 < x <= 1", low_open=True)


def _check_range(name: str, value: float, low: float, high: float, expected: str, low_open: bool = False) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value <= high
    )
    if not ok:
        raise ValueError(f"SpeculationPolicy.{name}={value!r}: expected a finite number, {expected}")


@dataclass(frozen=True)
class RunningInstance:
    """One instance that has not finished yet."""

    instance: int
    # How long its (single, original) running attempt has been running.
    running_for_s: float
    # 1 = no backup yet; >= 2 = a backup is already running, so it is never picked again.
    attempts_running: int


def backup_cap(policy: SpeculationPolicy, num_instances: int) -> int:
    """Most backups that may run at once for a task of ``num_instances``.

    At least 1, so that small tasks (where 10 % rounds down to 0) can still
    be rescued from a single straggler.
    """
    if num_instances < 0:
        raise ValueError(f"num_instances={num_instances!r}: expected >= 0")
    return max(1, math.floor(policy.max_backup_fraction * num_instances + _FRACTION_EPSILON))


def straggler_threshold_s(policy: SpeculationPolicy, finished_durations_s: Sequence[float]) -> float | None:
    """Running time beyond which an instance counts as a straggler.

    None when nothing has finished: there is no notion of "normal" yet.
    The median rather than the mean, so that one earlier straggler that did
    finish does not raise the bar for everyone else.
    """
    if not finished_durations_s:
        return None
    return max(policy.slowdown * statistics.median(finished_durations_s), policy.min_runtime_s)


def enough_done(policy: SpeculationPolicy, num_instances: int, done: int) -> bool:
    """Whether enough instances have finished (``min_done_fraction``) to judge anyone slow."""
    return done > 0 and done + _FRACTION_EPSILON >= policy.min_done_fraction * num_instances


def pick_backups(
    policy: SpeculationPolicy,
    num_instances: int,
    finished_durations_s: Sequence[float],
    running: Sequence[RunningInstance],
    backups_running: int,
) -> list[int]:
    """Instances that should get a backup attempt now, slowest first.

    ``backups_running`` is how many backups of this task are running now;
    the answer never takes the total above :func:`backup_cap`. Ties in
    running time go to the smaller instance id, so the answer is deterministic.
    """
    if backups_running < 0:
        raise ValueError(f"backups_running={backups_running!r}: expected >= 0")
    if not policy.enabled or not finished_durations_s:
        return []
    return pick_stragglers(policy, num_instances, len(finished_durations_s),
                           statistics.median(finished_durations_s), running, backups_running)


def pick_stragglers(
    policy: SpeculationPolicy,
    num_instances: int,
    done: int,
    median_s: float | None,
    running: Sequence[RunningInstance],
    backups_running: int,
) -> list[int]:
    """:func:`pick_backups` given how many instances finished and their median duration
    (for a caller that keeps both up to date, e.g. with :class:`RunningMedian`)."""
    if backups_running < 0:
        raise ValueError(f"backups_running={backups_running!r}: expected >= 0")
    if not policy.enabled or median_s is None or not enough_done(policy, num_instances, done):
        return []
    threshold_s = max(policy.slowdown * median_s, policy.min_runtime_s)
    room = max(0, backup_cap(policy, num_instances) - backups_running)
    if room == 0:
        return []
    stragglers = [r for r in running if r.attempts_running == 1 and r.running_for_s > threshold_s]
    stragglers.sort(key=lambda r: (-r.running_for_s, r.instance))
    return [r.instance for r in stragglers[:room]]


class RunningMedian:
    """The exact median of a growing list of numbers, O(log n) per ``add`` and O(1) per
    ``median``: the lower half in a max-heap, the upper half in a min-heap. Equal to
    ``statistics.median`` of the same numbers, bit for bit (the same two middle values, added
    and halved the same way)."""

    def __init__(self) -> None:
        self._low: list[float] = []  # negated: a max-heap of the lower half
        self._high: list[float] = []  # a min-heap of the upper half

    def __len__(self) -> int:
        return len(self._low) + len(self._high)

    def add(self, x: float) -> None:
        if self._low and x > -self._low[0]:
            heapq.heappush(self._high, x)
        else:
            heapq.heappush(self._low, -x)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def median(self) -> float | None:
        if not self._low:
            return None
        if len(self._low) > len(self._high):
            return -self._low[0]
        return (-self._low[0] + self._high[0]) / 2


# What StartOrder's caller says about one entry: still a candidate, not one now (it has a
# backup, or one is queued) but may be again, or ended for good (dropped).
CANDIDATE, NOT_NOW, GONE = "candidate", "not_now", "gone"


class StartOrder:
    """Running attempts of one task by start time, oldest first (a heap of
    ``(started_at, instance, attempt)``). Entries are never updated in place: the caller says
    what each one is when it is met (``CANDIDATE``, ``NOT_NOW``, ``GONE``), so an attempt that
    ended costs nothing until it reaches the front, and ``compact`` drops ended ones in bulk."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int]] = []

    def __len__(self) -> int:
        return len(self.heap)

    def add(self, started_at: float, instance: int, attempt: int) -> None:
        heapq.heappush(self.heap, (started_at, instance, attempt))

    def compact(self, judge: Callable[[int, int], str]) -> None:
        self.heap = [e for e in self.heap if judge(e[1], e[2]) != GONE]
        heapq.heapify(self.heap)

    def older_than(self, now: float, threshold_s: float, want: int,
                   judge: Callable[[int, int], str]) -> list[RunningInstance]:
        """Candidates that have run longer than ``threshold_s`` at ``now``: the ``want``
        longest-running (plus any tied with the last of them), which are the ones
        :func:`pick_stragglers` would choose among. Looks only at entries past the threshold:
        ended ones (dropped), ``NOT_NOW`` ones (kept) and the answer."""
        out: list[RunningInstance] = []
        kept: list[tuple[float, int, int]] = []
        while self.heap:
            started_at, instance, attempt = self.heap[0]
            running_for_s = now - started_at  # never increases along the heap (rounding is monotone)
            if not running_for_s > threshold_s:
                break
            if len(out) >= want and running_for_s != out[-1].running_for_s:
                break
            entry = heapq.heappop(self.heap)
            verdict = judge(instance, attempt)
            if verdict == GONE:
                continue
            kept.append(entry)
            if verdict == CANDIDATE:
                out.append(RunningInstance(instance, running_for_s, 1))
        for entry in kept:
            heapq.heappush(self.heap, entry)
        return out
