"""Hot-standby FuxiMaster's pure parts (issue 16 part 3): terms, the gate that refuses a
deposed leader, the candidates' names, whom to ask next, and the guard that makes a standby
answer NotLeader."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from fuxi.core.leadership import (CANDIDATES_MAX, LEADER_TERM_MAX, TermGate, candidate_names,
                                  check_candidates, check_term, next_candidate)
from fuxi.errors import BadInput, ClusterError, NotLeader, StaleTerm


def test_a_newer_term_is_taken_and_an_older_one_refused():
    g = TermGate()
    assert g.admit(0, "sync") == 0  # no election: term 0 equals itself
    assert g.admit(3, "sync") == 3
    assert g.admit(3, "sync") == 3  # the same leader again
    with pytest.raises(StaleTerm, match="term 2.*term 3 has been seen"):
        g.admit(2, "cancel")
    assert g.seen == 3 and g.refused == 1
    assert g.admit(7, "sync") == 7
    assert not g.fresh(3) and g.fresh(7) and g.fresh(8) and g.seen == 8


def test_a_refused_term_changes_nothing():
    g = TermGate(5)
    for _ in range(3):
        assert not g.fresh(4)
    assert g.seen == 5 and g.refused == 3


@pytest.mark.parametrize("bad", [-1, LEADER_TERM_MAX + 1, 1.5, "3", None, True, [1], float("nan")])
def test_garbage_terms_are_refused_with_what_was_expected(bad):
    with pytest.raises(BadInput, match="expected an integer from 0"):
        check_term(bad)
    g = TermGate(2)
    assert not g.fresh(bad)  # a malformed reply counts as stale, never as a newer term
    assert g.seen == 2


def test_candidate_names_keep_the_old_name_first():
    assert candidate_names("FuxiMaster", 1) == ["FuxiMaster"]
    assert candidate_names("FuxiMaster", 3) == ["FuxiMaster", "FuxiMaster-2", "FuxiMaster-3"]
    for bad in (0, CANDIDATES_MAX + 1, "2", True, None):
        with pytest.raises(BadInput, match="CANDIDATES_MAX"):
            candidate_names("FuxiMaster", bad)
    with pytest.raises(BadInput, match="non-empty"):
        candidate_names("", 2)


def test_candidate_lists_from_the_wire_are_bounded_and_checked():
    assert check_candidates(("a", "b")) == ["a", "b"]
    for bad in ([], ["a"] * (CANDIDATES_MAX + 1), "ab", [1], ["x" * 500], None):
        with pytest.raises(BadInput):
            check_candidates(bad)


def test_next_candidate_follows_a_hint_then_goes_round_in_order():
    c = ["m", "m-2", "m-3"]
    assert next_candidate(c, "m", "m-3", 0) == "m-3"  # the standby named the leader
    assert next_candidate(c, "m", None, 0) == "m-2"  # no hint: the next in order
    assert next_candidate(c, "m-3", None, 1) == "m"  # wraps around
    assert next_candidate(c, None, None, 0) == "m"  # nothing yet: the first
    assert next_candidate(c, "m", "stranger", 0) == "m-2"  # a hint that is no candidate
    assert next_candidate(c, "m-2", "m-2", 1) == "m-3"  # a hint naming itself: move on
    assert next_candidate(c, "m", None, 3) is None  # every one asked: the round is over
    assert next_candidate([], None, None, 0) is None


def test_every_candidate_is_reached_within_one_round():
    c = ["a", "b", "c", "d"]
    seen, cur = [], None
    for tried in range(len(c)):
        cur = next_candidate(c, cur, None, tried)
        seen.append(cur)
    assert sorted(seen) == c and next_candidate(c, cur, None, len(c)) is None


def test_not_leader_crosses_a_process_boundary_with_its_hint():
    e = pickle.loads(pickle.dumps(NotLeader("a standby", leader="FuxiMaster-2")))
    assert isinstance(e, NotLeader) and isinstance(e, ClusterError)
    assert e.leader == "FuxiMaster-2" and "a standby" in str(e)
    s = pickle.loads(pickle.dumps(StaleTerm("old")))
    assert isinstance(s, StaleTerm)


# ------------------------------------------------------------ the guard (leader_only)

class _Role:
    """What ``leader_only`` asks of an actor's leadership: admit or raise."""

    def __init__(self, serving: bool):
        self.serving = serving
        self.asked: list[str] = []

    async def admit(self, what):
        self.asked.append(what)
        if not self.serving:
            raise NotLeader(f"{what}: standby", leader="other")

    def admit_now(self, what):
        self.asked.append(what)
        if not self.serving:
            raise NotLeader(f"{what}: standby", leader="other")


def _actor_class():
    from fuxi.shells.leadership import leader_only

    @leader_only
    class A:
        def __init__(self, serving):
            self.leadership = _Role(serving)

        async def submit(self, x):
            return x + 1

        def service_list(self):
            return ["s"]

        def leader_info(self):  # a standby answers this one
            return {"serving": self.leadership.serving}

        def _private(self):
            return "inner"

    return A


def test_a_standby_answers_not_leader_and_does_nothing():
    A = _actor_class()
    standby = A(serving=False)
    with pytest.raises(NotLeader) as e:
        asyncio.run(standby.submit(1))
    assert e.value.leader == "other"
    with pytest.raises(NotLeader):
        standby.service_list()
    assert standby.leader_info() == {"serving": False}
    assert standby._private() == "inner"
    assert standby.leadership.asked == ["submit", "service_list"]


