"""FuxiMaster's side of reading captured output (issue 18 part 2): ``fuxi job logs`` and
``fuxi service logs`` ask FuxiMaster (which checks the caller may view the job or service),
and FuxiMaster asks every node's FuxiAgent for the files on its node -- the agent outlives the
workers and replicas that wrote them, so finished attempts read the same way as running ones.
A cluster without agents (the embedded default: one node, this one) is read here directly.

A query is plain data, checked before anything is read: ``attempt`` >= 0, ``cursors`` a
token of ``fuxi.core.tasklog.format_cursor``, ``bytes_max`` cut to ``LOG_READ_BYTES_MAX``. The
reply of several nodes is one (``merge_replies``), bounded the same way: each agent gets an
even share of the byte budget. A node whose agent does not answer in ``AGENT_READ_TIMEOUT_S``
is named in ``unreachable`` (its attempts show up on a later poll)."""

from __future__ import annotations

import asyncio

from base import actors
from base.errors import BadInput
from fuxi.core import tasklog as tl
from fuxi.shells import tasklogs
from fuxi.shells.offloop import OffLoop

AGENT_READ_TIMEOUT_S = 5.0  # one agent's answer to one log read
READ_SHARE_BYTES_MIN = 16 * 1024  # each node's share of a reply is at least this
LOCAL_READS_MAX = 2  # file reads in flight at once in FuxiMaster (no agents: embedded default)

_reads: OffLoop | None = None


def check_query(kind: str, q) -> dict:
    """A log query from a stranger as plain checked data, or BadInput saying what is wrong."""
    if kind not in ("job", "service"):
        raise BadInput(f"log kind {kind!r} is not valid; expected job or service")
    if not isinstance(q, dict):
        raise BadInput(f"a log query must be a mapping, got {type(q).__name__}")
    unknown = set(q) - {"task", "instance", "attempt", "replica", "cursors", "bytes_max"}
    if unknown:
        raise BadInput(f"log query fields {sorted(unknown)} are unknown; expected task, "
                       f"instance, attempt, replica, cursors, bytes_max")
    out: dict = {}
    try:
        for name in ("task", "replica"):
            if q.get(name) is not None:
                out[name] = tl.check_part(q[name], name)
        for name in ("instance", "attempt"):
            v = q.get(name)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10**9:
                    raise ValueError(f"{name} {v!r} is not valid; expected a number 0..10^9")
                out[name] = v
        out["cursors"] = tl.format_cursor(tl.parse_cursor(q.get("cursors") or ""))
    except ValueError as e:
        raise BadInput(str(e)) from None
    b = q.get("bytes_max", tl.LOG_READ_BYTES_MAX)
    if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
        raise BadInput(f"bytes_max {b!r} is not valid; expected a positive number")
    out["bytes_max"] = min(b, tl.LOG_READ_BYTES_MAX)
    if kind == "job" and "replica" in out:
        raise BadInput("replica is for service logs; a job's output is chosen by task, "
                       "instance and attempt")
    if kind == "service" and {"task", "instance", "attempt"} & set(out):
        raise BadInput("task, instance and attempt are for job logs; a service's output is "
                       "chosen by replica")
    return out


def read_local(root: str, kind: str, name: str, q: dict) -> dict:
    """Read the files under ``root`` (a node's ``<cluster dir>/logs``) for a checked query."""
    cursors = tl.parse_cursor(q["cursors"])
    if kind == "job":
        return tasklogs.read_job(root, name, q.get("task"), q.get("instance"), q.get("attempt"),
                                 cursors, q["bytes_max"])
    return tasklogs.read_service(root, name, q.get("replica"), cursors, q["bytes_max"])


def _offloop() -> OffLoop:
    global _reads
    if _reads is None:
        _reads = OffLoop("fuxi-output-reads", LOCAL_READS_MAX)
    return _reads


async def gather(cluster: str, agents, kind: str, name: str, query) -> dict:
    """Every node's captured output for a job (``kind`` "job") or a service ("service"):
    through ``agents`` (FuxiMaster's ``fuxi.shells.agents.Agents``, or None), else read here
    off the event loop. The query carries the selection (task, instance, attempt, replica)."""
    q = check_query(kind, query)
    try:
        tl.check_part(name, "job id" if kind == "job" else "service")
    except ValueError as e:
        raise BadInput(str(e)) from None
    handles = dict(agents.handles) if agents is not None and agents.handles else {}
    if not handles:
        out = await _offloop().run(read_local, tasklogs.logs_root(cluster), kind, name, q)
        out["unreachable"] = []
        return out
    share = max(READ_SHARE_BYTES_MIN, q["bytes_max"] // len(handles))
    nodes = list(handles)

    async def one(node):
        token = agents.view.token_of(node) or ""
        return await actors.acall(handles[node].read_logs, token, kind, name,
                                  {**q, "bytes_max": share}, timeout_s=AGENT_READ_TIMEOUT_S)

    got = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
    replies, unreachable = [], []
    for node, r in zip(nodes, got):
        if isinstance(r, BaseException):
            unreachable.append(node)
        else:
            replies.append(r)
    out = tasklogs.merge_replies(replies)
    out["unreachable"] = unreachable
    return out
