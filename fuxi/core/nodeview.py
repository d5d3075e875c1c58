"""What of a node Fuxi may hand out: its resources minus what other Ray work holds.

Fuxi's workers take CPU and memory from FuxiMaster's ledger, not from Ray (``num_cpus=0``:
Fuxi decides, Ray executes), so Ray's own counters do not see them. Work that is *not* Fuxi's
(a Ray Serve deployment, a user's tasks and actors on the same cluster) does show in Ray's
counters. So, per node and per resource::

    foreign  = total - available - (what Fuxi's own workers asked Ray for)
    capacity = total - foreign            (what the ledger may grant, Fuxi's and all)

Fuxi's batch workers ask Ray only for GPUs and custom resources (those Ray must hand out
itself), so for CPU and memory their middle term is 0; for the others it is what the ledger
holds for them on the node. Online service replicas ask Ray for everything they hold (their
CPU too), so all of their ledger share is in the middle term. A negative figure (a worker
granted but not yet started, counters read a moment apart) counts as 0. Pure: plain dicts in
and out.
"""

from __future__ import annotations

from typing import Mapping

__all__ = ["LEDGER_ONLY", "capacity", "foreign_use"]

# Resources Fuxi's workers never ask Ray for: Ray's counters hold only others' use of them.
LEDGER_ONLY = frozenset({"CPU", "memory"})


def foreign_use(total: Mapping[str, float], available: Mapping[str, float] | None,
                ours_in_ledger: Mapping[str, float],
                ours_asked_of_ray: Mapping[str, float] | None = None) -> dict[str, float]:
    """What work that is not Fuxi's holds on one node (``available`` None: Ray said nothing
    about the node, so nothing is assumed). ``ours_in_ledger``: what the ledger holds there
    for batch workers (only their GPUs and custom resources are in Ray's counters);
    ``ours_asked_of_ray``: what it holds for actors that ask Ray for all of it (service
    replicas)."""
    if available is None:
        return {}
    whole = ours_asked_of_ray or {}
    out: dict[str, float] = {}
    for k, t in total.items():
        held = t - float(available.get(k, 0.0)) - float(whole.get(k, 0.0))
        if k not in LEDGER_ONLY:
            held -= float(ours_in_ledger.get(k, 0.0))
        if held > 1e-9:
            out[k] = held
    return out


def capacity(total: Mapping[str, float], foreign: Mapping[str, float]) -> dict[str, float]:
    """The node's resources that Fuxi's ledger may grant from."""
    return {k: max(0.0, t - foreign.get(k, 0.0)) for k, t in total.items()}
