"""Job records in FuxiMaster's store (``/jobs/<id>/status``, ``/jobs/<id>/spec`` and, while
the job runs, ``/jobs/<id>/launch``: what restarting its JobMaster needs, ``fuxi.core.launch``):
ids, listing, dropping the oldest, and what a starting FuxiMaster makes of them. All blocking:
called before the event loop serves, or off it (``AsyncStore.call``).

A value that does not parse (a damaged file, a foreign write) is skipped with a warning, never
raised: FuxiMaster reads these while it starts, and one bad record must not make every restart
fail the same way."""

from __future__ import annotations

import logging
import secrets
import time

from fuxi.core import launch
from fuxi.core.states import TERMINAL_JOB, JobState
from fuxi.errors import LimitExceeded
from fuxi.shells.admission import DEFAULT_QUEUE

logger = logging.getLogger(__name__)

NOT_KEPT_REASON_CHARS_MAX = 1000  # why a job's launch was not kept, as stored
LOOPS_KEY = "/master/loops"  # which of FuxiMaster's loops were started (a successor's too)


def new_job_id(name: str) -> str:
    return f"{name[:40]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def launch_key(job_id: str) -> str:
    return f"/jobs/{job_id}/launch"


def _get(store, key: str):
    """A stored value, or None when it does not parse (with a warning)."""
    try:
        return store.get(key)
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        logger.warning("job record %s does not parse, skipped: %s", key, e)
        return None


def _statuses(store, keys: list[str]) -> list[tuple[str, dict]]:
    out = []
    for key in keys:
        if key.endswith("/status"):
            st = _get(store, key)
            if isinstance(st, dict):
                out.append((key.split("/")[2], st))
    return out


def statuses(store) -> list[tuple[str, dict]]:
    """Every stored job status, (job id, status) (blocking: run off the loop)."""
    return _statuses(store, store.list("/jobs/"))


def drop_old_records(store, kept_max: int) -> list[str]:
    """Delete the oldest job records beyond ``kept_max``; returns their job ids (blocking).
    A status that does not parse counts as the oldest."""
    keys = [k for k in store.list("/jobs/") if k.endswith("/status")]
    if len(keys) <= kept_max:
        return []

    def submitted(k: str) -> float:
        st = _get(store, k)
        at = st.get("submitted_at") if isinstance(st, dict) else None
        return at if isinstance(at, (int, float)) else 0

    old = sorted(keys, key=submitted)
    dropped = []
    for k in old[: len(keys) - kept_max]:
        jid = k.split("/")[2]
        for what in ("status", "spec", "launch"):
            store.delete(f"/jobs/{jid}/{what}")
        dropped.append(jid)
    return dropped


def restore_records(store, alive: set[str], owners: dict, queues: dict,
                    queued: list | None = None) -> set[str]:
    """A starting FuxiMaster's view of the stored jobs: owners and queues remembered; a job
    that waited in a queue is appended to ``queued`` (in submit order) when that is given
    and it has a launch record (its plan), else it failed, with a report; a job whose
    JobMaster is alive (``alive``) keeps its state (it is adopted); one whose JobMaster is gone
    is returned when it has a launch record (an orphan, resumed from its checkpoint), else
    failed. Launch records of jobs that ended (as the old FuxiMaster died) go."""
    terminal = {s.value for s in TERMINAL_JOB}
    keys = store.list("/jobs/")
    launches = {k.split("/")[2] for k in keys if k.endswith("/launch")}
    orphans = set()
    waiting = []
    for jid, st in _statuses(store, keys):
        owners[jid] = st.get("owner")
        queues[jid] = st.get("queue") or DEFAULT_QUEUE
        if st.get("state") == JobState.QUEUED.value and queued is not None and jid in launches:
            at = st.get("submitted_at")
            waiting.append((at if isinstance(at, (int, float)) else 0.0, jid))
        elif st.get("state") == JobState.QUEUED.value:  # its plan waited in the old process
            st.update(state=JobState.FAILED.value, finished_at=time.time(),
                      report="FuxiMaster restarted while the job waited in its queue; "
                             "submit it again")
            store.put(f"/jobs/{jid}/status", st)
        elif st.get("state") not in terminal and jid not in alive and jid in launches:
            orphans.add(jid)
        elif st.get("state") not in terminal and jid not in alive:
            st.update(state=JobState.FAILED.value,
                      report="FuxiMaster restarted while the job ran; its JobMaster is gone")
            store.put(f"/jobs/{jid}/status", st)
        if jid in launches and st.get("state") in terminal:
            store.delete(launch_key(jid))
    if queued is not None:
        queued.extend(jid for _, jid in sorted(waiting))
    return orphans


def persist_launch(store, job_id: str, plan, user: str | None, sys_path) -> str | None:
    """Keep what restarting ``job_id``'s JobMaster needs (blocking: encoding a big plan takes
    a while). A plan that cannot be kept leaves a marker saying why; returns that reason (the
    job still runs, but a FuxiMaster that adopts it cannot restart its JobMaster)."""
    try:
        doc = launch.encode(job_id, plan, user, sys_path)
        why = None
    except launch.NotPersistable as e:
        why = str(e)[:NOT_KEPT_REASON_CHARS_MAX]
        doc = {"v": launch.LAUNCH_FORMAT_VERSION, "job_id": job_id, "not_kept": why}
        logger.warning("the launch of job %s is not kept: %s", job_id, why)
    try:
        store.put(launch_key(job_id), doc)
    except LimitExceeded as e:  # a store with a smaller value limit than ours
        why = f"the store refused its launch record: {str(e)[:NOT_KEPT_REASON_CHARS_MAX - 40]}"
        store.put(launch_key(job_id), {"v": launch.LAUNCH_FORMAT_VERSION, "job_id": job_id,
                                       "not_kept": why})
    return why


def load_launch(store, job_id: str) -> tuple[launch.Launch | None, str]:
    """An adopted job's launch, checked, or None and why it cannot be used (blocking)."""
    try:
        doc = store.get(launch_key(job_id))
    except ValueError as e:
        return None, f"its launch record does not parse ({str(e)[:200]})"
    if doc is None:
        return None, ("no launch record of it is stored (submitted to a FuxiMaster that kept "
                      "none, or one whose store does not outlive it)")
    if isinstance(doc, dict) and set(doc) == {"v", "job_id", "not_kept"}:
        return None, f"its plan was not kept at submit: {str(doc['not_kept'])[:NOT_KEPT_REASON_CHARS_MAX]}"
    try:
        return launch.decode(doc, job_id), ""
    except launch.BadLaunch as e:
        return None, f"its launch record is unusable: {e}"
