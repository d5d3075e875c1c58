"""The pure scheduling core of FuxiMaster (issue 16): an incremental scheduler that takes
resource deltas (ask / release / node changes) and returns plans (grants and revocations)
that the shell re-checks and applies.

    resources   resource vectors and the fit arithmetic
    model       configuration, quota groups, demands, plans (plain data)
    index       the free-resource index: per-shape heaps for the cluster and each rack
    quota       quota-group arithmetic (guarantee, borrowing, max)
    fairshare   fair-share targets over a fluid model of the cluster
    scheduler   the long-lived state and its decisions

See docs/architecture.md, "The scheduling core".
"""

from fuxi.core.sched.index import DEFAULT_RACK
from fuxi.core.sched.model import (
    AGEING_BOOST_MAX,
    AGEING_STEP_S,
    DEFAULT_GROUP,
    LOCALITY_CLUSTER,
    LOCALITY_NODE,
    LOCALITY_RACK,
    QUOTA_GROUPS_MAX,
    SPREAD_PROBES_MAX,
    WORKERS_PER_NODE_MAX,
    DemandSpec,
    Grant,
    Plan,
    QuotaGroup,
    Revocation,
    SchedConfig,
    quota_groups,
)
from fuxi.core.sched.resources import RESOURCE_TOLERANCE
from fuxi.core.sched.scheduler import Scheduler

__all__ = [
    "AGEING_BOOST_MAX", "AGEING_STEP_S", "DEFAULT_GROUP", "DEFAULT_RACK", "LOCALITY_CLUSTER",
    "LOCALITY_NODE", "LOCALITY_RACK", "QUOTA_GROUPS_MAX", "RESOURCE_TOLERANCE",
    "SPREAD_PROBES_MAX", "WORKERS_PER_NODE_MAX", "DemandSpec", "Grant", "Plan", "QuotaGroup",
    "Revocation", "SchedConfig", "Scheduler", "quota_groups",
]
