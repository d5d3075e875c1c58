"""A job's launch record (issue 16 parts 3 and 4): what FuxiMaster needs to start the job's
JobMaster again -- its plan, the user it runs as and the ``sys_path`` its functions import
from -- as one bounded JSON document in the job record store (``/jobs/<id>/launch``), so a
FuxiMaster that *adopted* the job after a restart can restart its JobMaster from the
checkpoint exactly as the FuxiMaster that submitted it could::

    {"v": 1, "job_id": "...", "sha256": "<hex of the canonical JSON of body>",
     "body": {"plan": {...}, "user": "alice" | null, "sys_path": ["/home/alice/jobs", ...]}}

No credential is kept: a restarted FuxiMaster signs the new JobMaster's token from its keys
and the directory as it is now (``scoped_token(user, ...)``; Denied if the user is gone).

``encode`` refuses (``NotPersistable``) a plan whose document would exceed
``LAUNCH_RECORD_BYTES_MAX`` or that does not come back equal from JSON (a parameter JSON
cannot keep, such as a tuple): such a job still runs, but is not restartable by a FuxiMaster
that adopted it. ``decode`` trusts nothing: the record comes out of a store (a crash, a disk,
another version of Fuxi), so the version, the checksum and every field are checked, and any
problem is one ``BadLaunch`` saying what was wrong. Pure: no Ray, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from fuxi.core.attempt_faults import FaultPolicy
from fuxi.core.codeenv import RuntimeEnvSpec
from fuxi.core.plan import Edge, JobPlan, TaskPlan
from fuxi.core.speculation import SpeculationPolicy

LAUNCH_FORMAT_VERSION = 1
LAUNCH_RECORD_BYTES_MAX = 768 * 1024  # one launch record as JSON (a store value is <= 1 MiB)
LAUNCH_SYS_PATH_MAX = 256  # sys_path entries kept
LAUNCH_TEXT_CHARS_MAX = 4096  # one path, name, function reference or node id
LAUNCH_TASKS_MAX = 1000  # the spec's tasks_max
LAUNCH_INSTANCES_MAX = 100_000  # the spec's instances_max
LAUNCH_FILES_PER_INSTANCE_MAX = 100_000
SHUFFLE_MODES = frozenset({"hash", "one_to_one", "broadcast", "direct"})


class BadLaunch(ValueError):
    """A stored launch record that cannot be used (damaged, another version, inconsistent)."""


class NotPersistable(ValueError):
    """A plan that cannot be kept as a launch record (too big, or not JSON-faithful)."""


@dataclass(frozen=True)
class Launch:
    plan: JobPlan
    user: str | None
    sys_path: tuple[str, ...]


# ------------------------------------------------------------ encoding

def _canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _edge_doc(e: Edge) -> list:
    return [e.producer, e.consumer, e.mode, list(e.partition_by), e.num_partitions]


def _task_doc(t: TaskPlan) -> dict:
    return {"name": t.name, "fn": t.fn, "num_instances": t.num_instances,
            "inputs": [list(i) for i in t.inputs], "shape": dict(t.shape),
            "max_retries": t.max_retries, "timeout_s": t.timeout_s,
            "upstream": [_edge_doc(e) for e in t.upstream],
            "downstream": [_edge_doc(e) for e in t.downstream],
            "output": t.output, "preferred_nodes": [list(p) for p in t.preferred_nodes]}


def _policy_doc(p: Any) -> dict | None:
    return None if p is None else {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}


def plan_doc(plan: JobPlan) -> dict:
    return {"name": plan.name, "tasks": [_task_doc(t) for t in plan.tasks],
            "params": plan.params, "speculation": _policy_doc(plan.speculation),
            "priority": plan.priority, "retry_backoff_s": plan.retry_backoff_s,
            "retry_backoff_max_s": plan.retry_backoff_max_s, "spec": plan.spec,
            "overwrite": plan.overwrite, "queue": plan.queue,
            "faults": _policy_doc(plan.faults), "checkpoint": plan.checkpoint,
            **({"runtime_env": plan.runtime_env} if plan.runtime_env else {})}


def encode(job_id: str, plan: JobPlan, user: str | None, sys_path: Any) -> dict:
    """The launch record of a job; ``NotPersistable`` saying why when it cannot be one."""
    paths = list(sys_path or ())
    if len(paths) > LAUNCH_SYS_PATH_MAX:
        raise NotPersistable(f"sys_path has {len(paths)} entries; LAUNCH_SYS_PATH_MAX is "
                             f"{LAUNCH_SYS_PATH_MAX}")
    try:
        body = {"plan": plan_doc(plan), "user": user, "sys_path": paths}
        raw = _canonical(body)
    except (AttributeError, TypeError, ValueError) as e:  # a value JSON cannot hold, NaN
        raise NotPersistable(f"the plan is not plain JSON: {str(e)[:200]}") from None
    if len(raw) > LAUNCH_RECORD_BYTES_MAX:  # before the bigger form below is made
        raise NotPersistable(f"the launch record would be over {len(raw)} bytes; "
                             f"LAUNCH_RECORD_BYTES_MAX is {LAUNCH_RECORD_BYTES_MAX}")
    doc = {"v": LAUNCH_FORMAT_VERSION, "job_id": job_id,
           "sha256": hashlib.sha256(raw).hexdigest(), "body": json.loads(raw)}
    stored = len(json.dumps(doc, sort_keys=True))  # as a store writes it (with spaces)
    if stored > LAUNCH_RECORD_BYTES_MAX:
        raise NotPersistable(f"the launch record would be {stored} bytes; "
                             f"LAUNCH_RECORD_BYTES_MAX is {LAUNCH_RECORD_BYTES_MAX}")
    try:
        back = decode(doc, job_id)
    except BadLaunch as e:
        raise NotPersistable(f"the plan does not read back: {e}") from None
    if back.plan != plan:  # e.g. a tuple parameter came back a list: not the same job
        raise NotPersistable("the plan does not come back equal from JSON (a parameter JSON "
                             "cannot keep, such as a tuple or a non-string key)")
    return doc


# ------------------------------------------------------------ decoding (trust nothing)

def _text(v: Any, what: str, empty_ok: bool = False) -> str:
    if not isinstance(v, str) or len(v) > LAUNCH_TEXT_CHARS_MAX or (not v and not empty_ok):
        raise BadLaunch(f"{what}={str(v)[:60]!r}: expected a string of "
                        f"{0 if empty_ok else 1}..{LAUNCH_TEXT_CHARS_MAX} characters")
    return v


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise BadLaunch(f"{what}={str(v)[:60]!r}: expected an integer from {lo} to {hi}")
    return v


def _num(v: Any, what: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo:
        raise BadLaunch(f"{what}={str(v)[:60]!r}: expected a finite number >= {lo:g}")
    return v


def _list(v: Any, what: str, n_max: int) -> list:
    if not isinstance(v, list) or len(v) > n_max:
        raise BadLaunch(f"{what}: expected a list of at most {n_max} items, got "
                        f"{type(v).__name__}")
    return v


def _texts(v: Any, what: str, n_max: int) -> tuple[str, ...]:
    return tuple(_text(x, f"{what}[{i}]") for i, x in enumerate(_list(v, what, n_max)))


def _keys(d: Any, what: str, want: set[str]) -> dict:
    if not isinstance(d, dict) or set(d) != want:
        got = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise BadLaunch(f"{what}: expected the fields {sorted(want)}, got {got}")
    return d


def _edge(v: Any, what: str) -> Edge:
    if not isinstance(v, list) or len(v) != 5:
        raise BadLaunch(f"{what}: expected [producer, consumer, mode, partition_by, partitions]")
    producer, consumer, mode, by, n = v
    if not isinstance(mode, str) or mode not in SHUFFLE_MODES:
        raise BadLaunch(f"{what}: mode {str(mode)[:40]!r}, expected one of {sorted(SHUFFLE_MODES)}")
    return Edge(_text(producer, f"{what}.producer"), _text(consumer, f"{what}.consumer"), mode,
                _texts(by, f"{what}.partition_by", 64),
                _int(n, f"{what}.num_partitions", 0, LAUNCH_INSTANCES_MAX))


def _policy(cls, v: Any, what: str):
    d = _keys(v, what, {f.name for f in dataclasses.fields(cls)})
    for k, x in d.items():
        if not isinstance(x, (bool, int, float)):
            raise BadLaunch(f"{what}.{k}={str(x)[:40]!r}: expected a number or a boolean")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise BadLaunch(f"{what}: {e}") from None


_TASK_FIELDS = {"name", "fn", "num_instances", "inputs", "shape", "max_retries", "timeout_s",
                "upstream", "downstream", "output", "preferred_nodes"}


def _task(v: Any, i: int) -> TaskPlan:
    what = f"plan.tasks[{i}]"
    d = _keys(v, what, _TASK_FIELDS)
    name = _text(d["name"], f"{what}.name")
    what = f"task {name[:64]!r}"
    n = _int(d["num_instances"], f"{what}.num_instances", 0, LAUNCH_INSTANCES_MAX)
    inputs = tuple(_texts(x, f"{what}.inputs[{j}]", LAUNCH_FILES_PER_INSTANCE_MAX)
                   for j, x in enumerate(_list(d["inputs"], f"{what}.inputs", n)))
    if len(inputs) != n:
        raise BadLaunch(f"{what}: {len(inputs)} input lists for {n} instances")
    shape = d["shape"]
    if not isinstance(shape, dict) or len(shape) > 64:
        raise BadLaunch(f"{what}.shape: expected a mapping of at most 64 resources")
    shape = {_text(k, f"{what}.shape key"): float(_num(x, f"{what}.shape[{k!r}]"))
             for k, x in shape.items()}
    preferred = tuple(_texts(x, f"{what}.preferred_nodes[{j}]", 1024) for j, x in
                      enumerate(_list(d["preferred_nodes"], f"{what}.preferred_nodes", n)))
    if preferred and len(preferred) != n:
        raise BadLaunch(f"{what}: preferred nodes for {len(preferred)} of {n} instances")
    out = d["output"]
    return TaskPlan(
        name=name, fn=_text(d["fn"], f"{what}.fn"), num_instances=n, inputs=inputs, shape=shape,
        max_retries=_int(d["max_retries"], f"{what}.max_retries", 0, 1000),
        timeout_s=_num(d["timeout_s"], f"{what}.timeout_s"),
        upstream=tuple(_edge(e, f"{what}.upstream[{j}]")
                       for j, e in enumerate(_list(d["upstream"], f"{what}.upstream", LAUNCH_TASKS_MAX))),
        downstream=tuple(_edge(e, f"{what}.downstream[{j}]") for j, e in
                         enumerate(_list(d["downstream"], f"{what}.downstream", LAUNCH_TASKS_MAX))),
        output=None if out is None else _text(out, f"{what}.output"), preferred_nodes=preferred)


def _check_wiring(tasks: tuple[TaskPlan, ...]) -> None:
    """Edges name tasks of the plan, in topological order, each edge seen from both ends,
    with as many partitions as its consumer has instances."""
    index = {t.name: i for i, t in enumerate(tasks)}
    if len(index) != len(tasks):
        raise BadLaunch("plan.tasks: two tasks have the same name")
    ups, downs = set(), set()
    for i, t in enumerate(tasks):
        for e in t.upstream:
            if e.consumer != t.name or index.get(e.producer, len(tasks)) >= i:
                raise BadLaunch(f"task {t.name!r}: upstream edge {e.producer!r}->{e.consumer!r} "
                                f"is not from an earlier task into this one")
            if e.num_partitions != t.num_instances:
                raise BadLaunch(f"task {t.name!r}: an edge into it has {e.num_partitions} "
                                f"partitions for {t.num_instances} instances")
            ups.add(e)
        for e in t.downstream:
            if e.producer != t.name or index.get(e.consumer, -1) <= i:
                raise BadLaunch(f"task {t.name!r}: downstream edge {e.producer!r}->{e.consumer!r} "
                                f"is not from this task into a later one")
            downs.add(e)
    if ups != downs:
        raise BadLaunch("plan.tasks: the upstream and downstream edges do not agree")


_PLAN_FIELDS = {"name", "tasks", "params", "speculation", "priority", "retry_backoff_s",
                "retry_backoff_max_s", "spec", "overwrite", "queue", "faults", "checkpoint"}


def _runtime_env(v: Any) -> dict:
    """The shipped code (package URIs, pip, env_vars) a resumed job's workers start with."""
    from pydantic import ValidationError

    try:
        env = RuntimeEnvSpec.model_validate(v)
    except ValidationError as e:
        raise BadLaunch(f"plan.runtime_env: {str(e.errors()[0].get('msg'))[:200]}") from None
    if env.excludes or env.is_empty():
        raise BadLaunch("plan.runtime_env: expected shipped package URIs, pip or env_vars")
    return env.model_dump(exclude_defaults=True)


