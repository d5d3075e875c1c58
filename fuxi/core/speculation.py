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
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "SpeculationPolicy",
    "RunningInstance",
    "pick_backups",
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
    if len(finished_durations_s) + _FRACTION_EPSILON < policy.min_done_fraction * num_instances:
        return []
    threshold_s = straggler_threshold_s(policy, finished_durations_s)
    assert threshold_s is not None  # finished_durations_s is not empty
    room = max(0, backup_cap(policy, num_instances) - backups_running)
    if room == 0:
        return []
    stragglers = [r for r in running if r.attempts_running == 1 and r.running_for_s > threshold_s]
    stragglers.sort(key=lambda r: (-r.running_for_s, r.instance))
    return [r.instance for r in stragglers[:room]]
