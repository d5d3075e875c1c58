"""Queues as quota groups: a queue's resource quota (guaranteed ``min``, ``max`` cap,
``weight``), checked, mapped onto the scheduling core's quota groups, and what each queue
holds in FuxiMaster's ledger.

An operator writes quotas in the job spec's vocabulary: ``cpu`` (CPUs), ``memory_mb``
(MiB), ``gpu`` (GPUs) and ``custom:NAME`` (a Ray custom resource), e.g.
``{"min": {"cpu": 2}, "max": {"cpu": 4}, "weight": 2}``. The core counts in Ray's
(``CPU``, ``memory`` in bytes, ``GPU``, ``NAME``); :func:`core_groups` translates.

Queues without a quota (no min, no max, weight 1) share one pool group
(:data:`SHARED_GROUP`, not a valid queue name), so a cluster with no quota configured is
scheduled exactly as before: one group, priorities, max-min by job. The online services are
a group of their own (:data:`SERVICES_GROUP`) guaranteed the whole cluster: a guarantee comes
before priority in the core, so without it a queue's ``min`` would beat the services; with
it they come first, as they always have (and their wait makes batch workers stop at once:
``GrantPlan.preempt``). A queue with a quota
is a group of its own: its jobs' slots within ``min`` come before anyone's (and are
reclaimed from borrowers: their fair-share targets drop, and their JobMasters give the slots
back as their workers go idle — or at once, once the owner has waited
``fuxi.core.reclaim.RECLAIM_GRACE_S``), it never holds more than ``max``, and what nobody is
guaranteed is lent in proportion to ``weight``.

Pure: no Ray, no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from fuxi.core import slots
from fuxi.core.sched import QUOTA_GROUPS_MAX, QuotaGroup
from fuxi.errors import BadInput

SHARED_GROUP = "*shared"  # the core's group for queues without a quota
SERVICES_GROUP = "*services"  # the online replicas' group (guaranteed the whole cluster)
# Queues that may carry a quota: the core also holds the pool, the services and its default.
QUOTA_QUEUES_MAX = QUOTA_GROUPS_MAX - 3
QUOTA_RESOURCES_MAX = 16  # resources one min or max may name
QUOTA_AMOUNT_MAX = 1e15  # any one amount (CPUs, MiB, GPUs, custom units)
WEIGHT_MAX = 1e6
CUSTOM_PREFIX = "custom:"
CUSTOM_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
MIB = 1024 * 1024

# The spec's names -> Ray's (memory also changes unit: MiB -> bytes)
BUILTIN = {"cpu": "CPU", "memory_mb": "memory", "gpu": "GPU"}
KNOWN = "cpu, memory_mb, gpu or custom:NAME"
QUOTA_KEYS = ("min", "max", "weight")


def _amounts(where: str, doc: Any) -> dict[str, float]:
    if not isinstance(doc, Mapping):
        raise BadInput(f"{where}: got {str(doc)[:80]!r}, expected a mapping of resources "
                       f"({KNOWN}) to amounts, e.g. {{'cpu': 2}}")
    if len(doc) > QUOTA_RESOURCES_MAX:
        raise BadInput(f"{where}: got {len(doc)} resources, expected at most "
                       f"QUOTA_RESOURCES_MAX={QUOTA_RESOURCES_MAX}")
    out: dict[str, float] = {}
    for k, v in doc.items():
        if not isinstance(k, str) or not (k in BUILTIN or (
                k.startswith(CUSTOM_PREFIX) and CUSTOM_NAME_RE.match(k[len(CUSTOM_PREFIX):])
                and k[len(CUSTOM_PREFIX):] not in BUILTIN.values())):
            raise BadInput(f"{where}: unknown resource {str(k)[:80]!r}, expected {KNOWN} "
                           f"(NAME matching {CUSTOM_NAME_RE.pattern}, not CPU/memory/GPU)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or not 0 <= v <= QUOTA_AMOUNT_MAX:
            raise BadInput(f"{where}[{k!r}]: got {str(v)[:80]!r}, expected a finite number from "
                           f"0 to {QUOTA_AMOUNT_MAX:g}")
        out[k] = float(v)
    return out


def checked_quota(name: str, conf: Mapping) -> dict:
    """The quota part of queue ``name``'s configuration, checked: ``{"min": {...}, "max":
    {...} or None, "weight": float}`` (missing keys: no guarantee, no cap, weight 1)."""
    where = f"queue {name!r}"
    mn = _amounts(f"{where} min", conf.get("min") if conf.get("min") is not None else {})
    mx = None if conf.get("max") is None else _amounts(f"{where} max", conf["max"])
    weight = conf.get("weight", 1.0)
    weight = 1.0 if weight is None else weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
            or not math.isfinite(weight) or not 0 < weight <= WEIGHT_MAX:
        raise BadInput(f"{where} weight: got {str(weight)[:80]!r}, expected a finite number "
                       f"> 0 and <= {WEIGHT_MAX:g}")
    if mx is not None:
        for k, v in mn.items():
            if k in mx and mx[k] < v:
                raise BadInput(f"{where}: min[{k!r}]={v:g} is above max[{k!r}]={mx[k]:g}; "
                               f"expected min <= max")
    return {"min": mn, "max": mx, "weight": float(weight)}


def has_quota(conf: Mapping) -> bool:
    return bool(conf.get("min")) or conf.get("max") is not None or conf.get("weight", 1.0) != 1.0


def check_count(queues: Mapping[str, Mapping]) -> None:
    n = sum(1 for c in queues.values() if has_quota(c))
    if n > QUOTA_QUEUES_MAX:
        raise BadInput(f"queues: {n} carry a quota, expected at most "
                       f"QUOTA_QUEUES_MAX={QUOTA_QUEUES_MAX}")


def to_ray(amounts: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for k, v in amounts.items():
        if k == "memory_mb":
            out["memory"] = float(v) * MIB
        else:
            out[BUILTIN.get(k, k[len(CUSTOM_PREFIX):] if k.startswith(CUSTOM_PREFIX) else k)] = v
    return out


def from_ray(amounts: Mapping[str, float]) -> dict[str, float]:
    """Ray's resources in the quota vocabulary (what ``fuxi queue list`` shows)."""
    back = {v: k for k, v in BUILTIN.items()}
    out = {}
    for k, v in sorted(amounts.items()):
        if abs(v) <= slots.RESOURCE_TOLERANCE:
            continue
        if k == "memory":
            out["memory_mb"] = round(v / MIB, 3)
        else:
            out[back.get(k, CUSTOM_PREFIX + k)] = round(v, 6)
    return out


