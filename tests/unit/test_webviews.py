"""The console's pictures and pages from plain documents (pure): the DAG has a box per task
with its counts and an edge per shuffle, the timeline a bar per attempt with backups and
retries marked, names from users are escaped everywhere, and everything is bounded."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from fuxi.core import webpages as wp
from fuxi.core import webviews as wv

TASKS = {
    "map": {"instances": 4, "succeeded": 4, "running": 0, "failed": 0, "retries": 1,
            "backups_launched": 2, "backups_won": 1, "upstream": []},
    "reduce": {"instances": 2, "succeeded": 1, "running": 1, "failed": 0, "retries": 0,
               "backups_launched": 0, "backups_won": 0,
               "upstream": [{"from": "map", "mode": "hash"}]},
    "report": {"instances": 1, "succeeded": 0, "running": 0, "failed": 0,
               "upstream": [{"from": "reduce", "mode": "one_to_one"},
                            {"from": "map", "mode": "broadcast"}]},
}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def test_dag_boxes_by_level_with_counts_and_one_edge_per_shuffle():
    assert wv.levels(TASKS) == {"map": 0, "reduce": 1, "report": 2}
    svg = wv.dag_svg(TASKS)
    root = parse(svg)
    ns = "{http://www.w3.org/2000/svg}"
    groups = [g for g in root.iter(f"{ns}g") if g.get("data-task")]
    assert [g.get("data-task") for g in groups] == ["map", "reduce", "report"]
    assert groups[0].get("class") == "task task-done"
    assert groups[1].get("class") == "task task-running"
    assert len([p for p in root.iter(f"{ns}path") if p.get("class") == "edge"]) == 3
    assert "4/4 done" in svg and "1/2 done · 1 running" in svg and "backups 1/2" in svg
    labels = [t.text for t in root.iter(f"{ns}text") if t.get("class") == "edge-label"]
    assert sorted(labels) == ["broadcast", "hash", "one_to_one"]


def test_hostile_names_are_escaped_in_pictures_and_pages():
    evil = '<script>alert(1)</script>"&'
    tasks = {evil: {"instances": 1, "succeeded": 0, "upstream": [{"from": evil, "mode": evil}]}}
    svg = wv.dag_svg(tasks)
    parse(svg)
    assert "<script>" not in svg
    attempts = [{"task": evil, "instance": 0, "attempt": 0, "worker": evil, "node": evil,
                 "started_at": 1.0, "ended_at": 2.0, "state": "failed", "error": evil}]
    tl = wv.timeline_svg(attempts, 3.0)
    parse(tl)
    assert "<script>" not in tl
    page = wp.job_page({"job_id": evil, "name": evil, "tasks": tasks, "report": evil},
                       {"attempts": attempts}, 3.0, [evil])
    assert "<script>alert" not in page
    assert "<script>" not in wp.jobs_page([{"job_id": evil, "name": evil, "state": evil}])
    assert "<script>" not in wp.service_page({"name": evil, "replicas": [{"replica": evil,
                                                                          "health": evil}]})
    assert "<script>" not in wp.overview({"cluster": evil, "nodes": [{"node_id": evil}]}, [],
                                         [{"name": evil}], [evil])


def test_a_timeline_has_a_row_per_worker_and_marks_backups_and_retries():
    attempts = [
        {"task": "map", "instance": 0, "attempt": 0, "worker": "w1", "node": "n1",
         "started_at": 0.0, "ended_at": 30.0, "state": "killed", "backup": False},
        {"task": "map", "instance": 0, "attempt": 1, "worker": "w2", "node": "n2",
         "started_at": 5.0, "ended_at": 9.0, "state": "succeeded", "backup": True, "won": True},
        {"task": "map", "instance": 1, "attempt": 1, "worker": "w2", "node": "n2",
         "started_at": 10.0, "ended_at": 12.0, "state": "succeeded", "backup": False},
        {"task": "map", "instance": 2, "attempt": 0, "worker": "w3", "node": "n1",
         "started_at": 11.0, "ended_at": None, "state": "running", "backup": False},
        {"task": "map", "instance": 3, "attempt": 0, "worker": "w3", "node": "n1",
         "started_at": None, "ended_at": None, "state": "queued"},
    ]
    svg = wv.timeline_svg(attempts, 20.0)
    root = parse(svg)
    ns = "{http://www.w3.org/2000/svg}"
    bars = {g.get("data-attempt"): g.get("class").split() for g in root.iter(f"{ns}g")}
    assert bars["map[0]#1"] == ["bar", "ok", "backup", "won"]
    assert bars["map[1]#1"] == ["bar", "ok", "retry"]
    assert bars["map[0]#0"] == ["bar", "lost"]
    assert bars["map[2]#0"] == ["bar", "run"]
    assert "map[3]#0" not in bars  # never started: nothing to draw, and it is counted
    assert "1 attempts not drawn" in svg
    rows = [t.text for t in root.iter(f"{ns}text") if t.get("class") == "row-label"]
    assert len(rows) == 3  # three workers
    assert rows[0].startswith("n1 / w1") and rows[1] == "· w3" and rows[2].startswith("n2")


def test_pictures_are_bounded():
    many = {f"t{i}": {"instances": 1, "upstream": [{"from": f"t{i - 1}", "mode": "hash"}]
                      if i else []} for i in range(wv.DAG_TASKS_MAX + 5)}
    svg = wv.dag_svg({k: many[k] for k in list(many)[:wv.DAG_TASKS_MAX + 5]})
    assert svg.count("data-task=") == wv.DAG_TASKS_MAX and "5 more tasks not drawn" in svg
    attempts = [{"task": "t", "instance": i, "attempt": 0, "worker": f"w{i}", "node": "n",
                 "started_at": float(i), "ended_at": i + 1.0, "state": "succeeded"}
                for i in range(wv.TIMELINE_ROWS_MAX + 10)]
    svg = wv.timeline_svg(attempts, 1e4)
    assert svg.count('class="row-label"') == wv.TIMELINE_ROWS_MAX
    assert "10 attempts not drawn" in svg
    rows = [[str(i)] for i in range(wp.TABLE_ROWS_MAX + 3)]
    assert "3 more rows not shown" in wp.table(["x"], rows)


def test_garbage_documents_do_not_break_a_page():
    assert "Cluster" in wp.overview(None, [], [])
    page = wp.job_page({"tasks": {}}, None, 0.0)
    assert "no attempts recorded" in page
    assert wp.when("garbage") == "-" and wp.when(None) == "-" and wp.gib(None) == "-"
    assert "Pangu is not running" in wp.storage_page(None, None)
    st = wp.storage_page({"servers": [{"id": "cs1", "capacity_bytes": 2 ** 31,
                                       "used_bytes": 2 ** 30}], "files": 3, "chunks": 7},
                         {"under_replicated": 1, "missing": 0, "corrupt": 0})
    assert "2.0 GiB" in st and "1.0 GiB" in st and "under-replicated" in st
    nuwa = wp.coordination_page([{"id": 1, "role": "Role.LEADER", "term": 3, "leader": 1,
                                  "commit": 10}, {"id": 2, "role": "Role.FOLLOWER",
                                                  "commit": 7, "leader": 1}])
    assert re.search(r"<td>2</td><td><span class=\"\">follower</span></td>.*<td>3</td>", nuwa)
    assert "leader: 1" in nuwa


def test_every_page_refreshes_only_its_main_part():
    html = wp.frame("jobs", "/jobs", "<p>x</p>", user="ann")
    assert "searchParams.set('partial','1')" in html and str(wp.POLL_MS) in html
    assert 'class="on">jobs' in html and "ann" in html and "/logout" in html
