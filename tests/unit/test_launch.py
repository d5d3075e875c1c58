"""A job's launch record (fuxi.core.launch, kept by fuxi.shells.jobrecords/recovery): what a
FuxiMaster that adopted a job after a restart needs to start its dead JobMaster again. It
round-trips a real plan exactly; refuses (and says so) a plan too big or not JSON-faithful;
and whatever the store hands back -- garbage, a half-written file, another version, a
tampered body -- is a clear reason, never an exception out of a starting FuxiMaster."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fuxi.core import launch
from fuxi.core.plan import PlanFacts, build_plan, with_preferred_nodes
from fuxi.core.spec import spec_from_dict
from fuxi.io.store import FileStore, MemoryStore
from fuxi.shells import jobrecords

FNS = "tests.unit.specfns"


def three_stage(n_files: int = 3, **extra):
    spec = spec_from_dict({
        "name": "three", "params": {"n": 3, "tag": "x", "nested": {"a": [1, 2.5, None]}},
        "priority": 70, "queue": "etl", "retry_backoff_s": 0.5,
        "speculation": {"enabled": False, "slowdown": 3.0},
        "faults": {"attempt_fail_fraction": 0.05, "seed": 7},
        "tasks": {
            "gen": {"fn": f"{FNS}:ok_fn", "input": "/data/*.txt", "resources": {"cpu": 1}},
            "shuffle": {"fn": f"{FNS}:other_fn", "instances": 3, "depends_on": ["gen"],
                        "partition_by": ["key"], "max_retries": 2},
            "sum": {"fn": f"{FNS}:ok_fn", "instances": 3, "depends_on": ["shuffle"],
                    "shuffle": "one_to_one", "output": "/out/sum", "timeout_s": 60}},
        **extra})
    files = tuple((f"/data/f{i}.txt",) for i in range(n_files))
    plan = build_plan(spec, PlanFacts(inputs={"gen": files}, outputs={"sum": "/out/sum"}),
                      overwrite=True)
    return with_preferred_nodes(plan, {"gen": tuple(("node-a",) for _ in range(n_files))})


def resign(doc: dict) -> dict:
    """A record whose body was changed by someone who also fixed the checksum: only the
    field checks stand between it and a JobMaster."""
    doc = copy.deepcopy(doc)
    try:
        raw = json.dumps(doc["body"], sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # infinity: no checksum can cover it (decode says "not plain JSON")
        return doc
    doc["sha256"] = hashlib.sha256(raw.encode()).hexdigest()
    return doc


def test_a_three_stage_plan_round_trips_exactly():
    plan = three_stage()
    doc = launch.encode("j-1", plan, "alice", ["/home/alice/jobs", "/opt/lib"])
    json.dumps(doc)  # a store value: plain JSON
    back = launch.decode(json.loads(json.dumps(doc)), "j-1")
    assert back.plan == plan
    assert back.user == "alice" and back.sys_path == ("/home/alice/jobs", "/opt/lib")
    assert back.plan.faults.seed == 7 and back.plan.speculation.slowdown == 3.0
    assert back.plan.task("gen").preferred_nodes == (("node-a",),) * 3
    assert "password" not in json.dumps(doc) and "token" not in json.dumps(doc)


def test_a_plan_too_big_to_keep_is_refused_with_the_limit_named():
    plan = three_stage(n_files=launch.LAUNCH_RECORD_BYTES_MAX // 20)
    with pytest.raises(launch.NotPersistable, match="LAUNCH_RECORD_BYTES_MAX"):
        launch.encode("j-1", plan, "alice", [])


def test_the_size_limit_counts_the_record_as_a_store_writes_it():
    import dataclasses

    # Many tiny values: the store's JSON (", " and ": ") is half again the compact form.
    n = launch.LAUNCH_RECORD_BYTES_MAX // 3
    plan = dataclasses.replace(three_stage(), params={"zeros": [0] * n})
    assert len(json.dumps({"zeros": [0] * n}, separators=(",", ":"))) < launch.LAUNCH_RECORD_BYTES_MAX
    with pytest.raises(launch.NotPersistable, match="LAUNCH_RECORD_BYTES_MAX"):
        launch.encode("j-1", plan, None, [])


def test_a_store_that_refuses_the_record_leaves_the_marker(monkeypatch):
    from fuxi.errors import LimitExceeded

    store, put = MemoryStore(), MemoryStore.put

    def small_put(self, key, value):
        if len(json.dumps(value)) > 1000:
            raise LimitExceeded("value over 1000 bytes")
        put(self, key, value)

    monkeypatch.setattr(MemoryStore, "put", small_put)
    why = jobrecords.persist_launch(store, "j-1", three_stage(), "alice", [])
    assert "store refused" in why and "over 1000 bytes" in why
    assert "store refused" in jobrecords.load_launch(store, "j-1")[1]


def test_a_plan_json_cannot_keep_is_refused():
    import dataclasses

    plan = dataclasses.replace(three_stage(), params={"pair": (1, 2)})  # comes back a list
    with pytest.raises(launch.NotPersistable, match="does not come back equal"):
        launch.encode("j-1", plan, None, [])
    with pytest.raises(launch.NotPersistable, match="plain JSON"):
        launch.encode("j-1", dataclasses.replace(plan, params={"x": object()}), None, [])
    with pytest.raises(launch.NotPersistable, match="LAUNCH_SYS_PATH_MAX"):
        launch.encode("j-1", three_stage(), None, ["/p"] * (launch.LAUNCH_SYS_PATH_MAX + 1))
    with pytest.raises(launch.NotPersistable):
        launch.encode("j-1", "not a plan", None, [])  # a hostile submitter's pickled object


@pytest.mark.parametrize("change, says", [
    (lambda d: d.update(v=2), "format 2"),                      # a newer FuxiMaster wrote it
    (lambda d: d.update(v=0), "format 0"),                      # an older one
    (lambda d: d.pop("v"), "format None"),
    (lambda d: d.update(job_id="other"), "not 'j-1'"),
    (lambda d: d.update(extra=1), "expected the fields"),
    (lambda d: d["body"]["plan"].update(name="evil"), "checksum"),  # damaged, not re-signed
    (lambda d: d.update(sha256="0" * 64), "checksum"),
    (lambda d: d.update(body=None), "checksum"),
])
def test_a_record_from_another_version_or_damaged_is_refused_with_a_reason(change, says):
    doc = launch.encode("j-1", three_stage(), "alice", [])
    change(doc)
    with pytest.raises(launch.BadLaunch, match=says):
        launch.decode(doc, "j-1")


@pytest.mark.parametrize("change, says", [
    (lambda b: b["plan"]["tasks"][1]["upstream"][0].__setitem__(0, "nope"), "not from an earlier"),
    (lambda b: b["plan"]["tasks"].reverse(), "earlier task"),
    (lambda b: b["plan"]["tasks"][0]["inputs"].pop(), "input lists for"),
    (lambda b: b["plan"]["tasks"][2]["upstream"][0].__setitem__(4, 9), "partitions"),
    (lambda b: b["plan"]["tasks"][2]["upstream"][0].__setitem__(2, "zip"), "mode"),
    (lambda b: b["plan"]["tasks"][1].__setitem__("num_instances", -1), "num_instances"),
    (lambda b: b["plan"]["tasks"][1].__setitem__("timeout_s", "soon"), "timeout_s"),
    (lambda b: b["plan"]["tasks"][0]["shape"].__setitem__("CPU", -1), "shape"),
    (lambda b: b["plan"]["tasks"].append(copy.deepcopy(b["plan"]["tasks"][0])), "same name"),
    (lambda b: b["plan"].__setitem__("tasks", []), "at least one task"),
    (lambda b: b["plan"]["speculation"].__setitem__("slowdown", 0.1), "slowdown"),
    (lambda b: b["plan"]["faults"].__setitem__("seed", "x"), "seed"),
    (lambda b: b["plan"].__setitem__("overwrite", "yes"), "overwrite"),
    (lambda b: b.__setitem__("user", 5), "user"),
    (lambda b: b.__setitem__("sys_path", "/a"), "sys_path"),
    (lambda b: b["plan"].pop("queue"), "expected the fields"),
])
def test_a_tampered_but_re_signed_body_fails_the_field_checks(change, says):
    doc = launch.encode("j-1", three_stage(), "alice", [])
    change(doc["body"])
    with pytest.raises(launch.BadLaunch, match=says):
        launch.decode(resign(doc), "j-1")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=4)
                     | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)


def _paths(node, at=()):
    yield at
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, at + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, at + (i,))


BASE = launch.encode("j-1", three_stage(), "alice", ["/a"])
BODY_PATHS = [p for p in _paths(BASE["body"]) if p]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BODY_PATHS), _json)
def test_any_value_anywhere_in_the_body_decodes_or_is_a_bad_launch(path, value):
    doc = copy.deepcopy(BASE)
    node = doc["body"]
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    try:
        got = launch.decode(resign(doc), "j-1")
    except launch.BadLaunch:
        return
    assert isinstance(got.plan.tasks, tuple) and got.plan.tasks  # a usable plan, or refused


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_document_is_a_launch_or_a_bad_launch(doc):
    try:
        launch.decode(doc, "j-1")
    except launch.BadLaunch:
        pass


# ------------------------------------------------------------ in the store (jobrecords)

@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else FileStore(str(tmp_path / "state"))


def test_persist_and_load_round_trip_in_the_store(store):
    plan = three_stage()
    assert jobrecords.persist_launch(store, "j-1", plan, "alice", ["/a"]) is None
    got, why = jobrecords.load_launch(store, "j-1")
    assert why == "" and got.plan == plan and got.user == "alice"


def test_a_plan_too_big_leaves_a_marker_that_says_why(store):
    plan = three_stage(n_files=launch.LAUNCH_RECORD_BYTES_MAX // 20)
    why = jobrecords.persist_launch(store, "j-1", plan, "alice", [])
    assert "LAUNCH_RECORD_BYTES_MAX" in why
    got, why2 = jobrecords.load_launch(store, "j-1")
    assert got is None and "not kept at submit" in why2 and "LAUNCH_RECORD_BYTES_MAX" in why2


def test_missing_garbage_and_half_written_records_are_reasons_not_exceptions(tmp_path):
    fs = FileStore(str(tmp_path / "state"))
    got, why = jobrecords.load_launch(fs, "j-1")
    assert got is None and "no launch record" in why
    jobrecords.persist_launch(fs, "j-1", three_stage(), "alice", [])
    path = os.path.join(fs.root, "jobs", "j-1", "launch.json")
    data = open(path, "rb").read()
    with open(path, "wb") as f:  # a crash in the middle of a non-atomic copy
        f.write(data[: len(data) // 2])
    got, why = jobrecords.load_launch(fs, "j-1")
    assert got is None and "does not parse" in why
    with open(path, "wb") as f:
        f.write(b"\xff\xfe garbage")
    assert "does not parse" in jobrecords.load_launch(fs, "j-1")[1]
    fs.put("/jobs/j-1/launch", [1, 2, 3])
    assert "unusable" in jobrecords.load_launch(fs, "j-1")[1]


def test_a_damaged_status_never_stops_a_starting_master(tmp_path):
    fs = FileStore(str(tmp_path / "state"))
    fs.put("/jobs/ok/status", {"job_id": "ok", "state": "succeeded", "submitted_at": 2.0})
    fs.put("/jobs/ok/launch", {"left": "over"})  # it ended as the old FuxiMaster died
    fs.put("/jobs/run/status", {"job_id": "run", "state": "running", "submitted_at": 3.0})
    jobrecords.persist_launch(fs, "run", three_stage(), "alice", [])
    os.makedirs(os.path.join(fs.root, "jobs", "bad"))
    with open(os.path.join(fs.root, "jobs", "bad", "status.json"), "wb") as f:
        f.write(b'{"job_id": "bad", "sta')  # half-written
    fs.put("/jobs/list/status", ["not", "a", "mapping"])
    owners, queues = {}, {}
    assert jobrecords.restore_records(fs, {"run"}, owners, queues) == set()  # no exception
    assert set(owners) == {"ok", "run"}
    assert fs.get("/jobs/ok/launch") is None  # trimmed: the job ended
    assert fs.get("/jobs/run/launch") is not None  # adopted: kept
    assert [j for j, _ in jobrecords.statuses(fs)] == ["ok", "run"]
    # Dropping the oldest: the damaged records go first, with their launch records.
    dropped = jobrecords.drop_old_records(fs, 2)
    assert set(dropped) == {"bad", "list"}
    assert jobrecords.drop_old_records(fs, 1) == ["ok"]
    assert fs.list("/jobs/ok/") == []


# ------------------------------------------------------------ FuxiMaster's side (recovery)

class FakeLedger:
    def release_job(self, job_id):
        pass


class Master:
    """What MasterRecovery uses of FuxiMaster: its stores and how it starts a JobMaster."""

    def __init__(self, store, log_dir):
        from fuxi.shells.offloop import AsyncStore, OffLoop

        self.store, self.log_dir = store, log_dir
        self.astore = AsyncStore(store, OffLoop("test-store", 2))
        self.jobmasters, self.demands, self.ledger = {}, {}, FakeLedger()
        self.seq, self.submit_seq = 0, {}
        self.started = []

    def _start(self, job_id, plan, who, sys_path, resume=None):
        self.started.append((job_id, plan, who, sys_path, resume))


def run(coro):
    return asyncio.run(coro)


def _adopted_master(tmp_path, record=None):
    from fuxi.shells.recovery import MasterRecovery

    fs = FileStore(str(tmp_path / "state"))
    m = Master(fs, str(tmp_path / "logs"))
    m.recovery = MasterRecovery(m)
    fs.put("/jobs/j-1/status", {"job_id": "j-1", "state": "running", "submitted_at": 1.0})
    if record is not None:
        fs.put("/jobs/j-1/launch", record)
    m.jobmasters["j-1"] = object()
    return m


def test_an_adopted_job_with_its_launch_record_is_restarted_as_its_user(tmp_path):
    import ray.exceptions

    plan = three_stage()
    m = _adopted_master(tmp_path, launch.encode("j-1", plan, "alice", ["/a"]))

    async def go():
        await m.recovery.adopt("j-1")
        assert m.recovery.view("j-1") == {"restartable": True, "after_master_restart": True,
                                          "why_not": ""}
        return await m.recovery.restart("j-1", ray.exceptions.ActorDiedError())

    assert run(go()) is None
    ((jid, got, who, sys_path, resume),) = m.started
    assert (jid, got, who, sys_path) == ("j-1", plan, "alice", ["/a"])
    assert resume["gen"] == 1
    assert m.store.get("/jobs/j-1/status")["jobmaster_restarts"] == 1


@pytest.mark.parametrize("record, says", [
    (None, "no launch record"),
    ({"v": 99, "job_id": "j-1", "sha256": "", "body": {}}, "format 99"),
    ({"v": 1, "job_id": "j-1", "not_kept": "too big"}, "not kept at submit: too big"),
])
def test_an_adopted_job_whose_record_is_unusable_fails_with_the_reason(tmp_path, record, says):
    import ray.exceptions

    m = _adopted_master(tmp_path, record)

    async def go():
        await m.recovery.adopt("j-1")
        view = m.recovery.view("j-1")
        assert view["restartable"] is False and says in view["why_not"]
        return await m.recovery.restart("j-1", ray.exceptions.ActorDiedError())

    why = run(go())
    assert "not restarted after FuxiMaster's restart" in why and says in why
    assert m.started == []


def test_a_restart_that_comes_while_the_record_loads_waits_for_it(tmp_path):
    import ray.exceptions

    m = _adopted_master(tmp_path, launch.encode("j-1", three_stage(), "alice", []))

    async def go():
        loading = asyncio.ensure_future(m.recovery.adopt("j-1"))
        await asyncio.sleep(0)  # the load started; the JobMaster dies at once
        why = await m.recovery.restart("j-1", ray.exceptions.ActorDiedError())
        await loading
        return why

    assert run(go()) is None and len(m.started) == 1


def test_a_job_whose_jobmaster_died_while_no_master_listened_is_an_orphan(tmp_path):
    """Its record says it ran, its JobMaster is not alive: with a launch record it is handed
    back to be resumed; without one it failed, as before."""
    fs = FileStore(str(tmp_path / "state"))
    for jid in ("kept", "lost"):
        fs.put(f"/jobs/{jid}/status", {"job_id": jid, "state": "running", "submitted_at": 1.0})
    jobrecords.persist_launch(fs, "kept", three_stage(), "alice", [])
    assert jobrecords.restore_records(fs, set(), {}, {}) == {"kept"}
    assert fs.get("/jobs/kept/status")["state"] == "running"
    assert fs.get("/jobs/lost/status")["state"] == "failed"


@pytest.mark.parametrize("record, says", [
    ("good", None),
    ({"v": 1, "job_id": "j-1", "not_kept": "too big"}, "not kept at submit: too big"),
    ({"v": 1, "job_id": "j-1", "sha256": "x", "body": {}}, "checksum"),
])
def test_an_orphan_is_resumed_from_its_launch_record_or_failed_with_the_reason(tmp_path, record,
                                                                              says):
    plan = three_stage()
    m = _adopted_master(tmp_path, launch.encode("j-1", plan, "alice", ["/a"])
                        if record == "good" else record)
    del m.jobmasters["j-1"]  # gone while no FuxiMaster listened
    fs = m.store
    fs.put("/jobs/j-1/ckpt/g0-1", {"records": [{"task": "gen"}]})
    why = run(m.recovery.restart_orphan("j-1"))
    st = fs.get("/jobs/j-1/status")
    if says is None:
        assert why is None and st["state"] == "running" and st["jobmaster_restarts"] == 1
        ((jid, got, who, sys_path, resume),) = m.started
        assert (got, who, resume["gen"], len(resume["records"])) == (plan, "alice", 1, 1)
        assert "gone while FuxiMaster was down" in st["report"]
    else:
        assert m.started == [] and says in why
        assert st["state"] == "failed" and says in st["report"], st
        assert fs.list("/jobs/j-1/ckpt/") == [] and fs.get("/jobs/j-1/launch") is None


def test_persist_at_submit_and_the_status_view(tmp_path):
    from fuxi.shells.recovery import MasterRecovery, discard

    for store in (MemoryStore(), FileStore(str(tmp_path / "s"))):
        m = Master(store, str(tmp_path / "logs"))
        m.recovery = MasterRecovery(m)
        run(m.recovery.persist("j-1", three_stage(), type("P", (), {"user": "bob"})(), []))
        run(m.recovery.persist("j-2", three_stage(n_files=launch.LAUNCH_RECORD_BYTES_MAX // 20),
                               "bob", []))
        m.recovery.launched("j-1", three_stage(), "bob", [])
        m.recovery.launched("j-2", three_stage(), "bob", [])
        v1, v2 = m.recovery.view("j-1"), m.recovery.view("j-2")
        assert v1["restartable"] and v2["restartable"]  # this FuxiMaster holds both plans
        assert "LAUNCH_RECORD_BYTES_MAX" in v2["why_not"] and not v2["after_master_restart"]
        if isinstance(store, MemoryStore):  # nothing outlives this FuxiMaster
            assert not v1["after_master_restart"] and "in memory" in v1["why_not"]
        else:
            assert v1 == {"restartable": True, "after_master_restart": True, "why_not": ""}
        assert jobrecords.load_launch(store, "j-1")[0].user == "bob"
        discard(store, "j-1", None)  # the job ended: its launch record goes
        assert store.get("/jobs/j-1/launch") is None


def test_job_status_says_when_a_job_is_not_recoverable(monkeypatch):
    from cli import job as cli_job
    from cli.main import app

    st = {"job_id": "j-1", "name": "j", "state": "running", "tasks": {}, "report": "",
          "recovery": {"restartable": True, "after_master_restart": False,
                       "why_not": "the launch record would be 900000 bytes"}}
    monkeypatch.setattr(cli_job, "_query", lambda cluster, call: st)
    res = CliRunner().invoke(app, ["job", "status", "j-1"])
    assert res.exit_code == 0, res.output
    assert "not recoverable after a FuxiMaster restart: the launch record would be" in res.output
    st["recovery"] = {"restartable": False, "after_master_restart": False, "why_not": "gone"}
    res = CliRunner().invoke(app, ["job", "status", "j-1"])
    assert "would not be restarted if it died (gone)" in res.output
    st["recovery"] = {"restartable": True, "after_master_restart": True, "why_not": ""}
    assert "recoverable" not in CliRunner().invoke(app, ["job", "status", "j-1"]).output
