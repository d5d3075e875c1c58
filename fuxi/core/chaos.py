"""Fault injection on a live cluster (issue 16 part 8), the pure part: checking what an
operator asked ``fuxi debug kill`` for, and picking the target out of plain data the shell
read from Ray (its node table, its actor table, this machine's process list).

    kinds   master | jobmaster <job> | agent <node> | worker <job> [<worker>] | node <node>

A node is named by its Ray node id or a unique prefix of it (``fuxi node list`` prints the
first 12 characters); a worker by a prefix of its Ray actor id or by its process id. Nothing
here kills anything: the shell (``fuxi.shells.chaos``) does, after the operator confirmed.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from fuxi.core.agentview import PID_MAX
from fuxi.errors import BadInput, TargetNotFound

KINDS = ("master", "jobmaster", "agent", "worker", "node")
NODE_ID_CHARS = 56          # a Ray node id: 28 bytes, in hex
NODE_PREFIX_CHARS_MIN = 4   # a shorter prefix names too many nodes to be meant
ACTOR_ID_CHARS = 32         # a Ray actor id: 16 bytes, in hex
WORKER_PREFIX_CHARS_MIN = 4
JOB_ID_CHARS_MAX = 128      # new_job_id: a name of at most 40 characters, a time, 4 hex
CHOICES_SHOWN_MAX = 8       # candidates named in an error
HEAD_RESOURCE = "node:__internal_head__"  # the resource Ray gives its head node only
RAYLET_NODE_FLAG = "--node_id="   # how a raylet's command line names its node
AGENT_NODE_FLAG = "--node-id="    # ... and the node's other Ray processes (agents, monitor)

_HEX = re.compile(r"^[0-9a-f]+$")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_kind(kind: Any) -> str:
    if kind not in KINDS:
        raise BadInput(f"kill {str(kind)[:40]!r}: expected one of {', '.join(KINDS)}")
    return kind


def check_job_id(job_id: Any) -> str:
    """A job id as ``fuxi job list`` prints it (BadInput for anything else)."""
    if not isinstance(job_id, str) or not job_id:
        raise BadInput(f"job id {str(job_id)[:40]!r}: expected a job id as `fuxi job list` "
                       f"prints it")
    if len(job_id) > JOB_ID_CHARS_MAX or not _JOB_ID.match(job_id):
        raise BadInput(f"job id {job_id[:40]!r}: expected letters, digits, '-', '_' or '.', "
                       f"at most {JOB_ID_CHARS_MAX} characters (JOB_ID_CHARS_MAX); "
                       f"`fuxi job list` shows the jobs")
    return job_id


def check_node_ref(ref: Any) -> str:
    """A Ray node id or a prefix of one (hex, at least NODE_PREFIX_CHARS_MIN characters)."""
    if not isinstance(ref, str):
        raise BadInput(f"node {str(ref)[:40]!r}: expected a node id (hex) as `fuxi node list` "
                       f"prints it")
    r = ref.strip().lower()
    if not NODE_PREFIX_CHARS_MIN <= len(r) <= NODE_ID_CHARS or not _HEX.match(r):
        raise BadInput(f"node {ref[:60]!r}: expected a node id, or its first "
                       f"{NODE_PREFIX_CHARS_MIN}..{NODE_ID_CHARS} hex characters, as "
                       f"`fuxi node list` prints it")
    return r


def check_worker_ref(ref: Any) -> tuple[str, str | int]:
    """("pid", n) for a process id, ("actor", prefix) for a Ray actor id prefix."""
    if isinstance(ref, str) and ref.strip().isascii() and ref.strip().isdigit():
        if len(ref.strip()) <= len(str(PID_MAX)) and 0 < int(ref.strip()) <= PID_MAX:
            return "pid", int(ref.strip())  # digits only: a pid, never an actor id prefix
    elif isinstance(ref, str):
        r = ref.strip().lower()
        if WORKER_PREFIX_CHARS_MIN <= len(r) <= ACTOR_ID_CHARS and _HEX.match(r):
            return "actor", r
    raise BadInput(f"worker {str(ref)[:60]!r}: expected a process id (1..{PID_MAX}) or the "
                   f"first {WORKER_PREFIX_CHARS_MIN}..{ACTOR_ID_CHARS} hex characters of a "
                   f"worker's actor id (leave it out to kill one of the job's workers)")


def _shown(ids: Iterable[str], chars: int = 12) -> str:
    ids = sorted(ids)
    more = len(ids) - CHOICES_SHOWN_MAX
    return ", ".join(i[:chars] for i in ids[:CHOICES_SHOWN_MAX]) + (f" (+{more} more)" if more > 0 else "")


def resolve_node(ref: Any, nodes: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The one alive node of Ray's node table (``ray.nodes()`` entries) that ``ref`` names."""
    r = check_node_ref(ref)
    alive = [n for n in nodes if isinstance(n, Mapping) and n.get("Alive")
             and isinstance(n.get("NodeID"), str)]
    hits = [n for n in alive if n["NodeID"].lower().startswith(r)]
    if not hits:
        dead = any(isinstance(n, Mapping) and isinstance(n.get("NodeID"), str)
                   and n["NodeID"].lower().startswith(r) for n in nodes)
        raise TargetNotFound(
            f"node {ref!r}: " + ("that node is dead already" if dead else "no such node")
            + f"; the alive nodes are {_shown(n['NodeID'] for n in alive) or 'none'} "
              f"(`fuxi node list`)")
    if len(hits) > 1:
        raise BadInput(f"node {ref!r} names {len(hits)} nodes ({_shown(n['NodeID'] for n in hits)}): "
                       f"give more of its id (`fuxi node list`)")
    return hits[0]


