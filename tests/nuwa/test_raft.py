"""Readable Raft scenarios on a tiny in-process network, plus codec round-trips.

``Cluster`` plays the shell for every node: it drains each Ready (persist to the node's
MemoryStorage, queue messages, record applied entries, advance) and delivers queued messages
in order, except to or from isolated nodes.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nuwa.core.codec import (
    decode_entry,
    decode_hard_state,
    decode_message,
    decode_snapshot,
    decode_snapshot_meta,
    encode_entry,
    encode_hard_state,
    encode_message,
    encode_snapshot,
    encode_snapshot_meta,
)
from nuwa.core.raft import (
    ConfChangeRefused,
    Entry,
    HardState,
    IllegalTransition,
    MemoryStorage,
    Message,
    MsgType,
    NotLeader,
    ProposalDropped,
    RaftNode,
    ReadState,
    Role,
    Snapshot,
)

ET = 10  # election_ticks


class Cluster:
    def __init__(self, n: int = 3, storages: dict[int, MemoryStorage] | None = None,
                 **kwargs) -> None:
        self.ids = list(range(1, n + 1))
        self.kwargs = kwargs
        self.storages = storages or {}
        self.nodes: dict[int, RaftNode] = {}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.read_states: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.queue: list[Message] = []
        self.isolated: set[int] = set()
        self.dropped: list[Message] = []
        for i in self.ids:
            self.start(i)

    def start(self, i: int, **extra) -> RaftNode:
        storage = self.storages.setdefault(i, MemoryStorage())
        self.nodes[i] = RaftNode(i, self.ids, storage, random.Random(i),
                                 election_ticks=ET, **{**self.kwargs, **extra})
        return self.nodes[i]

    def __getitem__(self, i: int) -> RaftNode:
        return self.nodes[i]

    def drain(self) -> None:
        for i, node in self.nodes.items():
            while node.has_ready():
                rd = node.ready()
                st_ = self.storages[i]
                if rd.snapshot is not None:
                    st_.apply_snapshot(rd.snapshot)
                st_.append(rd.entries)
                if rd.hard_state is not None:
                    st_.set_hard_state(rd.hard_state)
                self.queue.extend(rd.messages)
                self.applied[i].extend(rd.committed_entries)
                self.read_states[i].extend(rd.read_states)
                node.advance(rd)

    def deliver(self, rounds_max: int = 200, keep=lambda m: True) -> None:
        """Deliver until quiet. ``keep(m)`` False drops a message."""
        for _ in range(rounds_max):
            self.drain()
            if not self.queue:
                return
            batch, self.queue = self.queue, []
            for m in batch:
                if m.frm in self.isolated or m.to in self.isolated or not keep(m):
                    self.dropped.append(m)
                elif m.to in self.nodes:
                    self.nodes[m.to].step(m)
        raise AssertionError("network never went quiet")

    def tick(self, times: int = 1, only=None) -> None:
        for _ in range(times):
            for i in (only or self.ids):
                self.nodes[i].tick()
            self.deliver()

    def elect(self, i: int) -> RaftNode:
        self.nodes[i].campaign()
        self.deliver()
        assert self.nodes[i].role is Role.LEADER, self.nodes[i].status()
        return self.nodes[i]

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.role is Role.LEADER]

    def log(self, i: int) -> list[tuple[int, int]]:
        node = self.nodes[i]
        return [(e.index, e.term)
                for e in node.log.slice(node.log.first_index(), node.log.last_index() + 1)]


def storage_with(terms: list[int], term: int) -> MemoryStorage:
    """A storage holding entries with the given terms at indexes 1.. and hard state term."""
    s = MemoryStorage()
    s.append([Entry(t, i + 1, f"{i + 1}@{t}".encode()) for i, t in enumerate(terms)])
    s.set_hard_state(HardState(term, 0, 0))
    return s


# ------------------------------------------------------------------ elections
def test_three_replicas_elect_one_leader_which_commits_a_noop():
    c = Cluster(3)
    c.tick(3 * ET)
    assert len(c.leaders()) == 1
    leader = c[c.leaders()[0]]
    assert all(c[i].lead == leader.id and c[i].term == leader.term for i in c.ids)
    for i in c.ids:  # the leader's first entry is a no-op of its term, applied everywhere
        assert [(e.index, e.kind) for e in c.applied[i]] == [(1, "noop")]


def test_election_timeout_is_drawn_from_election_ticks_to_twice_that():
    fired = set()
    for seed in range(30):
        node = RaftNode(1, [1, 2, 3], MemoryStorage(), random.Random(seed), election_ticks=ET)
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        assert ET <= ticks < 2 * ET
        assert node.role is Role.PRE_CANDIDATE and node.term == 0  # pre-vote changes no term
        fired.add(ticks)
    assert len(fired) > 3, "timeouts should be spread out"


def test_pre_vote_keeps_a_rejoining_partitioned_replica_from_disrupting_the_leader():
    c = Cluster(3)
    leader = c.elect(1)
    term = leader.term
    c.isolated = {3}
    c.tick(10 * ET)  # 3 times out again and again, alone
    assert c[3].term == term, "a failed pre-vote must not bump the term"
    c.isolated = set()
    c.tick(3 * ET)
    assert c.leaders() == [1] and all(c[i].term == term for i in c.ids)


def test_without_pre_vote_the_rejoining_replica_would_disrupt_the_leader():
    c = Cluster(3, pre_vote=False, check_quorum=False)
    c.elect(1)
    term = c[1].term
    c.isolated = {3}
    c.tick(3 * ET)
    assert c[3].term > term
    c.isolated = set()
    c.tick(3 * ET)
    assert c[1].term > term  # the old leader was forced out by the higher term


def test_vote_goes_only_to_a_candidate_with_an_up_to_date_log():
    storages = {1: storage_with([1, 1], 1), 2: storage_with([1, 1, 1], 1),
                3: storage_with([1], 1)}
    c = Cluster(3, storages=storages, pre_vote=False)
    c[1].campaign()
    c.deliver()
    assert c[1].role is Role.LEADER
    assert c[3].vote == 1 and c[2].vote == 0  # 2's log is longer: it refused
    # Replication then overwrites nothing that 2 had committed (nothing), and 2 converges.
    assert c.log(2) == c.log(1)


def test_a_replica_keeps_its_vote_across_a_restart():
    c = Cluster(3, pre_vote=False)
    c[1].campaign()
    c.drain()
    c.queue = [m for m in c.queue if m.to == 2]
    c.deliver(keep=lambda m: m.type is MsgType.VOTE)  # 2 votes for 1, answer lost
    assert c.storages[2].hard_state().vote == 1
    c.start(2)  # crash + restart with disk
    assert c[2].vote == 1 and c[2].term == c[1].term
    c.isolated = {1}
    c[3].campaign()  # term 1 again, the term 2 already voted in
    c.deliver()
    assert c[3].term == 1 and c[3].role is Role.CANDIDATE, "2 must not vote twice in term 1"
    assert c[2].vote == 1


# ------------------------------------------------------------------ replication
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]


@pytest.mark.parametrize("follower_terms", [
    [1, 1, 1, 4, 4, 5, 5, 6, 6],                # (a) missing one
    [1, 1, 1, 4],                               # (b) missing many
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],          # (c) one extra of term 6
    [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],       # (d) extra entries of a later term
    [1, 1, 1, 4, 4, 4, 4],                      # (e) conflicting term-4 tail
    [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],          # (f) a whole conflicting history
], ids=list("abcdef"))
def test_follower_log_converges_to_the_leaders_figure_7(follower_terms):
    storages = {1: storage_with(FIG7_LEADER, 7), 2: storage_with(follower_terms, 7),
                3: storage_with(FIG7_LEADER, 7)}
    c = Cluster(3, storages=storages, pre_vote=False)
    c.elect(1)
    c.tick(2)
    assert c.log(2) == c.log(1)
    assert c[2].log.committed == c[1].log.committed == len(FIG7_LEADER) + 1
    assert [e.term for e in c.applied[2]] == FIG7_LEADER + [c[1].term]


def test_flow_control_caps_appends_in_flight_per_follower():
    c = Cluster(3, entries_per_append_max=1, inflight_appends_max=2)
    c.elect(1)
    for k in range(6):
        c[1].propose(b"x%d" % k)
    c.drain()
    appends_to_2 = [m for m in c.queue if m.to == 2 and m.type is MsgType.APPEND]
    assert len(appends_to_2) == 2
    c.deliver()
    assert c[1].log.committed == 7
    assert c[2].log.match_term(7, c[1].term)  # every entry reached it...
    c.tick(c[1].heartbeat_ticks)  # ...and the commit index comes with the next heartbeat
    assert c[2].log.committed == 7


def test_commit_rule_figure_8_earlier_term_entry_on_a_majority_is_not_committed():
    """§5.4.2: S1 (term 4) gets its term-2 entry at index 2 onto a majority; that must not
    commit it, because S5 (with a term-3 entry at 2) could still win and overwrite it."""
    storages = {1: storage_with([1, 2], 3), 2: storage_with([1, 2], 3),
                3: storage_with([1], 3), 4: storage_with([1], 3), 5: storage_with([1, 3], 3)}
    for s in storages.values():
        s.set_hard_state(HardState(3, 0, 1))
    c = Cluster(5, storages=storages, pre_vote=False, check_quorum=False,
                entries_per_append_max=1)
    s1 = c[1]

    def votes_and_index_2_only(m):
        if m.type in (MsgType.VOTE, MsgType.VOTE_RESP):
            return True
        if (m.frm, m.to) not in {(1, 3), (3, 1), (1, 4), (4, 1)}:
            return False
        # S3/S4 reject the first probe (they lack index 2), then accept index 2 alone; the
        # append carrying the term-4 no-op at index 3 is lost (S1 crashes right after).
        return not (m.type is MsgType.APPEND and m.index == 2 and c[m.to].log.term(2) == 2)

    s1.campaign()
    c.deliver(keep=votes_and_index_2_only)
    assert s1.role is Role.LEADER and s1.term == 4
    assert [c[i].log.term(2) for i in (1, 3, 4)] == [2, 2, 2]  # a majority holds (2, term 2)
    assert s1.log.committed == 1, "an entry of an earlier term is never committed by counting"
    del c.nodes[1]
    # S5 can still win (its last term 3 beats 2) and overwrites index 2 everywhere.
    c[5].campaign()
    c.deliver()
    assert c[5].role is Role.LEADER
    assert all(c[i].log.term(2) == 3 for i in (2, 3, 4, 5))
    assert all(e.term != 2 for i in (2, 3, 4, 5) for e in c.applied[i])


def test_current_term_entry_commits_earlier_ones_with_it():
    storages = {i: storage_with([1, 2], 3) for i in (1, 2, 3)}
    c = Cluster(3, storages=storages)
    c.elect(1)
    assert c[1].log.committed == 3  # the no-op of term 4 committed index 2 with it
    assert [e.term for e in c.applied[2]] == [1, 2, c[1].term]


# ------------------------------------------------------------------ snapshots
def test_a_lagging_follower_catches_up_by_snapshot_after_compaction():
    c = Cluster(3)
    c.elect(1)
    c.isolated = {3}
    for k in range(20):
        c[1].propose(b"v%d" % k)
    c.deliver()
    leader_storage = c.storages[1]
    applied = c[1].log.applied
    assert applied == 21
    leader_storage.create_snapshot(applied, b"state@21", c.ids)
    leader_storage.compact(applied)
    c.isolated = set()
    c.tick(3)
    snaps = [m for m in c.dropped + c.queue if m.type is MsgType.SNAPSHOT]
    assert c.storages[3].snapshot().index == 21 and c.storages[3].snapshot().data == b"state@21"
    assert not snaps  # it was delivered, not dropped
    c[1].propose(b"after")
    c.deliver()
    c.tick(c[1].heartbeat_ticks)  # the commit index travels with the next heartbeat
    assert c[3].log.committed == c[1].log.committed == 22
    assert c.applied[3][-1].data == b"after"


def test_memory_storage_compacts_only_what_a_snapshot_covers():
    s = storage_with([1, 1, 2, 2], 2)
    with pytest.raises(ValueError, match="create_snapshot first"):
        s.compact(2)
    snap = s.create_snapshot(3, b"img", (1, 2, 3))
    assert snap == Snapshot(3, 2, (1, 2, 3), b"img")
    s.compact(2)
    assert s.first_index() == 3 and s.last_index() == 4 and s.term(2) == 1
    s.append([Entry(3, 4, b"new")])  # overwrites the conflicting suffix
    assert s.term(4) == 3


# ------------------------------------------------------------------ membership changes
def join(c: Cluster, i: int) -> RaftNode:
    """Start a brand-new replica ``i`` that joins with an empty disk and no configuration."""
    c.ids.append(i)
    c.applied[i], c.read_states[i] = [], []
    c.storages[i] = MemoryStorage()
    c.nodes[i] = RaftNode(i, (), c.storages[i], random.Random(i), election_ticks=ET,
                          **c.kwargs)
    return c.nodes[i]


def test_replace_a_voter_add_learner_promote_remove():
    c = Cluster(3)
    c.elect(1)
    c[1].propose(b"before")
    c.deliver()
    new = join(c, 4)
    assert new.voters == () and not new.promotable
    c[1].propose_conf_change("add_learner", 4)
    c.deliver()
    assert c[1].voters == (1, 2, 3) and c[1].learners == (4,)
    assert c[4].learners == (4,) and not c[4].promotable  # it learned the config from the log
    assert [e.data for e in c.applied[4] if e.kind == "normal"] == [b"before"]
    # A learner does not count: with 2 and 3 cut off nothing commits, even with 4 acking.
    c.isolated = {2, 3}
    c[1].propose(b"learner-only")
    c.deliver()
    assert c[1].log.committed < c[1].log.last_index()
    c.isolated = set()
    c.deliver()
    c[1].propose_conf_change("promote", 4)
    c.deliver()
    assert c[1].voters == (1, 2, 3, 4) and c[4].promotable and c[1].quorum == 3
    c[1].propose_conf_change("remove", 3)
    c.deliver()
    assert c[1].voters == (1, 2, 4) and 3 not in c[1].prs
    # 3 is out: with it gone (and 1, 2, 4 up) writes commit; it receives nothing more.
    del c.nodes[3]
    c.ids.remove(3)
    c[1].propose(b"after")
    c.deliver()
    c.tick(c[1].heartbeat_ticks)
    assert all(c.applied[i][-1].data == b"after" for i in (1, 2, 4))
    # The new member can lead.
    c[1].transfer_leadership(4)
    c.deliver()
    assert c[4].role is Role.LEADER


def test_membership_changes_are_refused_clearly():
    c = Cluster(3)
    leader = c.elect(1)
    with pytest.raises(NotLeader):
        c[2].propose_conf_change("add_learner", 4)
    with pytest.raises(ConfChangeRefused, match="expected one of"):
        leader.propose_conf_change("add_voter", 4)
    with pytest.raises(ConfChangeRefused, match="already a member"):
        leader.propose_conf_change("add_learner", 2)
    with pytest.raises(ConfChangeRefused, match="not a learner"):
        leader.propose_conf_change("promote", 2)
    with pytest.raises(ConfChangeRefused, match="not a member"):
        leader.propose_conf_change("remove", 9)
    with pytest.raises(ConfChangeRefused, match="transfer the leadership first"):
        leader.propose_conf_change("remove", 1)
    leader.propose_conf_change("add_learner", 4)
    with pytest.raises(ProposalDropped, match="one change at a time"):
        leader.propose_conf_change("remove", 2)  # the first has not committed
    c.deliver()
    leader.propose_conf_change("remove", 2)  # now it may


def test_a_new_leader_commits_in_its_term_before_changing_membership():
    c = Cluster(3)
    c[1].campaign()
    votes = (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE, MsgType.VOTE_RESP)
    c.deliver(keep=lambda m: m.type in votes)  # elected; its no-op's acks are lost
    assert c[1].role is Role.LEADER and not c[1]._committed_in_term()
    with pytest.raises(ProposalDropped, match="commit an entry of its term"):
        c[1].propose_conf_change("add_learner", 4)
    c.tick(c[1].heartbeat_ticks)  # the heartbeat round repairs the lost appends
    assert c[1]._committed_in_term()
    c[1].propose_conf_change("add_learner", 4)


def test_a_conf_entry_takes_effect_on_append_and_is_undone_when_overwritten():
    c = Cluster(3)
    c.elect(1)
    c.isolated = {2, 3}
    c[1].propose_conf_change("add_learner", 4)  # never leaves 1: it will be overwritten
    c.drain()
    assert c[1].learners == (4,)
    c.isolated = {1}
    c.tick(ET * 3, only=[2, 3])  # 2 and 3 stop hearing 1 and elect one of them
    new_leader = next(c[i] for i in (2, 3) if c[i].role is Role.LEADER)
    new_leader.propose(b"x")
    c.deliver()
    c.isolated = set()
    c.tick(ET * 3)  # 1 hears the new leader and its conflicting entry replaces the conf entry
    assert c[1].role is Role.FOLLOWER and c[1].learners == () and c[1].voters == (1, 2, 3)


def test_snapshots_carry_the_configuration_at_their_index():
    c = Cluster(3)
    c.elect(1)
    c[1].propose_conf_change("add_learner", 4)
    c.deliver()
    at = c[1].log.committed
    c[1].propose(b"y")
    c.deliver()
    assert c[1].config_at(at) == ((1, 2, 3), (4,))
    assert c[1].config_at(1) == ((1, 2, 3), ())
    snap = c.storages[1].create_snapshot(at, b"img", *c[1].config_at(at))
    # A replica restarted from that snapshot alone has the learner in its configuration.
    st_ = MemoryStorage()
    st_.apply_snapshot(snap)
    n = RaftNode(1, (1, 2, 3), st_, random.Random(0), election_ticks=ET)
    assert n.voters == (1, 2, 3) and n.learners == (4,)


# ------------------------------------------------------------------ reads
def test_read_index_on_leader_waits_for_a_quorum_heartbeat_round():
    c = Cluster(3)
    c.elect(1)
    c[1].read_index(b"r1")
    c.drain()
    assert c.read_states[1] == []  # not before a quorum confirmed leadership
    c.deliver()
    assert c.read_states[1] == [ReadState(c[1].log.committed, b"r1")]


def test_read_index_is_deferred_until_the_new_leader_commits_in_its_term():
    c = Cluster(3)
    c[1].campaign()
    c.deliver(keep=lambda m: m.type not in (MsgType.APPEND, MsgType.APPEND_RESP))
    assert c[1].role is Role.LEADER and c[1].log.committed == 0
    c[1].read_index(b"early")
    c.deliver(keep=lambda m: m.type is not MsgType.APPEND)
    assert c.read_states[1] == []
    c.tick(1)  # heartbeats lead to appends; the no-op commits; the read goes through
    c.deliver()
    assert c.read_states[1] == [ReadState(1, b"early")]


def test_read_index_from_a_follower_is_forwarded_to_the_leader():
    c = Cluster(3)
    c.elect(1)
    c[1].propose(b"w")
    c.deliver()
    c[2].read_index(b"f1")
    c.deliver()
    assert c.read_states[2] == [ReadState(2, b"f1")]


def test_a_leader_cut_off_from_the_majority_serves_no_reads_and_steps_down():
    c = Cluster(3)
    c.elect(1)
    c.isolated = {2, 3}
    c[1].read_index(b"stale?")
    # Activity is checked once per election_ticks, so it steps down within two of them.
    c.tick(2 * ET, only=[1])
    assert c.read_states[1] == []
    assert c[1].role is Role.FOLLOWER, "check-quorum: no quorum heard for election_ticks"


# ------------------------------------------------------------------ errors and roles
def test_propose_and_read_on_a_non_leader_raise_not_leader_with_a_hint():
    c = Cluster(3)
    with pytest.raises(NotLeader) as err:
        c[2].propose(b"x")
    assert err.value.leader == 0
    with pytest.raises(NotLeader):
        c[2].read_index(b"r")
    c.elect(1)
    with pytest.raises(NotLeader) as err:
        c[2].propose(b"x")
    assert err.value.leader == 1


def test_uncommitted_entries_are_bounded():
    c = Cluster(3, uncommitted_entries_max=3)
    c.elect(1)
    c.isolated = {2, 3}
    for k in range(3):
        c[1].propose(b"%d" % k)
    with pytest.raises(ProposalDropped, match="uncommitted_entries_max"):
        c[1].propose(b"too many")


def test_illegal_role_changes_are_refused():
    node = RaftNode(1, [1, 2, 3], MemoryStorage(), random.Random(0))
    with pytest.raises(IllegalTransition):
        node._become_leader()


def test_leadership_hand_off():
    c = Cluster(3)
    c.elect(1)
    c[1].transfer_leadership(3)
    c.deliver()
    assert c.leaders() == [3]


def test_a_replica_that_lost_its_disk_catches_up_but_never_votes_or_campaigns():
    c = Cluster(3)
    c.elect(1)
    for k in range(5):
        c[1].propose(b"%d" % k)
    c.deliver()
    c.storages[3] = MemoryStorage()
    wiped = c.start(3, voter=False)
    c.tick(3)
    assert c.log(3) == c.log(1) and c[3].log.committed == 6
    c.nodes.pop(1)  # the leader dies: 2 cannot win without 3's vote, and 3 never campaigns
    c.isolated = {1}
    c.tick(5 * ET, only=[2, 3])
    assert wiped.role is Role.FOLLOWER and c[2].role is not Role.LEADER
    assert all(m.reject or m.frm != 3 for m in c.dropped
               if m.type in (MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP))


def test_step_drops_misdirected_and_malformed_messages():
    node = RaftNode(1, [1, 2, 3], MemoryStorage(), random.Random(0))
    node.step(Message(MsgType.APPEND, 2, 9, 1))  # not for us
    node.step(Message(MsgType.APPEND, 2, 1, 1, index=0,
                      entries=(Entry(1, 5, b""),)))  # entries not following index
    node.step(Message(MsgType.SNAPSHOT, 2, 1, 1))  # snapshot missing
    assert node.term == 0 and node.log.last_index() == 0


message_types = st.sampled_from(list(MsgType))
entries = st.builds(Entry, term=st.integers(0, 5), index=st.integers(0, 8),
                    data=st.binary(max_size=8), kind=st.sampled_from(["normal", "noop", "conf"]))
snapshots = st.builds(Snapshot, index=st.integers(0, 8), term=st.integers(0, 5),
                      voters=st.lists(st.integers(1, 5), max_size=5).map(tuple),
                      data=st.binary(max_size=16))
messages = st.builds(
    Message, type=message_types, frm=st.integers(0, 4), to=st.integers(0, 3),
    term=st.integers(0, 6), log_term=st.integers(0, 6), index=st.integers(0, 9),
    entries=st.lists(entries, max_size=3).map(tuple), commit=st.integers(0, 9),
    reject=st.booleans(), reject_hint=st.integers(0, 9),
    snapshot=st.none() | snapshots, context=st.binary(max_size=9))


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=25), st.lists(st.integers(0, 2), max_size=25))
def test_step_never_raises_on_arbitrary_input(msgs, ticks):
    node = RaftNode(1, [1, 2, 3], storage_with([1, 1, 2], 2), random.Random(0))
    for m, t in zip(msgs, ticks + [0] * len(msgs)):
        node.step(m)
        for _ in range(t):
            node.tick()
        while node.has_ready():
            rd = node.ready()
            if rd.snapshot is not None:
                node.log.storage.apply_snapshot(rd.snapshot)
            node.log.storage.append(rd.entries)
            node.advance(rd)
        assert node.log.applied <= node.log.committed <= node.log.last_index()


# ------------------------------------------------------------------ codec
u64 = st.integers(0, (1 << 64) - 1)
wire_entries = st.builds(Entry, term=u64, index=u64, data=st.binary(max_size=64),
                         kind=st.sampled_from(["normal", "noop", "conf"]))
wire_snapshots = st.builds(Snapshot, index=u64, term=u64,
                           voters=st.lists(u64, max_size=7).map(tuple),
                           data=st.binary(max_size=64),
                           learners=st.lists(u64, max_size=3).map(tuple))
wire_messages = st.builds(
    Message, type=message_types, frm=u64, to=u64, term=u64, log_term=u64, index=u64,
    entries=st.lists(wire_entries, max_size=4).map(tuple), commit=u64, reject=st.booleans(),
    reject_hint=u64, snapshot=st.none() | wire_snapshots, context=st.binary(max_size=32))


@given(wire_messages)
def test_message_round_trip(m):
    assert decode_message(encode_message(m)) == m


@given(wire_entries, st.builds(HardState, u64, u64, u64), wire_snapshots)
def test_entry_hard_state_snapshot_round_trip(e, hs, snap):
    assert decode_entry(encode_entry(e)) == e
    assert decode_hard_state(encode_hard_state(hs)) == hs
    assert decode_snapshot(encode_snapshot(snap)) == snap
    meta = decode_snapshot_meta(encode_snapshot_meta(snap))
    assert (meta.index, meta.term, meta.voters, meta.data, meta.learners) == (
        snap.index, snap.term, snap.voters, b"", snap.learners)


@given(wire_messages, st.data())
def test_truncated_or_padded_messages_are_rejected_with_value_error(m, data):
    wire = encode_message(m)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(ValueError, match="truncated|trailing|fit"):
        decode_message(wire[:cut])
    with pytest.raises(ValueError, match="trailing"):
        decode_message(wire + b"\0")


@given(st.binary(max_size=200))
def test_decoding_garbage_raises_only_value_error(garbage):
    try:
        decode_message(garbage)
    except ValueError:
        pass


def test_decode_names_what_is_wrong():
    wire = bytearray(encode_message(Message(MsgType.APPEND, 1, 2, 3)))
    wire[1] = 99
    with pytest.raises(ValueError, match="unknown type code 99"):
        decode_message(bytes(wire))
    wire[0] = 7
    with pytest.raises(ValueError, match="version 7"):
        decode_message(bytes(wire))
    e = bytearray(encode_entry(Entry(1, 1, b"x")))
    e[16] = 9
    with pytest.raises(ValueError, match="unknown kind code 9"):
        decode_entry(bytes(e))
    with pytest.raises(ValueError, match="expected bytes"):
        decode_message("not bytes")  # type: ignore[arg-type]
