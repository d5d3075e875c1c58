"""Job records in FuxiMaster's store (``/jobs/<id>/status`` and ``/jobs/<id>/spec``): ids,
listing, dropping the oldest, and what a starting FuxiMaster makes of them. All blocking:
called before the event loop serves, or off it (``AsyncStore.call``)."""

from __future__ import annotations

import secrets
import time

from fuxi.core.states import TERMINAL_JOB, JobState
from fuxi.shells.admission import DEFAULT_QUEUE


def new_job_id(name: str) -> str:
    return f"{name[:40]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def statuses(store) -> list[tuple[str, dict]]:
    """Every stored job status, (job id, status) (blocking: run off the loop)."""
    out = []
    for key in store.list("/jobs/"):
        if key.endswith("/status"):
            st = store.get(key)
            if st is not None:
                out.append((key.split("/")[2], st))
    return out


def drop_old_records(store, kept_max: int) -> list[str]:
    """Delete the oldest job records beyond ``kept_max``; returns their job ids (blocking)."""
    keys = [k for k in store.list("/jobs/") if k.endswith("/status")]
    if len(keys) <= kept_max:
        return []
    old = sorted(keys, key=lambda k: (store.get(k) or {}).get("submitted_at") or 0)
    dropped = []
    for k in old[: len(keys) - kept_max]:
        jid = k.split("/")[2]
        store.delete(f"/jobs/{jid}/status")
        store.delete(f"/jobs/{jid}/spec")
        dropped.append(jid)
    return dropped


def restore_records(store, alive: set[str], owners: dict, queues: dict) -> None:
    """A starting FuxiMaster's view of the stored jobs: owners and queues remembered; a job
    that waited in a queue (its plan was soft state) or whose JobMaster is gone failed, with
    a report; a job whose JobMaster is alive (``alive``) keeps its state (it is adopted)."""
    terminal = {s.value for s in TERMINAL_JOB}
    for jid, st in statuses(store):
        owners[jid] = st.get("owner")
        queues[jid] = st.get("queue") or DEFAULT_QUEUE
        if st.get("state") == JobState.QUEUED.value:  # its plan waited in the old process
            st.update(state=JobState.FAILED.value, finished_at=time.time(),
                      report="FuxiMaster restarted while the job waited in its queue; "
                             "submit it again")
            store.put(f"/jobs/{jid}/status", st)
        elif st.get("state") not in terminal and jid not in alive:
            st.update(state=JobState.FAILED.value,
                      report="FuxiMaster restarted while the job ran; its JobMaster is gone")
            store.put(f"/jobs/{jid}/status", st)
