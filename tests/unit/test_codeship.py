"""Code shipping (issue 18 parts 1 and 6) without Ray: runtime_env validation and its bounds,
the packaged directory's measured size, functions shipped by value, the launch record keeping
the runtime_env, and the rule refusing local outputs on a cluster spanning machines."""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading

import pytest
from typer.testing import CliRunner

from cli.main import app
from fuxi.client import load
from fuxi.core import codeenv, launch
from fuxi.core.codeenv import RuntimeEnvSpec, local_output_problems, machines
from fuxi.core.spec import JobSpec, TaskSpec, spec_from_dict
from fuxi.errors import BadInput, SpecError
from fuxi.io import codeship

OK = "tests.integration.taskfns:noop"


def job(runtime_env=None, output=None) -> dict:
    task = {"fn": OK, "instances": 2}
    if output is not None:
        task["output"] = output
    doc = {"name": "j", "tasks": {"t": task}}
    if runtime_env is not None:
        doc["runtime_env"] = runtime_env
    return doc


@pytest.mark.parametrize("env, expected", [
    ({"working_dir": 7}, ["runtime_env.working_dir", "non-empty"]),
    ({"working_dir": ""}, ["runtime_env.working_dir"]),
    ({"working_dir": "ftp://x/y.zip"}, ["gcs://", "s3://"]),
    ({"working_dir": "s3://bucket/code"}, [".zip or .whl"]),
    ({"working_dir": "a" * 2000}, ["ENV_PATH_CHARS_MAX"]),
    ({"working_dir": "x\x00y"}, ["without NUL"]),
    ({"py_modules": "mylib"}, ["runtime_env.py_modules", "expected a list"]),
    ({"py_modules": ["m"] * 17}, ["17 entries", "PY_MODULES_MAX"]),
    ({"excludes": ["*.csv"] * 65}, ["EXCLUDES_MAX"]),
    ({"pip": ["-e ."]}, ["no pip options"]),
    ({"pip": ["--index-url=http://evil/simple"]}, ["no pip options"]),
    ({"pip": ["https://evil.example/pkg.whl"]}, ["no pip options"]),
    ({"pip": ["../local/pkg"]}, ["no pip options"]),
    ({"pip": ["pyyaml"] * 65}, ["PIP_PACKAGES_MAX"]),
    ({"env_vars": ["A=1"]}, ["mapping of NAME: value"]),
    ({"env_vars": {"RAY_ADDRESS": "evil:6379"}}, ["RAY_ADDRESS", "the platform sets those"]),
    ({"env_vars": {"FUXI_TOKEN": "stolen"}}, ["FUXI_TOKEN"]),
    ({"env_vars": {"PYTHONPATH": "/x"}}, ["PYTHONPATH"]),
    ({"env_vars": {"1BAD": "x"}}, ["variable name '1BAD'"]),
    ({"env_vars": {"A": "x" * 5000}}, ["ENV_VALUE_CHARS_MAX"]),
    ({"env_vars": {"A": True}}, ["string value"]),
    ({"env_vars": {f"V{i}": "1" for i in range(65)}}, ["ENV_VAR_COUNT_MAX"]),
    ({"conda": "env.yaml"}, ["runtime_env.conda"]),
])
def test_bad_runtime_env_is_one_clear_line(env, expected):
    with pytest.raises(SpecError) as e:
        spec_from_dict(job(env))
    text = str(e.value)
    for piece in expected:
        assert piece in text, text
    assert len(e.value.problems) == 1, e.value.problems


