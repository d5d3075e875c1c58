"""Resource vectors for the scheduling core: plain dicts ``{"CPU": 2.0, "memory": 8e9, ...}``.

A key missing from a dict means 0 of that resource. A *shape* (one slot's resources) is
turned once into its *needs*: a sorted tuple of ``(resource, amount)`` with the zero entries
dropped, which is also the key every index of the core files the shape under.
"""

from __future__ import annotations

import math
from typing import Mapping

from fuxi.errors import BadInput

# Fractional shapes (0.5 CPU, 0.1 GPU) accumulate rounding error: 10 * 0.1 is not exactly
# 1.0. Differences smaller than this count as equal.
RESOURCE_TOLERANCE = 1e-9

Needs = tuple  # tuple[tuple[str, float], ...], sorted by resource name


def check_resources(where: str, resources: Mapping[str, float]) -> dict[str, float]:
    """A private copy of ``resources`` with every amount checked (finite, >= 0)."""
    if not isinstance(resources, Mapping):
        raise BadInput(f"{where}={resources!r}: expected a mapping of resource name to amount")
    out = {}
    for k, v in resources.items():
        if not isinstance(k, str) or not k:
            raise BadInput(f"{where}: resource name {k!r}: expected a non-empty string")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise BadInput(f"{where}[{k!r}]={v!r}: expected a finite number >= 0")
        out[k] = float(v)
    return out


def needs_of(shape: Mapping[str, float]) -> Needs:
    """The parts of a shape that need something, sorted: the shape's key in every index."""
    return tuple(sorted((k, float(v)) for k, v in shape.items() if v > RESOURCE_TOLERANCE))


def fit_count(free: Mapping[str, float], needs: Needs, cap: int) -> int:
    """How many slots of ``needs`` fit in ``free`` (at most ``cap``, the node's worker room)."""
    n = cap
    for k, v in needs:
        room = free.get(k, 0.0) + RESOURCE_TOLERANCE
        if room < v:
            return 0
        m = int(room / v)
        if m < n:
            n = m
    return max(n, 0)


def take(free: dict[str, float], needs: Needs, n: int = 1) -> None:
    """``free -= n * needs`` in place (may go negative: callers check fit first)."""
    for k, v in needs:
        left = free.get(k, 0.0) - v * n
        free[k] = 0.0 if abs(left) <= RESOURCE_TOLERANCE else left


def give(free: dict[str, float], needs: Needs, n: int = 1) -> None:
    """``free += n * needs`` in place."""
    for k, v in needs:
        left = free.get(k, 0.0) + v * n
        free[k] = 0.0 if abs(left) <= RESOURCE_TOLERANCE else left


def within(used: Mapping[str, float], needs: Needs, limit: Mapping[str, float]) -> bool:
    """True if ``used + needs`` stays within ``limit`` in every dimension ``limit`` names."""
    for k, v in needs:
        if k in limit and used.get(k, 0.0) + v > limit[k] + RESOURCE_TOLERANCE:
            return False
    return True
