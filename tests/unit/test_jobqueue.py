"""The queue of jobs waiting for room (``fuxi.core.jobqueue``): priority with ageing, submit
order among equals, quota groups taking turns, a bound, and the heap agreeing with a sort."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core.jobqueue import JobQueue, QueueFull
from fuxi.errors import BadInput


def drain(q: JobQueue, now: float, room=lambda g: True) -> list[str]:
    out = []
    while (nxt := q.pop_next(now, room)) is not None:
        out.append(nxt.job_id)
    return out


def test_higher_priority_first_then_submit_order():
    q = JobQueue()
    for i, (jid, prio) in enumerate([("a", 50), ("b", 80), ("c", 50), ("d", 80)]):
        q.add(jid, "default", prio, seq=i, now=0.0)
    assert drain(q, 0.0) == ["b", "d", "a", "c"]


def test_ageing_lets_a_low_priority_job_overtake_fresh_high_ones():
    q = JobQueue(ageing_per_s=1.0 / 60)
    q.add("old-low", "default", 0, seq=0, now=0.0)
    # 101 minutes later a priority-100 job arrives: the old one has aged to 101.
    q.add("new-high", "default", 100, seq=1, now=101 * 60.0)
    assert drain(q, 101 * 60.0) == ["old-low", "new-high"]
    q.add("old-low", "default", 0, seq=2, now=0.0)
    q.add("new-high", "default", 100, seq=3, now=99 * 60.0)  # aged only to 99
    assert drain(q, 99 * 60.0) == ["new-high", "old-low"]


def test_a_group_without_room_is_skipped_not_blocking_others():
    q = JobQueue()
    q.add("g1-a", "g1", 90, seq=0, now=0.0)
    q.add("g2-a", "g2", 10, seq=1, now=0.0)
    q.add("g1-b", "g1", 90, seq=2, now=0.0)
    assert drain(q, 0.0, room=lambda g: g != "g1") == ["g2-a"]
    assert drain(q, 0.0) == ["g1-a", "g1-b"]


def test_removed_jobs_never_start_and_positions_count_them_out():
    q = JobQueue()
    for i in range(4):
        q.add(f"j{i}", "default", 50, seq=i, now=0.0)
    assert q.remove("j1") is not None and q.remove("j1") is None
    pos = q.positions(0.0)
    assert [pos[j]["position"] for j in ("j0", "j2", "j3")] == [1, 2, 3] and "j1" not in pos
    assert drain(q, 0.0) == ["j0", "j2", "j3"] and len(q) == 0


def test_the_queue_is_bounded_with_a_typed_error():
    q = JobQueue(queued_max=2)
    q.add("a", "default", 50, 0, 0.0)
    q.add("b", "default", 50, 1, 0.0)
    with pytest.raises(QueueFull, match="JOBS_QUEUED_MAX is 2") as e:
        q.add("c", "default", 50, 2, 0.0)
    assert isinstance(e.value, BadInput)  # the CLI's exit 2
    with pytest.raises(ValueError, match="queued already"):
        q.add("a", "default", 50, 3, 0.0)


jobs = st.lists(st.tuples(st.sampled_from(["g1", "g2", "g3"]), st.integers(0, 100),
                          st.floats(0, 10_000, allow_nan=False)), max_size=40)


@settings(max_examples=200)
@given(jobs=jobs, removed=st.sets(st.integers(0, 39)), full=st.sets(st.sampled_from(["g1", "g2", "g3"])),
       now=st.floats(10_000, 20_000, allow_nan=False))
def test_pop_order_is_the_effective_priority_order(jobs, removed, full, now):
    """Whatever was added and removed, jobs start in order of effective priority at the time
    of the pop (then submit order), groups without room are skipped, and nothing is lost."""
    q = JobQueue(ageing_per_s=0.01)
    for i, (g, p, t) in enumerate(jobs):
        q.add(f"j{i}", g, p, seq=i, now=t)
    for i in removed:
        q.remove(f"j{i}")
    alive = [(f"j{i}", g, p, t, i) for i, (g, p, t) in enumerate(jobs) if i not in removed]
    want = [jid for jid, g, p, t, i in sorted(
        alive, key=lambda j: (-(j[2] + (now - j[3]) * 0.01), j[4])) if g not in full]
    got = drain(q, now, room=lambda g: g not in full)
    # Floating point: equal effective priorities may differ in the last bit; compare as sets
    # in that case, else exactly.
    assert sorted(got) == sorted(want)
    eff = {jid: p + (now - t) * 0.01 for jid, g, p, t, i in alive}
    assert all(eff[a] >= eff[b] - 1e-6 for a, b in zip(got, got[1:]))
    assert len(q) == sum(1 for a in alive if a[1] in full)
