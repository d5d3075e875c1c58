"""The JobMaster actor: the Ray shell around ``JobCore``, one per job.

It owns no policy. It asks FuxiMaster for worker slots (``sync``: demand in, grants and a
fair-share target out), starts worker actors pinned to the granted nodes, keeps at most one
``exchange`` call in flight per worker, feeds every completion back to the core as an event,
and carries out the actions the core returns. Time enters the core only through ``now``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fuxi import jobcore as jc
from fuxi.output import OutputLocation
from fuxi.plan import JobPlan
from fuxi.states import JobState
from fuxi.worker import WorkerActor

logger = logging.getLogger(__name__)

TICK_S = 0.02  # how often the loop wakes without news
EXCHANGE_WAIT_S = 0.1  # a busy worker reports at least this often
HEARTBEAT_S = 0.25  # demand/grant sync with FuxiMaster at least this often
WORKER_START_TIMEOUT_S = 120.0  # a worker that is not up by then counts as failed to start
MASTER_CALL_TIMEOUT_S = 30.0
JOB_LOG_BYTES_MAX = 64 * 1024**2  # log lines kept per job on disk
STOPPING_POLL_S = 1.0  # how often an otherwise idle worker that is stopping an attempt is asked
SPARES_PER_NODE = 1  # warm workers kept per node once a job starts replacing workers


class _Slot:
    __slots__ = ("handle", "exchange", "take", "start_ref", "start_deadline", "outbox", "front", "skip",
                 "stopping", "polled_at")

    def __init__(self, handle, start_ref, deadline):
        self.handle = handle
        self.start_ref = start_ref
        self.start_deadline = deadline
        self.exchange = None  # the in-flight exchange call, if any
        self.take: dict = {}  # pending take_outputs: ack ref -> (result dict, refs)
        self.outbox: list = []
        self.front: list = []  # attempts that jump the worker's queue (backups)
        self.skip: list = []
        self.stopping = 0  # attempts the worker is still stopping (polled until they end)
        self.polled_at = 0.0


@ray.remote(num_cpus=0, max_concurrency=64)
class JobMaster:
    def __init__(self, job_id: str, plan: JobPlan, master, log_path: str,
                 sys_path: list[str] | None = None):
        self.job_id = job_id
        self.master = master
        self.sys_path = sys_path or []
        self.core = jc.JobCore(job_id, plan, now=time.time())
        self.slots: dict[str, _Slot] = {}
        self.releases: list[tuple[str, str]] = []
        self.last_sync = 0.0
        self.sync_ref = None
        self.log_path = log_path
        self.log_bytes = 0
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        self._log_file = open(log_path, "a", encoding="utf-8")
        self._cancel_reason: str | None = None
        self._sync_releases: list = []
        self.spares: dict[str, list] = {}  # node -> [(handle, ping ref)], warm, unassigned
        self.spare_nodes: set[str] = set()  # nodes where this job keeps spares
        self._warm_started: list[str] = []  # workers taken from spares, to report as started
        self._finalized: dict | None = None

    # ------------------------------------------------------------ public calls

    def status(self) -> dict:
        st = self.core.status(time.time())
        if self._finalized is not None:
            st.update(self._finalized)
        return st

    def cancel(self, reason: str = "cancelled by user") -> dict:
        self._cancel_reason = reason
        return {"job_id": self.job_id, "cancelling": True}

    def story(self, task: str, instance: int) -> list[str]:
        return self.core.story(task, instance)

    async def run(self) -> dict:
        """Drive the job to its end; returns the final status."""
        try:
            await self._loop()
        except Exception as e:  # a bug in the shell: fail the job loudly rather than hang
            logger.exception("job master loop crashed")
            if not self.core.done():
                self._apply(self.core._fail(time.time(), f"job master error: {e!r}"))
        finally:
            for wid in list(self.slots):
                self._kill(wid)
            for spares in self.spares.values():
                for handle, _ in spares:
                    self._kill_handle(handle)
            self._log_file.close()
        return self.status()

    # ------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while not self.core.done():
            now = time.time()
            if self._cancel_reason is not None:
                self._apply(self.core.cancel(now, self._cancel_reason))
                break
            if self.sync_ref is None and (self.releases or now - self.last_sync >= HEARTBEAT_S):
                self._start_sync()
            refs = self._pending_refs()
            ready: list = []
            if refs:
                # Blocks the actor's event loop for at most TICK_S; status/cancel calls are
                # served between rounds (the await below).
                ready, _ = ray.wait(refs, num_returns=1, timeout=TICK_S, fetch_local=False)
                if ready and len(refs) > 1:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            self._drain(set(ready), time.time())
            if not self.core.done():
                self._apply(self.core.tick(time.time()))
                self._keep_spares()
            self._flush()
            await asyncio.sleep(0 if refs else TICK_S)

    def _pending_refs(self) -> list:
        refs = []
        if self.sync_ref is not None:
            refs.append(self.sync_ref)
        for s in self.slots.values():
            if s.start_ref is not None:
                refs.append(s.start_ref)
            if s.exchange is not None:
                refs.append(s.exchange)
            refs.extend(s.take.keys())
        return refs

    def _drain(self, ready_set: set, now: float) -> None:
        """Process every completed call."""
        if self.sync_ref is not None and self.sync_ref in ready_set:
            self._finish_sync()
        for wid, s in list(self.slots.items()):
            if self.core.done():
                return
            if s.start_ref is not None:
                if s.start_ref in ready_set:
                    ref, s.start_ref = s.start_ref, None
                    try:
                        ray.get(ref, timeout=MASTER_CALL_TIMEOUT_S)
                    except Exception as e:
                        self._start_failed(wid, f"{type(e).__name__}: {e}", now)
                        continue
                    self._started(wid, s, now)
                elif now > s.start_deadline:
                    self._start_failed(wid, f"not started after {WORKER_START_TIMEOUT_S:g}s "
                                            f"(WORKER_START_TIMEOUT_S)", now)
                    continue
            if s.exchange is not None and s.exchange in ready_set:
                ref, s.exchange = s.exchange, None
                try:
                    reply = ray.get(ref, timeout=MASTER_CALL_TIMEOUT_S)
                except Exception as e:
                    self._died(wid, e, now)
                    continue
                self._handle_reply(wid, s, reply, now)
            for ack in [r for r in s.take if r in ready_set]:
                res, refs_ = s.take.pop(ack)
                try:
                    ray.get(ack, timeout=MASTER_CALL_TIMEOUT_S)
                    outputs = dict(zip((tuple(p) for p in res["parts"]), refs_))
                    result = jc.AttemptResult(key=tuple(res["key"]), ok=True,
                                              duration_s=res["duration_s"], rows=res.get("rows", 0),
                                              outputs=outputs, logs=tuple(res.get("logs", ())))
                except Exception as e:
                    result = jc.AttemptResult(key=tuple(res["key"]), ok=False,
                                              duration_s=res["duration_s"], kind="lost_output",
                                              error=f"output of a finished attempt was lost: {e!r}")
                self._apply(self.core.worker_report(wid, [], [result], time.time()))

    # ------------------------------------------------------------ worker events

    def _started(self, wid: str, s: _Slot, now: float) -> None:
        self._apply(self.core.worker_started(wid, now))

    def _start_failed(self, wid: str, error: str, now: float) -> None:
        s = self.slots.pop(wid, None)
        if s is not None:
            try:
                ray.kill(s.handle, no_restart=True)
            except Exception:
                pass
        self._apply(self.core.worker_start_failed(wid, error, now))

    def _died(self, wid: str, error: Exception, now: float) -> None:
        s = self.slots.pop(wid, None)
        if s is not None:
            try:
                ray.kill(s.handle, no_restart=True)
            except Exception:
                pass
        self._apply(self.core.worker_died(wid, f"{type(error).__name__}: {error}", now))

    def _handle_reply(self, wid: str, s: _Slot, reply: dict, now: float) -> None:
        s.stopping = reply.get("stopping", 0)
        if reply.get("stuck"):
            key, age = reply["stuck"][0]
            for res in reply["finished"]:
                self._write_logs(res)
            self._died(wid, RuntimeError(
                f"attempt {tuple(key)} did not stop {age:.0f}s after it was interrupted "
                f"(STOP_GRACE_S); worker killed"), now)
            return
        finished = []
        for res in reply["finished"]:
            self._write_logs(res)
            if res.get("ok") and res.get("parts"):
                n = len(res["parts"])
                refs = s.handle.take_outputs.options(num_returns=n + 1).remote(res["key"])
                s.take[refs[0]] = (res, refs[1:])
                continue
            finished.append(jc.AttemptResult(
                key=tuple(res["key"]), ok=bool(res.get("ok")), duration_s=res["duration_s"],
                error=res.get("error", ""), rows=res.get("rows", 0), logs=tuple(res.get("logs", ())),
            ))
        started = [(tuple(k), el) for k, el in reply["running"]]
        self._apply(self.core.worker_report(wid, started, finished, now))

    # ------------------------------------------------------------ actions

    def _apply(self, actions: list) -> None:
        for act in actions:
            if isinstance(act, jc.Push):
                s = self.slots.get(act.worker_id)
                if s is not None:
                    (s.front if act.front else s.outbox).extend(act.attempts)
            elif isinstance(act, jc.StopAttempt):
                s = self.slots.get(act.worker_id)
                if s is not None:
                    s.skip.append(act.key)
            elif isinstance(act, jc.StartWorker):
                self._start_worker(act)
            elif isinstance(act, jc.StopWorker):
                self._kill(act.worker_id)
            elif isinstance(act, jc.ReleaseSlot):
                self.releases.append((act.shape_key, act.node_id))
            elif isinstance(act, jc.Commit):
                OutputLocation(act.output).commit(act.task, act.instance, act.attempt)
            elif isinstance(act, jc.JobDone):
                self._job_done(act)
        while self._warm_started and not self.core.done():
            self._apply(self.core.worker_started(self._warm_started.pop(0), time.time()))

    def _flush(self) -> None:
        """Send pending pushes to every worker that has no exchange in flight."""
        for wid, s in self.slots.items():
            if s.start_ref is not None:
                continue
            if s.exchange is not None:
                if s.front or s.skip:  # urgent: don't wait for the in-flight exchange
                    front, s.front = s.front, []
                    skip, s.skip = s.skip, []
                    s.handle.control.remote(front, skip)  # failures surface via the exchange
                continue
            w = self.core.workers.get(wid)
            if w is None or w.dead:
                continue
            now = time.time()
            if (s.outbox or s.front or s.skip or w.queue
                    or (s.stopping and now - s.polled_at > STOPPING_POLL_S)):
                s.polled_at = now
                push, s.outbox = s.outbox, []
                front, s.front = s.front, []
                skip, s.skip = s.skip, []
                s.exchange = s.handle.exchange.remote(push, skip, EXCHANGE_WAIT_S, front)

    def _worker_options(self, node_id: str, shape: dict[str, float]) -> dict[str, Any]:
        """Workers take their CPU and memory from FuxiMaster's ledger, not from Ray's counters
        (Fuxi decides, Ray executes): that lets a warm spare replace a killed worker at once.
        Resources Ray must hand out itself (GPUs, custom resources) are still asked of Ray."""
        opts: dict[str, Any] = {
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False),
            "max_restarts": 0,
        }
        if shape.get("GPU"):
            opts["num_gpus"] = shape["GPU"]
        custom = {k: v for k, v in shape.items() if k not in ("CPU", "memory", "GPU")}
        if custom:
            opts["resources"] = custom
        return opts

    def _start_worker(self, act: jc.StartWorker) -> None:
        plain = all(k in ("CPU", "memory") for k in act.shape)
        if plain and self.core.state is JobState.RUNNING:
            self.spare_nodes.add(act.node_id)  # replacing workers here: keep a spare warm
            handle = self._take_spare(act.node_id)
            if handle is not None:
                self.slots[act.worker_id] = _Slot(handle, None, 0.0)
                self._warm_started.append(act.worker_id)
                return
        handle = WorkerActor.options(**self._worker_options(act.node_id, act.shape)).remote(
            self.job_id, act.worker_id, self.sys_path)
        self.slots[act.worker_id] = _Slot(handle, handle.ping.remote(),
                                          time.time() + WORKER_START_TIMEOUT_S)

    def _take_spare(self, node_id: str):
        spares = self.spares.get(node_id, [])
        while spares:
            ready, _ = ray.wait([s[1] for s in spares], num_returns=1, timeout=0)
            if not ready:
                return None
            i = next(i for i, s in enumerate(spares) if s[1] == ready[0])
            handle, ref = spares.pop(i)
            try:
                ray.get(ref, timeout=MASTER_CALL_TIMEOUT_S)
                return handle
            except Exception:
                self._kill_handle(handle)
        return None

    def _keep_spares(self) -> None:
        """Keep SPARES_PER_NODE warm workers on nodes where this job has had to replace a worker
        (it died, or an attempt would not stop): the next replacement there is then instant.
        Backups do not need spares: losing attempts are interrupted, not killed."""
        for node in self.spare_nodes - self.core.bad_nodes:
            spares = self.spares.setdefault(node, [])
            while len(spares) < SPARES_PER_NODE:
                handle = WorkerActor.options(**self._worker_options(node, {})).remote(
                    self.job_id, f"spare@{node[:8]}", self.sys_path)
                spares.append((handle, handle.ping.remote()))

    def _kill(self, wid: str) -> None:
        s = self.slots.pop(wid, None)
        if s is not None:
            self._kill_handle(s.handle)

    @staticmethod
    def _kill_handle(handle) -> None:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:
            pass

    def _job_done(self, act: jc.JobDone) -> None:
        extra: dict[str, Any] = {}
        if act.state is JobState.SUCCEEDED:
            try:
                summaries = {}
                for t in self.core.plan.tasks:
                    if t.output:
                        summaries[t.name] = OutputLocation(t.output).finalize(t.num_instances)
                extra["output_summary"] = summaries
            except Exception as e:
                # Every instance succeeded but the output is not whole: the job did not succeed.
                extra.update(state=JobState.FAILED.value, report=f"finalizing output failed: {e!r}")
        self._finalized = extra

    # ------------------------------------------------------------ FuxiMaster sync

    def _start_sync(self) -> None:
        demands = {k: {"shape": shape, "wanted": n} for k, (shape, n) in self.core.demands().items()}
        releases, self.releases = self.releases, []
        self.sync_ref = self.master.sync.remote(self.job_id, self.core.plan.priority, demands,
                                                releases, sorted(self.core.bad_nodes))
        self._sync_releases = releases
        self.last_sync = time.time()

    def _finish_sync(self) -> None:
        ref, self.sync_ref = self.sync_ref, None
        try:
            reply = ray.get(ref, timeout=MASTER_CALL_TIMEOUT_S)
        except Exception as e:
            logger.warning("sync with FuxiMaster failed: %r", e)
            self.releases.extend(self._sync_releases)  # try again next heartbeat
            return
        now = time.time()
        for g in reply.get("grants", []):
            self._apply(self.core.slots_granted(g["shape_key"], g["shape"], g["node_id"], g["n"], now))
        for sk, target in reply.get("targets", {}).items():
            self._apply(self.core.shrink(sk, target, now))

    # ------------------------------------------------------------ logs

    def _write_logs(self, res: dict) -> None:
        task, instance, attempt = res["key"]
        lines = list(res.get("logs", ()))
        if not res.get("ok") and res.get("error"):
            lines.extend(res["error"].rstrip().splitlines())
        for line in lines:
            rec = json.dumps({"task": task, "instance": instance, "attempt": attempt, "line": line})
            if self.log_bytes + len(rec) > JOB_LOG_BYTES_MAX:
                return
            self.log_bytes += len(rec) + 1
            self._log_file.write(rec + "\n")
        if lines:
            self._log_file.flush()