def test_a_good_runtime_env_reaches_the_plan(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text("X = 1\n")
    doc = job({"working_dir": ".", "py_modules": ["lib", "s3://b/dep.whl"],
               "excludes": ["data/"], "pip": ["pyyaml >= 6.0"], "env_vars": {"MODE": 3}})
    plan = load(doc, base_dir=str(tmp_path))
    env = plan.runtime_env
    assert env["working_dir"] == str(tmp_path)  # absolute, from the submit directory
    assert env["py_modules"] == [str(tmp_path / "lib"), "s3://b/dep.whl"]
    assert env["pip"] == ["pyyaml>=6.0"] and env["env_vars"] == {"MODE": "3"}
    assert load(job(), base_dir=str(tmp_path)).runtime_env is None  # nothing to ship


def test_missing_working_dir_and_py_module_are_refused(tmp_path):
    with pytest.raises(BadInput, match="not a directory"):
        load(job({"working_dir": "nope"}), base_dir=str(tmp_path))
    with pytest.raises(BadInput, match="does not exist"):
        load(job({"py_modules": ["nolib"]}), base_dir=str(tmp_path))


def test_working_dir_size_and_file_count_are_bounded(tmp_path, monkeypatch):
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"\0" * 5000)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "pack").write_bytes(b"\0" * 5000)  # never packaged
    assert codeship.measure(str(tmp_path)) == (5006, 2)
    monkeypatch.setattr(codeship, "WORKING_DIR_BYTES_MAX", 4000)
    with pytest.raises(BadInput, match="WORKING_DIR_BYTES_MAX"):
        codeship.measure(str(tmp_path))
    assert codeship.measure(str(tmp_path), ("data/",)) == (6, 1)  # excludes bring it under
    assert codeship.measure(str(tmp_path), ("*.bin",)) == (6, 1)
    with pytest.raises(BadInput, match="WORKING_DIR_BYTES_MAX"):  # the spec path too
        load(job({"working_dir": "."}), base_dir=str(tmp_path))
    load(job({"working_dir": ".", "excludes": ["data"]}), base_dir=str(tmp_path))
    monkeypatch.setattr(codeship, "WORKING_DIR_FILES_MAX", 1)
    (tmp_path / "more.py").write_text("")
    with pytest.raises(BadInput, match="WORKING_DIR_FILES_MAX"):
        codeship.measure(str(tmp_path), ("data",))


def test_a_closure_is_shipped_by_value_and_runs_only_where_imported(tmp_path):
    ran = []
    factor = 6

    def scaled(ctx):
        ran.append(1)
        return ctx * factor

    spec = JobSpec(name="bv", tasks={"t": TaskSpec(fn=scaled, instances=2)})
    plan = load(spec, base_dir=str(tmp_path))
    ref = plan.tasks[0].fn
    assert ref.startswith("fuxi_fn_") and ref.endswith(":fn") and ran == []
    (where,) = plan.runtime_env["py_modules"]
    assert os.path.basename(where) == ref.split(":")[0]
    # A worker imports the module (its directory's parent on its path) and gets the function.
    sys.path.insert(0, os.path.dirname(where))
    try:
        mod = importlib.import_module(ref.split(":")[0])
        assert mod.fn(7) == 42
    finally:
        sys.path.remove(os.path.dirname(where))
        sys.modules.pop(ref.split(":")[0], None)
    # The same closure, overridden with --set: still shipped, same module (named by content).
    again = load(spec, overrides=["tasks.t.instances=3"], base_dir=str(tmp_path))
    assert again.tasks[0].fn == ref and again.tasks[0].num_instances == 3


def test_a_closure_too_big_or_unpicklable_is_refused(tmp_path):
    blob = b"x" * (codeenv.PICKLED_FN_BYTES_MAX + 1)

    def heavy(ctx):
        return len(blob)

    with pytest.raises(BadInput, match="PICKLED_FN_BYTES_MAX"):
        load(JobSpec(name="big", tasks={"t": TaskSpec(fn=heavy, instances=1)}),
             base_dir=str(tmp_path))
    lock = threading.Lock()

    def locked(ctx):
        with lock:
            return None

    with pytest.raises(BadInput, match="cannot ship .*locked.* by value"):
        load(JobSpec(name="lk", tasks={"t": TaskSpec(fn=locked, instances=1)}),
             base_dir=str(tmp_path))


def test_a_plain_pickled_ref_string_is_not_trusted():
    with pytest.raises(SpecError, match="fuxi_fn_deadbeef"):
        spec_from_dict({"name": "x", "tasks": {"t": {"fn": "fuxi_fn_deadbeef:fn", "instances": 1}}})


def test_launch_record_keeps_the_shipped_runtime_env():
    env = {"working_dir": "gcs://_ray_pkg_0123abcd.zip", "py_modules": ["gcs://_ray_pkg_fe.zip"],
           "env_vars": {"MODE": "x"}}
    plan = load(job(env))
    doc = launch.encode("j-1", plan, "alice", [])
    assert launch.decode(json.loads(json.dumps(doc)), "j-1").plan.runtime_env == env
    without = launch.encode("j-2", load(job()), None, ["/x"])
    assert "runtime_env" not in without["body"]["plan"]  # records as before issue 18
    assert launch.decode(without, "j-2").plan.runtime_env is None


