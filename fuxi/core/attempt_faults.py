"""Fault injection for attempts: which attempts of a job fail or hang on purpose.

Never on by default. A job asks for it in its spec (``faults:``), for testing how the platform
copes (retries, backups, blacklisting) and for the fault benchmark (``bench/bench_faults.py``). The disk faults of the storage layers are another thing: ``base.faults``.

The decision for one attempt is a pure function of the policy's seed and the attempt's name
(task, instance, attempt number): the same spec gives the same faults on every run, whatever
node or worker runs the attempt and in whatever order, so a test can predict exactly how many
attempts a job will spend. It draws from a hash, not from a random generator, so no state is
shared between workers.

Everything here is pure: no Ray, no I/O, no clocks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

__all__ = ["FAIL", "HANG", "FaultPolicy", "InjectedFault", "decide", "fraction_max", "hang_s_max"]

FAIL: Literal["fail"] = "fail"
HANG: Literal["hang"] = "hang"

# At most this share of attempts may be made to fail or hang (together): at 1.0 no job could
# ever finish, which is no test of anything.
fraction_max = 0.9
# An injected hang lasts at most this long (seconds); the attempt's own timeout_s usually
# ends it first.
hang_s_max = 3600.0


class InjectedFault(Exception):
    """An attempt failed because the job's fault injection said so (not a bug anywhere)."""


@dataclass(frozen=True)
class FaultPolicy:
    """``attempt_fail_fraction`` of attempts raise :class:`InjectedFault` before the task's
    function runs; ``attempt_hang_fraction`` of attempts sleep ``hang_s`` seconds first (a
    straggler, or a hang until the attempt's timeout) and then fail. ``seed`` chooses which."""

    attempt_fail_fraction: float = 0.0
    attempt_hang_fraction: float = 0.0
    hang_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("attempt_fail_fraction", "attempt_hang_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= fraction_max:
                raise ValueError(f"{name}: got {v!r}, expected a number from 0 to {fraction_max}")
        total = self.attempt_fail_fraction + self.attempt_hang_fraction
        if total > fraction_max:
            raise ValueError(f"attempt_fail_fraction + attempt_hang_fraction: got {total:g}, "
                             f"expected at most {fraction_max}")
        if isinstance(self.hang_s, bool) or not isinstance(self.hang_s, (int, float)) \
                or not 0.0 < self.hang_s <= hang_s_max:
            raise ValueError(f"hang_s: got {self.hang_s!r}, expected seconds > 0 and <= {hang_s_max:g}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed: got {self.seed!r}, expected an integer")

    @property
    def active(self) -> bool:
        return self.attempt_fail_fraction > 0 or self.attempt_hang_fraction > 0

    def to_dict(self) -> dict:
        return {"attempt_fail_fraction": self.attempt_fail_fraction,
                "attempt_hang_fraction": self.attempt_hang_fraction,
                "hang_s": self.hang_s, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict | None) -> FaultPolicy | None:
        return None if not d else cls(**d)


def _uniform(seed: int, task: str, instance: int, attempt: int) -> float:
    """A number in [0, 1), the same for the same arguments everywhere."""
    digest = hashlib.blake2b(f"{seed}\x00{task}\x00{instance}\x00{attempt}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def decide(policy: FaultPolicy | None, task: str, instance: int,
           attempt: int) -> Literal["fail", "hang"] | None:
    """What to inject into attempt ``attempt`` of ``task``'s instance ``instance``: ``FAIL``,
    ``HANG`` or None. Deterministic in the policy and the attempt's name."""
    if policy is None or not policy.active:
        return None
    u = _uniform(policy.seed, task, instance, attempt)
    if u < policy.attempt_fail_fraction:
        return FAIL
    if u < policy.attempt_fail_fraction + policy.attempt_hang_fraction:
        return HANG
    return None
