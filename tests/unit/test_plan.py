"""Planning is pure: a validated spec and the facts a shell resolved go in, a JobPlan comes
out; reading the world (``fuxi.io.resolve``) only reads, and only the JobMaster's
``prepare_outputs`` clears an old output."""

from __future__ import annotations

import pytest

from fuxi.core.plan import PlanFacts, build_plan, with_preferred_nodes
from fuxi.core.spec import spec_from_dict
from fuxi.errors import BadInput
from fuxi.io.resolve import check_outputs, locate_inputs, prepare_outputs, resolve_facts

NOOP = "tests.integration.taskfns:noop"


def spec(tasks, **kw):
    return spec_from_dict({"name": "p", "tasks": tasks, **kw}, check_functions=False)


@pytest.mark.parametrize("name, tasks, facts, counts, inputs", [
    ("instances only", {"t": {"fn": NOOP, "instances": 3}}, PlanFacts(),
     {"t": 3}, {"t": ((), (), ())}),
    ("one instance per listed split", {"t": {"fn": NOOP, "input": "x/*"}},
     PlanFacts(inputs={"t": (("a",), ("b", "c"))}), {"t": 2}, {"t": (("a",), ("b", "c"))}),
    ("downstream count from its own instances",
     {"m": {"fn": NOOP, "input": "x/*"},
      "r": {"fn": NOOP, "instances": 4, "depends_on": ["m"], "partition_by": ["k"]}},
     PlanFacts(inputs={"m": (("a",),)}), {"m": 1, "r": 4}, {"m": (("a",),), "r": ((),) * 4}),
])
def test_build_plan_wires_facts(name, tasks, facts, counts, inputs):
    plan = build_plan(spec(tasks), facts)
    assert {t.name: t.num_instances for t in plan.tasks} == counts, name
    assert {t.name: t.inputs for t in plan.tasks} == inputs, name


def test_edges_carry_the_consumer_instance_count():
    plan = build_plan(spec({"m": {"fn": NOOP, "instances": 2},
                            "r": {"fn": NOOP, "instances": 5, "depends_on": ["m"],
                                  "partition_by": ["k"]}}))
    (edge,) = plan.task("m").downstream
    assert (edge.producer, edge.consumer, edge.mode, edge.num_partitions) == ("m", "r", "hash", 5)
    assert plan.task("r").upstream == (edge,)


def test_a_task_with_input_but_no_listed_files_is_a_caller_bug():
    with pytest.raises(ValueError, match="no files"):
        build_plan(spec({"t": {"fn": NOOP, "input": "x/*"}}), PlanFacts())


def test_outputs_come_from_the_facts_and_overwrite_is_carried():
    plan = build_plan(spec({"t": {"fn": NOOP, "instances": 1, "output": "out"}}),
                      PlanFacts(outputs={"t": "/abs/out"}), overwrite=True)
    assert plan.output == "/abs/out" and plan.overwrite


def test_with_preferred_nodes_sets_only_the_named_tasks():
    plan = build_plan(spec({"a": {"fn": NOOP, "instances": 2}, "b": {"fn": NOOP, "instances": 1}}))
    located = with_preferred_nodes(plan, {"a": (("n1",), ("n2", "n3"))})
    assert located.task("a").preferred_nodes == (("n1",), ("n2", "n3"))
    assert located.task("b").preferred_nodes == () and plan.task("a").preferred_nodes == ()


def test_resolving_reads_only_and_overwrite_clears_only_when_prepared(tmp_path):
    (tmp_path / "in").mkdir()
    for n in ("a.txt", "b.txt"):
        (tmp_path / "in" / n).write_text("x" * 10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_text("old")
    js = spec({"t": {"fn": NOOP, "input": "in/*.txt", "output": "out"}})
    facts = resolve_facts(js, str(tmp_path))
    assert facts.outputs == {"t": str(out)}
    assert sorted(p for paths in facts.inputs["t"] for p in paths) == [
        str(tmp_path / "in" / "a.txt"), str(tmp_path / "in" / "b.txt")]
    with pytest.raises(BadInput, match="not empty"):
        check_outputs(build_plan(js, facts))
    plan = build_plan(js, facts, overwrite=True)
    check_outputs(plan)
    assert locate_inputs(plan) is plan  # no Pangu inputs: nothing to ask
    assert (out / "old.parquet").exists()  # nothing so far changed the world
    prepare_outputs(plan)
    assert out.is_dir() and not any(out.iterdir())
