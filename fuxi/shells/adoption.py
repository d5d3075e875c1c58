"""FuxiMaster after a restart: running jobs are adopted, never failed (issue 16 part 3).

JobMasters are detached actors named ``jobmaster-<job id>``: they outlive the FuxiMaster that
started them, keep their workers and keep syncing (a sync that fails is sent again; only
``MASTER_LOST_S`` of silence makes a JobMaster give up). A FuxiMaster that starts -- restarted
by Ray after a crash, or started anew on a cluster that still runs jobs -- therefore:

1. before it serves, lists the JobMasters alive in its namespace (one GCS call). A job whose
   record is not final and whose JobMaster is gone is an *orphan* when it has a launch record
   (``resume`` starts a new JobMaster from its checkpoint, or fails it saying why), else it
   failed (as before); every other job with a live JobMaster is *expected*;
2. adopts each expected job on its first call (``resume``, which FuxiMaster sends itself when
   it starts): the job's handle, a watcher of ``JobMaster.final`` (so a job that ended while
   FuxiMaster was down still has its verdict recorded), its priority and owner from the
   record, and its launch record (``fuxi.shells.recovery``: plan, user, sys_path), so a
   JobMaster of an adopted job that dies is restarted from its checkpoint like any other;
3. rebuilds that job's part of the slot ledger from the job's own first sync (``held``: what
   its live workers hold per shape and node) -- the soft state comes from those who hold it.
   The releases of that same sync are already out of ``held`` and are not applied again.

Everything a sync carries is bounded and checked (``check_held``): a broken or hostile
JobMaster gets a clear error, and an adopted job can hold no slot on a node that is not in
the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Mapping

import ray

from base import events
from fuxi.core import slots
from fuxi.core.sched.model import WORKERS_PER_NODE_MAX
from fuxi.core.states import JobState
from fuxi.errors import BadInput

logger = logging.getLogger(__name__)

JOBMASTER_PREFIX = "jobmaster-"
HELD_SHAPES_MAX = 64  # shapes one sync may say it holds
HELD_NODES_MAX = 100_000  # nodes per shape one sync may say it holds slots on
HELD_KEY_CHARS_MAX = 256


def jobmaster_name(job_id: str) -> str:
    return JOBMASTER_PREFIX + job_id


def live_jobmasters() -> set[str]:
    """Job ids whose JobMaster is alive in this actor's namespace (a GCS call: only before
    the event loop serves, or on a thread)."""
    names = ray.util.list_named_actors(all_namespaces=False)
    return {n[len(JOBMASTER_PREFIX):] for n in names
            if isinstance(n, str) and n.startswith(JOBMASTER_PREFIX)}


def check_held(held: Any, nodes: Mapping[str, Any]) -> dict[str, dict]:
    """A sync's ``held`` as ``{shape_key: {"shape": {res: amount}, "nodes": {node: n}}}``,
    checked; slots on nodes that are not (or no longer) in ``nodes`` are left out (their
    workers are gone with the node)."""
    if held is None:
        return {}
    if not isinstance(held, dict) or len(held) > HELD_SHAPES_MAX:
        raise BadInput(f"held: expected a dict of at most {HELD_SHAPES_MAX} shapes, got "
                       f"{type(held).__name__} of {len(held) if isinstance(held, dict) else '?'}")
    out: dict[str, dict] = {}
    for sk, entry in held.items():
        if not isinstance(sk, str) or not 0 < len(sk) <= HELD_KEY_CHARS_MAX:
            raise BadInput(f"held: shape key {str(sk)[:40]!r}: expected a string of 1.."
                           f"{HELD_KEY_CHARS_MAX} characters")
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), dict) \
                or not isinstance(entry.get("nodes"), dict):
            raise BadInput(f"held[{sk!r}]: expected {{'shape': {{...}}, 'nodes': {{...}}}}")
        shape = {}
        for k, v in entry["shape"].items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not math.isfinite(v) or v < 0:
                raise BadInput(f"held[{sk!r}].shape[{str(k)[:40]!r}]={str(v)[:40]!r}: expected "
                               f"a resource name and a finite amount >= 0")
            shape[k] = float(v)
        if len(entry["nodes"]) > HELD_NODES_MAX:
            raise BadInput(f"held[{sk!r}].nodes: {len(entry['nodes'])} nodes, expected at most "
                           f"{HELD_NODES_MAX}")
        per_node = {}
        for node, n in entry["nodes"].items():
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= WORKERS_PER_NODE_MAX:
                raise BadInput(f"held[{sk!r}].nodes[{str(node)[:40]!r}]={str(n)[:40]!r}: expected "
                               f"a slot count from 1 to {WORKERS_PER_NODE_MAX} (WORKERS_PER_NODE_MAX)")
            if isinstance(node, str) and node in nodes:
                per_node[node] = n
        if per_node:
            out[sk] = {"shape": shape, "nodes": per_node}
    return out


class Adoption:
    """Jobs FuxiMaster found running when it started, and which of them still have to tell
    it what they hold."""

    def __init__(self, restarted: bool, expected: set[str]):
        self.restarted = restarted
        self.expected = set(expected)  # job ids with a live JobMaster, not adopted yet
        # job ids whose record says they ran, whose JobMaster was gone, that have a launch
        # record: a new JobMaster resumes them from their checkpoint (or they fail)
        self.orphans: set[str] = set()
        self.relaunched: dict[str, float] = {}  # orphan -> when its new JobMaster started
        self.unledgered: set[str] = set()  # adopted; their first sync rebuilds their slots
        self.adopted: dict[str, float] = {}  # job id -> when it was adopted
        self.rebuilt: dict[str, float] = {}  # job id -> when its first sync refilled the ledger
        self.queued: list[str] = []  # jobs that waited in a queue, in submit order: re-queued
        self.requeued: list[str] = []
        self.loops: dict | None = None  # the loops a predecessor ran (None: not known, all)
        self.started_at = time.time()
        self.resumed_at: float | None = None
        self._lock = asyncio.Lock()

    async def resume(self, master) -> list[str]:
        """Adopt every expected job (idempotent: calls wait for one another, so a caller
        asking for a job after this returns finds it adopted); their ids."""
        async with self._lock:
            done = []
            while self.expected:
                job_id = min(self.expected)
                self.expected.discard(job_id)
                try:
                    handle = await master.gcs.run(ray.get_actor, jobmaster_name(job_id))
                except ValueError:  # died since it was listed: resumed, or failed (below)
                    self.orphans.add(job_id)
                    continue
                self._adopt(master, job_id, handle)
                await master.recovery.adopt(job_id)  # its launch: a dead JobMaster restarts
                done.append(job_id)
            while self.orphans:
                job_id = min(self.orphans)
                self.orphans.discard(job_id)
                if await master.recovery.restart_orphan(job_id) is None:
                    self.relaunched[job_id] = time.time()
            self.resumed_at = self.resumed_at or time.time()
        if done:
            logger.warning("FuxiMaster adopted %d running job(s) after a restart: %s",
                           len(done), ", ".join(done[:20]))
        return done

    async def requeue(self, master) -> list[str]:
        """Jobs that waited in a queue when the last FuxiMaster died: queued again, in their
        submit order, from their launch records (a plan that cannot be read fails the job,
        saying why); those with room now start. Idempotent: each is taken once."""
        from fuxi.shells.jobrecords import load_launch

        done = []
        async with self._lock:
            while self.queued:
                job_id = self.queued.pop(0)
                key = f"/jobs/{job_id}/status"
                st = await master.astore.get(key) or {"job_id": job_id}
                got, why = await master.astore.call(load_launch, master.store, job_id)
                if got is None:
                    st.update(state=JobState.FAILED.value, finished_at=time.time(),
                              report=f"FuxiMaster changed while the job waited in its queue, "
                                     f"and it cannot be queued again: {why}")
                    await master.astore.put(key, st)
                    continue
                master.seq += 1
                master.submit_seq[job_id] = master.seq
                master.priorities[job_id] = got.plan.priority
                at = st.get("submitted_at")
                try:
                    now_room = master.admissions.reserve(
                        job_id, got.plan.queue, got.plan, got.user, list(got.sys_path),
                        master.seq, at if isinstance(at, (int, float)) else time.time())
                except BadInput as e:  # QueueFull, a queue removed meanwhile
                    st.update(state=JobState.FAILED.value, finished_at=time.time(),
                              report=f"FuxiMaster changed while the job waited in its queue, "
                                     f"and it cannot be queued again: {e}")
                    await master.astore.put(key, st)
                    continue
                if now_room:
                    master._start(job_id, got.plan, got.user, list(got.sys_path))
                    st.update(state=JobState.PENDING.value)
                    await master.astore.put(key, st)
                done.append(job_id)
            self.requeued.extend(done)
        if done:
            logger.warning("FuxiMaster queued %d waiting job(s) again: %s", len(done),
                           ", ".join(done[:20]))
        return done

    def _adopt(self, master, job_id: str, handle) -> None:
        master.jobmasters[job_id] = handle
        master.seq += 1
        master.submit_seq.setdefault(job_id, master.seq)
        master.runs[job_id] = handle.final.remote()
        self.unledgered.add(job_id)
        self.adopted[job_id] = time.time()
        watcher = asyncio.get_running_loop().create_task(master._watch(job_id))
        master._watchers.add(watcher)
        watcher.add_done_callback(master._watchers.discard)
        events.emit("fuxi", "job_adopted", f"job {job_id} adopted by a new FuxiMaster",
                    job=job_id, severity="warning")

    def first_sync(self, master, job_id: str, priority: int, held: Any, cred: Any,
                   owner: str | None) -> bool:
        """An adopted job's first sync: its slots go into the ledger. True when this was it
        (the caller then skips the sync's releases: ``held`` is already after them)."""
        if job_id not in self.unledgered:
            return False
        checked = check_held(held, master.nodes)
        self.unledgered.discard(job_id)
        self.rebuilt[job_id] = time.time()
        if isinstance(cred, str) and cred:
            master._job_tokens.setdefault(job_id, cred)  # it was checked by sync already
        if owner is not None:  # the job's token names its submitter (no record survived)
            master.job_owners.setdefault(job_id, owner)
        for sk, entry in checked.items():
            d = slots.Demand(f"{job_id}/{sk}", job_id, priority, master.submit_seq.get(job_id, 0),
                             entry["shape"], 0)
            for node, n in entry["nodes"].items():
                master.ledger.grant(d, node, n)
        return True

    def info(self) -> dict:
        return {"restarted": self.restarted, "adopted_jobs": sorted(self.adopted),
                "requeued_jobs": list(self.requeued),
                "relaunched_jobs": sorted(self.relaunched),
                "started_at": self.started_at, "resumed_at": self.resumed_at,
                "rebuilt_at": dict(self.rebuilt)}


def leader_state(master, restarted: bool) -> None:
    """The leader's state, read from the store (blocking; one GCS call): the queues, the
    running jobs to adopt, the stored records, the service manager. Run by a FuxiMaster
    that serves as it starts (no election), or by the winner of the election."""
    from fuxi.shells.admission import CONFIG_KEY, Admissions
    from fuxi.shells.jobrecords import restore_records
    from fuxi.shells.services import ServiceManager, replica_control_secret

    m = master
    # Room for jobs, and the queues (quota groups) where those without room wait.
    m.admissions = Admissions(m.astore, m.store.get(CONFIG_KEY), lambda: m.jobmasters,
                              m._start, m._watchers)
    # Jobs still running (their JobMasters are detached) are adopted, not failed.
    try:
        alive = live_jobmasters()
    except Exception:  # noqa: BLE001 - without the list, no job can be adopted
        logger.exception("listing running JobMasters failed; none can be adopted")
        alive = set()
    m.adoption = Adoption(restarted, alive)
    # Finished jobs whose JobMaster exited: restore what the store remembers; queued jobs
    # are queued again (their launch records hold their plans).
    m.adoption.orphans = restore_records(m.store, alive, m.job_owners,
                                         m.admissions.job_queues, m.adoption.queued)
    if m.leadership.elected:  # Nuwa keeps every job of ours: one with no record is not ours
        m.adoption.expected &= set(m.job_owners)
    m.services = ServiceManager(
        m.cluster, m.namespace, m.astore, m.detached, token_for=m._service_token,
        control_secret=replica_control_secret(m.data_dir) if m.auth_enabled else None,
        platform_cred=m.platform_guard.platform_token)