def _plan(v: Any) -> JobPlan:
    # A plan without shipped code has no runtime_env field (records written before issue 18).
    d = _keys(v, "plan", _PLAN_FIELDS | ({"runtime_env"} & set(v) if isinstance(v, dict) else set()))
    raw_tasks = _list(d["tasks"], "plan.tasks", LAUNCH_TASKS_MAX)
    if not raw_tasks:
        raise BadLaunch("plan.tasks: a plan has at least one task")
    tasks = tuple(_task(t, i) for i, t in enumerate(raw_tasks))
    _check_wiring(tasks)
    for name in ("params", "spec"):
        if not isinstance(d[name], dict):
            raise BadLaunch(f"plan.{name}: expected a mapping, got {type(d[name]).__name__}")
    for name in ("overwrite", "checkpoint"):
        if type(d[name]) is not bool:
            raise BadLaunch(f"plan.{name}={str(d[name])[:20]!r}: expected true or false")
    return JobPlan(
        name=_text(d["name"], "plan.name"), tasks=tasks, params=d["params"],
        speculation=_policy(SpeculationPolicy, d["speculation"], "plan.speculation"),
        priority=_int(d["priority"], "plan.priority", 0, 1000),
        retry_backoff_s=_num(d["retry_backoff_s"], "plan.retry_backoff_s"),
        retry_backoff_max_s=_num(d["retry_backoff_max_s"], "plan.retry_backoff_max_s"),
        spec=d["spec"], overwrite=d["overwrite"], queue=_text(d["queue"], "plan.queue"),
        faults=None if d["faults"] is None else _policy(FaultPolicy, d["faults"], "plan.faults"),
        checkpoint=d["checkpoint"],
        runtime_env=_runtime_env(d["runtime_env"]) if "runtime_env" in d else None)


