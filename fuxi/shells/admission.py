"""FuxiMaster's admission of jobs: room for a JobMaster now, or a place in a queue.

At most ``jobs_running_max`` jobs run at once in the cluster, and at most a queue's own
``jobs_running_max`` of that queue (quota group). A job submitted without room is not refused:
it is recorded as ``queued`` and waits in its queue (``fuxi.core.jobqueue``: priority with
ageing, submit order among equals, bounded by ``JOBS_QUEUED_MAX``) until a running job ends or
an operator raises a limit; then it starts like any other. A newcomer never jumps a job of its
own queue that already waits. The queue is soft state: the plans wait in this process, and a
FuxiMaster restart fails the jobs that were waiting (their records say so).

A queue is also a quota group: its configuration may carry a resource quota (``min``,
``max``, ``weight``; checked and mapped onto the scheduling core in ``fuxi.shells.quotas``),
which FuxiMaster's sync applies to the slots of the queue's jobs.

The configuration (the queues, their quotas and the cluster's limit) is hard state, in the
store at ``/config/admission``.

This class lives in FuxiMaster's actor and runs on its event loop; it starts JobMasters
through the ``start`` callback the master gives it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable

from base import metrics
from fuxi.core.jobqueue import JobQueue
from fuxi.core.plan import JobPlan
from fuxi.core.reclaim import ReclaimClock
from fuxi.core.spec import QUEUE_NAME_RE
from fuxi.core.spec import priority_max as PRIORITY_MAX
from fuxi.core.states import JobState
from fuxi.errors import BadInput
from fuxi.shells import quotas

logger = logging.getLogger(__name__)

DEFAULT_QUEUE = "default"  # the queue (quota group) a job without ``queue:`` waits in
QUEUES_MAX = 64  # queues (quota groups) an operator may define
JOBS_RUNNING_MAX = 256  # concurrent jobs per cluster (JobMaster actors); more wait in a queue

CONFIG_KEY = "/config/admission"

JOBS_QUEUED = metrics.counter("fuxi_jobs_queued_total", "Jobs that had to wait in a queue for room.",
                              labels=("queue",))
QUEUE_WAIT = metrics.histogram("fuxi_job_queue_wait_seconds", "Time jobs waited in a queue.")


def checked_queues(queues) -> dict[str, dict]:
    """An operator's queue configuration, checked: a mapping of names to limits."""
    if not isinstance(queues, dict):
        raise BadInput(f"queues: got {type(queues).__name__}, expected a mapping of queue names "
                       f"to their limits")
    if len(queues) > QUEUES_MAX:
        raise BadInput(f"queues: got {len(queues)}, expected at most QUEUES_MAX={QUEUES_MAX}")
    out: dict[str, dict] = {}
    for name, conf in queues.items():
        if not isinstance(name, str) or not QUEUE_NAME_RE.match(name):
            raise BadInput(f"queue name: got {name!r}, expected a name matching "
                           f"{QUEUE_NAME_RE.pattern}")
        conf = {} if conf is None else conf
        if not isinstance(conf, dict) or set(conf) - {"jobs_running_max", *quotas.QUOTA_KEYS}:
            raise BadInput(f"queue {name!r}: got {str(conf)[:200]!r}, expected a mapping with at "
                           f"most the keys jobs_running_max, min, max, weight")
        cap = conf.get("jobs_running_max")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                                or not 1 <= cap <= JOBS_RUNNING_MAX):
            raise BadInput(f"queue {name!r}: jobs_running_max got {cap!r}, expected an integer "
                           f"from 1 to {JOBS_RUNNING_MAX} or null")
        out[name] = {"jobs_running_max": cap, **quotas.checked_quota(name, conf)}
    out.setdefault(DEFAULT_QUEUE, {"jobs_running_max": None, **quotas.checked_quota(DEFAULT_QUEUE, {})})
    quotas.check_count(out)
    return out


