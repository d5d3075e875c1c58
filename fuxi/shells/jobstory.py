"""A JobMaster's part of the cluster's event log, and the record of its attempts.

``JobStory.note(act)`` looks at each action the core returns (it never changes one) and
reports what an operator cares about to this process's ``base.events`` ring:

* ``instance_retried`` — a new attempt after a failed one: where it failed, why, where the
  new one goes;
* ``instance_requeued`` — a new attempt after one that was stopped without blame (a worker
  retired, preempted, a node blacklisted);
* ``backup_launched`` — a backup of a straggler, and where the straggler runs;
* ``backup_won`` / ``backup_lost`` — who won the race (seen when the loser is stopped);
* ``preemption`` — a worker stopped to make room for an online service.

Each sync with FuxiMaster carries the ring since what FuxiMaster acknowledged
(``batch``/``acked``, see ``fuxi.shells.clusterlog``); the last ones ride on the final status.

``record(core)`` is every attempt of the job as plain data: what ``fuxi job timeline`` and
``fuxi explain`` read (``fuxi.core.story``); the JobMaster answers it live and writes it to
``<log dir>/<job>.attempts.json`` when the job ends, so both work after the job is gone.
"""

from __future__ import annotations

import json
import os

from base import events
from fuxi.core import jobcore as jc

ATTEMPTS_RECORDED_MAX = 200_000  # attempts in one job's record; past it failed, killed and
#                                  backup attempts are kept first, the rest sampled by order
ERROR_CHARS_RECORDED_MAX = 2000  # of an attempt's error, in the record


def _last_line(text: str) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1][:300] if lines else ""