@pytest.mark.parametrize("bad, expected", [
    ({"working_dir": "ftp://x.zip"}, "plan.runtime_env"),
    ({"pip": ["-e ."]}, "plan.runtime_env"),
    ({"excludes": ["x"], "working_dir": "gcs://_ray_pkg_1.zip"}, "expected shipped"),
    ({}, "expected shipped"),
    ("gcs://x.zip", "plan.runtime_env"),
])
def test_a_tampered_runtime_env_in_a_launch_record_is_a_clear_reason(bad, expected):
    doc = launch.encode("j-3", load(job({"env_vars": {"A": "1"}})), None, [])
    doc["body"]["plan"]["runtime_env"] = bad
    doc["sha256"] = launch.hashlib.sha256(launch._canonical(doc["body"])).hexdigest()
    with pytest.raises(launch.BadLaunch, match=expected):
        launch.decode(doc, "j-3")


def test_code_holder_gives_the_jobmaster_only_the_packages():
    env = {"working_dir": "gcs://_ray_pkg_1.zip", "pip": ["pyyaml"], "env_vars": {"A": "1"}}
    assert codeship.code_holder(env) == {"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}}
    assert codeship.code_holder({"pip": ["pyyaml"]}) == {}
    assert codeship.code_holder(None) == {}


# ---- part 6: local outputs on a cluster spanning machines ----

def test_machines_are_distinct_alive_addresses():
    nodes = [{"alive": True, "ip": "10.0.0.1"}, {"alive": True, "ip": "10.0.0.1"},
             {"alive": False, "ip": "10.0.0.9"}, {"alive": True, "ip": ""},
             {"alive": True, "ip": "10.0.0.2"}]
    assert machines(nodes) == {"10.0.0.1", "10.0.0.2"}
    # ray.cluster_utils.Cluster: every node on 127.0.0.1 is one machine.
    assert len(machines([{"alive": True, "ip": "127.0.0.1"}] * 4)) == 1


@pytest.mark.parametrize("loc, shared, machine_count, refused", [
    ("/data/out", False, 2, True),
    ("file:///data/out", False, 3, True),
    ("out/rel", False, 2, True),
    ("/data/out", True, 2, False),  # declared a shared mount
    ("pangu://default/out", False, 2, False),
    ("s3://bucket/out", False, 5, False),
    ("/data/out", False, 1, False),  # one machine: a local path is fine
    ("/data/out", False, 0, False),
])
def test_local_output_rule(loc, shared, machine_count, refused):
    got = local_output_problems([("t", loc, shared)], machine_count)
    assert bool(got) == refused
    if refused:
        assert "tasks.t.output" in got[0] and "pangu://" in got[0] and "shared: true" in got[0]
        assert f"{machine_count} machines" in got[0]


def test_output_shared_form_and_its_check(tmp_path):
    spec = spec_from_dict(job(output={"path": str(tmp_path / "o"), "shared": True}))
    assert spec.tasks["t"].output == str(tmp_path / "o") and spec.tasks["t"].output_shared
    with pytest.raises(SpecError, match="expected {path"):
        spec_from_dict(job(output={"pth": "x"}))
    with pytest.raises(SpecError, match="expected {path"):
        spec_from_dict(job(output={"path": "x", "shared": True, "mode": "w"}))
    with pytest.raises(SpecError, match="output_shared"):
        spec_from_dict(job(output={"path": "x", "shared": "yes"}))
    plan = load(job(output=str(tmp_path / "o")))
    with pytest.raises(SpecError, match="tasks.t.output.*2 machines"):
        codeship.check_shared_outputs(plan, 2)
    codeship.check_shared_outputs(plan, 1)
    codeship.check_shared_outputs(load(job(output={"path": str(tmp_path / "o"),
                                                   "shared": True})), 2)


def test_cli_bad_working_dir_exits_2(tmp_path):
    path = tmp_path / "j.json"
    path.write_text(json.dumps(job()))
    res = CliRunner().invoke(app, ["submit", str(path), "--working-dir", str(tmp_path / "no")])
    assert res.exit_code == 2, res.output
    assert "is not a directory" in res.output


def test_runtime_env_spec_on_a_service():
    from fuxi.core.service_spec import service_spec_from_dict

    spec = service_spec_from_dict({"name": "s", "class": "jobs.services.echo:Echo",
                                   "runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}},
                                  check_class=False)
    assert spec.runtime_env == RuntimeEnvSpec(working_dir="gcs://_ray_pkg_1.zip")
    with pytest.raises(SpecError, match="runtime_env.env_vars"):
        service_spec_from_dict({"name": "s", "class": "jobs.services.echo:Echo",
                                "runtime_env": {"env_vars": {"RAY_X": "1"}}}, check_class=False)
