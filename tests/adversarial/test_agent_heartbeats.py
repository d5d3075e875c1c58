"""Hostile heartbeats at FuxiMaster's agent view (``fuxi.shells.agents.Agents.heartbeat``, what
``FuxiMaster.agent_heartbeat`` runs): huge or ill-typed documents, another node's id, stolen or
rotated tokens and replays get a clear BadInput (or are ignored) and never blacklist a node."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fuxi.core import agentview as av
from fuxi.core.blacklist import ClusterBlacklist
from fuxi.errors import BadInput
from fuxi.shells.agents import Agents

GIB = 1024**3
NODES = [c * 56 for c in "abcd"]
A, B = NODES[0], NODES[1]


def doc(node=A, seq=1, mem=8 * GIB, boot="b1", **extra):
    return {"node": node, "boot": boot, "seq": seq, "at": 1.0, "load": 0.1,
            "mem_available_bytes": mem, "disk_free_bytes": 50 * GIB, **extra}


@pytest.fixture
def agents():
    master = SimpleNamespace(blacklists=ClusterBlacklist(), detached=False, cluster="c")
    ag = Agents(master)
    for n in NODES:
        ag.view.deployed(n, f"secret-{n[0]}", 0.0)
        ag.heartbeat(n, f"secret-{n[0]}", doc(node=n))
    return ag


def excluded_after(ag) -> set:
    import time

    now = time.time()
    ag.refresh({n: {} for n in NODES}, now)
    return set(ag.m.blacklists.entries)


@pytest.mark.parametrize("node,token,body,word", [
    (A, "secret-b", doc(node=A, mem=0), "agent token"),  # B's token for A
    (B, "secret-b", doc(node=A, mem=0), "was sent for"),  # B's channel, A's name
    (A, b"secret-a", doc(node=A, mem=0), "agent token"),  # not a string
    (A, "x" * 1_000_000, doc(node=A, mem=0), "agent token"),
    (A, None, doc(node=A, mem=0), "agent token"),
    (["a"], "secret-a", doc(node=A, mem=0), "no agent was deployed"),
    ("e" * 56, "secret-e", doc(node="e" * 56, mem=0), "no agent was deployed"),
    (A, "secret-a", doc(workers={i: "w" for i in range(10**5)}), "HEARTBEAT_WORKERS_MAX"),
    (A, "secret-a", doc(exits=[{"worker": "w", "pid": 1, "cause": "crash", "at": 1.0,
                                "nested": [[[]]]}]), "unknown field"),
    (A, "secret-a", doc(mem=-1), "mem_available_bytes"),
    (A, "secret-a", doc(mem=float("inf")), "mem_available_bytes"),
    (A, "secret-a", [doc()], "expected a dict"),
])
def test_hostile_heartbeats_are_refused_and_blacklist_nothing(agents, node, token, body, word):
    with pytest.raises(BadInput, match=word):
        agents.heartbeat(node, token, body)
    assert excluded_after(agents) == set()
    assert all(a.state is av.AgentState.HEALTHY for a in agents.view.agents.values())


def test_a_replayed_old_heartbeat_claiming_bad_health_is_ignored(agents):
    agents.heartbeat(A, "secret-a", doc(seq=7))
    assert agents.heartbeat(A, "secret-a", doc(seq=3, mem=0)) == {
        "taken": False, "heartbeat_s": av.AGENT_HEARTBEAT_S}
    assert excluded_after(agents) == set()


def test_a_rotated_token_no_longer_speaks_for_the_node(agents):
    agents.view.deployed(A, "secret-a2", 5.0)  # a new FuxiMaster adopted the agent
    with pytest.raises(BadInput, match="agent token"):
        agents.heartbeat(A, "secret-a", doc(seq=2, mem=0))
    assert excluded_after(agents) == set()
    agents.heartbeat(A, "secret-a2", doc(seq=3, mem=0))  # the node's own agent: it counts
    assert excluded_after(agents) == {A}
