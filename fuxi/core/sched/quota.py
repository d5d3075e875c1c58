"""Quota groups at run time: what each group uses, whether its next slot is within its
guarantee, and how much it borrows (the key that lends idle quota in proportion to weight)."""

from __future__ import annotations

from typing import Mapping

from fuxi.core.sched.model import QuotaGroup
from fuxi.core.sched.resources import RESOURCE_TOLERANCE, Needs, dominant_share, within


def guaranteed(group: QuotaGroup, used: Mapping[str, float], needs: Needs) -> bool:
    """True if one more slot of ``needs`` keeps ``group`` within its guaranteed minimum."""
    return bool(group.min) and within(used, needs, group.min)


def over_min(group: QuotaGroup, used: Mapping[str, float]) -> bool:
    """True if ``group`` uses more than its guarantee in some resource (it is borrowing)."""
    for k, v in used.items():
        if v > group.min.get(k, 0.0) + RESOURCE_TOLERANCE:
            return True
    return False


def under_max(group: QuotaGroup, used: Mapping[str, float], needs: Needs) -> bool:
    return group.max is None or within(used, needs, group.max)


def borrow_share(group: QuotaGroup, used: Mapping[str, float],
                 capacity: Mapping[str, float]) -> float:
    """What ``group`` holds beyond its guarantee, as a dominant share of the cluster, divided
    by its weight: the group with the least goes first, so borrowed room ends up split in
    proportion to the weights."""
    extra = {k: v - group.min.get(k, 0.0) for k, v in used.items()
             if v > group.min.get(k, 0.0) + RESOURCE_TOLERANCE}
    return dominant_share(extra, capacity) / group.weight
