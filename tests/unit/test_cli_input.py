"""`fuxi submit` rejects bad input with exit code 2 and a message that says what was wrong,
before any cluster is started."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def submit(tmp_path, doc, *args, suffix=".yaml"):
    path = tmp_path / f"job{suffix}"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return runner.invoke(app, ["submit", str(path), *args])


GOOD = {"name": "ok", "tasks": {"t": {"fn": "tests.integration.taskfns:noop", "instances": 2}}}


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"name": "x", "tasks": {"t": {"fn": "tests.integration.taskfns:noop", "instnces": 2}}},
         ["tasks.t.instnces", "unknown field", "instances"]),
        ({"name": "x", "tasks": {"t": {"fn": "tests.integration.taskfns:noop", "instances": -1}}},
         ["tasks.t.instances", "-1"]),
        ({"name": "x", "tasks": {
            "a": {"fn": "tests.integration.taskfns:noop", "instances": 1, "depends_on": ["b"]},
            "b": {"fn": "tests.integration.taskfns:noop", "instances": 1, "depends_on": ["a"]}}},
         ["cycle", "a -> b -> a"]),
        ({"name": "x", "tasks": {"a": {"fn": "tests.integration.taskfns:noop", "instances": 1,
                                       "depends_on": ["nope"]}}},
         ["nope", "a"]),
        ({"name": "x", "tasks": {"a": {"fn": "no_such_module:fn", "instances": 1}}},
         ["tasks.a.fn", "no_such_module"]),
        ({"name": "x", "tasks": {"a": {"fn": "tests.integration.taskfns:noop",
                                       "input": "/nonexistent/dir/*.txt"}}},
         ["/nonexistent/dir/*.txt"]),
    ],
)
def test_bad_specs_exit_2_with_a_clear_message(tmp_path, doc, expected):
    res = submit(tmp_path, doc, suffix=".json")
    assert res.exit_code == 2, res.output
    for text in expected:
        assert text in res.output, (text, res.output)


def test_unknown_param_reference(tmp_path):
    res = submit(tmp_path, "name: x\ntasks:\n  t:\n    fn: tests.integration.taskfns:noop\n    instances: ${params.n}\n")
    assert res.exit_code == 2
    assert "params.n" in res.output


def test_bad_override_and_bad_extension(tmp_path):
    res = submit(tmp_path, GOOD, "--set", "novalue", suffix=".json")
    assert res.exit_code == 2 and "key=value" in res.output
    res = submit(tmp_path, GOOD, suffix=".toml")
    assert res.exit_code == 2 and ".yaml" in res.output


def test_missing_file(tmp_path):
    res = runner.invoke(app, ["submit", str(tmp_path / "absent.yaml")])
    assert res.exit_code == 2 and "absent.yaml" in res.output


def test_non_empty_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_text("x")
    doc = {"name": "x", "tasks": {"t": {"fn": "tests.integration.taskfns:noop", "instances": 1,
                                        "output": str(out)}}}
    res = submit(tmp_path, doc, suffix=".json")
    assert res.exit_code == 2 and "not empty" in res.output


def test_no_wait_needs_a_running_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("FUXI_HOME", str(tmp_path / "home"))
    res = submit(tmp_path, GOOD, "--no-wait", suffix=".json")
    assert res.exit_code == 3 and "fuxi up" in res.output  # no cluster: unavailable


def test_job_commands_without_a_cluster_read_records_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("FUXI_HOME", str(tmp_path / "home"))
    res = runner.invoke(app, ["job", "status", "nope-123"])
    assert res.exit_code == 2 and "no job with id 'nope-123'" in res.output
    res = runner.invoke(app, ["job", "list", "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == []


def test_job_status_shows_recovered_vs_rerun_instances_of_a_resumed_job(tmp_path, monkeypatch):
    from fuxi.io.store import FileStore

    monkeypatch.setenv("FUXI_HOME", str(tmp_path / "home"))
    task = {"instances": 4, "succeeded": 4, "failed": 0, "running": 0, "attempts": 1,
            "retries": 0, "backups_launched": 0, "backups_won": 0}
    FileStore(str(tmp_path / "home" / "default" / "state")).put("/jobs/j-1/status", {
        "job_id": "j-1", "name": "three", "state": "succeeded", "jobmaster_restarts": 1,
        "tasks": {"gen": {**task, "attempts": 0, "recovered": 4, "rerun": 0},
                  "sum": {**task, "recovered": 3, "rerun": 1}},
        "checkpoint": {"resume_report": ["gen[2] runs again: checkpoint file x does not match "
                                         "its checksum"]}})
    res = runner.invoke(app, ["job", "status", "j-1"])
    assert res.exit_code == 0, res.output
    assert "resumed 1 time(s)" in res.output
    assert "gen: 4/4 done, 4 recovered, 0 re-run" in res.output
    assert "sum: 4/4 done, 3 recovered, 1 re-run" in res.output
    assert "gen[2] runs again" in res.output