def is_head(node: Mapping[str, Any]) -> bool:
    return bool((node.get("Resources") or {}).get(HEAD_RESOURCE))


def node_processes(node_id: str, procs: Iterable[tuple[int, int, Sequence[str]]]) -> list[int]:
    """The processes of Ray node ``node_id`` among this machine's ``procs`` ((pid, parent pid,
    argv)): its raylet first, then every process under the raylet (its workers), then the
    node's other Ray processes (those started with ``--node-id=<it>``). [] if its raylet does
    not run on this machine."""
    procs = [(p, pp, list(a)) for p, pp, a in procs
             if isinstance(p, int) and isinstance(pp, int) and isinstance(a, (list, tuple))]
    raylets = [p for p, _, argv in procs if argv and str(argv[0]).rsplit("/", 1)[-1] == "raylet"
               and f"{RAYLET_NODE_FLAG}{node_id}" in argv]
    if len(raylets) != 1:
        return []
    children: dict[int, list[int]] = {}
    for p, pp, _ in procs:
        children.setdefault(pp, []).append(p)
    out, todo = [raylets[0]], list(children.get(raylets[0], ()))
    while todo:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(children.get(p, ()))
    out += [p for p, _, argv in procs if p not in out and f"{AGENT_NODE_FLAG}{node_id}" in argv]
    return out


def owned_workers(table: Mapping[str, Mapping[str, Any]], owner: Mapping[str, Any],
                  worker_class: str) -> list[dict]:
    """The alive actors of ``worker_class`` in Ray's actor table whose owner is the process at
    ``owner`` (the JobMaster's ``Address``: a job's workers are owned by its JobMaster):
    [{"actor_id", "pid", "node_id"}], by actor id."""
    ip, port = owner.get("IPAddress"), owner.get("Port")
    out = []
    for aid, a in table.items():
        if not isinstance(a, Mapping) or a.get("ActorClassName") != worker_class \
                or a.get("State") != "ALIVE":
            continue
        o = a.get("OwnerAddress") or {}
        if (o.get("IPAddress"), o.get("Port")) == (ip, port) and port:
            out.append({"actor_id": str(aid), "pid": int(a.get("Pid") or 0),
                        "node_id": str((a.get("Address") or {}).get("NodeID", ""))})
    return sorted(out, key=lambda w: w["actor_id"])


def pick_worker(workers: Sequence[Mapping[str, Any]], ref: Any, job_id: str) -> Mapping[str, Any]:
    """The worker ``ref`` names (None: the first one), among a job's alive ``workers``."""
    if not workers:
        raise TargetNotFound(f"job {job_id}: no worker of it is alive now, nothing to kill "
                             f"(`fuxi job status {job_id}` shows what runs)")
    if ref is None:
        return workers[0]
    how, key = check_worker_ref(ref)
    hits = [w for w in workers if (w["pid"] == key if how == "pid" else w["actor_id"].startswith(key))]
    if len(hits) != 1:
        what = "names no worker" if not hits else f"names {len(hits)} workers: give more of its id"
        raise (TargetNotFound if not hits else BadInput)(
            f"worker {ref!r} of job {job_id} {what}; its workers are "
            + ", ".join(f"{w['actor_id'][:12]} (pid {w['pid']})" for w in workers[:CHOICES_SHOWN_MAX])
            + (f" (+{len(workers) - CHOICES_SHOWN_MAX} more)" if len(workers) > CHOICES_SHOWN_MAX else ""))
    return hits[0]
