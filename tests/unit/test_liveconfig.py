"""The online settings reach the objects that use them: a stored configuration read by
LiveConfig changes the alert loop's and the cluster log's periods and the cluster blacklist's
thresholds, which the blacklist then decides by; a stored document that does not validate
changes nothing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fuxi.core import blacklist as bl
from fuxi.core import clusterconfig as cc
from fuxi.shells.liveconfig import LiveConfig


class Store:
    def __init__(self, doc):
        self.doc = doc

    def get(self, key):
        assert key == cc.STORE_KEY
        return self.doc


def _stored(set_layer: dict) -> dict:
    return cc.stored_doc(cc.layer({"set": set_layer}))


def _refresh(live):
    return asyncio.run(live.refresh())


def test_blacklist_thresholds_change_online_and_decide_exclusion():
    black = bl.ClusterBlacklist()
    alerting, events = SimpleNamespace(eval_s=5.0), SimpleNamespace(pull_s=2.0)
    live = LiveConfig(Store(_stored({"blacklist": {"cluster_failure_jobs_min": 2,
                                                   "cluster_expiry_s": 30.0}})),
                      alerting, events, black)
    got = _refresh(live)
    assert got["blacklist.cluster_failure_jobs_min"] == 2 and live.error is None
    assert (black.jobs_min, black.expiry_s) == (2, 30.0)
    assert black.window_s == bl.CLUSTER_FAILURE_WINDOW_S  # not set: the default
    # Two jobs failing twice each on node n1 now exclude it (the default needs three).
    alive = {"n1", "n2", "n3", "n4"}
    for job in ("a", "b"):
        black.sync(job, [], {"n1": bl.CLUSTER_FAILURES_PER_JOB_MIN}, alive, now=100.0)
    assert "n1" in black.entries and black.for_job([], alive)[0] == {"n1"}
    assert black.entries["n1"].view(100.0)["expires_in_s"] <= 30.0
    default = bl.ClusterBlacklist()
    for job in ("a", "b"):
        default.sync(job, [], {"n1": bl.CLUSTER_FAILURES_PER_JOB_MIN}, alive, now=100.0)
    assert default.entries == {}  # the control: two jobs are not enough by default


def test_a_document_that_does_not_validate_changes_nothing():
    black = bl.ClusterBlacklist()
    bad = {"format": cc.STORED_FORMAT,
           "layers": {"set": {"blacklist": {"cluster_failure_jobs_min": 0}}}}
    live = LiveConfig(Store(bad), SimpleNamespace(eval_s=5.0), None, black)
    assert _refresh(live) == {}
    assert "does not validate" in live.error
    assert black.jobs_min == bl.CLUSTER_FAILURE_JOBS_MIN


def test_the_blacklist_keys_are_online_and_others_still_need_a_restart():
    import pytest

    from fuxi.errors import BadInput

    for key in ("blacklist.cluster_expiry_s", "blacklist.cluster_failure_window_s",
                "blacklist.cluster_failure_jobs_min"):
        cc.check_online_set(key)
    with pytest.raises(BadInput, match="needs a restart"):
        cc.check_online_set("pangu.replication")
    with pytest.raises(Exception, match="blacklist.cluster_failure_jobs_min"):
        cc.layer({"set": {"blacklist": {"cluster_failure_jobs_min":
                                        cc.parse_value("blacklist.cluster_failure_jobs_min",
                                                       "-3")}}})
