"""What happened to one instance, or one service replica, told from the record of a job's
attempts (``fuxi.shells.jobstory``) and the cluster's events (pure; dask's ``story``).

``instance_story`` answers, per attempt: where it ran (node, worker), why it was put there
(data locality, a retry avoiding the node that failed, a backup away from a straggler), when
it was queued, started and ended, how it ended and why, and which attempt won.
``chrome_trace`` turns the same record into Chrome trace events (``fuxi job timeline``).
"""

from __future__ import annotations

from typing import Any, Iterable

from fuxi.errors import BadInput


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:300] if lines else ""


def _short(node: str | None) -> str:
    return (node or "?")[:12]


def check_instance(doc: dict, task: Any, index: Any) -> None:
    tasks = doc.get("tasks") or {}
    if not isinstance(task, str) or task not in tasks:
        raise BadInput(f"job {doc.get('job_id')} has no task {task!r}; its tasks: "
                       f"{', '.join(sorted(tasks)) or '(none)'}")
    n = tasks[task]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
        raise BadInput(f"task {task!r} of job {doc.get('job_id')} has instances 0..{n - 1}; "
                       f"got --instance {index!r}")


def launch_cause(rows: list[dict], a: dict) -> str:
    """Why attempt ``a`` was started, given the instance's earlier attempts ``rows``."""
    n = a["attempt"]
    if a.get("backup"):
        slow = [r for r in rows if r["attempt"] < n and not r.get("backup")
                and (r.get("ended_at") is None or r["ended_at"] >= (a.get("queued_at") or 0))]
        if slow:
            s = slow[-1]
            return f"backup of attempt {s['attempt']} (a straggler on node {_short(s['node'])})"
        return "backup of a straggler"
    before = [r for r in rows if r["attempt"] < n and (not r.get("backup") or r["state"] == "failed")]
    if not before:
        return "first attempt"
    prev = before[-1]
    if prev["state"] == "failed":
        return (f"retry after attempt {prev['attempt']} failed on node {_short(prev['node'])}: "
                f"{_last_line(prev.get('error')) or 'failed'}")
    return (f"requeued after attempt {prev['attempt']} was {prev['state']}: "
            f"{prev.get('why') or 'no reason recorded'}")


def placement(rows: list[dict], a: dict) -> str:
    """Why attempt ``a`` went to its node, as far as the record tells."""
    node = a.get("node")
    failed_on = {r["node"] for r in rows if r["attempt"] < a["attempt"] and r["state"] == "failed"}
    if a.get("backup"):
        others = {r["node"] for r in rows if r["attempt"] < a["attempt"] and not r.get("backup")}
        return ("away from the straggler's node" if node not in others
                else "on the straggler's node (no worker elsewhere had room)")
    if failed_on:
        shown = ", ".join(sorted(_short(x) for x in failed_on))
        return (f"avoiding node(s) {shown} where earlier attempts failed" if node not in failed_on
                else f"back on node {_short(node)} where it failed (no other worker had room)")
    pref = a.get("preferred") or []
    if pref:
        return ("data-local: its input is on this node" if node in pref
                else "not data-local: no worker on a node with its input within the locality wait")
    return "the least-loaded worker of its shape with room"


def outcome(a: dict, winner: dict | None) -> str:
    state = a["state"]
    if state == "succeeded":
        return "succeeded" + (" (the winner)" if a.get("won") else "")
    if state == "failed":
        return f"failed: {_last_line(a.get('error')) or 'no error recorded'}"
    if state == "killed" and winner is not None and winner is not a:
        return f"killed: attempt {winner['attempt']} won"
    if state in ("killed", "lost"):
        return f"{state}: {a.get('why') or 'no reason recorded'}"
    return state  # queued or running


def instance_story(doc: dict, task: str, index: int, events: Iterable[dict] = ()) -> dict:
    """One instance's story as plain data (``--json``)."""
    check_instance(doc, task, index)
    rows = sorted((a for a in doc.get("attempts", ())
                   if a.get("task") == task and a.get("instance") == index),
                  key=lambda a: a["attempt"])
    winner = next((a for a in rows if a.get("won")), None)
    attempts = [{
        "attempt": a["attempt"], "node": a.get("node"), "worker": a.get("worker"),
        "backup": bool(a.get("backup")), "cause": launch_cause(rows, a),
        "placement": placement(rows, a), "queued_at": a.get("queued_at"),
        "started_at": a.get("started_at"), "ended_at": a.get("ended_at"),
        "state": a["state"], "outcome": outcome(a, winner),
    } for a in rows]
    mine = [e for e in events if (e.get("fields") or {}).get("task") == task
            and (e.get("fields") or {}).get("instance") == index]
    if winner is not None:
        state = "succeeded"
    elif rows and all(a["state"] in ("failed", "killed", "lost") for a in rows):
        state = "failed" if doc.get("state") in ("failed", "cancelled") else "waiting for a retry"
    else:
        state = "running" if any(a["state"] in ("queued", "running") for a in rows) else "not started"
    return {"job_id": doc.get("job_id"), "task": task, "instance": index, "state": state,
            "winner": winner["attempt"] if winner else None, "attempts": attempts,
            "events": mine, "attempts_dropped": doc.get("attempts_dropped", 0)}


def _clock(t: float | None, t0: float | None) -> str:
    if t is None:
        return "-"
    return f"+{t - t0:.3f}s" if t0 is not None else f"{t:.3f}"


