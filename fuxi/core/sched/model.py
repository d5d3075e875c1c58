"""The scheduling core's plain data: configuration, quota groups, demands, and the plans it
returns (grants and revocations). Everything here is a frozen dataclass or a dict, so a plan
can be logged, compared, sent over RPC or replayed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from fuxi.core.sched.resources import check_resources
from fuxi.errors import BadInput, LimitExceeded

# Worker slots granted on one node, all jobs together (~50 MB each): a node holding this many
# takes no more, whatever their shapes ask (a task with cpu: 0 would otherwise get a worker per
# instance).
WORKERS_PER_NODE_MAX = 64
QUOTA_GROUPS_MAX = 64  # quota groups one scheduler knows (each is scanned per decision)
# Nodes one decision looks at in the free index beyond those it skips for being excluded or
# avoided: the bound that keeps a decision O(log N) when a job already holds slots on the
# roomiest nodes (its next slot then goes to the least-held of these).
SPREAD_PROBES_MAX = 16
# Node- or rack-level preferences one demand may carry at once (a decision looks at no more
# than SPREAD_PROBES_MAX of them, rotating through the rest).
PREFERRED_PLACES_MAX = 10_000
RECLAIM_VICTIMS_MAX = 512  # running slots one reclaim looks at before it gives up
AGEING_STEP_S = 30.0  # a waiting demand's priority rises by one per this many seconds
AGEING_BOOST_MAX = 100  # ... but by no more than this in all

DEFAULT_GROUP = "default"

LOCALITY_NODE = "node"
LOCALITY_RACK = "rack"
LOCALITY_CLUSTER = "cluster"


@dataclass(frozen=True)
class QuotaGroup:
    """A share of the cluster. ``min`` is guaranteed (slots within it beat every other group's,
    whatever the priorities, and are reclaimed from borrowers when the owner asks); ``max``
    (None: no cap) is never exceeded; what is idle beyond the guarantees is lent to the groups
    that ask, in proportion to ``weight``."""

    name: str
    min: Mapping[str, float] = field(default_factory=dict)
    max: Mapping[str, float] | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BadInput(f"quota group name {self.name!r}: expected a non-empty string")
        object.__setattr__(self, "min", check_resources(f"quota group {self.name!r} min", self.min))
        if self.max is not None:
            mx = check_resources(f"quota group {self.name!r} max", self.max)
            for k, v in self.min.items():
                if k in mx and mx[k] < v:
                    raise BadInput(f"quota group {self.name!r}: max[{k!r}]={mx[k]!r} is below "
                                   f"min[{k!r}]={v!r}; expected max >= min")
            object.__setattr__(self, "max", mx)
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not (
                self.weight > 0 and self.weight < float("inf")):
            raise BadInput(f"quota group {self.name!r} weight={self.weight!r}: expected a "
                           f"finite number > 0")

    @classmethod
    def from_mapping(cls, name: str, doc: Mapping) -> QuotaGroup:
        """``{"min": {...}, "max": {...}, "weight": 2}`` (every key optional) as a group."""
        if not isinstance(doc, Mapping):
            raise BadInput(f"quota group {name!r}: {doc!r}: expected a mapping with min, max, weight")
        unknown = set(doc) - {"min", "max", "weight"}
        if unknown:
            raise BadInput(f"quota group {name!r}: unknown keys {sorted(unknown)}; expected "
                           f"min, max, weight")
        return cls(name, doc.get("min") or {}, doc.get("max"), doc.get("weight", 1.0))


def quota_groups(config: Mapping[str, Mapping] | None) -> dict[str, QuotaGroup]:
    """The groups of a plain mapping ``{name: {"min":..., "max":..., "weight":...}}``, plus
    ``default`` (no guarantee, no cap) unless the mapping configures it."""
    groups = {DEFAULT_GROUP: QuotaGroup(DEFAULT_GROUP)}
    for name, doc in (config or {}).items():
        groups[name] = doc if isinstance(doc, QuotaGroup) else QuotaGroup.from_mapping(name, doc)
    if len(groups) > QUOTA_GROUPS_MAX:
        raise LimitExceeded(f"{len(groups)} quota groups: QUOTA_GROUPS_MAX is {QUOTA_GROUPS_MAX}")
    return groups


@dataclass(frozen=True)
class SchedConfig:
    workers_per_node_max: int = WORKERS_PER_NODE_MAX
    quota_groups: Mapping[str, Mapping] | None = None
    spread_probes_max: int = SPREAD_PROBES_MAX
    ageing_step_s: float = AGEING_STEP_S
    ageing_boost_max: int = AGEING_BOOST_MAX
    # A pending demand may revoke running slots of priority at least this much lower (None:
    # never; quota reclaim is separate and always on).
    preempt_priority_gap: int | None = None
    reclaim_victims_max: int = RECLAIM_VICTIMS_MAX

    def __post_init__(self) -> None:
        for name in ("workers_per_node_max", "spread_probes_max", "ageing_boost_max",
                     "reclaim_victims_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadInput(f"SchedConfig {name}={v!r}: expected an integer >= 0")
        if not (isinstance(self.ageing_step_s, (int, float)) and self.ageing_step_s > 0):
            raise BadInput(f"SchedConfig ageing_step_s={self.ageing_step_s!r}: expected > 0")


@dataclass(frozen=True)
class DemandSpec:
    """What one demand is (its wanted count changes through ``ask`` / ``set_wanted``)."""

    demand_id: str
    job_id: str
    priority: int
    submit_seq: int
    shape: Mapping[str, float]
    quota_group: str = DEFAULT_GROUP

    def __post_init__(self) -> None:
        if not isinstance(self.demand_id, str) or not self.demand_id:
            raise BadInput(f"demand_id {self.demand_id!r}: expected a non-empty string")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise BadInput(f"demand {self.demand_id!r} priority={self.priority!r}: expected an int")
        object.__setattr__(self, "shape", check_resources(f"demand {self.demand_id!r} shape",
                                                          self.shape))


@dataclass(frozen=True)
class Grant:
    """``n`` new slots of ``demand_id`` on ``node_id``; ``locality`` says at which level of the
    demand's preferences it was found (node, rack or cluster)."""

    demand_id: str
    node_id: str
    n: int = 1
    locality: str = LOCALITY_CLUSTER


@dataclass(frozen=True)
class Revocation:
    """``n`` running slots of ``demand_id`` on ``node_id`` taken back (``reason``: ``reclaim``
    for a quota owner, ``priority`` for a more important demand, ``node_gone``)."""

    demand_id: str
    node_id: str
    n: int
    reason: str


@dataclass(frozen=True)
class Plan:
    """What one scheduling pass decided, in order (revocations before the grants they make
    room for)."""

    grants: tuple[Grant, ...] = ()
    revocations: tuple[Revocation, ...] = ()