def test_the_leader_serves_and_the_wrapped_methods_keep_their_kind():
    import inspect

    A = _actor_class()
    leader = A(serving=True)
    assert asyncio.run(leader.submit(1)) == 2
    assert leader.service_list() == ["s"]
    assert inspect.iscoroutinefunction(A.submit) and not inspect.iscoroutinefunction(A.service_list)
    assert list(inspect.signature(A.submit).parameters) == ["self", "x"]  # Ray binds by it


def test_master_link_ignores_a_deposed_leaders_reply_and_refuses_its_commands():
    from fuxi.shells.leadership import MasterLink

    link = MasterLink(object(), "m", ["m", "m-2"], term=0)
    assert link.fresh({"term": 4, "grants": []})  # the new leader's first reply
    assert not link.fresh({"term": 3, "grants": [{"n": 1}]})  # the old one's, late
    assert not link.fresh({"term": "x"}) and not link.fresh(None)
    with pytest.raises(StaleTerm):
        link.check(3, "cancel")
    link.check(4, "cancel")
    link.check(5, "cancel")
    with pytest.raises(StaleTerm):
        link.check(None, "cancel")  # a command with no term, once terms are in use
    assert pickle.loads(pickle.dumps(link.gate)).seen == 5


def test_master_link_stays_with_a_standby_while_the_election_settles():
    """The dead leader's entry still heads the election for a session TTL: a standby names it.
    The link must not go back to the dead one; it asks the standby again (it may be next)."""
    from fuxi.shells.leadership import MasterLink

    standby = object()
    link = MasterLink(standby, "m-2", ["m", "m-2"], term=1)
    link.dead = "m"  # its last call to m failed outright
    link.failed(NotLeader("standby", leader="m"))
    assert link.handle is standby and link.name == "m-2"
    link.failed(NotLeader("no leader yet", leader=None))
    assert link.handle is standby
    assert link.fresh({"term": 2}) and link.dead is None  # the new leader answered


def test_master_link_believes_the_hint_in_the_end(monkeypatch):
    """The dead candidate may come back (Ray restarts it) and win: after LINK_STAYS_MAX
    doubts the link follows the hint after all (never stuck on a standby)."""
    from fuxi.shells import leadership
    from fuxi.shells.leadership import LINK_STAYS_MAX, MasterLink

    looked_up = []
    monkeypatch.setattr(leadership.ray, "get_actor",  # no cluster in a unit test
                        lambda name: looked_up.append(name) or f"handle:{name}")
    standby = object()
    link = MasterLink(standby, "m-2", ["m", "m-2"], term=1)
    link.dead = "m"
    for _ in range(LINK_STAYS_MAX):
        link.failed(NotLeader("standby", leader="m"))
        assert link.handle is standby
    link.failed(NotLeader("standby", leader="m"))
    assert (link.handle, link.name, looked_up) == ("handle:m", "m", ["m"])
    link.failed(RuntimeError("m died"))  # not a standby's answer: the next candidate
    assert (link.name, link.dead) == ("m-2", "m")


# ------------------------------------------------------------ queued jobs at a take-over

def test_queued_jobs_are_handed_over_in_submit_order_not_failed():
    from fuxi.io.store import MemoryStore
    from fuxi.shells.jobrecords import launch_key, restore_records

    store = MemoryStore()
    for jid, at in (("late", 30.0), ("early", 10.0), ("middle", 20.0)):
        store.put(f"/jobs/{jid}/status", {"job_id": jid, "state": "queued", "submitted_at": at})
        store.put(launch_key(jid), {"v": 1})
    store.put("/jobs/nolaunch/status", {"job_id": "nolaunch", "state": "queued",
                                        "submitted_at": 5.0})
    queued: list = []
    assert restore_records(store, set(), {}, {}, queued) == set()
    assert queued == ["early", "middle", "late"]
    assert store.get("/jobs/early/status")["state"] == "queued"  # left for the re-queue
    gone = store.get("/jobs/nolaunch/status")  # no plan kept: it cannot wait again
    assert gone["state"] == "failed" and "submit it again" in gone["report"]


def test_without_a_queue_list_queued_jobs_fail_as_before():
    from fuxi.io.store import MemoryStore
    from fuxi.shells.jobrecords import launch_key, restore_records

    store = MemoryStore()
    store.put("/jobs/q/status", {"job_id": "q", "state": "queued", "submitted_at": 1.0})
    store.put(launch_key("q"), {"v": 1})
    restore_records(store, set(), {}, {})
    assert store.get("/jobs/q/status")["state"] == "failed"


def test_a_standby_passes_platform_lookups_on_to_the_leader(monkeypatch):
    """owner_of / kuafu_start_node reach FuxiMaster's first name, which may be a standby: it
    forwards them to the leader it knows; with none known the refusal stands."""
    from fuxi.shells import leadership
    from fuxi.shells.leadership import Leadership

    class Method:
        def __init__(self, name):
            self.name = name

        def remote(self, *a, **kw):
            fut = asyncio.get_running_loop().create_future()
            fut.set_result((self.name, a))
            return fut

    class Handle:
        owner_of = Method("owner_of")

    monkeypatch.setattr(leadership.ray, "get_actor", lambda name: Handle())
    role = Leadership.__new__(Leadership)  # only what forward needs
    role.me = "m"
    got = asyncio.run(role.forward(NotLeader("standby", leader="m-2"), "owner_of", "p", "job", "j"))
    assert got == ("owner_of", ("p", "job", "j"))
    with pytest.raises(NotLeader):
        asyncio.run(role.forward(NotLeader("election under way", leader=None), "owner_of"))
    with pytest.raises(NotLeader):  # never to itself
        asyncio.run(role.forward(NotLeader("me", leader="m"), "owner_of"))
