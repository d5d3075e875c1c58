"""Checkpoints and resume (issue 16 part 4), pure: a JobCore emits a Checkpoint per finished
instance; a new core built from the records a dead JobMaster left carries on without running
those instances again; garbage records are refused with a report and their instances run
again -- never read as data. Plus the shell's checkpoint files (write, read back, damage)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from fuxi.core import checkpoint as ck
from fuxi.core.jobcore import AttemptResult, Checkpoint, Commit, JobCore, JobDone, Push
from fuxi.core.plan import Edge, JobPlan, TaskPlan
from fuxi.core.speculation import SpeculationPolicy
from fuxi.core.states import InstanceState, JobState

CPU1 = {"CPU": 1.0}
SK = "CPU=1"
ROOT = "/data/ckpt/j"
SHA = "ab" * 32


def three_stage(checkpoint: bool = True) -> JobPlan:
    """gen (2) --hash--> shuffle (3) --one_to_one--> sum (3, output)."""
    e1 = Edge("gen", "shuffle", "hash", ("k",), 3)
    e2 = Edge("shuffle", "sum", "one_to_one", (), 3)

    def t(name, n, up=(), down=(), output=None):
        return TaskPlan(name=name, fn="m:f", num_instances=n, inputs=((),) * n, shape=dict(CPU1),
                        max_retries=1, timeout_s=600.0, upstream=up, downstream=down,
                        output=output)

    return JobPlan(name="three", tasks=(t("gen", 2, down=(e1,)),
                                        t("shuffle", 3, up=(e1,), down=(e2,)),
                                        t("sum", 3, up=(e2,), output="/out")),
                   speculation=SpeculationPolicy(enabled=False), checkpoint=checkpoint)


def of(acts, cls):
    return [a for a in acts if isinstance(a, cls)]


def start(core, n=2, now=0.0):
    acts = []
    wids = [sw.worker_id for sw in core.slots_granted(SK, CPU1, "n1", n, now)]
    for w in wids:
        acts += core.worker_started(w, now)
    return wids, acts


def specs(acts):
    return [s for p in of(acts, Push) for s in p.attempts]


def finish(core, acts, now):
    """Let every pushed attempt succeed (outputs: one fake ref per expected part) until the
    job ends; returns every action."""
    out = list(acts)
    pending = specs(acts)
    while pending and not core.done():
        spec = pending.pop(0)
        parts = ck.expected_parts(core.plan, spec.task, spec.instance)
        res = AttemptResult(key=spec.key, ok=True, duration_s=1.0,
                            outputs={p: f"ref:{spec.task}{spec.instance}->{p}" for p in parts})
        wid = core.attempts[spec.key].worker_id
        new = core.worker_report(wid, [], [res], now)
        core.validate_state()
        out += new
        pending += specs(new)
    return out


def record(task, instance, parts=None, committed=False, **over):
    plan = three_stage()
    if parts is None:
        want = sorted(ck.expected_parts(plan, task, instance))
        parts = [[c, p, i, 1] for i, (c, p) in enumerate(want)]
    rec = {"v": 1, "task": task, "instance": instance, "attempt": 0, "gen": 0, "node": "n1",
           "committed": committed, "file": f"{ROOT}/{task}-{instance}.arrow" if parts else None,
           "bytes": 100, "sha256": SHA if parts else "", "parts": parts}
    rec.update(over)
    return rec


# ---------------------------------------------------------------- the records a core asks for


def test_every_finished_instance_asks_for_a_checkpoint_after_its_commit():
    core = JobCore("j", three_stage(), 0.0)
    _, acts = start(core)
    acts = finish(core, acts, 1.0)
    cps = of(acts, Checkpoint)
    assert sorted((c.task, c.instance) for c in cps) == sorted(
        [("gen", 0), ("gen", 1), ("shuffle", 0), ("shuffle", 1), ("shuffle", 2),
         ("sum", 0), ("sum", 1), ("sum", 2)])
    gen0 = next(c for c in cps if (c.task, c.instance) == ("gen", 0))
    assert set(gen0.outputs) == {("shuffle", 0), ("shuffle", 1), ("shuffle", 2)}
    assert not gen0.commit
    for c in (c for c in cps if c.task == "sum"):  # the record comes after the commit
        i_commit = next(i for i, a in enumerate(acts) if isinstance(a, Commit)
                        and (a.task, a.instance) == (c.task, c.instance))
        assert c.commit and i_commit < acts.index(c)
    assert core.state is JobState.SUCCEEDED


def test_a_job_with_checkpoint_off_asks_for_none():
    core = JobCore("j", three_stage(checkpoint=False), 0.0)
    _, acts = start(core)
    assert not of(finish(core, acts, 1.0), Checkpoint)


# ---------------------------------------------------------------- resume


def test_resume_after_the_first_stage_runs_only_the_rest_and_reads_recovered_parts():
    plan = three_stage()
    records, problems = ck.parse_records(plan, [record("gen", 0), record("gen", 1)], ROOT)
    assert problems == [] and set(records) == {("gen", 0), ("gen", 1)}
    core, acts = ck.resumed_core("j", plan, 0.0, records, gen=1)
    assert acts == []
    core.validate_state()
    assert [i.state for i in core.instances["gen"]] == [InstanceState.SUCCEEDED] * 2
    assert [i.state for i in core.instances["shuffle"]] == [InstanceState.READY] * 3
    _, acts = start(core, n=3)
    first = specs(acts)
    assert sorted(s.task for s in first) == ["shuffle"] * 3  # gen is not run again
    s1 = next(s for s in first if s.instance == 1)
    assert [(u.task, u.instance, u.consumer, u.partition) for u in s1.upstream] == [
        ("gen", 0, "shuffle", 1), ("gen", 1, "shuffle", 1)]
    assert all(isinstance(u, ck.DurablePart) and u.file.startswith(ROOT) for u in s1.upstream)
    acts = finish(core, acts, 1.0)
    st = core.status(2.0)
    assert core.state is JobState.SUCCEEDED and st["jobmaster_restarts"] == 1
    assert (st["tasks"]["gen"]["recovered"], st["tasks"]["gen"]["attempts"]) == (2, 0)
    assert (st["tasks"]["shuffle"]["recovered"], st["tasks"]["shuffle"]["rerun"]) == (0, 3)
    assert st["tasks"]["sum"]["succeeded"] == 3


def test_resume_of_part_of_a_stage_mixes_recovered_and_new_outputs():
    plan = three_stage()
    records, _ = ck.parse_records(plan, [record("gen", 1)], ROOT)
    core, _ = ck.resumed_core("j", plan, 0.0, records, gen=1)
    assert [i.state for i in core.instances["shuffle"]] == [InstanceState.WAITING] * 3
    _, acts = start(core, n=2)
    assert [s.key for s in specs(acts)] == [("gen", 0, 0)]
    res = AttemptResult(key=("gen", 0, 0), ok=True, duration_s=1.0,
                        outputs={("shuffle", p): f"new{p}" for p in range(3)})
    acts = core.worker_report(core.attempts[("gen", 0, 0)].worker_id, [], [res], 1.0)
    core.validate_state()
    s0 = next(s for s in specs(acts) if s.key[:2] == ("shuffle", 0))
    assert s0.upstream[0] == "new0" and isinstance(s0.upstream[1], ck.DurablePart)
    gen = core.status(1.0)["tasks"]["gen"]
    assert (gen["recovered"], gen["rerun"], gen["succeeded"]) == (1, 1, 2)


def test_a_job_whose_every_instance_is_recovered_ends_at_once():
    plan = three_stage()
    raws = [record(t, i, committed=(t == "sum")) for t, n in (("gen", 2), ("shuffle", 3), ("sum", 3))
            for i in range(n)]
    for r in raws:
        if r["task"] == "sum":
            r.update(parts=[], file=None, sha256="")
    records, problems = ck.parse_records(plan, raws, ROOT)
    assert problems == [] and len(records) == 8
    core, acts = ck.resumed_core("j", plan, 0.0, records, gen=2)
    assert of(acts, JobDone) and core.state is JobState.SUCCEEDED
    assert sum(t["recovered"] for t in core.status(0.0)["tasks"].values()) == 8


def test_a_recovered_consumer_is_not_made_ready_again_when_its_producers_finish():
    plan = three_stage()
    records, _ = ck.parse_records(plan, [record("gen", 0), record("shuffle", 2)], ROOT)
    core, _ = ck.resumed_core("j", plan, 0.0, records, gen=1)
    _, acts = start(core, n=2)
    acts = finish(core, acts, 1.0)  # raises IllegalTransition if shuffle[2] were resurrected
    assert core.state is JobState.SUCCEEDED
    ran = {(s.task, s.instance) for s in specs(acts)}
    assert ("shuffle", 2) not in ran and ("gen", 0) not in ran and ("gen", 1) in ran


def test_a_resume_with_no_usable_record_runs_everything_and_says_so():
    core, _ = ck.resumed_core("j", three_stage(), 0.0, {}, gen=1)
    _, acts = start(core)
    finish(core, acts, 1.0)
    st = core.status(2.0)
    assert st["jobmaster_restarts"] == 1 and st["state"] == "succeeded"
    assert {n: (t["recovered"], t["rerun"]) for n, t in st["tasks"].items()} == {
        "gen": (0, 2), "shuffle": (0, 3), "sum": (0, 3)}


# ---------------------------------------------------------------- garbage records


GARBAGE = [
    ("not a mapping", "a record is a mapping"),
    ({**record("gen", 0), "v": 7}, "format v=7"),
    ({**record("gen", 0), "task": "nope"}, "is not a task"),
    ({**record("gen", 0), "instance": 2}, "instance=2"),
    ({**record("gen", 0), "instance": True}, "instance=True"),
    ({**record("gen", 0), "attempt": -1}, "attempt=-1"),
    ({**record("gen", 0), "sha256": "xyz"}, "sha256="),
    ({**record("gen", 0), "file": "/etc/passwd"}, "not inside"),
    ({**record("gen", 0), "file": f"{ROOT}/../../etc/passwd"}, "not inside"),
    (record("gen", 0, parts=[["nosuch", 0, 0, 1]]), "expected none"),  # not a consumer
    (record("gen", 0, parts=[["sum", 0, 0, 1], ["sum", 1, 1, 1], ["sum", 2, 2, 1]]), "expected"),
    (record("gen", 0, parts=[["shuffle", 0, 0, 1]] * 3), "expected"),  # duplicates
    (record("gen", 0, parts=[["shuffle", 0, -1, 1]]), "part"),
    ({**record("sum", 0), "committed": False, "parts": [], "file": None}, "has output"),
    ({**record("gen", 0), "committed": True}, "has no output"),
    ({**record("gen", 0), "parts": "x"}, "parts must be a list"),
    ({**record("gen", 0), "node": 5}, "node=5"),
]


@pytest.mark.parametrize("raw,why", GARBAGE, ids=[w for _, w in GARBAGE])
def test_a_garbage_record_is_refused_with_a_reason_and_its_instance_runs_again(raw, why):
    plan = three_stage()
    records, problems = ck.parse_records(plan, [raw], ROOT)
    assert records == {} and len(problems) == 1 and why in problems[0], problems
    core, acts = ck.resumed_core("j", plan, 0.0, records, gen=1)
    _, acts = start(core)
    assert sorted(s.key for s in specs(acts)) == [("gen", 0, 0), ("gen", 1, 0)]


def test_a_checkpoint_that_is_not_a_list_is_ignored_with_a_report():
    records, problems = ck.parse_records(three_stage(), {"records": []}, ROOT)
    assert records == {} and "not a list" in problems[0]


def test_the_report_of_many_bad_records_is_bounded():
    raws = ["junk"] * (ck.CKPT_REPORT_LINES_MAX * 3)
    records, problems = ck.parse_records(three_stage(), raws, ROOT)
    assert records == {} and len(problems) == ck.CKPT_REPORT_LINES_MAX + 1
    assert problems[-1] == f"{len(raws)} bad records in all"


def test_duplicate_records_of_one_instance_keep_the_first():
    raws = [record("gen", 0, attempt=3), record("gen", 0, attempt=5)]
    records, problems = ck.parse_records(three_stage(), raws, ROOT)
    assert problems == [] and records[("gen", 0)].attempt == 3


# ---------------------------------------------------------------- the shell's files


def test_checkpoint_files_round_trip_and_damage_is_detected(tmp_path):
    from fuxi.shells import recovery

    t = pa.table({"k": [1, 2, 3], "v": ["a", "b", "c"]})
    tables = {("shuffle", 0): t.slice(0, 2), ("shuffle", 1): t.slice(2), ("shuffle", 2): t.slice(0, 0)}
    root = str(tmp_path / "ckpt")
    files = recovery.write_parts(os.path.join(root, "j"), "gen-0.arrow", tables)
    raw = {"v": 1, "task": "gen", "instance": 0, "attempt": 0, "gen": 0, "node": "n1",
           "committed": False, **files}
    plan = three_stage()
    records, problems = ck.parse_records(plan, [raw], os.path.join(root, "j"))
    assert problems == []
    good, bad = recovery.verify(plan, records, os.path.join(root, "j"))
    assert bad == [] and set(good) == {("gen", 0)}
    parts = list(good[("gen", 0)].durable_parts().values())
    back = recovery.load_parts(parts)
    assert {k: v.to_pylist() for k, v in back.items()} == {k: v.to_pylist() for k, v in tables.items()}
    assert back[("shuffle", 2)].num_rows == 0 and back[("shuffle", 2)].schema == t.schema
    # One flipped byte: the record no longer describes the file -> the instance runs again.
    with open(files["file"], "r+b") as f:
        f.seek(files["bytes"] // 2)
        b = f.read(1)
        f.seek(files["bytes"] // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    good, bad = recovery.verify(plan, records, os.path.join(root, "j"))
    assert good == {} and "checksum" in bad[0]
    with pytest.raises(ValueError, match="checksum"):
        recovery.load_parts(parts)
    os.truncate(files["file"], 10)  # torn
    good, bad = recovery.verify(plan, records, os.path.join(root, "j"))
    assert good == {} and "10 bytes" in bad[0]
    os.remove(files["file"])
    good, bad = recovery.verify(plan, records, os.path.join(root, "j"))
    assert good == {} and "cannot be read" in bad[0]
    assert not [p for p in os.listdir(os.path.join(root, "j")) if p.endswith(".tmp")]


# ---------------------------------------------------------------- FuxiMaster's records


def test_fuxi_master_keeps_batches_idempotently_and_drops_malformed_ones(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from fuxi.io.store import MemoryStore
    from fuxi.shells import recovery
    from fuxi.shells.offloop import AsyncStore, OffLoop

    store = MemoryStore()
    master = SimpleNamespace(log_dir=str(tmp_path / "logs"), store=store,
                             astore=AsyncStore(store, OffLoop("t", 1)))
    rec = recovery.MasterRecovery(master)
    assert rec.root == str(tmp_path / "ckpt")
    good = {"gen": 0, "seq": 1, "records": [record("gen", 0), record("gen", 1)]}

    async def go():
        await rec.store_batch("j", good)
        await rec.store_batch("j", good)  # a resent sync: the same key, nothing doubled
        for bad in ("junk", {"gen": -1, "seq": 1, "records": []}, {"gen": 0, "seq": "x", "records": []},
                    {"gen": 0, "seq": 2, "records": [{}] * (recovery.CKPT_SYNC_RECORDS_MAX + 1)}):
            await rec.store_batch("j", bad)  # dropped with a warning, never raises
    asyncio.run(go())
    assert store.list("/jobs/j/ckpt/") == ["/jobs/j/ckpt/g0-1"]
    assert rec.stored["j"] == {"/jobs/j/ckpt/g0-1": 2}  # the resend did not count twice
    raws = recovery.load_records(store, "j")
    records, problems = ck.parse_records(three_stage(), raws, ROOT)
    assert problems == [] and set(records) == {("gen", 0), ("gen", 1)}
    d = tmp_path / "ckpt" / "j"
    d.mkdir(parents=True)
    (d / "x.arrow").write_bytes(b"x")
    recovery.discard(store, "j", str(d))
    assert store.list("/jobs/j/") == [] and not d.exists()