def story_text(story: dict, t0: float | None = None) -> str:
    """The story for a person: times relative to ``t0`` (the job's submit) when given."""
    lines = [f"{story['task']}[{story['instance']}] of job {story['job_id']}: {story['state']}"
             + (f", attempt {story['winner']} won" if story["winner"] is not None else "")]
    if not story["attempts"]:
        lines.append("  no attempt yet" + (" (dropped from a large job's record)"
                                            if story.get("attempts_dropped") else ""))
    for a in story["attempts"]:
        kind = "backup" if a["backup"] else "attempt"
        lines.append(f"  {kind} {a['attempt']} on node {_short(a['node'])}, worker {a['worker']}")
        lines.append(f"    why started: {a['cause']}")
        lines.append(f"    why there:   {a['placement']}")
        lines.append(f"    queued {_clock(a['queued_at'], t0)}, started {_clock(a['started_at'], t0)}"
                     f", ended {_clock(a['ended_at'], t0)}")
        lines.append(f"    outcome:     {a['outcome']}")
    if story["events"]:
        lines.append("  events:")
        for e in story["events"]:
            lines.append(f"    #{e.get('id')} {e.get('kind')}: {e.get('message')}")
    return "\n".join(lines)


def service_story(name: str, replica: str, events: Iterable[dict]) -> dict:
    """One service replica's events, oldest first (``replica``: ``3`` or ``<name>-3``)."""
    if not isinstance(replica, str) or not replica:
        raise BadInput(f"--replica {replica!r}: expected a replica id like {name}-3 (or 3)")
    rid = replica if replica.startswith(f"{name}-") else f"{name}-{replica}"
    def about(e: dict) -> bool:
        f = e.get("fields") or {}
        return f.get("service") == name and (f.get("replica") == rid or (
            f.get("replica") is None and f"{rid} " in f"{e.get('message', '')} "))
    mine = [e for e in events if about(e)]
    return {"service": name, "replica": rid, "events": mine}


def service_text(story: dict) -> str:
    lines = [f"replica {story['replica']} of service {story['service']}:"]
    if not story["events"]:
        lines.append("  no events (a wrong replica id, or older than the event log keeps)")
    for e in story["events"]:
        lines.append(f"  #{e.get('id')} {e.get('kind')}: {e.get('message')}")
    return "\n".join(lines)


# ------------------------------------------------------------ timeline


def chrome_trace(doc: dict, now: float | None = None) -> dict:
    """The job's attempts as Chrome trace events (``{"traceEvents": [...]}``): one complete
    event ("ph": "X") per attempt that started, pid = node, tid = worker (numbered, named by
    metadata events), name ``task[instance]#attempt``, category ``attempt``, ``retry`` or
    ``backup``; an attempt still running ends at ``now``. Opens in Perfetto."""
    rows = [a for a in doc.get("attempts", ()) if a.get("started_at") is not None]
    t0 = min([a["started_at"] for a in rows] + [doc.get("started_at") or float("inf")])
    t0 = t0 if t0 != float("inf") else 0.0
    by_inst: dict[tuple[str, int], list[dict]] = {}
    for a in doc.get("attempts", ()):
        by_inst.setdefault((a["task"], a["instance"]), []).append(a)
    pids: dict[str, int] = {}
    tids: dict[tuple[str, str], int] = {}
    out: list[dict] = []
    for a in sorted(rows, key=lambda r: (r["started_at"], r["task"], r["instance"], r["attempt"])):
        node, worker = a.get("node") or "?", a.get("worker") or "?"
        if node not in pids:
            pids[node] = len(pids) + 1
            out.append({"ph": "M", "name": "process_name", "pid": pids[node], "tid": 0,
                        "args": {"name": f"node {node[:12]}"}})
        if (node, worker) not in tids:
            tids[(node, worker)] = len(tids) + 1
            out.append({"ph": "M", "name": "thread_name", "pid": pids[node],
                        "tid": tids[(node, worker)], "args": {"name": f"worker {worker}"}})
        end = a.get("ended_at")
        if end is None:
            end = now if now is not None else a["started_at"]
        siblings = sorted(by_inst[(a["task"], a["instance"])], key=lambda r: r["attempt"])
        cause = launch_cause(siblings, a)
        cat = "backup" if a.get("backup") else ("attempt" if cause == "first attempt" else "retry")
        winner = next((r for r in siblings if r.get("won")), None)
        out.append({
            "ph": "X", "name": f"{a['task']}[{a['instance']}]#{a['attempt']}", "cat": cat,
            "ts": round((a["started_at"] - t0) * 1e6, 1),
            "dur": round(max(0.0, end - a["started_at"]) * 1e6, 1),
            "pid": pids[node], "tid": tids[(node, worker)],
            "args": {"outcome": outcome(a, winner), "state": a["state"],
                     "backup": bool(a.get("backup")), "won": bool(a.get("won")),
                     "retry_cause": cause if cat == "retry" else None,
                     "cause": cause, "node": node, "worker": worker,
                     "queued_s": round(a["started_at"] - (a.get("queued_at") or a["started_at"]), 6)},
        })
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"job_id": doc.get("job_id"), "name": doc.get("name"),
                          "state": doc.get("state"), "t0": t0,
                          "attempts_dropped": doc.get("attempts_dropped", 0)}}
