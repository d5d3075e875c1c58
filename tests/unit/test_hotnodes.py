"""Hot nodes from agents' heartbeats (``fuxi.core.hotnodes``, ``fuxi.shells.hotnodes``) and
what placement does with them (pure: no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

from base import events
from fuxi.core.hotnodes import HOT_NODE_LOAD_FLOOR, HotNodes, hot_last, node_loads
from fuxi.core.slots import Demand, Ledger, grant
from fuxi.shells.hotnodes import HOT_NODE_CHANGES, HOT_NODES_CHECK_S, HotNodeWatch

TOTALS = {"a": {"CPU": 4}, "b": {"CPU": 4}, "c": {"CPU": 4}, "d": {"CPU": 2}}


def agents(**loads):
    return {n: {"state": "healthy", "load": v} for n, v in loads.items()}


def test_load_is_per_cpu_and_only_of_healthy_heard_nodes():
    got = node_loads({**agents(a=8.0, d=3.0), "b": {"state": "missing", "load": 40.0},
                      "c": {"state": "healthy", "load": None}, "zz": {"state": "healthy",
                                                                      "load": 9.0}}, TOTALS)
    assert got == {"a": 2.0, "d": 1.5}  # b missing, c silent, zz not an alive node


def test_flag_and_clear_with_hysteresis():
    h = HotNodes()
    assert h.update(agents(a=3.2, b=3.2, c=14.0), TOTALS).hot == {"c"}  # 3.5/CPU vs 0.8
    assert h.update(agents(a=3.2, b=3.2, c=6.0), TOTALS).hot == {"c"}  # 1.9x: stays
    assert h.update(agents(a=3.2, b=3.2, c=4.0), TOTALS).hot == frozenset()  # 1.25x: clears
    assert h.update(agents(a=3.2, b=3.2, c=6.0), TOTALS).hot == frozenset()  # 1.9x: not again
    assert h.update(agents(a=0.2, b=0.2, c=3.6), TOTALS).hot == frozenset()  # 18x, under floor
    # A busy cluster where every node is loaded alike: nobody is hot.
    assert h.update(agents(a=12.0, b=12.0, c=12.0), TOTALS).hot == frozenset()
    assert HOT_NODE_LOAD_FLOOR > 0


def test_hot_nodes_are_placed_last():
    assert hot_last({"a": 2.0, "b": 3.0}, frozenset({"b"})) == {"a": 2.0, "b": 0.0}
    assert hot_last({"b": 3.0}, frozenset({"b"})) == {"b": 3.0}  # the only one: still used
    demand = Demand(demand_id="j/cpu", job_id="j", shape={"CPU": 1}, slots_wanted=2,
                    priority=0, submit_seq=1)
    plan = grant({"a": {"CPU": 4}, "b": {"CPU": 4}}, Ledger(), [demand], "j",
                 avoid_nodes={"a"})  # what FuxiMaster's sync passes with "a" hot
    assert {(g.node_id, g.n) for g in plan.grants} == {("b", 2)}


def test_the_watch_emits_events_metrics_and_tells_the_services():
    w = HotNodeWatch()
    m = SimpleNamespace(services=SimpleNamespace(hot_nodes=frozenset()))
    seen = events.LOG.last_seq()
    before = HOT_NODE_CHANGES.value(change="flagged")
    assert w.judge(agents(a=1.0, b=1.0, c=16.0), TOTALS, 100.0, m) == {"c"}
    assert m.services.hot_nodes == {"c"}
    assert HOT_NODE_CHANGES.value(change="flagged") == before + 1
    # judged again only after HOT_NODES_CHECK_S, whatever the heartbeats say meanwhile
    assert w.judge(agents(a=1.0, b=1.0, c=1.0), TOTALS, 100.0 + HOT_NODES_CHECK_S / 2, m) == {"c"}
    assert w.judge(agents(a=1.0, b=1.0, c=1.0), TOTALS, 100.0 + HOT_NODES_CHECK_S, m) == frozenset()
    kinds = [e.kind for e in events.LOG.since(seen) if e.source == "fuxi"]
    assert kinds == ["node_hot", "node_hot_cleared"] and m.services.hot_nodes == frozenset()


def test_new_replicas_avoid_hot_nodes_even_when_they_need_no_cpu():
    from fuxi.core.service_spec import ServiceSpec
    from fuxi.core.servicecore import ServiceCore

    doc = ServiceSpec.model_validate({"name": "svc", "class": "m:C", "version": "1",
                                      "replicas": 3, "resources": {"cpu": 0}}).to_doc()
    nodes = {"a": 2.0, "b": 2.0, "c": 2.0}
    # Negative control: spread over every node while none is hot.
    cold = ServiceCore(doc)
    assert sorted(a.node for a in cold.plan(0.0, nodes) if a.kind == "start") == ["a", "b", "c"]
    # Hiding the hot node's room alone does not keep a no-CPU replica away ...
    hidden = ServiceCore(doc)
    got = [a.node for a in hidden.plan(0.0, hot_last(nodes, frozenset({"b"}))) if a.kind == "start"]
    assert "b" in got
    # ... the hot set does: b only when nothing else fits.
    core = ServiceCore(doc)
    got = [a.node for a in core.plan(0.0, nodes, hot=frozenset({"b"})) if a.kind == "start"]
    assert len(got) == 3 and "b" not in got
    only = ServiceCore(doc)
    got = [a.node for a in only.plan(0.0, {"b": 2.0}, hot=frozenset({"b"})) if a.kind == "start"]
    assert got == ["b", "b", "b"]  # the only node: still used


def test_the_node_list_says_hot_and_the_load():
    from cli.node import agent_text

    base = {"state": "healthy", "heartbeat_age_s": 0.4, "mem_available_bytes": 2 * 1024**3,
            "disk_free_bytes": 50 * 1024**3, "load": 5.04}
    assert agent_text(dict(base, hot=True)).endswith("load 5.0 HOT")
    assert agent_text(dict(base, hot=False)).endswith("load 5.0")
    assert "HOT" not in agent_text(dict(base, load=None))  # never heard: no load, not hot
