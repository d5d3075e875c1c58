"""Foreign Ray work is subtracted from what FuxiMaster grants (``fuxi.core.nodeview``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuxi.core.nodeview import capacity, foreign_use

TOTAL = {"CPU": 8.0, "memory": 32e9, "GPU": 2.0, "disk_a": 1.0}


def test_cpu_and_memory_held_in_ray_are_someone_elses():
    # Fuxi's workers never ask Ray for CPU or memory: all Ray reports used is foreign.
    avail = {"CPU": 5.0, "memory": 30e9, "GPU": 2.0, "disk_a": 1.0}
    f = foreign_use(TOTAL, avail, ours_in_ledger={"CPU": 3.0, "memory": 1e9})
    assert f == {"CPU": 3.0, "memory": 2e9}
    assert capacity(TOTAL, f) == {"CPU": 5.0, "memory": 30e9, "GPU": 2.0, "disk_a": 1.0}


def test_gpus_and_custom_resources_fuxi_holds_are_not_counted_twice():
    avail = {"CPU": 8.0, "memory": 32e9, "GPU": 0.0}  # a key at zero may be missing: disk_a
    f = foreign_use(TOTAL, avail, ours_in_ledger={"GPU": 1.0, "disk_a": 1.0})
    assert f == {"GPU": 1.0}  # one GPU is Fuxi's own worker, the other is foreign


def test_a_node_ray_says_nothing_about_is_taken_whole_and_noise_is_not_negative():
    assert foreign_use(TOTAL, None, {}) == {}
    # A worker granted but not yet started asks Ray for a GPU a moment later: not negative.
    assert foreign_use(TOTAL, dict(TOTAL), {"GPU": 1.0}) == {}


@given(st.dictionaries(st.sampled_from(sorted(TOTAL)), st.floats(0, 64)),
       st.dictionaries(st.sampled_from(sorted(TOTAL)), st.floats(0, 64)))
def test_capacity_is_never_negative_nor_above_the_total(avail, ours):
    cap = capacity(TOTAL, foreign_use(TOTAL, avail, ours))
    assert set(cap) == set(TOTAL)
    assert all(0.0 <= cap[k] <= TOTAL[k] for k in TOTAL)


def test_service_replicas_ask_ray_for_their_cpu_and_are_not_foreign():
    # Two replicas of 1 CPU each hold 2 CPUs in Ray's counters and in the ledger: not foreign
    # (else the node would look 2 CPUs smaller and the ledger full — batch starved for good).
    avail = {"CPU": 5.0, "memory": 32e9, "GPU": 2.0, "disk_a": 1.0}
    f = foreign_use(TOTAL, avail, ours_in_ledger={"CPU": 3.0}, ours_asked_of_ray={"CPU": 2.0})
    assert f == {"CPU": 1.0}  # the third CPU Ray holds is someone else's
    assert capacity(TOTAL, f)["CPU"] == 7.0