class JobStory:
    def __init__(self, job_id: str):
        self.job_id = job_id
        self.boot = events.BOOT  # this JobMaster process (a restarted one differs)
        self.acked = 0
        self._raced: set[tuple[str, int]] = set()

    # ------------------------------------------------------------ events

    def note(self, core: jc.JobCore, act) -> None:
        if isinstance(act, jc.Push):
            for spec in act.attempts:
                if spec.attempt > 0:
                    self._launched(core, spec.key)
        elif isinstance(act, jc.StopAttempt):
            self._stopped(core, act.key)
        elif isinstance(act, jc.StopWorker) and act.reason.startswith("preempted"):
            w = core.workers.get(act.worker_id)
            events.emit("jobmaster", "preemption", f"job {self.job_id}: worker {act.worker_id} "
                        f"stopped: {act.reason}", severity="warning", job=self.job_id,
                        worker=act.worker_id, node=w.node_id if w else None)

    def _launched(self, core, key) -> None:
        a = core.attempts.get(key)
        if a is None:
            return
        task, index, n = key
        inst = core.instances[task][index]
        where = dict(job=self.job_id, task=task, instance=index, attempt=n, node=a.node_id,
                     worker=a.worker_id)
        if a.backup:
            running = [o for o in inst.attempts if o is not a and o.state.value == "running"]
            slow = running[0] if running else None
            events.emit("jobmaster", "backup_launched",
                        f"{task}[{index}] backup attempt {n} on node {a.node_id[:12]}"
                        + (f": attempt {slow.key[2]} on node {slow.node_id[:12]} is a straggler"
                           if slow else ""),
                        straggler_attempt=slow.key[2] if slow else None,
                        straggler_node=slow.node_id if slow else None, **where)
            return
        prev = next((o for o in reversed(inst.attempts[:n]) if not o.backup or
                     o.state.value == "failed"), None)
        if prev is None:
            return
        if prev.state.value == "failed":
            cause = _last_line(prev.error) or "failed"
            events.emit("jobmaster", "instance_retried",
                        f"{task}[{index}] attempt {n} on node {a.node_id[:12]} after attempt "
                        f"{prev.key[2]} failed on node {prev.node_id[:12]}: {cause}",
                        severity="warning", failed_attempt=prev.key[2], failed_node=prev.node_id,
                        failed_worker=prev.worker_id, reason=cause, **where)
        else:
            events.emit("jobmaster", "instance_requeued",
                        f"{task}[{index}] attempt {n} on node {a.node_id[:12]} after attempt "
                        f"{prev.key[2]} was {prev.state.value}: {prev.why}",
                        stopped_attempt=prev.key[2], stopped_node=prev.node_id,
                        reason=prev.why, **where)

    def _stopped(self, core, key) -> None:
        a = core.attempts.get(key)
        if a is None:
            return
        inst = core.instances[key[0]][key[1]]
        w = inst.winner
        if w is None or w is a or inst.key in self._raced or not (w.backup or a.backup):
            return
        self._raced.add(inst.key)
        kind = "backup_won" if w.backup else "backup_lost"
        events.emit("jobmaster", kind,
                    f"{key[0]}[{key[1]}] attempt {w.key[2]} on node {w.node_id[:12]} "
                    f"{'(the backup) ' if w.backup else '(the original) '}won over attempt "
                    f"{a.key[2]} on node {a.node_id[:12]}",
                    job=self.job_id, task=key[0], instance=key[1], attempt=w.key[2],
                    node=w.node_id, worker=w.worker_id, loser_attempt=a.key[2],
                    loser_node=a.node_id)

    def batch(self) -> dict:
        """What the next sync carries: this process's events FuxiMaster has not acknowledged."""
        return events.report(self.acked)

    def acknowledged(self, seq) -> None:
        if isinstance(seq, int) and seq > self.acked:
            self.acked = seq

    # ------------------------------------------------------------ the attempts' record

    def record(self, core: jc.JobCore) -> dict:
        """Every attempt, oldest first (bounded: ATTEMPTS_RECORDED_MAX)."""
        attempts = list(core.attempts.values())
        dropped = 0
        if len(attempts) > ATTEMPTS_RECORDED_MAX:
            notable = [a for a in attempts if a.backup or a.key[2] or a.state.value != "succeeded"]
            rest = [a for a in attempts if not (a.backup or a.key[2] or a.state.value != "succeeded")]
            room = max(0, ATTEMPTS_RECORDED_MAX - len(notable))
            step = max(1, len(rest) // room) if room else len(rest) + 1
            keep = notable[:ATTEMPTS_RECORDED_MAX] + rest[::step][:room]
            dropped = len(attempts) - len(keep)
            attempts = sorted(keep, key=lambda a: (a.queued_at, a.key))
        rows = []
        for a in attempts:
            task, index, n = a.key
            inst = core.instances[task][index]
            pref = core.tasks[task].preferred_nodes
            rows.append({
                "task": task, "instance": index, "attempt": n, "worker": a.worker_id,
                "node": a.node_id, "backup": a.backup, "state": a.state.value,
                "queued_at": a.queued_at, "started_at": a.started_at, "ended_at": a.ended_at,
                "error": (a.error or "")[-ERROR_CHARS_RECORDED_MAX:], "why": a.why,
                "won": inst.winner is a,
                "preferred": list(pref[index]) if index < len(pref) else [],
            })
        return {"job_id": self.job_id, "name": core.plan.name, "state": core.state.value,
                "submitted_at": core.created_at, "started_at": core.started_at,
                "finished_at": core.finished_at,
                "tasks": {t: core.tasks[t].num_instances for t in core.order},
                "attempts": rows, "attempts_dropped": dropped}

    def write(self, core: jc.JobCore, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record(core), f, separators=(",", ":"), default=str)
        os.replace(tmp, path)


def attempts_path(log_dir: str, job_id: str) -> str:
    return os.path.join(log_dir, f"{job_id}.attempts.json")


def read_attempts(log_dir: str, job_id: str) -> dict:
    """The record a job's JobMaster left (``NotFound`` naming the file when there is none)."""
    from fuxi.errors import JobNotFound

    path = attempts_path(log_dir, job_id)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise JobNotFound(f"job {job_id!r} left no record of its attempts ({path}); jobs that "
                          f"ended before issue 17, or whose JobMaster died, have none") from None
    except ValueError as e:
        raise JobNotFound(f"the record of job {job_id!r}'s attempts ({path}) is damaged: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("attempts"), list):
        raise JobNotFound(f"the record of job {job_id!r}'s attempts ({path}) is not a record")
    return doc


async def attempts_of(jobmasters: dict, reads, log_dir: str, job_id: str,
                      timeout_s: float) -> dict:
    """A job's attempts (``FuxiMaster.job_attempts``): from its JobMaster while it runs, from
    the record it left (``<job>.attempts.json``) once it ended."""
    import asyncio

    jm = jobmasters.get(job_id)
    if jm is not None:
        try:
            return await asyncio.wait_for(jm.attempts.remote(), timeout_s)
        except Exception:  # noqa: BLE001 - ending right now: its record follows
            pass
    return await reads.run(read_attempts, log_dir, job_id)  # reads: an OffLoop
