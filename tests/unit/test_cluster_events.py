"""Issue 17 parts 2, 6, 7 without Ray: the event files (rotation, torn lines), the collector
(ids, dedup, garbage reports, long polls, restarts), the JobMaster's events and record driven
by a real JobCore, the story and the Chrome trace, and the CLI's bad input (exit 2)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from typer.testing import CliRunner

from base import eventfile, events
from base.errors import BadInput
from fuxi.core.jobcore import JobCore
from fuxi.core.story import chrome_trace, instance_story, service_story, story_text
from fuxi.shells import clusterlog
from fuxi.shells.clusterlog import ClusterEvents, check_kinds, check_match
from fuxi.shells.jobstory import JobStory, read_attempts
from tests.unit.test_jobcore import (
    fail,
    finish,
    job,
    ok,
    pushed,
    run,
    straggler_job,
    task,
    up,
)


def rec(i, kind="k", **fields):
    return {"id": i, "at": 1000.0 + i, "kind": kind, "source": "t", "message": f"m{i}",
            "fields": fields}


# ------------------------------------------------------------ files


def test_rotation_keeps_a_bounded_log_with_contiguous_newest_ids(tmp_path):
    f = eventfile.EventFile(str(tmp_path), file_bytes_max=2048, files_kept=2)
    for i in range(1, 301):
        f.append([rec(i)])
    f.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["events.1.jsonl", "events.2.jsonl", "events.jsonl"]  # the oldest deleted
    assert sum(os.path.getsize(tmp_path / n) for n in names) <= 3 * 2048
    got = eventfile.read_events(str(tmp_path), limit=10_000)
    ids = [r["id"] for r in got.records]
    assert ids == list(range(ids[0], 301)) and ids[0] > 1 and got.torn == 0
    assert eventfile.last_id(str(tmp_path)) == 300
    assert [r["id"] for r in eventfile.read_events(str(tmp_path), since_id=295).records] == \
        [296, 297, 298, 299, 300]


def test_a_torn_last_line_is_skipped_counted_and_the_next_writer_starts_afresh(tmp_path):
    f = eventfile.EventFile(str(tmp_path))
    f.append([rec(1), rec(2)])
    f.close()
    with open(tmp_path / "events.jsonl", "ab") as raw:  # a crash in the middle of a line
        raw.write(json.dumps(rec(3)).encode()[:25])
    got = eventfile.read_events(str(tmp_path))
    assert [r["id"] for r in got.records] == [1, 2] and got.torn == 1
    assert eventfile.last_id(str(tmp_path)) == 2
    f = eventfile.EventFile(str(tmp_path))  # the restarted collector
    f.append([rec(3)])
    f.close()
    got = eventfile.read_events(str(tmp_path))
    assert [r["id"] for r in got.records] == [1, 2, 3] and got.torn == 1  # not glued on
    # negative control: without the fresh line the new record would be lost too
    bad = tmp_path / "glued"
    bad.mkdir()
    (bad / "events.jsonl").write_bytes(json.dumps(rec(1)).encode()[:10] + json.dumps(rec(2)).encode()
                                       + b"\n")
    assert eventfile.read_events(str(bad)).records == []


def test_garbage_lines_and_records_without_ids_are_skipped(tmp_path):
    (tmp_path / "events.jsonl").write_bytes(b'[1,2]\n{"id": "7"}\n\xff\xfe\n{"id": 4}\n\n')
    got = eventfile.read_events(str(tmp_path))
    assert [r["id"] for r in got.records] == [4] and got.torn == 3


def test_an_oversized_record_is_replaced_so_ids_stay_contiguous(tmp_path):
    f = eventfile.EventFile(str(tmp_path))
    f.append([rec(1), {**rec(2), "message": "x" * (eventfile.EVENT_LINE_BYTES_MAX + 5)}, rec(3)])
    got = eventfile.read_events(str(tmp_path))
    assert [r["id"] for r in got.records] == [1, 2, 3]
    assert "EVENT_LINE_BYTES_MAX" in got.records[1]["message"]


# ------------------------------------------------------------ the collector


def ring_event(seq, kind="instance_retried", **fields):
    return {"seq": seq, "at": 5.0 + seq, "source": "jobmaster", "kind": kind,
            "message": f"e{seq}", "severity": "info", "fields": fields}


def test_reports_get_cluster_ids_once_each_and_survive_a_restart(tmp_path):
    log = ClusterEvents(str(tmp_path))
    b1 = {"boot": "a", "events": [ring_event(1, job="j"), ring_event(2, job="j")]}
    assert log.report("jobmaster-j", b1) == 2
    assert log.report("jobmaster-j", b1) == 2  # sent again (its sync's answer was lost)
    # A restarted JobMaster (another boot) starts its ring at 1 again: not a duplicate.
    log.report("jobmaster-j", {"boot": "b", "events": [ring_event(1, job="j")]})
    mine = [r for r in log.tail if r["origin"].startswith("jobmaster-j")]
    assert [r["origin_seq"] for r in mine] == [1, 2, 1]
    ids = [r["id"] for r in log.tail]
    assert ids == list(range(1, len(ids) + 1))
    again = ClusterEvents(str(tmp_path))  # FuxiMaster restarted: ids carry on
    assert again.next_id == ids[-1] + 1
    old = asyncio.run(again.query(0, kinds=["instance_*"]))  # older than its memory: files
    assert [r["origin_seq"] for r in old["events"]] == [1, 2, 1]


@pytest.mark.parametrize("batch, match", [
    ("nope", "expected a list"),
    ([ring_event(i) for i in range(clusterlog.EVENT_REPORT_MAX + 1)], "EVENT_REPORT_MAX"),
    ([{"seq": "1", "kind": "x"}], "is not an event"),
    ([{"seq": 1}], "is not an event"),
    ({"boot": "", "events": []}, "boot"),
    ({"boot": "x" * 65, "events": []}, "boot"),
    ({"boot": "a", "events": "x"}, "expected a list"),
])
def test_garbage_reports_are_refused_and_nothing_is_kept(batch, match):
    log = ClusterEvents(None)
    before = len(log.tail)
    with pytest.raises(BadInput, match=match):
        log.report("jobmaster-j", batch)
    assert len([r for r in log.tail if r["origin"] != "fuxi-master"]) == 0
    assert len(log.tail) >= before


def test_queries_filter_by_kind_prefix_time_and_fields():
    log = ClusterEvents(None)
    log.add([{"at": 10.0, "kind": "node_lost", "fields": {}},
             {"at": 20.0, "kind": "instance_retried", "fields": {"job": "a", "instance": 1}},
             {"at": 30.0, "kind": "instance_requeued", "fields": {"job": "b", "instance": 1}}])
    q = lambda **kw: [e["kind"] for e in asyncio.run(log.query(**kw))["events"]  # noqa: E731
                      if e.get("origin") is None]
    assert q(kinds=["instance_*"]) == ["instance_retried", "instance_requeued"]
    assert q(kinds=["node_lost"]) == ["node_lost"]
    assert q(since_at=25.0) == ["instance_requeued"]
    assert q(match={"job": "a"}) == ["instance_retried"]
    assert q(match={"job": "a", "instance": 2}) == []


@pytest.mark.parametrize("kw, match", [
    ({"since_id": -1}, "since_id"), ({"since_id": "3"}, "since_id"), ({"since_id": True}, "since_id"),
    ({"limit": 0}, "limit"), ({"limit": 10**9}, "limit"),
    ({"wait_s": -1}, "wait_s"), ({"wait_s": 10**6}, "EVENTS_WAIT_S_MAX"),
    ({"kinds": ["Bad Kind"]}, "event kind"), ({"kinds": [3]}, "event kind"),
    ({"kinds": ["a"] * 65}, "at most 64"), ({"match": {"job": ["x"]}}, "match"),
    ({"match": "job"}, "match"), ({"since_at": "yesterday"}, "since_at"),
])
def test_garbage_queries_say_what_was_wrong(kw, match):
    with pytest.raises(BadInput, match=match):
        asyncio.run(ClusterEvents(None).query(**kw))


def test_a_long_poll_wakes_when_an_event_arrives_and_times_out_otherwise():
    async def scenario():
        log = ClusterEvents(None)
        last = log.next_id - 1
        empty = await log.query(last, wait_s=0.2, kinds=["late"])
        assert empty["events"] == []
        waiter = asyncio.create_task(log.query(last, wait_s=5.0, kinds=["late"]))
        await asyncio.sleep(0.05)
        log.add([{"at": 1.0, "kind": "other", "fields": {}}])  # not what it waits for
        await asyncio.sleep(0.05)
        assert not waiter.done()
        log.add([{"at": 2.0, "kind": "late", "fields": {}}])
        got = await asyncio.wait_for(waiter, 2.0)
        return [e["kind"] for e in got["events"]]
    assert asyncio.run(scenario()) == ["late"]


def test_the_masters_own_events_are_pulled_in_order():
    log = ClusterEvents(None)
    asyncio.run(log.query(0))
    events.emit("fuxi", "job_submitted", "job x submitted", job="x")
    events.emit("fuxi", "job_succeeded", "job x succeeded", job="x")
    got = asyncio.run(log.query(0, match={"job": "x"}))["events"]
    assert [e["kind"] for e in got][-2:] == ["job_submitted", "job_succeeded"]
    assert got[-1]["id"] == got[-2]["id"] + 1


def test_kinds_and_matches_are_checked():
    assert check_kinds("node_lost") == ["node_lost"] and check_kinds(None) == []
    assert check_kinds(["instance_*", "*"]) == ["instance_*", "*"]
    assert check_match({"job": "j", "instance": 3}) == {"job": "j", "instance": 3}
    with pytest.raises(BadInput):
        check_match({"instance": True})


# ------------------------------------------------------------ the JobMaster's side


def test_a_retry_is_an_event_naming_the_failed_node_and_the_reason_and_the_record_tells_it():
    core = JobCore("j", job(task("a", 1, max_retries=3), backoff_s=0.2), now=0.0)
    story = JobStory("j")
    seq = events.LOG.last_seq()

    def apply(acts):
        for a in acts:
            story.note(core, a)
        return acts

    (w1, w2), acts = up(core, ["n1", "n2"])
    apply(acts)
    run(core, w1, ("a", 0, 0), 0.5)
    apply(finish(core, w1, fail(("a", 0, 0), error="Traceback\nOSError: disk on fire"), 1.0))
    assert pushed(apply(core.tick(1.2))) == [(w2, ("a", 0, 1))]
    mine = [e for e in events.LOG.since(seq) if e.fields.get("job") == "j"]
    assert [e.kind for e in mine] == ["instance_retried"]
    f = mine[0].fields
    assert f["failed_node"] == "n1" and f["node"] == "n2" and f["reason"] == "OSError: disk on fire"
    run(core, w2, ("a", 0, 1), 1.3)
    apply(finish(core, w2, ok(("a", 0, 1)), 2.0))
    doc = story.record(core)
    s = instance_story(doc, "a", 0)
    assert s["winner"] == 1 and s["state"] == "succeeded"
    assert s["attempts"][0]["outcome"] == "failed: OSError: disk on fire"
    assert s["attempts"][1]["cause"] == "retry after attempt 0 failed on node n1: OSError: disk on fire"
    assert s["attempts"][1]["placement"] == "avoiding node(s) n1 where earlier attempts failed"
    text = story_text(s, 0.0)
    assert "attempt 1 won" in text and "+1.000s" in text
    # The batch a sync carries, and its acknowledgement.
    batch = story.batch()
    assert batch["boot"] == story.boot and any(e["kind"] == "instance_retried" for e in batch["events"])
    story.acknowledged(events.LOG.last_seq())
    assert story.batch()["events"] == []


def test_a_backup_that_wins_is_two_events_and_a_backup_in_the_trace(tmp_path):
    core, (w1, w2, w3, w4) = straggler_job()
    story = JobStory("j")
    seq = events.LOG.last_seq()
    acts = core.tick(2.1)
    for a in acts:
        story.note(core, a)
    where, key = pushed(acts)[0]
    run(core, where, key, 2.2)
    for a in finish(core, where, ok(key, duration_s=0.5), 2.7):
        story.note(core, a)
    kinds = [e.kind for e in events.LOG.since(seq) if e.fields.get("job") == "j"]
    assert kinds == ["backup_launched", "backup_won"]
    won = [e for e in events.LOG.since(seq) if e.kind == "backup_won"][-1].fields
    assert won["loser_node"] == "n3" and won["attempt"] == 1
    story.write(core, str(tmp_path / "j.attempts.json"))
    doc = read_attempts(str(tmp_path), "j")
    s = instance_story(doc, "a", 3)
    assert s["attempts"][1]["cause"] == "backup of attempt 0 (a straggler on node n3)"
    assert s["attempts"][1]["placement"] == "away from the straggler's node"
    assert s["attempts"][0]["outcome"] == "killed: attempt 1 won"
    trace = chrome_trace(doc)
    xs = {e["name"]: e for e in trace["traceEvents"] if e["ph"] == "X"}
    assert xs["a[3]#1"]["cat"] == "backup" and xs["a[3]#1"]["args"]["won"]
    assert xs["a[3]#0"]["cat"] == "attempt" and xs["a[3]#0"]["args"]["state"] == "killed"
    assert xs["a[0]#0"]["dur"] == pytest.approx(1e6)  # reported at 0.1 s as running 0.1 s: 0 .. 1
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {"node n1", "node n2", "node n3"}
    assert all(isinstance(e["pid"], int) and isinstance(e["tid"], int) for e in trace["traceEvents"])


def test_a_retry_is_its_own_category_in_the_trace():
    doc = {"job_id": "j", "tasks": {"a": 1}, "attempts": [
        {"task": "a", "instance": 0, "attempt": 0, "node": "n1", "worker": "w1", "backup": False,
         "state": "failed", "queued_at": 0.0, "started_at": 1.0, "ended_at": 2.0,
         "error": "boom", "why": "", "won": False},
        {"task": "a", "instance": 0, "attempt": 1, "node": "n2", "worker": "w2", "backup": False,
         "state": "running", "queued_at": 2.0, "started_at": 3.0, "ended_at": None,
         "error": "", "why": "", "won": False}]}
    xs = [e for e in chrome_trace(doc, now=5.0)["traceEvents"] if e["ph"] == "X"]
    assert [e["cat"] for e in xs] == ["attempt", "retry"]
    assert xs[1]["args"]["retry_cause"] == "retry after attempt 0 failed on node n1: boom"
    assert xs[1]["dur"] == 2e6  # still running: drawn up to now


def test_explain_refuses_an_unknown_task_or_instance():
    doc = {"job_id": "j", "tasks": {"a": 2}, "attempts": []}
    with pytest.raises(BadInput, match="has no task 'b'; its tasks: a"):
        instance_story(doc, "b", 0)
    for bad in (2, -1, True, "0"):
        with pytest.raises(BadInput, match="instances 0..1"):
            instance_story(doc, "a", bad)
    assert instance_story(doc, "a", 1)["state"] == "not started"


def test_read_attempts_of_a_missing_or_damaged_record_is_a_clear_error(tmp_path):
    from fuxi.errors import JobNotFound

    with pytest.raises(JobNotFound, match="no record"):
        read_attempts(str(tmp_path), "j")
    (tmp_path / "j.attempts.json").write_text("{nope")
    with pytest.raises(JobNotFound, match="damaged"):
        read_attempts(str(tmp_path), "j")
    (tmp_path / "j.attempts.json").write_text("[]")
    with pytest.raises(JobNotFound, match="not a record"):
        read_attempts(str(tmp_path), "j")


def test_a_service_replicas_story_from_forwarded_core_events():
    class Core:  # the two attributes of fuxi.core.servicecore.ServiceCore it reads
        events: list = []
        events_total = 0
    core = Core()
    seq = events.LOG.last_seq()
    core.events = ["1.0 registered version 1 with 2 replicas", "2.0 web-1 (1) ready on abc",
                   "3.0 web-2 (1) ready on def", "4.0 web-1 (1) died: killed"]
    core.events_total = 4
    seen: dict = {}
    clusterlog.forward_service_events("web", core, seen)
    clusterlog.forward_service_events("web", core, seen)  # nothing new: nothing sent twice
    got = [dict(e.to_dict(), id=i) for i, e in enumerate(events.LOG.since(seq))]
    assert [e["kind"] for e in got] == ["service_registered", "replica_ready", "replica_ready",
                                        "replica_died"]
    s = service_story("web", "1", got)
    assert s["replica"] == "web-1" and [e["kind"] for e in s["events"]] == ["replica_ready",
                                                                            "replica_died"]
    with pytest.raises(BadInput):
        service_story("web", "", got)


# ------------------------------------------------------------ the CLI's bad input


@pytest.mark.parametrize("args, match", [
    (["events", "--since", "yesterday"], "--since 'yesterday'"),
    (["events", "--since", "-5m"], "expected an event id"),
    (["events", "--since", "99999d"], "at most 3650d"),
    (["events", "--kind", "Node Lost"], "event kind 'Node Lost'"),
    (["events", "--limit", "0"], "--limit 0"),
    (["explain", "service", "web", "--replica", ""], "--replica ''"),
])
def test_cli_bad_input_exits_2_with_the_reason(args, match, tmp_path, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert match in r.output


def test_cli_reads_the_files_of_a_stopped_cluster(tmp_path, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    d = tmp_path / "default" / "events"
    f = eventfile.EventFile(str(d))
    f.append([rec(1, "node_lost"), rec(2, "job_failed", job="x")])
    f.close()
    with open(d / "events.jsonl", "ab") as raw:
        raw.write(b'{"id": 3, "ki')
    r = CliRunner().invoke(app, ["events", "--json", "--kind", "job_*"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [x["id"] for x in lines] == [2]
    assert "1 damaged line(s) skipped" in r.output
    r = CliRunner().invoke(app, ["events", "--since", "1"])
    assert r.exit_code == 0 and "#2 " in r.output and "#1 " not in r.output
    r = CliRunner().invoke(app, ["events", "--follow"])
    assert r.exit_code == 2 and "--follow needs a running cluster" in r.output


def test_follow_prints_one_json_object_per_line_and_exits_130_on_ctrl_c(monkeypatch):
    import contextlib

    import cli.job
    from cli.main import app

    class Following:  # stands in for the cluster's client: CLI plumbing only
        def follow_events(self, since_id, since_at, kinds, wait_s):
            assert (since_id, kinds) == (7, ["job_*"])
            yield rec(8, "job_submitted")
            yield rec(9, "job_failed")
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.job, "jobs_client", lambda cluster: contextlib.nullcontext(Following()))
    r = CliRunner().invoke(app, ["events", "--follow", "--json", "--since", "7", "-k", "job_*"])
    assert r.exit_code == 130, r.output
    assert [json.loads(x)["id"] for x in r.stdout.splitlines()] == [8, 9]


def test_timeline_and_explain_of_a_job_on_a_stopped_cluster(tmp_path, monkeypatch):
    from cli.main import app
    from fuxi.io.store import FileStore

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    core, _ = straggler_job()
    acts = core.tick(2.1)
    where, key = pushed(acts)[0]
    run(core, where, key, 2.2)
    finish(core, where, ok(key, duration_s=0.5), 2.7)
    d = tmp_path / "default"
    FileStore(str(d / "state")).put("/jobs/j/status", {"job_id": "j", "state": "succeeded"})
    (d / "logs").mkdir(parents=True)
    JobStory("j").write(core, str(d / "logs" / "j.attempts.json"))
    out = tmp_path / "trace.json"
    r = CliRunner().invoke(app, ["job", "timeline", "j", "--out", str(out)])
    assert r.exit_code == 0 and "5 attempt(s)" in r.output, r.output
    trace = json.loads(out.read_text())
    assert sum(e["cat"] == "backup" for e in trace["traceEvents"] if e["ph"] == "X") == 1
    r = CliRunner().invoke(app, ["explain", "job", "j", "--task", "a", "--instance", "3", "--json"])
    assert r.exit_code == 0, r.output
    story = json.loads(r.stdout)
    assert story["winner"] == 1 and story["attempts"][1]["backup"]
    r = CliRunner().invoke(app, ["explain", "job", "j", "--task", "a", "--instance", "3"])
    assert "backup 1 on node n" in r.output and "attempt 1 won" in r.output
    for args, match in [(["--task", "b", "--instance", "0"], "has no task 'b'"),
                        (["--task", "a", "--instance", "9"], "instances 0..3")]:
        r = CliRunner().invoke(app, ["explain", "job", "j", *args])
        assert r.exit_code == 2 and match in r.output, r.output
    r = CliRunner().invoke(app, ["job", "timeline", "j", "--out", str(tmp_path / "no" / "t.json")])
    assert r.exit_code == 2 and "cannot write it" in r.output
