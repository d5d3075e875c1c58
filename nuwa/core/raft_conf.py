"""Single-server membership changes (Raft thesis §4.1): which change is valid, and the
configuration it makes.

``RaftNode.propose_conf_change`` appends a ``conf`` entry holding the whole new configuration
(voters and learners). Each replica uses the latest configuration in its log, committed or
not (``latest_config``), and falls back to the previous one if that entry is overwritten. Any majority of the old and of the new voters then overlap. A
leader allows one change at a time (the next waits until this one commits). A new leader
first commits an entry of its own term (the fix for the bug found in single-server changes
in 2015). A new replica joins as a *learner*: it replicates and applies but counts for no
quorum. Once caught up it is promoted; then the replica it replaces is removed. The leader
never removes itself: hand the leadership off first. Learners do answer vote requests, as in
etcd: the candidate may already hold the entry that promotes them.

``RaftNode.propose_conf_change`` checks the timing (only a leader, one change at a time,
after an entry of its own term committed) and appends the result as a ``conf`` entry
(``nuwa.core.raft_types.encode_conf``); this module decides, on values alone, what the new
configuration is or why the change is refused (``ConfChangeRefused``).
"""

from __future__ import annotations

from typing import Iterable

from nuwa.core.raft_types import CONF_MEMBERS_MAX, CONF_OPS, ConfChangeRefused, Entry, decode_conf


def check_conf_request(op: str, member: int) -> None:
    """Refuse (``ConfChangeRefused``) an unknown ``op`` or a ``member`` that is no replica id."""
    if op not in CONF_OPS:
        raise ConfChangeRefused(f"unknown membership change {op!r}; expected one of {CONF_OPS}")
    if not isinstance(member, int) or member < 1:
        raise ConfChangeRefused(f"member must be a replica id >= 1, got {member!r}")


def changed_config(voters: Iterable[int], learners: Iterable[int], op: str, member: int,
                   leader: int) -> tuple[set[int], set[int]]:
    """The (voters, learners) after ``op`` on ``member``, proposed by ``leader``.

    ``add_learner``: a new replica that replicates but does not vote; ``promote``: a learner
    becomes a voter; ``remove``: a voter or learner leaves. The leader never removes itself
    (hand the leadership off first), and the last voter stays."""
    check_conf_request(op, member)
    voters, learners = set(voters), set(learners)
    if op == "add_learner":
        if member in voters or member in learners:
            raise ConfChangeRefused(f"replica {member} is already a member")
        if len(voters) + len(learners) >= CONF_MEMBERS_MAX:
            raise ConfChangeRefused(f"the group already has CONF_MEMBERS_MAX="
                                    f"{CONF_MEMBERS_MAX} members")
        learners.add(member)
    elif op == "promote":
        if member not in learners:
            raise ConfChangeRefused(f"replica {member} is not a learner (voters "
                                    f"{sorted(voters)}, learners {sorted(learners)})")
        learners.discard(member)
        voters.add(member)
    else:
        if member not in voters and member not in learners:
            raise ConfChangeRefused(f"replica {member} is not a member")
        if member == leader:
            raise ConfChangeRefused("the leader cannot remove itself; transfer the "
                                    "leadership first, then ask the new leader")
        if voters == {member}:
            raise ConfChangeRefused("cannot remove the last voter")
        voters.discard(member)
        learners.discard(member)
    return voters, learners


def latest_config(voters: tuple[int, ...], learners: tuple[int, ...], entries: Iterable[Entry]
                  ) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """The configuration after ``entries`` (in log order), starting from (``voters``,
    ``learners``): the last ``conf`` entry's, committed or not. Returns (voters, learners,
    its index, its term); index and term are 0 when ``entries`` hold no conf entry."""
    conf_index = conf_term = 0
    for e in entries:
        if e.kind == "conf":
            voters, learners = decode_conf(e.data)
            conf_index, conf_term = e.index, e.term
    return voters, learners, conf_index, conf_term
