"""JobMaster checkpoints (issue 16 part 4): the record of a finished instance, its checks, and
resuming a ``JobCore`` from the records a dead JobMaster left.

A record says that one instance succeeded and where its outputs are kept durably::

    {"v": 1, "task": "gen", "instance": 3, "attempt": 0, "gen": 0, "node": "<ray node id>",
     "committed": false, "file": "<ckpt root>/<job>/gen-3-g0-a0.arrow", "bytes": 1234,
     "sha256": "<hex>", "parts": [["sum", 0, 0, 1], ["sum", 1, 1, 1]]}

``parts`` lists, per (consumer task, partition), the record batches of the Arrow IPC file that
hold that piece (first batch, batch count). ``committed``: the instance's final output (a task
with ``output:``) was committed before the record was made. ``gen``: how many JobMasters ran
the job before the one that wrote it.

Records are stranger-controlled values on the way back (they come out of a store), so every
field is range-checked against the plan; a record that does not fit is ignored with a line in
the report and its instance runs again -- never read as data it does not describe. The shell
checks the files themselves (present, size, checksum) before resuming.

Resuming (``resumed_core``): recovered instances go from WAITING straight to SUCCEEDED (the
``recovered`` transition, before any instance is ready), their
outputs are ``DurablePart`` values the shell loads into the object store when a consumer is
dispatched (the shell swaps them for object references on the attempt spec it sends);
downstream tasks whose producers are all recovered become ready at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fuxi.core.states import InstanceState, JobState

I, J = InstanceState, JobState

CKPT_FORMAT_VERSION = 1
CKPT_RECORDS_MAX = 100_000  # records one job keeps (one per finished instance); more are ignored
CKPT_RECORD_PARTS_MAX = 4096  # pieces one record may name; an instance with more is not kept
CKPT_RECORD_BYTES_MAX = 256 * 1024  # one record, as JSON (the store's values are <= 1 MiB)
CKPT_REPORT_LINES_MAX = 20  # problems listed in a resume report (the rest are counted)
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class DurablePart:
    """One piece of a recovered instance's output, kept in a checkpoint file (not yet in the
    object store). The shell turns it into an object reference before a worker sees it."""

    task: str
    instance: int
    consumer: str
    partition: int
    file: str
    sha256: str
    bytes: int
    batch_start: int
    batch_count: int


@dataclass(frozen=True)
class Record:
    task: str
    instance: int
    attempt: int
    gen: int
    node: str
    committed: bool
    file: str | None
    bytes: int
    sha256: str
    parts: tuple[tuple[str, int, int, int], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"v": CKPT_FORMAT_VERSION, "task": self.task, "instance": self.instance,
                "attempt": self.attempt, "gen": self.gen, "node": self.node,
                "committed": self.committed, "file": self.file, "bytes": self.bytes,
                "sha256": self.sha256, "parts": [list(p) for p in self.parts]}

    def durable_parts(self) -> dict[tuple[str, int], DurablePart]:
        return {(c, p): DurablePart(self.task, self.instance, c, p, self.file or "", self.sha256,
                                    self.bytes, b0, n) for c, p, b0, n in self.parts}


class BadRecord(ValueError):
    """A checkpoint record that does not describe a finished instance of this plan."""


def expected_parts(plan: Any, task: str, instance: int) -> set[tuple[str, int]]:
    """The (consumer, partition) pieces a producer instance sends (``fuxi.io.shuffle``)."""
    out: set[tuple[str, int]] = set()
    for e in plan.task(task).downstream:
        if e.mode in ("hash", "direct"):
            out.update((e.consumer, p) for p in range(e.num_partitions))
        elif e.mode == "one_to_one":
            out.add((e.consumer, instance % e.num_partitions))
        else:
            out.add((e.consumer, -1))
    return out


def _int(raw: dict, name: str, lo: int, hi: int) -> int:
    v = raw.get(name)
    if type(v) is not int or not lo <= v <= hi:
        raise BadRecord(f"{name}={v!r}; expected an integer from {lo} to {hi}")
    return v


def _under(path: Any, root: str) -> bool:
    if not isinstance(path, str) or not root or not path.startswith(root.rstrip("/") + "/"):
        return False
    rest = path[len(root.rstrip("/")) + 1:]
    return bool(rest) and all(seg not in ("", ".", "..") for seg in rest.split("/"))


def parse_record(plan: Any, raw: Any, root: str, num_batches_max: int = 1 << 30) -> Record:
    """Check one stored record against ``plan``; files must lie under ``root`` (the job's
    checkpoint directory). Raises ``BadRecord`` saying what was wrong."""
    if not isinstance(raw, dict):
        raise BadRecord(f"a record is a mapping; got {type(raw).__name__}")
    if raw.get("v") != CKPT_FORMAT_VERSION:
        raise BadRecord(f"format v={raw.get('v')!r}; expected {CKPT_FORMAT_VERSION}")
    task = raw.get("task")
    names = {t.name: t for t in plan.tasks}
    if not isinstance(task, str) or task not in names:
        raise BadRecord(f"task {task!r} is not a task of this job ({sorted(names)})")
    t = names[task]
    instance = _int(raw, "instance", 0, t.num_instances - 1)
    attempt = _int(raw, "attempt", 0, 1 << 30)
    gen = _int(raw, "gen", 0, 1 << 30)
    size = _int(raw, "bytes", 0, 1 << 50)
    node = raw.get("node")
    if not isinstance(node, str) or len(node) > 256:
        raise BadRecord(f"node={node!r}; expected a node id")
    committed = raw.get("committed")
    if type(committed) is not bool or committed != bool(t.output):
        raise BadRecord(f"committed={committed!r}, but task {task!r} "
                        f"{'has' if t.output else 'has no'} output to commit")
    parts_raw = raw.get("parts")
    if not isinstance(parts_raw, list) or len(parts_raw) > CKPT_RECORD_PARTS_MAX:
        raise BadRecord(f"parts must be a list of at most {CKPT_RECORD_PARTS_MAX} pieces "
                        f"(CKPT_RECORD_PARTS_MAX)")
    parts = []
    for p in parts_raw:
        if (not isinstance(p, list) or len(p) != 4 or not isinstance(p[0], str)
                or any(type(x) is not int for x in p[1:]) or p[2] < 0 or p[3] < 0
                or p[2] + p[3] > num_batches_max):
            raise BadRecord(f"part {p!r}; expected [consumer, partition, first batch, batches]")
        parts.append((p[0], p[1], p[2], p[3]))
    got = {(c, p) for c, p, _, _ in parts}
    want = expected_parts(plan, task, instance)
    # A subset: a producer sends no piece for a partition it has no rows for (fuxi.io.shuffle).
    if len(got) != len(parts) or not got <= want:
        raise BadRecord(f"parts name {sorted(got)[:8]}...; expected none (no rows) or some of "
                        f"{sorted(want)[:8]}... for {task}[{instance}], each once")
    file = raw.get("file")
    if parts:
        sha = raw.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= _SHA256_HEX:
            raise BadRecord(f"sha256={sha!r}; expected 64 lowercase hex digits")
        if not _under(file, root):
            raise BadRecord(f"file {file!r} is not inside the job's checkpoint directory {root}")
    else:
        sha, file = "", None
    return Record(task, instance, attempt, gen, node, committed, file, size, sha, tuple(parts))


def parse_records(plan: Any, raws: list, root: str) -> tuple[dict[tuple[str, int], Record], list[str]]:
    """Every usable record (one per instance: the first found) and the problems met, one line
    each (at most CKPT_REPORT_LINES_MAX lines, then a count)."""
    good: dict[tuple[str, int], Record] = {}
    problems: list[str] = []
    bad = 0
    if not isinstance(raws, list):
        return {}, [f"checkpoint is not a list of records ({type(raws).__name__}); ignored"]
    if len(raws) > CKPT_RECORDS_MAX:
        problems.append(f"{len(raws) - CKPT_RECORDS_MAX} records beyond CKPT_RECORDS_MAX="
                        f"{CKPT_RECORDS_MAX} ignored")
    for i, raw in enumerate(raws[:CKPT_RECORDS_MAX]):
        try:
            rec = parse_record(plan, raw, root)
        except BadRecord as e:
            bad += 1
            if len(problems) < CKPT_REPORT_LINES_MAX:
                problems.append(f"record {i} ignored (its instance runs again): {e}")
            continue
        good.setdefault((rec.task, rec.instance), rec)
    if bad and len(problems) >= CKPT_REPORT_LINES_MAX:
        problems.append(f"{bad} bad records in all")
    return good, problems


def resumed_core(job_id: str, plan: Any, now: float, records: dict[tuple[str, int], Record],
                 gen: int, limits: Any = None) -> tuple[Any, list[Any]]:
    """A ``JobCore`` that carries on from a dead JobMaster's ``records`` (already checked by
    ``parse_records`` and by the shell against the files), and its first actions (a job all
    of whose instances are recovered ends at once). ``gen``: the JobMasters before this one."""
    from fuxi.core.jobcore import JobCore, JobLimits

    def recover(core: Any) -> None:  # before any instance is ready
        core.resumed = gen
        for (task, index), rec in sorted(records.items(),
                                         key=lambda kv: (core.order.index(kv[0][0]), kv[0][1])):
            inst = core.instances[task][index]
            core._move(inst, I.SUCCEEDED, f"recovered: attempt {rec.attempt} of JobMaster {rec.gen}")
            inst.outputs = rec.durable_parts()
            st = core.stats[task]
            st.succeeded += 1
            st.recovered += 1
            core.remaining[task] -= 1

    core = JobCore(job_id, plan, now, limits if limits is not None else JobLimits(), recover=recover)
    for name in core.order:  # topological: a task is ready once all its producers are done
        t = core.tasks[name]
        if name not in core.started_tasks and t.upstream and all(
                core.remaining[e.producer] == 0 for e in t.upstream):
            core._make_ready(name, now)  # skips its recovered instances
    if all(n == 0 for n in core.remaining.values()):
        return core, core._end(now, J.SUCCEEDED, "")
    return core, []


def summary(core: Any) -> str:
    """One line for events and reports: recovered vs still to run, per task."""
    return ", ".join(f"{n}: {core.stats[n].recovered}/{core.tasks[n].num_instances} recovered"
                     for n in core.order)
