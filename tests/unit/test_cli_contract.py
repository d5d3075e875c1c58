"""The contract for scripts (issue 18 part 3), without Ray: each exit code the CLI gives when
no cluster is needed or none runs, produced by `python -m cli.main` in a subprocess; which
cluster a command picks (-c, --cluster, $FUXI_CLUSTER, $RAY_ADDRESS); completion of job ids;
`fuxi call` printing an Arrow reply with pandas unimportable; the pure parts (request ids,
the service verdict); and docs/cli.md kept equal to what `python -m cli.reference` prints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

import kuafu
from base.errors import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT,
                         EXIT_UNAVAILABLE)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD_TIMEOUT_S = 60


def _env(home, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("FUXI_CLUSTER", "FUXI_TOKEN")}
    env.update(FUXI_HOME=str(home), PYTHONPATH=REPO, **extra)
    return env


def fuxi(home, *args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO,
                          env=env or _env(home), capture_output=True, text=True,
                          input=stdin, timeout=CMD_TIMEOUT_S)


def _record(home, job_id: str, state: str) -> None:
    """A job record as an ended (or stopped) cluster leaves it under $FUXI_HOME."""
    from fuxi.io.store import FileStore

    FileStore(os.path.join(home, "default", "state")).put(f"/jobs/{job_id}/status", {
        "job_id": job_id, "name": job_id.split("-")[0], "state": state, "submitted_at": 1.0,
        "started_at": 1.0, "finished_at": 2.0 if state != "running" else None, "tasks": {},
        "output": None, "report": "t: instance 0 failed" if state == "failed" else ""})


# ------------------------------------------------------------------ exit codes


def test_version_exits_0(tmp_path):
    import fuxi as fx

    r = fuxi(tmp_path, "--version")
    assert r.returncode == EXIT_OK and r.stdout == f"fuxi {fx.__version__}\n"


@pytest.mark.parametrize("args, words", [
    (["job", "wait", "x-1", "--timeout", "-1"], "--timeout -1: expected seconds from 0"),
    (["job", "wait", "x-1", "--timeout", "nan"], "--timeout nan: expected seconds"),
    (["job", "wait", "x-1", "--timeout", "1e12"], "expected seconds from 0 to 2.592e+06"),
    (["submit", "jobs/wordcount.yaml", "--request-id", "a b"], "request id 'a b': expected 1"),
    (["submit", "jobs/wordcount.yaml", "--request-id", "x" * 200], "expected 1 to 128"),
    (["service", "register", "jobs/services/echo.yaml", "--wait", "--timeout", "-3"],
     "--timeout -3"),
    (["service", "canary", "echo", "jobs/services/echo.yaml", "--percent", "0"],
     "--percent 0.0: expected a share of the calls from 0.1 to below 100"),
    (["service", "canary", "echo", "jobs/services/echo.yaml", "--percent", "nan"],
     "--percent nan"),
    (["service", "canary", "echo", "jobs/services/echo.yaml", "--percent", "100"],
     "--percent 100.0"),
    (["service", "canary", "echo", "jobs/services/echo.yaml"], "Missing option '--percent'"),
    (["job", "list", "-c", "../etc"], "cluster name '../etc' is not valid"),
    (["--cluster", "a b", "job", "list"], "cluster name 'a b' is not valid"),
    (["job", "wait", "nope-123"], "no job with id 'nope-123'"),
    (["no-such-command"], "No such command"),
])
def test_bad_input_exits_2_with_what_was_wrong(tmp_path, args, words):
    r = fuxi(tmp_path, *args)
    assert r.returncode == EXIT_BAD_INPUT, (r.stdout, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ["nuwa", "ls", "/"],
    ["service", "list"],
    ["node", "list"],
    ["submit", "jobs/wordcount.yaml", "--no-wait"],
    ["debug", "kill", "master", "--yes"],
    ["acl", "show"],
])
def test_no_cluster_exits_3(tmp_path, args):
    r = fuxi(tmp_path, *args)
    assert r.returncode == EXIT_UNAVAILABLE, (r.stdout, r.stderr)
    assert ("fuxi up" in r.stderr or "fuxi login" in r.stderr) and "Traceback" not in r.stderr


def test_an_unreachable_recorded_cluster_exits_3(tmp_path):
    """An external cluster recorded at an address nothing listens on (port 1)."""
    d = tmp_path / "far"
    d.mkdir()
    (d / "cluster.json").write_text(json.dumps({
        "cluster": "far", "address": "127.0.0.1:1", "namespace": "fuxi-far",
        "data_dir": str(d), "started_at": 1.0}))
    r = fuxi(tmp_path, "service", "list", "-c", "far")
    assert r.returncode == EXIT_UNAVAILABLE and "cannot be reached" in r.stderr, r.stderr


def test_job_wait_on_ended_records_exits_by_the_job_s_end(tmp_path):
    _record(tmp_path, "good-1", "succeeded")
    _record(tmp_path, "bad-1", "failed")
    _record(tmp_path, "stuck-1", "running")
    ok = fuxi(tmp_path, "job", "wait", "good-1")
    assert ok.returncode == EXIT_OK and "job good-1 succeeded" in ok.stdout, ok.stderr
    bad = fuxi(tmp_path, "job", "wait", "bad-1", "--json")
    assert bad.returncode == EXIT_FAILED and json.loads(bad.stdout)["state"] == "failed"
    stuck = fuxi(tmp_path, "job", "wait", "stuck-1")
    assert stuck.returncode == EXIT_UNAVAILABLE and "no cluster 'default' is running" in stuck.stderr


def test_the_exit_code_table_is_the_documented_one():
    assert (EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_TIMEOUT,
            EXIT_INTERRUPTED) == (0, 1, 2, 3, 4, 130)


# ------------------------------------------------------------------ which cluster


def test_the_cluster_is_picked_by_flag_then_global_then_environment(tmp_path):
    def named(r):
        assert r.returncode == EXIT_UNAVAILABLE, r.stderr
        return r.stderr.split("cluster '")[1].split("'")[0]

    assert named(fuxi(tmp_path, "nuwa", "ls")) == "default"
    env = _env(tmp_path, FUXI_CLUSTER="fromenv")
    assert named(fuxi(tmp_path, "nuwa", "ls", env=env)) == "fromenv"
    assert named(fuxi(tmp_path, "--cluster", "glob", "nuwa", "ls", env=env)) == "glob"
    assert named(fuxi(tmp_path, "--cluster", "glob", "nuwa", "ls", "-c", "own", env=env)) == "own"
    bad = fuxi(tmp_path, "nuwa", "ls", env=_env(tmp_path, FUXI_CLUSTER="no/such"))
    assert bad.returncode == EXIT_BAD_INPUT and "not valid" in bad.stderr


def test_ray_address_finds_the_cluster_recorded_there(tmp_path):
    from base.cluster import cluster_for

    d = tmp_path / "lab"
    d.mkdir()
    (d / "cluster.json").write_text(json.dumps({
        "cluster": "lab", "address": "127.0.0.1:1", "namespace": "fuxi-lab", "data_dir": str(d),
        "started_at": 1.0}))
    env = _env(tmp_path, RAY_ADDRESS="ray://127.0.0.1:1")
    r = fuxi(tmp_path, "service", "list", env=env)
    assert r.returncode == EXIT_UNAVAILABLE and "cluster 'lab'" in r.stderr, r.stderr
    os.environ.pop("FUXI_CLUSTER", None)
    old = {k: os.environ.get(k) for k in ("FUXI_HOME", "RAY_ADDRESS")}
    try:
        os.environ["FUXI_HOME"] = str(tmp_path)
        os.environ["RAY_ADDRESS"] = "127.0.0.1:2"  # no record there: the default
        assert cluster_for() == "default"
        os.environ["RAY_ADDRESS"] = "127.0.0.1:1"
        assert cluster_for() == "lab" and cluster_for("mine") == "mine"
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


# ------------------------------------------------------------------ completion


def test_completion_offers_the_job_ids_on_record(tmp_path):
    _record(tmp_path, "wordcount-aaa", "succeeded")
    _record(tmp_path, "wordcount-bbb", "failed")
    _record(tmp_path, "sq-ccc", "succeeded")
    env = _env(tmp_path, _FUXI_COMPLETE="complete_bash", COMP_WORDS="fuxi job wait word",
               COMP_CWORD="3")
    r = fuxi(tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["wordcount-aaa", "wordcount-bbb"], r.stdout
    # No cluster to read service names from: nothing offered, and no traceback.
    env.update(COMP_WORDS="fuxi service status e", COMP_CWORD="3")
    r = fuxi(tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "" and "Traceback" not in r.stderr


def test_completion_never_raises(tmp_path):
    from cli import complete

    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "cluster.json").write_text("{not json")
    old = os.environ.get("FUXI_HOME")
    os.environ["FUXI_HOME"] = str(tmp_path)
    try:
        assert complete.job_ids(None, "") == [] and complete.service_names(None, "x") == []
    finally:
        os.environ.pop("FUXI_HOME") if old is None else os.environ.__setitem__("FUXI_HOME", old)


# ------------------------------------------------------------------ fuxi call


class Tables:
    @kuafu.method(idempotent=True)
    def table(self, m):
        return pa.table({"word": ["the", "a", None], "count": [3, 10, 1]})

    @kuafu.method
    def nap(self, m):
        time.sleep(float(m))
        return "rested"

    @kuafu.method
    def boom(self, m):
        raise KeyError("no such word")


@pytest.fixture(scope="module")
def tables():
    h = kuafu.serve({"tables": Tables()})
    try:
        yield h
    finally:
        h.stop(1)


def test_call_prints_an_arrow_reply_without_pandas(tmp_path, tables):
    blocker = tmp_path / "nopandas"
    blocker.mkdir()
    (blocker / "pandas.py").write_text("raise ImportError('pandas is not installed here')\n")
    env = _env(tmp_path)
    env["PYTHONPATH"] = f"{blocker}:{REPO}"
    r = fuxi(tmp_path, "call", f"{tables.address}/tables", "table", env=env)
    assert r.returncode == EXIT_OK, r.stderr
    assert r.stdout.splitlines() == ["word count", " the     3", "   a    10", "         1"]
    r = fuxi(tmp_path, "call", f"{tables.address}/tables", "table", "--json", env=env)
    assert json.loads(r.stdout)["rows"][1] == {"word": "a", "count": 10}


def test_call_exit_codes(tmp_path, tables):
    failed = fuxi(tmp_path, "call", f"{tables.address}/tables", "boom")
    assert failed.returncode == EXIT_FAILED and "no such word" in failed.stderr
    gone = fuxi(tmp_path, "call", "tcp://127.0.0.1:1/tables", "table", "--timeout", "5")
    assert gone.returncode == EXIT_UNAVAILABLE, gone.stderr
    bad = fuxi(tmp_path, "call", f"{tables.address}/tables", "table", "novalue")
    assert bad.returncode == EXIT_BAD_INPUT and "expected key=value" in bad.stderr


def test_ctrl_c_exits_130(tmp_path, tables):
    p = subprocess.Popen([sys.executable, "-m", "cli.main", "call", f"{tables.address}/tables",
                          "nap", "--data", "30"], cwd=REPO, env=_env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3.0)  # imported and waiting for the reply
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=CMD_TIMEOUT_S)
        assert p.returncode == EXIT_INTERRUPTED, err
        assert "Traceback" not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=CMD_TIMEOUT_S)


# ------------------------------------------------------------------ the Python side


def test_the_client_facade_needs_a_cluster_name_and_a_running_cluster(tmp_path, monkeypatch):
    import fuxi as fx
    from base.errors import BadInput

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    monkeypatch.delenv("FUXI_CLUSTER", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(BadInput, match="takes a cluster name, not object"):
        fx.Client(object())
    with pytest.raises(BadInput, match="not valid"):
        fx.Client("a b")
    c = fx.Client()
    assert c.cluster == "default"
    c.close()
    # In a fresh interpreter: this one may be inside the test session's Ray, which `connect`
    # uses as it is (documented), so no cluster would be missing here.
    script = ("import fuxi\nfrom base.errors import NoCluster\ntry:\n    fuxi.Client().jobs.list()\n"
              "except NoCluster as e:\n    print('NoCluster:', e)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FUXI_CLUSTER", "RAY_ADDRESS")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**env, "FUXI_HOME": str(tmp_path)}, timeout=120)
    assert "NoCluster: no running cluster 'default'" in res.stdout, res.stdout + res.stderr


def test_a_checked_wait_raises_with_the_status():
    from fuxi.client import checked
    from fuxi.errors import JobFailed, JobWaitTimeout

    ok = {"job_id": "j", "state": "succeeded"}
    assert checked(ok, None) is ok
    with pytest.raises(JobFailed, match="job j failed: t: instance 0 failed") as e:
        checked({"job_id": "j", "state": "failed", "report": "t: instance 0 failed\nmore"}, None)
    assert e.value.status["state"] == "failed"
    with pytest.raises(JobFailed, match="job j cancelled"):
        checked({"job_id": "j", "state": "cancelled"}, None)
    with pytest.raises(JobWaitTimeout, match="still running after 5s") as e:
        checked({"job_id": "j", "state": "running"}, 5.0)
    assert e.value.status["state"] == "running"


def test_request_ids_same_spec_same_job_other_spec_refused():
    from types import SimpleNamespace

    from fuxi.core import submits
    from fuxi.errors import BadInput, RequestConflict

    a = SimpleNamespace(spec={"name": "a", "tasks": {}}, overwrite=False)
    b = SimpleNamespace(spec={"name": "b", "tasks": {}}, overwrite=False)
    table: dict = {}
    submits.remember(table, "r1", a, "a-1", kept_max=2)
    assert submits.same_request(table, "r1", SimpleNamespace(**vars(a))) == "a-1"
    with pytest.raises(RequestConflict, match="different spec"):
        submits.same_request(table, "r1", b)
    with pytest.raises(RequestConflict):  # --overwrite makes another request
        submits.same_request(table, "r1", SimpleNamespace(spec=a.spec, overwrite=True))
    submits.remember(table, "r2", b, "b-1", kept_max=2)
    submits.remember(table, "r3", b, "b-2", kept_max=2)
    assert list(table) == ["r2", "r3"]  # the oldest forgotten
    for bad in ("", "a b", "x" * 129, "é", None, 7, "a/b"):
        with pytest.raises(BadInput):
            submits.check_request_id(bad)
    submits.check_request_id("retry-2026-12-03T10:00:00.1_x")


def test_the_service_verdict():
    from cli.waiting import service_verdict

    def st(version="2", rollout="", desired=2, replicas=(("2", "ready"), ("2", "ready")), **kw):
        return {"name": "s", "version": version, "rollout": rollout, "desired": desired,
                "replicas": [{"version": v, "state": s} for v, s in replicas], **kw}

    assert service_verdict(st(), "2") == "ready"
    assert service_verdict(st(replicas=(("2", "ready"), ("2", "starting"))), "2") is None
    assert service_verdict(st(rollout="rolling"), "2") is None
    assert service_verdict(st(version="1", replicas=(("1", "ready"),) * 2), "2") is None
    assert "rolled back to 1" in service_verdict(st(version="1", rollout="rolled_back"), "2")
    assert "being removed" in service_verdict(st(removing=True), "2")


# ------------------------------------------------------------------ the reference


def test_docs_cli_md_is_what_the_cli_prints():
    from cli.reference import reference

    with open(os.path.join(REPO, "docs", "cli.md"), encoding="utf-8") as f:
        on_disk = f.read()
    assert on_disk == reference(), ("docs/cli.md is out of date: run "
                                    "`python -m cli.reference > docs/cli.md`")
    for words in ("## `fuxi job wait`", "`--request-id`", "`--cancel-on-interrupt`",
                  "| 3 | the platform is unavailable"):
        assert words in on_disk
