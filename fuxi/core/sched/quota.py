"""Quota groups at run time: what each group uses, whether its next slot is within its
guarantee, and how much it borrows (the key that lends idle quota in proportion to weight)."""

from __future__ import annotations

from typing import Mapping

from fuxi.core.sched.model import QuotaGroup
from fuxi.core.sched.resources import RESOURCE_TOLERANCE, Needs, within


def guaranteed(group: QuotaGroup, used: Mapping[str, float], needs: Needs) -> bool:
    """True if one more slot of ``needs`` is within ``group``'s guaranteed minimum: the slot
    uses some resource the guarantee names, and ``used`` plus the slot stays within the
    guarantee in every such resource. (A slot that uses none of them, a CPU-only slot of a
    group guaranteed GPUs, is no more guaranteed than anyone's: it could otherwise reclaim
    without end.)"""
    floor = group.min
    if not floor:
        return False
    named = False
    for k, v in needs:  # resources.within, with the "names one" test in the same loop
        m = floor.get(k)
        if m is None:
            continue
        named = True
        if used.get(k, 0.0) + v > m + RESOURCE_TOLERANCE:
            return False
    return named


def borrowed(group: QuotaGroup, used: Mapping[str, float], needs: Needs) -> bool:
    """True if a slot of ``needs`` that ``group`` holds (``used`` includes it) is borrowed
    quota, which reclaim may take back: exactly when the same slot would not be
    ``guaranteed`` on top of ``used`` less itself. The group uses more than its guarantee in
    a resource the slot uses and the guarantee names, or the slot uses none of those, or the
    group has no guarantee.

    Both rules must name the same slots. A resource the guarantee does not name (memory
    beside a CPU guarantee) is not borrowing: when it counted as such, two groups below their
    CPU guarantees each saw the other as a borrower, every reclaim made its victim's group
    guaranteed again, and the two revoked each other's slots for ever."""
    if not group.min:
        return True
    named = False
    for k, _ in needs:
        m = group.min.get(k)
        if m is None:
            continue
        named = True
        if used.get(k, 0.0) > m + RESOURCE_TOLERANCE:
            return True
    return not named


def under_max(group: QuotaGroup, used: Mapping[str, float], needs: Needs) -> bool:
    return group.max is None or within(used, needs, group.max)


def borrow_share(group: QuotaGroup, used: Mapping[str, float],
                 capacity: Mapping[str, float]) -> float:
    """What ``group`` holds beyond its guarantee, as a dominant share of the cluster, divided
    by its weight: the group with the least goes first, so borrowed room ends up split in
    proportion to the weights. The excess's dominant share: its largest
    ``(used - min) / capacity`` over the resources the cluster has."""
    floor = group.min
    best = 0.0
    for k, v in used.items():
        m = floor.get(k, 0.0)
        if v > m + RESOURCE_TOLERANCE:
            c = capacity.get(k, 0.0)
            if c > RESOURCE_TOLERANCE:
                share = (v - m) / c
                if share > best:
                    best = share
    return best / group.weight
