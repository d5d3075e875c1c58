"""Unit tests for fuxi.core.spec: what a user sees for good and bad job specs."""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fuxi.errors import BadInput, LimitExceeded, SpecError
from fuxi.io.specfile import load_job_spec
from fuxi.core.spec import (
    JobSpec,
    ResourceSpec,
    SpeculationSpec,
    TaskSpec,
    check_importable,
    resolve_fn,
    spec_bytes_max,
    spec_from_dict,
    tasks_max,
)
from tests.unit import specfns

OK = "tests.unit.specfns:ok_fn"

WORDCOUNT_YAML = """\
name: wordcount
params: {input: "jobs/data/*.txt", output: "out/wordcount", n: 2}
speculation: {enabled: true, min_done_fraction: 0.5}
tasks:
  map:
    fn: tests.unit.specfns:ok_fn
    input: ${params.input}
    resources: {cpu: 0.5, memory_mb: 256}
  reduce:
    fn: tests.unit.specfns:other_fn
    instances: ${params.n}
    depends_on: [map]
    partition_by: [word]
    output: ${params.output}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(excinfo) -> str:
    return "\n".join(excinfo.value.problems)


def doc(**tasks):
    return {"name": "job", "tasks": tasks or {"a": {"fn": OK, "instances": 1}}}


# ---------------- good specs ----------------


def test_wordcount_yaml_loads_with_defaults_and_typed_substitution(tmp_path):
    spec = load_job_spec(write(tmp_path, "wc.yaml", WORDCOUNT_YAML))
    assert spec.name == "wordcount"
    assert spec.priority == 50 and spec.retry_backoff_s == 0.2 and spec.retry_backoff_max_s == 10.0
    assert spec.speculation == SpeculationSpec()  # given values equal the defaults
    mapper, reducer = spec.tasks["map"], spec.tasks["reduce"]
    assert mapper.input == "jobs/data/*.txt" and mapper.instances is None
    assert mapper.max_retries == 3 and mapper.timeout_s == 3600.0
    assert reducer.instances == 2 and isinstance(reducer.instances, int)  # kept the param's type
    assert reducer.output == "out/wordcount"
    assert reducer.shuffle_mode == "hash" and mapper.shuffle_mode == "one_to_one"
    assert mapper.resources.ray_shape() == {"CPU": 0.5, "memory": 256 * 1024 * 1024}


def test_speculation_defaults_are_documented_values():
    s = SpeculationSpec()
    assert (s.enabled, s.min_done_fraction, s.slowdown, s.min_runtime_s, s.max_backup_fraction) == (
        True, 0.5, 2.0, 1.0, 0.1)


def test_json_file_loads_like_yaml(tmp_path):
    body = {"name": "j", "tasks": {"a": {"fn": OK, "instances": 3}}}
    spec = load_job_spec(write(tmp_path, "j.json", json.dumps(body)))
    assert spec.tasks["a"].instances == 3


def test_overrides_set_params_and_dotted_paths(tmp_path):
    path = write(tmp_path, "wc.yml", WORDCOUNT_YAML)
    spec = load_job_spec(path, overrides=[
        "input=other/*.csv",  # no dot: a param
        "n=5",  # parsed as YAML: int
        "tasks.map.instances=8",
        "speculation.enabled=false",
        "params.extra=hello world",
    ])
    assert spec.tasks["map"].input == "other/*.csv"
    assert spec.tasks["reduce"].instances == 5
    assert spec.tasks["map"].instances == 8
    assert spec.speculation.enabled is False
    assert spec.params["extra"] == "hello world"


def test_override_creates_missing_sections():
    spec = spec_from_dict(doc(), overrides=["speculation.slowdown=3", "retry_backoff_max_s=20"],
                          check_functions=False)
    assert spec.speculation.slowdown == 3.0
    assert spec.params["retry_backoff_max_s"] == 20  # no dot means a param, even for this name


def test_embedded_reference_interpolates_and_escape_keeps_literal():
    d = doc(a={"fn": OK, "instances": 1, "output": "out/${params.n}/x-$${HOME}"})
    d["params"] = {"n": 7}
    spec = spec_from_dict(d)
    assert spec.tasks["a"].output == "out/7/x-${HOME}"


def test_params_themselves_are_not_substituted():
    d = doc()
    d["params"] = {"a": "${params.b}", "b": 1}
    assert spec_from_dict(d).params["a"] == "${params.b}"


def test_spec_from_dict_does_not_modify_its_input():
    d = doc(a={"fn": OK, "instances": "${params.n}"})
    d["params"] = {"n": 2}
    spec_from_dict(d, overrides=["n=3"])
    assert d["params"] == {"n": 2} and d["tasks"]["a"]["instances"] == "${params.n}"


def test_callable_fn_in_python_api_becomes_module_qualname():
    task = TaskSpec(fn=specfns.ok_fn, instances=2)
    assert task.fn == OK
    assert TaskSpec(fn=specfns.Holder.run, instances=1).fn == "tests.unit.specfns:Holder.run"
    spec = JobSpec(name="py", tasks={"a": task})
    check_importable(spec)
    assert resolve_fn(spec.tasks["a"].fn) is specfns.ok_fn


def test_python_api_keeps_lambdas_and_closures_to_ship_by_value():
    """Issue 18: what no worker can import by name is shipped by value (fuxi.io.codeship),
    not refused; an importable function is still named."""
    lam = lambda rows: rows  # noqa: E731
    task = TaskSpec(fn=lam, instances=1)
    assert task.fn.startswith("fuxi_fn_") and task.by_value is lam

    def inner(rows):
        return rows

    spec = JobSpec(name="py", tasks={"a": TaskSpec(fn=inner, instances=1)})
    assert spec.tasks["a"].by_value is inner
    check_importable(spec)  # not imported here: it is never run on the submitter either
    assert TaskSpec(fn=specfns.ok_fn, instances=1).by_value is None


def test_dag_queries_are_deterministic():
    tasks = {
        "c": {"fn": OK, "instances": 1},
        "b": {"fn": OK, "instances": 1, "depends_on": ["c"]},
        "a": {"fn": OK, "instances": 1},
        "d": {"fn": OK, "instances": 1, "depends_on": ["a", "b"]},
        "e": {"fn": OK, "instances": 1, "depends_on": ["c"]},
    }
    spec = spec_from_dict({"name": "dag", "tasks": tasks})
    assert spec.topological_order() == ["c", "b", "a", "d", "e"]
    assert spec.downstream("c") == ["b", "e"]
    assert spec.downstream("d") == []
    assert spec.sinks() == ["d", "e"]
    with pytest.raises(BadInput, match="expected one of: c, b, a, d, e"):
        spec.downstream("zz")


def test_to_json_dict_round_trips(tmp_path):
    spec = load_job_spec(write(tmp_path, "wc.yaml", WORDCOUNT_YAML))
    data = spec.to_json_dict()
    json.dumps(data)  # plain JSON
    assert JobSpec.model_validate(data) == spec


def test_ray_shape():
    assert ResourceSpec().ray_shape() == {"CPU": 1.0}
    assert ResourceSpec(cpu=0, custom={"gpu_slot": 2}).ray_shape() == {"gpu_slot": 2.0}


def test_shuffle_modes_resolve():
    up = {"fn": OK, "instances": 1}
    spec = spec_from_dict(doc(
        up=up,
        b={"fn": OK, "instances": 1, "depends_on": ["up"], "shuffle": "broadcast"},
        h={"fn": OK, "instances": 1, "depends_on": ["up"], "shuffle": "hash", "partition_by": ["k"]},
    ))
    assert [spec.tasks[t].shuffle_mode for t in ("up", "b", "h")] == ["one_to_one", "broadcast", "hash"]


# ---------------- bad specs: messages name field, given and expected ----------------


def test_unknown_field_lists_expected_fields_and_suggests(tmp_path):
    path = write(tmp_path, "bad.yaml", """\
        name: j
        tasks:
          map: {fn: tests.unit.specfns:ok_fn, instnces: 4}
        """)
    with pytest.raises(SpecError) as excinfo:
        load_job_spec(path)
    text = problems_of(excinfo)
    assert f"{path}: tasks.map.instnces: unknown field" in text
    assert "did you mean 'instances'" in text
    assert "expected one of: fn, instances, input" in text
    assert excinfo.value.source == str(path)


def test_wrong_type_says_given_and_expected():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(doc(a={"fn": OK, "instances": "four", "timeout_s": True}))
    text = problems_of(excinfo)
    assert "<dict>: tasks.a.instances: got 'four', expected an integer from 1 to instances_max=100000" in text
    assert "tasks.a.timeout_s: got True, expected a number of seconds" in text


def test_negative_instances():
    with pytest.raises(SpecError, match=r"tasks\.a\.instances: got -2, expected an integer from 1"):
        spec_from_dict(doc(a={"fn": OK, "instances": -2}))


def test_cycle_names_the_path():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(doc(
            a={"fn": OK, "instances": 1, "depends_on": ["b"]},
            b={"fn": OK, "instances": 1, "depends_on": ["a"]},
            c={"fn": OK, "instances": 1},
        ))
    assert "dependency cycle a -> b -> a" in problems_of(excinfo)


def test_unknown_and_self_dependency():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(doc(
            map={"fn": OK, "instances": 1},
            reduce={"fn": OK, "instances": 1, "depends_on": ["mapp", "reduce"]},
        ))
    text = problems_of(excinfo)
    assert ("tasks.reduce.depends_on: task 'reduce' depends on unknown task 'mapp'; "
            "known tasks: map, reduce") in text
    assert "task 'reduce' depends on itself" in text


def test_all_problems_reported_at_once():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(doc(
            a={"fn": OK, "instances": 0, "depends_on": ["b"]},
            b={"fn": OK, "depends_on": ["a"]},
            c={"fn": "no colon", "instances": 1, "bogus": 1},
        ))
    text = problems_of(excinfo)
    for expected in ("tasks.a.instances: got 0", "tasks.b: got neither instances nor input, expected `instances` or `input`",
                     "tasks.c.fn: got 'no colon', expected 'module:function'", "tasks.c.bogus: unknown field",
                     "dependency cycle a -> b -> a"):
        assert expected in text
    assert len(excinfo.value.problems) == 5


def test_unimportable_fn():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(doc(
            a={"fn": "no_such_pkg.mod:fn", "instances": 1},
            b={"fn": "tests.unit.specfns:missing", "instances": 1},
            c={"fn": "tests.unit.specfns:NOT_CALLABLE", "instances": 1},
        ))
    text = problems_of(excinfo)
    assert "tasks.a.fn: cannot import 'no_such_pkg.mod:fn': No module named 'no_such_pkg'" in text
    assert "tasks.b.fn: cannot import 'tests.unit.specfns:missing'" in text and "has no attribute" in text
    assert "tasks.c.fn: 'tests.unit.specfns:NOT_CALLABLE' is not callable" in text
    # The same spec is fine when functions are checked elsewhere (e.g. on the cluster).
    spec_from_dict(doc(a={"fn": "no_such_pkg.mod:fn", "instances": 1}), check_functions=False)


def test_missing_param_names_field_reference_and_known_params():
    d = doc(a={"fn": OK, "instances": 1, "input": "${params.inptu}", "output": "x/${params.nope}"})
    d["params"] = {"input": "a", "out": "b"}
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(d)
    text = problems_of(excinfo)
    assert "tasks.a.input: unknown param in '${params.inptu}'; known params: input, out" in text
    assert "tasks.a.output: unknown param in '${params.nope}'" in text


def test_malformed_reference_is_reported():
    with pytest.raises(SpecError, match=r"expected \$\{params\.NAME\}"):
        spec_from_dict(doc(a={"fn": OK, "instances": 1, "output": "${env.HOME}"}))


@pytest.mark.parametrize("override, detail", [
    ("noequals", "no '='"),
    ("=5", "empty key"),
    ("tasks..x=1", "empty path segment"),
    ("name.x=1", "name is str 'job', not a mapping"),
])
def test_bad_override(override, detail):
    with pytest.raises(BadInput) as excinfo:
        spec_from_dict(doc(), overrides=[override])
    text = str(excinfo.value)
    assert f"override {override!r}" in text and detail in text and "key=value" in text


def test_bad_file_extension_and_missing_file(tmp_path):
    with pytest.raises(BadInput, match=r"got extension '\.toml', expected one of \.yaml, \.yml, \.json"):
        load_job_spec(write(tmp_path, "j.toml", "name = 'j'"))
    with pytest.raises(BadInput, match="file not found"):
        load_job_spec(tmp_path / "absent.yaml")


def test_yaml_syntax_error_has_line_number(tmp_path):
    path = write(tmp_path, "bad.yaml", "name: j\ntasks:\n  a: {fn: x\n  b: [\n")
    with pytest.raises(SpecError, match=r"line \d+ column \d+: invalid YAML"):
        load_job_spec(path)


def test_json_syntax_error_has_line_number(tmp_path):
    path = write(tmp_path, "bad.json", '{\n  "name": "j",\n  "tasks": }\n')
    with pytest.raises(SpecError, match="line 3 column"):
        load_job_spec(path)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    path = write(tmp_path, "dup.yaml", """\
        name: j
        tasks:
          a: {fn: tests.unit.specfns:ok_fn, instances: 1}
          a: {fn: tests.unit.specfns:ok_fn, instances: 2}
        """)
    with pytest.raises(SpecError, match="duplicate key 'a'"):
        load_job_spec(path)


def test_top_level_must_be_mapping(tmp_path):
    with pytest.raises(SpecError, match="got list at top level, expected a mapping"):
        load_job_spec(write(tmp_path, "l.yaml", "- a\n- b\n"))


def test_file_size_limit(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: j\n# " + "x" * spec_bytes_max + "\n")
    with pytest.raises(LimitExceeded, match="spec_bytes_max"):
        load_job_spec(path)


def test_shuffle_hash_needs_partition_by():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(doc(
            up={"fn": OK, "instances": 1},
            a={"fn": OK, "instances": 1, "depends_on": ["up"], "shuffle": "hash"},
            b={"fn": OK, "instances": 1, "depends_on": ["up"], "shuffle": "broadcast", "partition_by": ["k"]},
            c={"fn": OK, "instances": 1, "shuffle": "scatter"},
        ))
    text = problems_of(excinfo)
    assert "tasks.a.shuffle: got 'hash' without `partition_by`" in text
    assert "tasks.b.partition_by: got partition_by with shuffle 'broadcast'" in text
    assert "tasks.c.shuffle: got 'scatter', expected one of: hash, one_to_one, broadcast" in text


def test_bad_names_and_limits():
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict({"name": "9lives", "params": {"bad-key": 1},
                        "tasks": {"has space": {"fn": OK, "instances": 1}}})
    text = problems_of(excinfo)
    assert "name: got '9lives', expected a job name matching" in text
    assert "params.bad-key: got param name 'bad-key'" in text
    assert "tasks.has space: got task name 'has space'" in text
    many = {f"t{i}": {"fn": OK, "instances": 1} for i in range(tasks_max + 1)}
    with pytest.raises(SpecError, match=f"got {tasks_max + 1} tasks, expected at most tasks_max={tasks_max}"):
        spec_from_dict({"name": "big", "tasks": many})


def test_speculation_bounds():
    d = doc()
    d["speculation"] = {"min_done_fraction": 0, "slowdown": 0.5, "max_backup_fraction": 2}
    with pytest.raises(SpecError) as excinfo:
        spec_from_dict(d)
    text = problems_of(excinfo)
    assert "speculation.min_done_fraction: got 0, expected a number > 0 and <= 1" in text
    assert "speculation.slowdown: got 0.5, expected a number >= 1.0" in text
    assert "speculation.max_backup_fraction: got 2" in text


# ---------------- properties of the DAG checks ----------------

NAMES = [f"t{i}" for i in range(8)]


@st.composite
def random_graphs(draw):
    n = draw(st.integers(min_value=1, max_value=len(NAMES)))
    names = draw(st.permutations(NAMES))[:n]
    deps = {name: draw(st.lists(st.sampled_from(names), unique=True, max_size=3)) for name in names}
    return deps


def brute_force_has_cycle(deps: dict[str, list[str]]) -> bool:
    """A node that can reach itself by following depends_on, self-loops included."""
    for start in deps:
        seen, frontier = set(), list(deps[start])
        while frontier:
            node = frontier.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                frontier.extend(deps[node])
    return False


def job_of(deps):
    return {"name": "p", "tasks": {n: {"fn": OK, "instances": 1, "depends_on": d} for n, d in deps.items()}}


@settings(max_examples=300, deadline=None)
@given(random_graphs())
def test_cycle_detection_agrees_with_brute_force(deps):
    try:
        spec = JobSpec.model_validate(job_of(deps))
    except ValidationError as exc:
        assert brute_force_has_cycle(deps), str(exc)
        text = str(exc)
        has_long_cycle = brute_force_has_cycle({n: [x for x in d if x != n] for n, d in deps.items()})
        assert ("dependency cycle" in text) == has_long_cycle
        for line in text.splitlines():
            if "dependency cycle" in line:  # the named path is a real cycle
                path = line.split("dependency cycle ")[1].split(" (")[0].split(" -> ")
                assert path[0] == path[-1]
                for up, down in zip(path, path[1:]):
                    assert up in deps[down]
    else:
        assert not brute_force_has_cycle(deps)
        order = spec.topological_order()
        assert sorted(order) == sorted(deps)


@st.composite
def random_dags(draw):
    n = draw(st.integers(min_value=1, max_value=len(NAMES)))
    rank = NAMES[:n]  # edges only go from earlier to later rank: acyclic by construction
    deps = {name: draw(st.lists(st.sampled_from(rank[:i]), unique=True, max_size=3)) if i else []
            for i, name in enumerate(rank)}
    spec_order = draw(st.permutations(rank))
    return {name: deps[name] for name in spec_order}


@settings(max_examples=300, deadline=None)
@given(random_dags())
def test_topological_order_respects_depends_on_and_spec_order(deps):
    spec = JobSpec.model_validate(job_of(deps))
    order = spec.topological_order()
    position = {name: i for i, name in enumerate(order)}
    assert sorted(order) == sorted(deps)
    for name, upstream in deps.items():
        for dep in upstream:
            assert position[dep] < position[name]
    # Kahn with spec-order ties: each pick is the earliest-listed task whose deps are all done.
    done: set[str] = set()
    for name in order:
        ready = [n for n in deps if n not in done and set(deps[n]) <= done]
        assert name == ready[0]
        done.add(name)
    assert spec.sinks() == [n for n in deps if not any(n in d for d in deps.values())]