class Admissions:
    def __init__(self, astore, stored: dict | None, running: Callable[[], Iterable[str]],
                 start: Callable[[str, JobPlan, Any, list[str] | None], None],
                 tasks: set):
        self.astore = astore
        stored = stored or {}
        self.queues: dict[str, dict] = checked_queues(stored.get("queues") or {})
        self.jobs_running_max = int(stored.get("jobs_running_max") or JOBS_RUNNING_MAX)
        self.queue = JobQueue()
        self.usage = quotas.QuotaUsage()  # what each queue's jobs hold (FuxiMaster's sync)
        self.job_queues: dict[str, str] = {}  # every known job -> its queue (ACL on queue:NAME)
        self._running = running  # ids of jobs whose JobMaster exists
        self._start = start
        self._tasks = tasks  # FuxiMaster's set of background tasks (kept referenced)
        self._queued: dict[str, tuple[JobPlan, Any, list[str] | None]] = {}
        self._starting: set[str] = set()  # room reserved, JobMaster not created yet
        self._admitted: dict[str, asyncio.Event] = {}  # queued job -> set when it starts or ends
        self.reclaim = ReclaimClock()  # guarantees waiting on borrowers (forced reclaim)

    # ---------------------------------------------------------------- room

    def check_queue(self, queue: str, cluster: str) -> None:
        """A submitted plan's queue, decided on before anything is recorded: a caller builds
        the plan, so its type is checked here too (an unhashable value must not escape as a
        TypeError)."""
        if not isinstance(queue, str) or not QUEUE_NAME_RE.match(queue):
            raise BadInput(f"queue: got {str(queue)[:80]!r}, expected a queue name matching "
                           f"{QUEUE_NAME_RE.pattern}")
        if queue not in self.queues:
            raise BadInput(f"no queue named {queue!r} in cluster {cluster!r}; known queues: "
                           f"{', '.join(sorted(self.queues))} (`fuxi queue list`)")

    def running_in(self, queue: str) -> int:
        return sum(1 for jid in (*self._running(), *self._starting)
                   if self.job_queues.get(jid, DEFAULT_QUEUE) == queue)

    def _has_room(self, queue: str) -> bool:
        if len(list(self._running())) + len(self._starting) >= self.jobs_running_max:
            return False
        cap = (self.queues.get(queue) or {}).get("jobs_running_max")
        return cap is None or self.running_in(queue) < cap

    def reserve(self, job_id: str, queue: str, plan: JobPlan, who, sys_path, seq: int,
                now: float) -> bool:
        """Take room for ``job_id`` now (True), or queue it (False; ``QueueFull`` when the
        queues are full). Synchronous: no other submit can take the same room meanwhile."""
        priority = plan.priority
        if isinstance(priority, bool) or not isinstance(priority, int) \
                or not 0 <= priority <= PRIORITY_MAX:
            raise BadInput(f"priority: got {str(priority)[:80]!r}, expected an integer from 0 to "
                           f"{PRIORITY_MAX}")
        self.job_queues[job_id] = queue
        if self._has_room(queue) and not self.queue.by_group().get(queue):
            self._starting.add(job_id)
            return True
        self.queue.add(job_id, queue, plan.priority, seq, now)
        self._queued[job_id] = (plan, who, sys_path)
        self._admitted[job_id] = asyncio.Event()
        JOBS_QUEUED.inc(queue=queue)
        return False

    def unreserve(self, job_id: str) -> None:
        """Undo ``reserve`` (recording the job failed)."""
        self._starting.discard(job_id)
        if self.queue.remove(job_id) is not None:
            self._queued.pop(job_id, None)
            self._admitted.pop(job_id, None)

    def started(self, job_id: str) -> None:
        self._starting.discard(job_id)

    def start_waiting(self) -> None:
        """Start waiting jobs while there is room (after a job ended or the limits changed)."""
        now = time.time()
        while (q := self.queue.pop_next(now, self._has_room)) is not None:
            plan, who, sys_path = self._queued.pop(q.job_id)
            self._starting.add(q.job_id)
            QUEUE_WAIT.observe(now - q.queued_at)
            task = asyncio.get_running_loop().create_task(
                self._start_after_wait(q.job_id, plan, who, sys_path))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start_after_wait(self, job_id: str, plan: JobPlan, who, sys_path) -> None:
        try:
            st = await self.astore.get(f"/jobs/{job_id}/status") or {"job_id": job_id}
            st.update(state=JobState.PENDING.value)
            await self.astore.put(f"/jobs/{job_id}/status", st)
            self._start(job_id, plan, who, sys_path)
        except Exception as e:
            logger.exception("starting queued job %s failed", job_id)
            self._starting.discard(job_id)
            st = {"job_id": job_id, "state": JobState.FAILED.value, "finished_at": time.time(),
                  "report": f"starting the job after its wait failed: {e!r}"}
            try:
                await self.astore.put(f"/jobs/{job_id}/status", st)
            except Exception:
                logger.exception("recording job %s failed", job_id)
        finally:
            ev = self._admitted.pop(job_id, None)
            if ev is not None:
                ev.set()

    # ---------------------------------------------------------------- the waiting jobs

    def with_position(self, job_id: str, st: dict) -> dict:
        """A queued job's record, with its place in the queue now."""
        if job_id in self.queue:
            st = dict(st, **self.queue.positions(time.time())[job_id])
        return st

    async def cancel(self, job_id: str) -> dict | None:
        """Cancel a job that waits (its record says so); None if it does not wait."""
        if self.queue.remove(job_id) is None:
            return None
        self._queued.pop(job_id, None)
        st = await self.astore.get(f"/jobs/{job_id}/status") or {"job_id": job_id}
        st.update(state=JobState.CANCELLED.value, finished_at=time.time(),
                  report="cancelled while waiting in its queue")
        await self.astore.put(f"/jobs/{job_id}/status", st)
        ev = self._admitted.pop(job_id, None)
        if ev is not None:
            ev.set()
        return st

    async def wait_started(self, job_id: str, timeout_s: float) -> float | None:
        """For a waiting job, wait until it starts or ends: the time left of ``timeout_s``,
        or None when the time ran out first. A job that does not wait: ``timeout_s``."""
        ev = self._admitted.get(job_id)
        if ev is None:
            return timeout_s
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(ev.wait(), timeout_s)
        except asyncio.TimeoutError:
            return None
        return max(0.0, timeout_s - (time.monotonic() - t0))

    # ---------------------------------------------------------------- quotas

    def demands(self, job_demands: dict, priorities: dict, submit_seq: dict) -> list:
        """Every job's demands, each in its queue's quota group (``fuxi.shells.quotas``)."""
        return quotas.demands(job_demands, priorities, submit_seq, self.job_queues, self.queues,
                              DEFAULT_QUEUE)

    def quota_groups(self, node_totals: dict) -> dict:
        return quotas.core_groups(self.queues, node_totals)

    def preempt(self, plan, now: float) -> str | None:
        """Why the syncing job must stop its workers beyond its target now, if it must: an
        online replica waits (``plan.preempt``), or a queue's guarantee has waited past
        ``RECLAIM_GRACE_S`` for borrowers to give back (``fuxi.core.reclaim``)."""
        due = self.reclaim.due(plan.reclaim_wait, now)
        if plan.preempt:
            return "preempted: its slot went to an online service"
        return due

    def observe(self, ledger) -> None:
        self.usage.observe(ledger, self.job_queues, DEFAULT_QUEUE)

    # ---------------------------------------------------------------- configuration

    def view(self) -> dict:
        waiting = self.queue.by_group()
        return {"jobs_running_max": self.jobs_running_max,
                "queues": {name: {**conf, "running": self.running_in(name),
                                  "waiting": waiting.get(name, 0), **self.usage.view(name)}
                           for name, conf in sorted(self.queues.items())}}

    async def configure(self, queues: dict | None, jobs_running_max: int | None) -> dict:
        if jobs_running_max is not None:
            if isinstance(jobs_running_max, bool) or not isinstance(jobs_running_max, int) \
                    or not 1 <= jobs_running_max <= JOBS_RUNNING_MAX:
                raise BadInput(f"jobs_running_max: got {jobs_running_max!r}, expected an integer "
                               f"from 1 to {JOBS_RUNNING_MAX}")
        new = self.queues if queues is None else checked_queues(queues)
        for name in set(self.queues) - set(new):
            if self.running_in(name) or self.queue.by_group().get(name):
                raise BadInput(f"queue {name!r} has running or waiting jobs; it cannot be removed "
                               f"until they end")
        limit = self.jobs_running_max if jobs_running_max is None else jobs_running_max
        await self.astore.put(CONFIG_KEY, {"queues": new, "jobs_running_max": limit})
        self.queues, self.jobs_running_max = new, limit
        self.start_waiting()
        return self.view()
