"""The FuxiAgent shell's pure parts: health read from this machine, Ray's recorded death causes
turned into ours, and the master side feeding the cluster blacklist (no cluster needed)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ray.core.generated import common_pb2

from fuxi.core import agentview as av
from fuxi.core.blacklist import ClusterBlacklist
from fuxi.shells.agent import death_cause, read_health
from fuxi.shells.agents import Agents

GIB = 1024**3


def test_health_is_read_from_this_machine_and_passes_the_heartbeat_check():
    h = read_health("/tmp")
    assert h["mem_available_bytes"] > 0 and h["disk_free_bytes"] > 0 and h["load"] >= 0
    av.parse_heartbeat({"node": "n", "boot": "b", "seq": 1, "at": 1.0, **h})


def _cause(**ctx) -> dict:
    return {"DeathCause": common_pb2.ActorDeathCause(**ctx)}


def test_rays_death_causes_become_ours():
    died = common_pb2.ActorDiedErrorContext
    assert death_cause(_cause(oom_context=common_pb2.OomContext(error_message="low memory")),
                       8 * GIB)[0] is av.ExitCause.OOM
    assert death_cause(_cause(actor_died_error_context=died(reason=died.RAY_KILL)),
                       8 * GIB)[0] is av.ExitCause.PREEMPTED
    cause, _, detail = death_cause(_cause(actor_died_error_context=died(
        reason=died.WORKER_DIED, error_message="Worker exits with an exit code 1.")), 8 * GIB)
    assert cause is av.ExitCause.CRASH and "WORKER_DIED" in detail
    assert death_cause(_cause(actor_died_error_context=died(
        reason=died.WORKER_DIED, error_message="killed: the node was running low on memory")),
        8 * GIB)[0] is av.ExitCause.OOM
    assert death_cause({}, 8 * GIB)[0] is av.ExitCause.CRASH


def test_the_master_side_excludes_a_missing_node_and_gives_it_back():
    a, b, c = "a" * 56, "b" * 56, "c" * 56
    nodes = {a: {}, b: {}, c: {}}
    master = SimpleNamespace(blacklists=ClusterBlacklist(), detached=False, cluster="c")
    agents = Agents(master)
    for n in nodes:
        agents.view.deployed(n, f"t{n[0]}", 0.0)

    def beat(n, seq, now):
        agents.view.heartbeat(n, f"t{n[0]}", {"node": n, "boot": "x", "seq": seq, "at": now,
                                              "load": 0.1, "mem_available_bytes": 8 * GIB,
                                              "disk_free_bytes": 50 * GIB}, now)

    for n in nodes:
        beat(n, 1, 1.0)
    late = 1.0 + av.AGENT_HEARTBEAT_S * av.AGENT_MISSED_HEARTBEATS_MAX + 0.5
    beat(b, 2, late)
    beat(c, 2, late)
    agents.refresh(nodes, 1.0)
    agents.refresh(nodes, 4.0)  # FuxiMaster looks every few seconds
    agents.refresh(nodes, late)
    assert set(master.blacklists.entries) == {a}
    assert master.blacklists.entries[a].reason.startswith("unhealthy: missing")
    for seq in range(2, 2 + av.AGENT_HEALTHY_HEARTBEATS_MIN):
        beat(a, seq, late + seq)
    agents.refresh(nodes, late + 1 + av.AGENT_HEALTHY_HEARTBEATS_MIN)
    assert master.blacklists.entries == {}
    assert any("back" in e for e in agents.events)
    asyncio.run(asyncio.sleep(0))  # nothing was started: no loop was asked for
