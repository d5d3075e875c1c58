"""The JobMaster's pure core: instances, attempts, workers, retries, backups, blacklists.

Events go in (slots granted, a worker started or died, a worker's report of started and
finished attempts, a clock tick, cancel); *actions* come out (start or stop a worker, push
attempts to a worker, commit an instance's output, release a slot, the job is done). The Ray
shell (``fuxi.shells.jobmaster``) executes the actions and feeds results back. Time is an argument
(``now``, seconds), never read here, so whole jobs replay deterministically in unit tests.

Dispatch is batched: each worker has a small queue of attempts whose depth adapts to how long
the task's instances take (``batch_target_s`` worth of work, between 1 and
``worker_queue_max``), so very short instances are not bound by the cost of one Ray call each
while long ones never wait behind each other.

No event costs a pass over all workers or instances (issue 16): workers are found through
``fuxi.core.jobindex.WorkerIndex`` (updated by ``_touch`` after every change to a worker),
instance states are counted per task as they move (``_move``), running attempts sit in a
deadline heap (timeouts) and per task in start order (speculation), and the median duration is
kept as durations arrive. ``validate_state`` recomputes all of it from scratch (tests call it).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any, Collection

from fuxi.core import jobcheck, jobreport, stragglers
from fuxi.core.blacklist import JobBlacklist
from fuxi.core.jobdrain import NodeDrainMixin
from fuxi.core.jobindex import WorkerIndex
from fuxi.core.plan import JobPlan, TaskPlan
from fuxi.core.speculation import CANDIDATE, GONE, StartOrder
from fuxi.core.states import (
    TERMINAL_ATTEMPT,
    TERMINAL_INSTANCE,
    TERMINAL_JOB,
    AttemptState,
    InstanceState,
    JobState,
    move,
)

from fuxi.core.jobtypes import (  # the core's vocabulary, re-exported: shells import it from here
    Attempt,
    AttemptResult,
    AttemptSpec,
    Checkpoint,
    Commit,
    Instance,
    JobDone,
    JobLimits,
    Push,
    ReleaseSlot,
    StartWorker,
    StopAttempt,
    StopWorker,
    TaskStats,
    Worker,
)

__all__ = [
    "Attempt", "AttemptResult", "AttemptSpec", "Commit", "Instance", "JobCore", "JobDone",
    "JobLimits", "Push", "ReleaseSlot", "StartWorker", "StopAttempt", "StopWorker", "TaskStats",
    "Worker",
]

A, I, J = AttemptState, InstanceState, JobState


class JobCore(NodeDrainMixin):
    def __init__(self, job_id: str, plan: JobPlan, now: float, limits: JobLimits = JobLimits(),
                 recover: Any = None):
        self.job_id = job_id
        self.plan = plan
        self.limits = limits
        self.state = J.PENDING
        self.created_at = now
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.report = ""
        self.tasks: dict[str, TaskPlan] = {t.name: t for t in plan.tasks}
        self.order = [t.name for t in plan.tasks]
        self.instances: dict[str, list[Instance]] = {
            t.name: [Instance(t.name, i) for i in range(t.num_instances)] for t in plan.tasks
        }
        self.stats: dict[str, TaskStats] = {t.name: TaskStats() for t in plan.tasks}
        self.remaining: dict[str, int] = {t.name: t.num_instances for t in plan.tasks}
        self.workers: dict[str, Worker] = {}
        self.attempts: dict[tuple[str, int, int], Attempt] = {}
        self.ready: dict[str, deque[Instance]] = {}  # per shape key, in task then index order
        self.delayed: list[tuple[float, int, str, int]] = []  # (not_before, seq, task, index)
        self._seq = 0
        self.backups_pending: deque[Instance] = deque()
        # Nodes excluded for this job (hard, with expiry): fuxi.core.blacklist.
        self.blacklist = JobBlacklist(limits.node_failures_max, limits.node_blacklist_s)
        self.gone_nodes: set[str] = set()  # died while the job ran
        self.worker_start_failures = 0
        self.preempted = 0  # attempts stopped to make room for online services
        self._next_worker = 0
        self.key = job_id
        self.started_tasks: set[str] = set()
        # Incremental state (issue 16); jobcheck.validate recomputes each from scratch.
        self.index = WorkerIndex()
        self.counts: dict[str, dict[InstanceState, int]] = {
            t.name: {I.WAITING: t.num_instances} for t in plan.tasks}
        self.by_start: dict[str, StartOrder] = {t.name: StartOrder() for t in plan.tasks}
        self.deadlines: list[tuple[float, int, tuple[str, int, int]]] = []  # (timeout at, seq, key)
        self.doubled: dict[str, set[int]] = {t.name: set() for t in plan.tasks}  # got a backup
        self.resumed = 0  # JobMasters before this one (set by ``recover``)
        if recover is not None:  # fuxi.core.checkpoint: recovered instances end before any is ready
            recover(self)
        for name in self.order:
            if not self.tasks[name].upstream:
                self._make_ready(name, now)

    # ------------------------------------------------------------ queries

    def done(self) -> bool:
        return self.state in TERMINAL_JOB

    @property
    def bad_nodes(self) -> frozenset[str]:
        """Nodes blacklisted for this job now: none of its workers runs or starts there."""
        return self.blacklist.nodes()

    def demands(self) -> dict[str, tuple[dict[str, float], int]]:
        """Worker slots wanted per shape: enough for every instance that could run now."""
        want: dict[str, int] = {}
        shapes: dict[str, dict[str, float]] = {}
        if self.done():
            return {}
        for name in self.order:
            t = self.tasks[name]
            active = self.remaining[name] if name in self.started_tasks else 0
            if active:
                want[t.shape_key] = want.get(t.shape_key, 0) + active
                shapes[t.shape_key] = t.shape
        for inst in self.backups_pending:
            sk = self.tasks[inst.task].shape_key
            want[sk] = want.get(sk, 0) + 1
        return {k: (shapes[k], min(n, self.limits.workers_max)) for k, n in want.items()}

    def held(self) -> dict[str, dict[str, int]]:
        """Slots held per shape per node (one per live worker)."""
        return {sk: dict(per_node) for sk, per_node in self.index.held.items()}

    def status(self, now: float) -> dict[str, Any]:
        return jobreport.status(self, now)

    def story(self, task: str, index: int) -> list[str]:
        """What happened to one instance, attempt by attempt (for reports and debugging)."""
        return jobreport.story(self, task, index)

    # ------------------------------------------------------------ events

    def slots_granted(self, shape_key: str, shape: dict[str, float], node_id: str, n: int,
                      now: float) -> list[Any]:
        if self.done() or node_id in self.bad_nodes:  # granted before FuxiMaster heard of it
            return [ReleaseSlot(shape_key, node_id) for _ in range(n)]
        return [self._new_worker(node_id, shape_key, shape) for _ in range(n)]

    def worker_started(self, worker_id: str, now: float) -> list[Any]:
        w = self.workers.get(worker_id)
        if w is None or w.dead or self.done():
            return []
        w.started = True
        w.idle_since = now
        self._touch(w)
        if self.state is J.PENDING:
            move(self, J.RUNNING, "first worker up")
            self.started_at = now
        return self._dispatch(now)

    def worker_start_failed(self, worker_id: str, error: str, now: float,
                            node_alive: bool = True) -> list[Any]:
        """A worker did not come up. A start on a node that has since died is not counted
        against ``worker_start_failures_max``: FuxiMaster grants the slot elsewhere."""
        w = self.workers.get(worker_id)
        if w is None or w.dead or self.done():
            return []
        w.dead = True
        self._touch(w)
        if not node_alive:
            self.gone_nodes.add(w.node_id)
            return [ReleaseSlot(w.shape_key, w.node_id)]
        self.worker_start_failures += 1
        acts: list[Any] = [ReleaseSlot(w.shape_key, w.node_id)]
        if self.worker_start_failures > self.limits.worker_start_failures_max:
            acts += self.fail(
                now,
                f"could not start workers: {self.worker_start_failures} starts failed "
                f"(worker_start_failures_max={self.limits.worker_start_failures_max}); last: {error}",
            )
        return acts

    def worker_report(self, worker_id: str, started: list[tuple[tuple[str, int, int], float]],
                      finished: list[AttemptResult], now: float) -> list[Any]:
        """``started``: (attempt key, seconds it has been running) for attempts now running."""
        acts: list[Any] = []
        w = self.workers.get(worker_id)
        for key, elapsed in started:
            a = self.attempts.get(key)
            if a is not None and a.state is A.QUEUED:
                move(a, A.RUNNING, "worker reported it running")
                a.started_at = now - max(0.0, elapsed)
                self._running(a)
        for res in finished:
            acts += self._attempt_finished(res, now)
        if w is not None and not w.dead and not w.queue:
            w.idle_since = now
            if w.draining:
                acts += self._retire(w, "fair share: slot returned to FuxiMaster", now)
        if not self.done():
            acts += self._dispatch(now)
        return acts

    def worker_died(self, worker_id: str, error: str, now: float, node_alive: bool = True,
                    blame: bool = True) -> list[Any]:
        """The worker process is gone (crashed, killed, or its node died). ``blame=False`` when
        the JobMaster killed it itself (an attempt would not stop): its running attempt is then
        requeued without being charged a retry. A worker on a dead node is not replaced there."""
        w = self.workers.get(worker_id)
        if w is None or w.dead or self.done():
            return []
        acts: list[Any] = []
        w.dead = True
        self._touch(w)
        if not node_alive:
            self.gone_nodes.add(w.node_id)
        for key in list(w.queue):
            a = self.attempts[key]
            inst = self.instances[key[0]][key[1]]
            if a.state is A.RUNNING and not blame:
                move(a, A.KILLED, f"worker {worker_id} was stopped: {error}")
                a.ended_at = now
                if a.key in w.queue:
                    w.queue.remove(a.key)
                    self._touch(w)
                acts += self._after_attempt_end(inst, now)
            elif a.state is A.RUNNING:
                acts += self._attempt_failed(a, inst, f"worker {worker_id} died: {error}", now,
                                             charge_worker=True)
            elif a.state is A.QUEUED:
                # Never started: put the instance back without charging a retry.
                move(a, A.LOST, "worker died before it started")
                a.ended_at = now
                acts += self._after_attempt_end(inst, now)
        w.queue.clear()
        self._touch(w)
        if self.done():
            return acts
        # Replace the worker on the same slot unless its node is blacklisted or gone.
        if w.node_id in self.bad_nodes or w.node_id in self.gone_nodes:
            acts.append(ReleaseSlot(w.shape_key, w.node_id))
        else:
            acts.append(self._new_worker(w.node_id, w.shape_key, w.shape))
        acts += self._dispatch(now)
        return acts

    def tick(self, now: float) -> list[Any]:
        if self.done():
            return []
        self.blacklist.expire(now)  # expired nodes may take new workers again
        acts: list[Any] = self._timeouts(now)
        while self.delayed and self.delayed[0][0] <= now:
            _, _, task, index = heapq.heappop(self.delayed)
            inst = self.instances[task][index]
            if inst.state is I.READY:
                self.ready.setdefault(self.tasks[task].shape_key, deque()).append(inst)
        acts += self._speculate(now)
        acts += self._dispatch(now)
        acts += self._release_idle(now)
        return acts

    def cancel(self, now: float, reason: str = "cancelled by user") -> list[Any]:
        if self.done():
            return []
        return self._end(now, J.CANCELLED, reason)

    def shrink(self, shape_key: str, target: int, now: float,
               preempt: bool | str = False) -> list[Any]:
        """FuxiMaster's fair-share target for a shape: workers beyond it drain (get no new
        work) and are released as soon as their queue is empty; no running attempt is killed.
        With ``preempt`` (an online service is waiting for the room, or a queue's guarantee
        waited too long: its text says which) they are stopped at once: their running
        attempts are killed and their instances go back to the ready queue, without counting
        as failures."""
        why = preempt if isinstance(preempt, str) and preempt else \
            "preempted: its slot went to an online service"
        live = sorted((self.workers[wid] for wid in self.index.live_by_shape.get(shape_key, ())),
                      key=lambda w: (w.node_id not in self.leaving, len(w.queue), w.worker_id))
        excess = max(0, len(live) - max(target, 0))
        acts: list[Any] = []
        for i, w in enumerate(live):
            if w.draining != (i < excess or w.node_id in self.leaving):  # fuxi.core.jobdrain
                w.draining = i < excess or w.node_id in self.leaving
                self._touch(w)
            if w.draining and preempt:
                self.preempted += len(w.queue)  # attempts stopped (running or about to)
                acts += self._retire(w, why[:200], now)
            elif w.draining and w.started and not w.queue:
                acts += self._retire(w, "fair share: slot returned to FuxiMaster", now)
        return acts

    # ------------------------------------------------------------ internals: instances

    def _make_ready(self, task: str, now: float) -> None:
        t = self.tasks[task]
        self.started_tasks.add(task)
        q = self.ready.setdefault(t.shape_key, deque())
        for inst in self.instances[task]:
            if inst.state is not I.WAITING:
                continue  # recovered from a checkpoint (fuxi.core.checkpoint.resume)
            self._move(inst, I.READY, "upstream done")
            inst.ready_at = now
            q.append(inst)

    def _attempt_finished(self, res: AttemptResult, now: float) -> list[Any]:
        a = self.attempts.get(res.key)
        if a is None or a.state in TERMINAL_ATTEMPT:
            return []  # a late report for an attempt we already settled (e.g. killed)
        inst = self.instances[res.key[0]][res.key[1]]
        w = self.workers.get(a.worker_id)
        if w is not None and res.key in w.queue:
            w.queue.remove(res.key)
            self._touch(w)
        if a.started_at is None:
            a.started_at = now - res.duration_s
        if not res.ok:
            return self._attempt_failed(a, inst, res.error, now, charge_worker=True)
        move(a, A.SUCCEEDED, "worker reported success")
        a.ended_at = now
        if inst.state is not I.RUNNING:
            return []  # job cancelled/failed meanwhile; the output is simply dropped
        st = self.stats[inst.task]
        self._move(inst, I.SUCCEEDED, f"attempt {a.key[2]} succeeded")
        inst.winner = a
        inst.outputs = dict(res.outputs)
        st.succeeded += 1
        if a.node_id in self._preferred(inst):
            st.data_local += 1
        st.add_duration(res.duration_s)
        if a.backup:
            st.backups_won += 1
        self.blacklist.succeeded(a.node_id)  # a node's failure rate counts its wins too
        w = self.workers.get(a.worker_id)
        if w is not None:
            w.succeeded += 1
            w.failure_streak = 0
        acts: list[Any] = []
        t = self.tasks[inst.task]
        if t.output:
            acts.append(Commit(inst.task, inst.index, a.key[2], t.output))
        if self.plan.checkpoint:  # after its Commit: the record says the output is in place
            acts.append(Checkpoint(inst.task, inst.index, a.key[2], a.node_id, inst.outputs, bool(t.output)))
        losers = inst.live()
        for other in losers:
            acts += self._kill_attempt(other, now, f"attempt {a.key[2]} won")
        for other in losers if a.backup else ():  # a straggler slowed the job: its node pays
            if other.node_id != a.node_id:
                acts += self._charge(self.workers[other.worker_id], now, slow=True)
        self.remaining[inst.task] -= 1
        if self.remaining[inst.task] == 0:
            acts += self._task_done(inst.task, now)
        return acts

    def _attempt_failed(self, a: Attempt, inst: Instance, error: str, now: float,
                        charge_worker: bool) -> list[Any]:
        move(a, A.FAILED, "attempt failed")
        a.ended_at = now
        a.error = error[-self.limits.error_chars_max:]
        inst.failures += 1
        inst.last_error = a.error
        inst.bad_workers.add(a.worker_id)
        inst.bad_nodes.add(a.node_id)
        w = self.workers.get(a.worker_id)
        if w is not None and a.key in w.queue:
            w.queue.remove(a.key)
            self._touch(w)
        acts: list[Any] = []
        if charge_worker and w is not None:
            acts += self._charge(w, now)
        if inst.state is I.RUNNING:
            acts += self._after_attempt_end(inst, now)
        return acts

    def _after_attempt_end(self, inst: Instance, now: float) -> list[Any]:
        """An attempt ended without success: retry, requeue or fail the instance."""
        if inst.state is not I.RUNNING or inst.live():
            return []  # another attempt (a backup or the original) is still running
        t = self.tasks[inst.task]
        if inst.failures > t.max_retries:
            self._move(inst, I.FAILED, "retries exhausted")
            self.stats[inst.task].failed += 1
            return self.fail(now, self._failure_report(inst))
        self._move(inst, I.READY, "retry")
        if inst.failures:
            backoff = min(
                self.plan.retry_backoff_s * (2 ** (inst.failures - 1)), self.plan.retry_backoff_max_s
            )
            inst.not_before = now + backoff
            self._seq += 1
            heapq.heappush(self.delayed, (inst.not_before, self._seq, inst.task, inst.index))
        else:
            self.ready.setdefault(t.shape_key, deque()).appendleft(inst)
        return []

    def _failure_report(self, inst: Instance) -> str:
        t = self.tasks[inst.task]
        lines = [
            f"task {inst.task!r} instance {inst.index} failed after {inst.failures} attempt(s) "
            f"(max_retries={t.max_retries})",
            *self.story(inst.task, inst.index),
            "last traceback:",
            inst.last_error.rstrip() or "(none)",
        ]
        return "\n".join(lines)

    def _task_done(self, task: str, now: float) -> list[Any]:
        acts: list[Any] = []
        for name in self.order:
            t = self.tasks[name]
            if any(e.producer == task for e in t.upstream) and all(
                self.remaining[e.producer] == 0 for e in t.upstream
            ):
                self._make_ready(name, now)
        # Shuffle data of a producer whose consumers have all finished is no longer needed:
        # drop the references so Ray can free it (nothing will retry those consumers now).
        for e in self.tasks[task].upstream:
            if all(self.remaining[d.consumer] == 0 for d in self.tasks[e.producer].downstream):
                for up in self.instances[e.producer]:
                    up.outputs = {}
        if all(n == 0 for n in self.remaining.values()):
            acts += self._end(now, J.SUCCEEDED, "")
        return acts

    # ------------------------------------------------------------ internals: workers

    def _new_worker(self, node_id: str, shape_key: str, shape: dict[str, float]) -> StartWorker:
        self._next_worker += 1
        wid = f"w{self._next_worker}"
        w = self.workers[wid] = Worker(wid, node_id, shape_key, dict(shape))
        self.index.add(wid, shape_key, node_id)
        self.blacklist.saw(node_id)
        self._touch(w)
        return StartWorker(wid, node_id, dict(shape))

    def _charge(self, w: Worker, now: float, slow: bool = False) -> list[Any]:
        """Count a failure (``slow``: a straggler its backup beat elsewhere, the node only)
        against a worker and its node; blacklist repeat offenders (fuxi.core.blacklist)."""
        acts: list[Any] = []
        others_exist = len(self.index.live_by_shape.get(w.shape_key, ())) > (0 if w.dead else 1)
        if not slow:
            w.failures += 1
            w.failure_streak += 1
        lim = self.limits
        bad = w.failure_streak >= lim.worker_failures_max or (
            w.failures >= lim.worker_failures_max
            and w.failures > lim.worker_failure_fraction_max * (w.failures + w.succeeded))
        if not slow and not w.dead and bad and others_exist:
            acts += self._retire(w, f"blacklisted: {w.failures} failed attempts in this job "
                                    f"({w.failure_streak} in a row, {w.succeeded} succeeded)",
                                 now, replace=True)
        others = lambda: any(n != w.node_id and n not in self.bad_nodes  # noqa: E731
                             for n in self.index.live_on_node)  # asked only when it matters
        if self.blacklist.charge(w.node_id, w.worker_id, now, others, self.gone_nodes):
            acts += self._leave(w.node_id, f"node {w.node_id[:12]} blacklisted for this job", now)
        return acts

    def exclude(self, nodes: Collection[str], now: float) -> list[Any]:
        """FuxiMaster's exclusions for this job (the cluster level, told in its sync): the
        job's workers on a newly excluded node stop, as for the job's own blacklist."""
        return [a for node in sorted(self.blacklist.set_outside(nodes))
                for a in self._leave(node, f"node {node[:12]} blacklisted for every job", now)]

    def _leave(self, node: str, reason: str, now: float) -> list[Any]:
        live = [self.workers[x] for x in self.index.in_order(self.index.live_on_node.get(node, ()))]
        return [a for o in live if not o.dead for a in self._retire(o, reason, now)]

    def _retire(self, w: Worker, reason: str, now: float, replace: bool = False) -> list[Any]:
        """Stop a worker; its queued attempts go back to ready, running ones are killed."""
        acts: list[Any] = [StopWorker(w.worker_id, reason)]
        w.dead = True
        self._touch(w)
        for key in list(w.queue):
            a = self.attempts[key]
            inst = self.instances[key[0]][key[1]]
            if a.state is A.QUEUED:
                move(a, A.LOST, reason)
            elif a.state is A.RUNNING:
                move(a, A.KILLED, reason)
            a.ended_at = now
            if inst.state is I.RUNNING and not inst.live():
                if inst.failures > self.tasks[inst.task].max_retries:
                    # Its last hope was a backup on this worker: retries are used up.
                    acts += self._after_attempt_end(inst, now)
                    continue
                self._move(inst, I.READY, "requeue: worker retired")
                self.ready.setdefault(self.tasks[inst.task].shape_key, deque()).appendleft(inst)
        w.queue.clear()
        self._touch(w)
        if replace and w.node_id not in self.bad_nodes and not self.done():
            acts.append(self._new_worker(w.node_id, w.shape_key, w.shape))
        else:
            acts.append(ReleaseSlot(w.shape_key, w.node_id))
        return acts

    def _kill_attempt(self, a: Attempt, now: float, reason: str) -> list[Any]:
        """Stop a losing or cancelled attempt. The worker skips it if still queued, or
        interrupts it if running (and carries on with its queue on a fresh thread); if the
        attempt does not stop within the worker's grace period, the shell kills the worker and
        reports it dead, which replaces it (see ``fuxi.shells.worker``)."""
        w = self.workers[a.worker_id]
        if a.state not in (A.QUEUED, A.RUNNING):
            return []
        move(a, A.KILLED, reason)
        a.ended_at = now
        if a.key in w.queue:
            w.queue.remove(a.key)
            self._touch(w)
        return [] if w.dead else [StopAttempt(w.worker_id, a.key)]

    def _release_idle(self, now: float) -> list[Any]:
        """Give back workers that have had nothing to do for a while and have nothing coming."""
        acts: list[Any] = []
        demand = self.demands()
        release: list[tuple[str, int]] = []
        for sk, started in self.index.started.items():
            excess = started - max(demand.get(sk, (None, 0))[1], 0)
            if excess > 0 and self.index.idle.get(sk) and not any(
                self.tasks[n].shape_key == sk and n not in self.started_tasks for n in self.order
            ):  # else all wanted, none idle, or a downstream task of this shape will want them
                release.append((sk, excess))
        if len(release) > 1:  # shapes in the order of their oldest started worker, as ever
            release.sort(key=lambda r: min(self.index.seq[w] for w in self.index.live_by_shape[r[0]]
                                           if self.workers[w].started))
        for sk, excess in release:
            for wid in self.index.in_order(self.index.idle.get(sk, ())):  # oldest first
                if excess <= 0:
                    break
                w = self.workers[wid]
                idle_for = now - (w.idle_since if w.idle_since is not None else now)
                if idle_for >= self.limits.idle_release_s:
                    acts += self._retire(w, "idle: nothing left for this worker", now)
                    excess -= 1
        return acts

    # ------------------------------------------------------------ internals: dispatch

    def _depth(self, task: str) -> int:
        """Attempts a worker may hold (running + queued) for this task: one when instances are
        long or unknown; for short ones about ``batch_target_s`` of work plus one prefetched,
        so the worker never idles for a round trip."""
        med = self.stats[task].median_s()
        if med is None or med >= self.limits.prefetch_below_s:
            return 1
        if med <= 0:
            return self.limits.worker_queue_max
        return min(self.limits.worker_queue_max, max(2, 1 + math.ceil(self.limits.batch_target_s / med)))

    def _dispatch(self, now: float) -> list[Any]:
        if self.done():
            return []
        pushes: dict[str, list[AttemptSpec]] = {}
        front: dict[str, list[AttemptSpec]] = {}
        # Backups first: a straggler is on the job's critical path.
        still_pending: deque[Instance] = deque()
        while self.backups_pending:
            inst = self.backups_pending.popleft()
            if inst.state is not I.RUNNING or len(inst.live()) != 1:
                continue
            sk = self.tasks[inst.task].shape_key
            running = inst.live()[0]
            w = self._pick_worker(sk, inst, avoid={running.worker_id}, avoid_nodes={running.node_id},
                                  strict=True)
            if w is None:
                still_pending.append(inst)
                continue
            front.setdefault(w.worker_id, []).append(self._launch(inst, w, now, backup=True))
        self.backups_pending = still_pending
        for sk, q in self.ready.items():
            if not self.index.taking.get(sk):
                continue
            skipped: list[Instance] = []
            while q:
                inst = q[0]
                if inst.state is not I.READY or inst.not_before > now:
                    q.popleft()  # stale entry; a delayed retry is re-added by tick()
                    continue
                w = self._pick_worker(sk, inst, avoid=inst.bad_workers, avoid_nodes=inst.bad_nodes)
                if w is not None and self._wait_for_local(inst, w, now):
                    skipped.append(q.popleft())
                    if len(skipped) > 64:
                        break
                    continue
                if w is None:
                    if inst.bad_workers and self.index.has_room(sk, self._depth(inst.task)):
                        # Only workers that already failed this instance have room: let it
                        # wait for a better one, but keep the others flowing.
                        skipped.append(q.popleft())
                        if len(skipped) > 64:
                            break
                        continue
                    break
                q.popleft()
                pushes.setdefault(w.worker_id, []).append(self._launch(inst, w, now, backup=False))
            for inst in reversed(skipped):
                q.appendleft(inst)
        return [Push(wid, tuple(specs), front=True) for wid, specs in front.items()] + [
            Push(wid, tuple(specs)) for wid, specs in pushes.items()]

    def _wait_for_local(self, inst: Instance, w: Worker, now: float) -> bool:
        """Hold the instance back from non-local worker ``w`` while a worker on a node with
        its data exists (busy or still starting) and it has waited less than
        ``locality_wait_s``. Retries never wait."""
        local = self._preferred(inst)
        if not local or w.node_id in local or inst.attempts:
            return False
        if now - inst.ready_at >= self.limits.locality_wait_s:
            return False
        return self.index.any_placed(self.tasks[inst.task].shape_key, local, inst.bad_nodes)

    def _preferred(self, inst: Instance) -> tuple[str, ...]:
        pref = self.tasks[inst.task].preferred_nodes
        return pref[inst.index] if inst.index < len(pref) else ()

    def _pick_worker(self, sk: str, inst: Instance, avoid: set[str], avoid_nodes: set[str],
                     strict: bool = False) -> Worker | None:
        """Least-loaded worker of shape ``sk`` with room, preferring ones (and nodes) that have
        not failed this instance; data locality (a node holding the instance's input) comes
        after avoiding failures and before load, so local workers fill their queues first.
        ``strict`` (backups): never the avoided worker itself, and one attempt beyond the queue
        depth is allowed (the backup goes to the front of that worker's queue)."""
        depth = self._depth(inst.task)
        cap = min(depth + 1, self.limits.worker_queue_max) if strict else depth
        wid = self.index.pick(sk, cap, avoid, avoid_nodes, self._preferred(inst), strict)
        return None if wid is None else self.workers[wid]

    def _launch(self, inst: Instance, w: Worker, now: float, backup: bool) -> AttemptSpec:
        t = self.tasks[inst.task]
        n = len(inst.attempts)
        a = Attempt(key=(inst.task, inst.index, n), worker_id=w.worker_id, node_id=w.node_id,
                    backup=backup, queued_at=now)
        inst.attempts.append(a)
        self.attempts[a.key] = a
        w.queue.append(a.key)
        w.idle_since = None
        self._touch(w)
        st = self.stats[inst.task]
        st.attempts += 1
        if backup:
            st.backups_launched += 1
            self.doubled[inst.task].add(inst.index)
        else:
            if inst.failures or n:
                st.retries += 1
            elif self.resumed:
                st.rerun += 1
            self._move(inst, I.RUNNING, f"dispatched to {w.worker_id}")
        return AttemptSpec(
            job_id=self.job_id,
            task=inst.task,
            instance=inst.index,
            num_instances=t.num_instances,
            attempt=n,
            fn=t.fn,
            params=self.plan.params,
            input_paths=t.inputs[inst.index],
            upstream=self._upstream_refs(t, inst.index),
            downstream=t.downstream,
            output=t.output,
        )

    def _upstream_refs(self, t: TaskPlan, index: int) -> tuple[Any, ...]:
        refs: list[Any] = []
        for e in t.upstream:
            for up in self.instances[e.producer]:
                ref = up.outputs.get((t.name, index))
                if ref is None:
                    ref = up.outputs.get((t.name, -1))
                if ref is not None:
                    refs.append(ref)
        return tuple(refs)

    # ------------------------------------------------------------ internals: time-driven

    def _timeouts(self, now: float) -> list[Any]:
        """Fail attempts running longer than their task's ``timeout_s``: only the front of the
        deadline heap is looked at. Handled in the order of the worker scan this replaces
        (workers oldest first, each queue in order)."""
        slack = 1e-12 * (abs(now) + 1.0)  # started_at + limit may round below now - started_at
        due: list[tuple[int, int, Attempt]] = []
        while self.deadlines and self.deadlines[0][0] <= now + slack:
            at, seq, key = heapq.heappop(self.deadlines)
            a = self.attempts[key]
            w = self.workers[a.worker_id]
            if a.state is not A.RUNNING or w.dead or key not in w.queue:
                continue  # ended (or its worker did): nothing to time out
            if now - a.started_at > self.tasks[key[0]].timeout_s:
                due.append((self.index.seq[w.worker_id], w.queue.index(key), a))
            else:
                due.append((-1, seq, a))  # within the rounding slack: not due yet, put back
        acts: list[Any] = []
        for order, pos, a in sorted(due, key=lambda d: d[:2]):
            if order < 0:
                heapq.heappush(self.deadlines, (a.started_at + self.tasks[a.key[0]].timeout_s, pos, a.key))
                continue
            if a.state is not A.RUNNING:
                continue
            limit = self.tasks[a.key[0]].timeout_s
            inst = self.instances[a.key[0]][a.key[1]]
            acts.append(StopAttempt(a.worker_id, a.key))  # interrupt; kill if it won't stop
            acts += self._attempt_failed(
                a, inst, f"TimeoutError: attempt ran {now - a.started_at:.1f}s, "
                         f"longer than timeout_s={limit:g}", now, charge_worker=False)
        return acts

    def _speculate(self, now: float) -> list[Any]:
        self.backups_pending.extend(stragglers.backups_due(self, now))
        return []

    # ------------------------------------------------------------ internals: ending

    def fail(self, now: float, report: str) -> list[Any]:
        """The job cannot go on (a shell's verdict, e.g. its output could not be prepared, or
        FuxiMaster is gone): it fails with ``report``."""
        return self._end(now, J.FAILED, report)

    def _end(self, now: float, state: JobState, report: str) -> list[Any]:
        move(self, state, report.splitlines()[0] if report else "")
        self.finished_at = now
        self.report = report
        acts: list[Any] = []
        for name in self.order:
            for inst in self.instances[name]:
                if inst.state not in TERMINAL_INSTANCE:
                    for a in inst.live():
                        move(a, A.KILLED, state.value)
                        a.ended_at = now
                    self._move(inst, I.CANCELLED, state.value)
        for w in self.workers.values():
            if not w.dead:
                w.dead = True
                w.queue.clear()
                self._touch(w)
                acts.append(StopWorker(w.worker_id, f"job {state.value}"))
                acts.append(ReleaseSlot(w.shape_key, w.node_id))
        self.ready.clear()
        self.delayed.clear()
        self.backups_pending.clear()
        self.deadlines.clear()
        for order in self.by_start.values():
            order.heap.clear()
        acts.append(JobDone(state, report))
        return acts

    # ------------------------------------------------------------ internals: the indexes

    def _touch(self, w: Worker) -> None:
        """After any change to ``w``'s queue, ``dead``, ``started`` or ``draining``."""
        self.index.update(w.worker_id, not w.dead, w.started, w.draining, len(w.queue))

    def _move(self, inst: Instance, to: InstanceState, why: str) -> None:
        frm = inst.state
        move(inst, to, why)
        counts = self.counts[inst.task]
        counts[frm] -= 1
        counts[to] = counts.get(to, 0) + 1

    def _running(self, a: Attempt) -> None:
        """``a`` started running: it can time out, and it can straggle."""
        task, index, n = a.key
        self._seq += 1
        heapq.heappush(self.deadlines, (a.started_at + self.tasks[task].timeout_s, self._seq, a.key))
        order = self.by_start[task]
        order.add(a.started_at, index, n)
        running = sum(c.get(I.RUNNING, 0) for c in self.counts.values())
        if len(self.deadlines) > 4 * running + 64:  # mostly ended attempts: drop them in one go
            self.deadlines = [d for d in self.deadlines if self.attempts[d[2]].state is A.RUNNING]
            heapq.heapify(self.deadlines)
        if len(order) > 4 * self.counts[task].get(I.RUNNING, 0) + 64:
            order.compact(lambda i, k: CANDIDATE if self.instances[task][i].attempts[k].state
                          is A.RUNNING else GONE)

    def validate_state(self) -> None:
        """Recompute every incremental count and index from scratch and raise AssertionError
        naming the first that differs (``fuxi.core.jobcheck``). For tests: it costs O(all)."""
        jobcheck.validate(self)