def decode(doc: Any, job_id: str) -> Launch:
    """The launch a stored record describes, checked; ``BadLaunch`` saying what is wrong."""
    if not isinstance(doc, dict):
        raise BadLaunch(f"a launch record is a mapping; got {type(doc).__name__}")
    v = doc.get("v")
    if v != LAUNCH_FORMAT_VERSION:
        raise BadLaunch(f"written in launch format {repr(v)[:20]}; this FuxiMaster reads format "
                        f"{LAUNCH_FORMAT_VERSION} only")
    _keys(doc, "launch record", {"v", "job_id", "sha256", "body"})
    if doc["job_id"] != job_id:
        raise BadLaunch(f"the record is job {str(doc['job_id'])[:80]!r}'s, not {job_id!r}'s")
    try:
        raw = _canonical(doc["body"])
    except (TypeError, ValueError) as e:
        raise BadLaunch(f"the body is not plain JSON: {e}") from None
    if len(raw) > LAUNCH_RECORD_BYTES_MAX:
        raise BadLaunch(f"the body is {len(raw)} bytes; LAUNCH_RECORD_BYTES_MAX is "
                        f"{LAUNCH_RECORD_BYTES_MAX}")
    if hashlib.sha256(raw).hexdigest() != doc["sha256"]:
        raise BadLaunch("its checksum does not match its body (damaged or half-written)")
    body = _keys(doc["body"], "body", {"plan", "user", "sys_path"})
    user = body["user"]
    return Launch(plan=_plan(body["plan"]),
                  user=None if user is None else _text(user, "user"),
                  sys_path=_texts(body["sys_path"], "sys_path", LAUNCH_SYS_PATH_MAX))
