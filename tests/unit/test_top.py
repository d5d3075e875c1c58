"""`fuxi top`'s frame, rendered from plain snapshots (the live loop only polls and redraws):
what an operator must see is there, garbage or missing fields do not crash it, tables are
bounded, and the CLI refuses a bad interval with exit 2."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

from cli import top
from cli.main import app

NODE = {"node_id": "a" * 40, "address": "127.0.0.1", "resources": {"CPU": 4.0, "memory": 8 * 1024 ** 3},
        "free": {"CPU": 1.0, "memory": 2 * 1024 ** 3},
        "agent": {"state": "healthy", "load": 1.5, "workers": 3},
        "blacklisted": None}


def render(snap) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(top.frame(snap))
    return out.getvalue()


def snap(**kw):
    base = {"cluster": "c1", "at": 0.0, "errors": [], "info": {"nodes": [NODE]},
            "jobs": [], "statuses": {}, "services": []}
    base.update(kw)
    return base


def test_nodes_jobs_and_services_are_shown_with_their_numbers():
    jobs = [{"job_id": "job-1", "name": "wordcount", "state": "running", "queue": "gold"},
            {"job_id": "job-2", "name": "later", "state": "queued", "position": 1},
            {"job_id": "job-0", "name": "finished-long-ago", "state": "succeeded"}]
    statuses = {"job-1": {"tasks": {
        "map": {"succeeded": 3, "instances": 4, "running": 1, "failed": 1, "retries": 2,
                "backups_won": 1, "backups_launched": 2},
        "reduce": {"succeeded": 0, "instances": 2, "running": 0, "failed": 0, "retries": 0,
                   "backups_won": 0, "backups_launched": 0}}}}
    services = [{"name": "echo", "version": "v2", "ready": 1, "desired": 2,
                 "requests_per_s": 12.5, "rollout": "upgrading"}]
    text = render(snap(jobs=jobs, statuses=statuses, services=services))
    assert "cluster 'c1': 1 node(s), 1 job(s) running, 1 waiting, 1 service(s)" in text
    assert "aaaaaaaaaaaa" in text and "1/4" in text and "2.0G/8.0G" in text and "1.50" in text
    assert "healthy" in text
    assert "wordcount" in text and "3/6" in text and "1/2" in text  # done, backups won/launched
    assert "queued #1" in text and "finished-long-ago" not in text  # finished jobs are not in the live view
    assert "echo" in text and "upgrading" in text


def test_a_failed_poll_is_shown_not_raised_and_missing_fields_are_dashes():
    text = render({"cluster": "c", "errors": ["nodes: Unavailable: FuxiMaster is gone"],
                   "info": None, "jobs": [{"job_id": "j", "state": "running"}],
                   "statuses": {}, "services": [{}]})
    assert "! nodes: Unavailable: FuxiMaster is gone" in text
    assert "0 node(s)" in text


def test_garbage_values_render_as_text():
    node = dict(NODE, agent={"state": None, "load": None}, resources={}, free={},
                blacklisted={"reason": "x" * 500})
    text = render(snap(info={"nodes": [node]}))
    assert "x" * 40 in text and "x" * 41 not in text  # a reason is cut to its column


def test_tables_are_bounded_and_say_how_many_are_left_out():
    nodes = [dict(NODE, node_id=f"n{i:04d}") for i in range(top.TOP_ROWS_MAX + 7)]
    text = render(snap(info={"nodes": nodes}))
    assert f"n{top.TOP_ROWS_MAX - 1:04d}" in text and f"n{top.TOP_ROWS_MAX:04d}" not in text
    assert "… 7 more" in text


def test_a_bad_interval_is_refused_with_exit_2():
    r = CliRunner().invoke(app, ["top", "--interval", "0"])
    assert r.exit_code == 2 and "--interval 0: expected seconds between" in r.output


def test_no_running_cluster_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    r = CliRunner().invoke(app, ["top", "--once", "--cluster", "nowhere"])
    assert r.exit_code == 3 and "no running cluster 'nowhere'" in r.output
    assert "Traceback" not in r.output