def group_of(queues: Mapping[str, Mapping], queue: str) -> str:
    """The core's quota group for a job of ``queue``."""
    conf = queues.get(queue)
    return queue if conf is not None and has_quota(conf) else SHARED_GROUP


def core_groups(queues: Mapping[str, Mapping],
                node_totals: Mapping[str, Mapping[str, float]] | None = None
                ) -> dict[str, QuotaGroup]:
    """The queues' quotas as the core's groups (``slots.grant(quota_groups=...)``), and the
    services' group, guaranteed every resource of ``node_totals`` (the cluster now)."""
    capacity: dict[str, float] = {}
    for total in (node_totals or {}).values():
        capacity = slots.add(capacity, {k: v for k, v in total.items() if v > 0})
    out = {SHARED_GROUP: QuotaGroup(SHARED_GROUP),
           SERVICES_GROUP: QuotaGroup(SERVICES_GROUP, capacity)}
    for name, conf in queues.items():
        if has_quota(conf):
            out[name] = QuotaGroup(name, to_ray(conf.get("min") or {}),
                                   None if conf.get("max") is None else to_ray(conf["max"]),
                                   conf.get("weight", 1.0))
    return out


def demands(job_demands: Mapping[str, Mapping[str, Mapping]], priorities: Mapping[str, int],
            submit_seq: Mapping[str, int], job_queues: Mapping[str, str],
            queues: Mapping[str, Mapping], default_queue: str) -> list[slots.Demand]:
    """Every job's demands, each in its queue's quota group (FuxiMaster's sync)."""
    out = []
    for jid, ds in job_demands.items():
        group = group_of(queues, job_queues.get(jid, default_queue))
        for sk, d in ds.items():
            out.append(slots.Demand(
                demand_id=f"{jid}/{sk}", job_id=jid, priority=priorities.get(jid, 50),
                submit_seq=submit_seq.get(jid, 0), shape=d["shape"],
                slots_wanted=int(d["wanted"]), quota_group=group))
    return out


class QuotaUsage:
    """What each queue's jobs hold in the ledger now, and the most each held since this
    FuxiMaster started (soft state: a check that a cap held, without sampling in time)."""

    def __init__(self) -> None:
        self.used: dict[str, dict[str, float]] = {}
        self.peak: dict[str, dict[str, float]] = {}

    def observe(self, ledger: slots.Ledger, job_queues: Mapping[str, str],
                default_queue: str) -> None:
        used: dict[str, dict[str, float]] = {}
        for did, e in ledger.to_dict()["grants"].items():
            if did.startswith("svc:"):
                continue  # online replicas are in no queue
            q = job_queues.get(e["job_id"], default_queue)
            used[q] = slots.add(used.get(q, {}), e["shape"], sum(e["nodes"].values()))
        self.used = used
        for q, u in used.items():
            p = self.peak.setdefault(q, {})
            for k, v in u.items():
                if v > p.get(k, 0.0):
                    p[k] = v

    def view(self, queue: str) -> dict:
        return {"used": from_ray(self.used.get(queue, {})),
                "used_peak": from_ray(self.peak.get(queue, {}))}
