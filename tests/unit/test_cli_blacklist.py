"""What a person sees of the blacklists: `fuxi node list` (a column), `fuxi status` (the
cluster level) and `fuxi job status` (level and expiry). The commands' rendering, fed the
dicts FuxiMaster returns (its cluster_info and a job's status)."""

from __future__ import annotations

from typer.testing import CliRunner

from cli import cluster as cli_cluster
from cli import job as cli_job
from cli import node as cli_node
from cli.common import blacklist_text
from cli.main import app

runner = CliRunner()

ENTRY = {"node": "abcdef0123456789", "level": "cluster", "reason": "failures in 3 jobs within 600s",
         "since": 0.0, "expires_at": 600.0, "expires_in_s": 272.4}
INFO = {"cluster": "c", "nodes": [
    {"node_id": "abcdef0123456789", "address": "10.0.0.2", "resources": {"CPU": 4.0},
     "free": {"CPU": 4.0}, "blacklisted": ENTRY},
    {"node_id": "0123456789abcdef", "address": "10.0.0.1", "resources": {"CPU": 4.0},
     "free": {"CPU": 1.0}, "blacklisted": None,
     "agent": {"state": "missing", "heartbeat_age_s": 12.34, "mem_available_bytes": 2 * 1024**3,
               "disk_free_bytes": 80 * 1024**3, "reason": "agent silent"}}],
    "blacklist": [ENTRY], "jobs_running": [], "nuwa_events": []}


def test_blacklist_text_says_level_reason_and_time_left():
    assert blacklist_text(ENTRY) == "cluster level: failures in 3 jobs within 600s, expires in 4m32s"
    assert blacklist_text({**ENTRY, "level": "job", "expires_in_s": None}).endswith(
        "for the rest of the job")
    assert blacklist_text({**ENTRY, "expires_in_s": 9.2}).endswith("expires in 9s")
    assert blacklist_text(None) == "-"


def test_node_list_has_a_blacklist_column(monkeypatch):
    monkeypatch.setattr(cli_node, "master_call", lambda *a, **k: INFO)
    res = runner.invoke(app, ["node", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[-1] == "BLACKLIST"
    assert "abcdef012345" in lines[1] and "cluster level: failures in 3 jobs" in lines[1]
    assert "0123456789ab" in lines[2] and lines[2].rstrip().endswith(" -")
    assert lines[0].split()[-2] == "AGENT"
    assert "missing 12.3s mem 2.0G disk 80G" in lines[2]  # its agent: state, age, health
    assert " - " in lines[1]  # no agent known


def test_status_lists_the_cluster_level(monkeypatch):
    class Rec:
        address, data_dir, namespace, nuwa = "a:1", "/d", "fuxi-c", None

    class Conn:
        master = type("M", (), {"cluster_info": None})()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    from fuxi import runtime

    monkeypatch.setattr(runtime, "find_cluster", lambda c: Rec())
    monkeypatch.setattr(runtime, "connect", lambda *a, **k: Conn())
    monkeypatch.setattr(cli_cluster.actors, "call", lambda *a, **k: dict(INFO))
    res = runner.invoke(app, ["status"])
    assert res.exit_code == 0, res.output
    assert "blacklisted for every job (cluster level):" in res.output
    assert "abcdef012345: cluster level: failures in 3 jobs within 600s, expires in 4m32s" in res.output


def test_job_status_shows_each_blacklisted_node_with_level_and_expiry(monkeypatch):
    st = {"job_id": "j-1", "name": "j", "state": "running", "tasks": {}, "report": "",
          "blacklisted_nodes": [{**ENTRY, "level": "job", "reason": "6 failed or slow attempts "
                                 "of this job from 2 workers", "expires_in_s": 61.0}, ENTRY]}
    monkeypatch.setattr(cli_job, "_query", lambda cluster, call: st)
    res = runner.invoke(app, ["job", "status", "j-1"])
    assert res.exit_code == 0, res.output
    assert ("blacklisted abcdef012345: job level: 6 failed or slow attempts of this job from 2 "
            "workers, expires in 1m01s") in res.output
    assert "blacklisted abcdef012345: cluster level" in res.output
