"""Hot spots on a real Ray cluster (issue 20 part 2): a replica made artificially slow is
flagged by its node's Kuafu proxy and receives less traffic; the flag clears once it is fast
again."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.ray

CLUSTER = "test"  # the Ray namespace of the test session is fuxi-test


def _pin(node: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node, soft=False)


def test_a_slow_replica_is_flagged_and_receives_less_traffic(kuafu_net):
    import ray

    import kuafu
    from kuafu.core.hotroute import HOT_CHECK_S
    from tests.integration.kuafu_services import ServerActor

    kf = kuafu_net
    actors = [ServerActor.options(scheduling_strategy=_pin(node)).remote(CLUSTER, "hot-svc", tag)
              for node, tag in ((kf.other, "slow"), (kf.here, "fast"))]
    try:
        ray.get([a.info.remote() for a in actors], timeout=60)
        with kuafu.connect(f"nuwa://{CLUSTER}/hot-svc") as c:
            deadline = time.time() + 20
            while len(json.loads(c.call("resolve", {"service": "hot-svc"}, service="kuafu"))) < 2:
                assert time.time() < deadline, "both replicas never became resolvable"
                time.sleep(0.1)
            # Sequential calls: nothing is in flight, so in-flight counts cannot tell the
            # replicas apart; only the slow one's reply times can. It sleeps 60 ms a call.
            tags = [c.call("lag", "0.06") for _ in range(150)]
            early, late = tags[:30], tags[50:]
            assert early.count("slow") >= 3, early  # it was used while not yet known slow
            assert late.count("slow") <= 20, late.count("slow")  # ~5% probes, not ~50%
            hot = json.loads(c.call("stats", b"", service="kuafu"))["hot"]["hot-svc"]
            flagged = [e for e, v in hot.items() if v["hot"]]
            assert len(flagged) == 1 and hot[flagged[0]]["mean_s"] > 0.04, hot
            stats = ray.get([a.stats.remote() for a in actors], timeout=30)
            slow_served, fast_served = (st["hot-svc"]["served"] for st in stats)
            assert slow_served + fast_served == 150 and slow_served * 3 < fast_served, \
                (slow_served, fast_served)  # what the replicas themselves counted
            # Fast again: probes bring its mean down and the flag clears.
            for _ in range(500):
                c.call("lag", "0")
            time.sleep(HOT_CHECK_S + 0.1)
            c.call("lag", "0")
            hot = json.loads(c.call("stats", b"", service="kuafu"))["hot"]["hot-svc"]
            assert not any(v["hot"] for v in hot.values()), hot
    finally:
        for a in actors:
            ray.kill(a)
