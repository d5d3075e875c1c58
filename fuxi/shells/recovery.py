"""JobMaster recovery (issue 16 part 4): durable checkpoints of finished instances, their
records in FuxiMaster's store, and the restart of a JobMaster that died.

The pieces, in the order data flows:

* ``Checkpointer`` (inside the JobMaster). For every ``Checkpoint`` action of the core (an
  instance succeeded) it writes the instance's intermediate partitions -- Ray objects the
  JobMaster owns, which die with it -- to one Arrow IPC file under the job's checkpoint
  directory on the head node (FuxiMaster's data dir, else next to its log dir): written to a
  temporary name, fsync'd, renamed, the directory fsync'd, its SHA-256 in the record. This runs
  on the JobMaster's commit thread, after the instance's output commit (one thread, in order),
  never on the event loop. Finished records ride on the next sync heartbeat (at most
  CKPT_SYNC_RECORDS_MAX per sync; a failed sync sends the same batch again under the same key,
  so a repeat is harmless).
* ``MasterRecovery`` (inside FuxiMaster, the only writer of job records) stores each batch
  under ``/jobs/<id>/ckpt/g<gen>-<seq>``; when a JobMaster's ``run`` raises ``ActorDiedError``
  and the job is neither ended nor being cancelled, it releases the dead one's grants and starts
  a new JobMaster (at most JOBMASTER_RESTARTS_MAX times per job) with the records.
* What that restart needs -- the plan, the user, ``sys_path`` -- is kept at submit in the
  job's launch record (``/jobs/<id>/launch``, ``fuxi.core.launch``), so a FuxiMaster that
  adopted the job after a restart loads it (``adopt``) and restarts a dead JobMaster exactly as
  the one that submitted it would. A plan too big to keep, or a record that is missing or
  damaged, leaves the job running but not restartable; ``fuxi job status`` says why, and the
  job fails with that reason if its JobMaster dies.
* The new JobMaster checks every record against its plan (``fuxi.core.checkpoint``) and every
  file (present, size, checksum, and a committed part for tasks with ``output:``); what fails
  a check is run again, never read. The core resumes from the rest. A recovered instance's
  partitions are loaded into the object store (``ray.put``, on a loader thread) only when a
  consumer instance is dispatched, and checked again as they are read: a file damaged after
  resume fails the job with a report rather than feed a consumer wrong data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import ray

from base import events
from base.logfile import fsync_dir
from fuxi.core import checkpoint as ck
from fuxi.core.checkpoint import DurablePart
from fuxi.core.states import TERMINAL_JOB, AttemptState, JobState
from fuxi.shells.jobrecords import launch_key, load_launch, persist_launch

logger = logging.getLogger(__name__)

JOBMASTER_RESTARTS_MAX = 3  # a job's JobMaster is started again at most this often
JOBMASTER_NAME_WAIT_S = 15.0  # a dead JobMaster's actor name is free again within this
JOBMASTER_NAME_RETRY_S = 0.2  # between tries to take the name
CKPT_SYNC_RECORDS_MAX = 256  # records one sync carries
CKPT_SYNC_BYTES_MAX = 768 * 1024  # one sync's records as JSON (a store value is <= 1 MiB)
CKPT_GET_TIMEOUT_S = 120.0  # fetching an instance's partitions to write them
CKPT_LOAD_THREADS_MAX = 2  # threads loading recovered partitions into the object store
CKPT_CACHE_SWEEP_S = 1.0  # loaded partitions nobody needs any more are dropped this often
CKPT_PENDING_MAX = 100_000  # records written but not yet acknowledged by FuxiMaster


def job_ckpt_dir(root: str, job_id: str) -> str:
    return os.path.join(os.path.abspath(root), job_id)


# ------------------------------------------------------------ files (JobMaster threads)

def write_parts(directory: str, name: str, tables: dict[tuple[str, int], pa.Table]) -> dict:
    """Write one instance's partitions as one Arrow IPC file, atomically and durably; returns
    the record's file fields (file, bytes, sha256, parts)."""
    keys = sorted(tables, key=lambda k: (k[0], k[1]))
    schema = tables[keys[0]].schema
    sink = pa.BufferOutputStream()
    parts, batch = [], 0
    with pa.ipc.new_file(sink, schema) as w:
        for key in keys:
            t = tables[key]
            if not t.schema.equals(schema):
                t = t.cast(schema)  # pieces of one table: the same schema, unless promoted
            batches = t.combine_chunks().to_batches()
            for b in batches:
                w.write_batch(b)
            parts.append([key[0], key[1], batch, len(batches)])
            batch += len(batches)
    data = sink.getvalue().to_pybytes()
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, name)
    tmp = f"{final}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(directory)
    return {"file": final, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "parts": parts}


def read_checked(path: str, size: int, sha256: str) -> bytes:
    """A checkpoint file's bytes, or ``ValueError`` if it is missing, torn or altered."""
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)
    except OSError as e:
        raise ValueError(f"checkpoint file {path} cannot be read: {e}") from e
    if len(data) != size:
        raise ValueError(f"checkpoint file {path} has {len(data)} bytes, the record says {size}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"checkpoint file {path} does not match its checksum")
    return data


def load_parts(parts: list[DurablePart]) -> dict[tuple[str, int], pa.Table]:
    """The tables of the given pieces of one instance's file (read and checked once)."""
    first = parts[0]
    reader = pa.ipc.open_file(pa.BufferReader(read_checked(first.file, first.bytes, first.sha256)))
    out = {}
    for p in parts:
        if p.batch_start + p.batch_count > reader.num_record_batches:
            raise ValueError(f"checkpoint file {p.file} has {reader.num_record_batches} batches; "
                             f"the record names {p.batch_start + p.batch_count}")
        batches = [reader.get_batch(i) for i in range(p.batch_start, p.batch_start + p.batch_count)]
        out[(p.consumer, p.partition)] = pa.Table.from_batches(batches, schema=reader.schema)
    return out


def verify(plan, records: dict, root: str) -> tuple[dict, list[str]]:
    """Keep the records whose files check out (and whose final part is committed); the rest
    run again. Reads every file once (on a JobMaster thread, before the first task)."""
    from fuxi.io.output import OutputLocation

    good, problems = {}, []
    for key, rec in records.items():
        try:
            if rec.file is not None:
                read_checked(rec.file, rec.bytes, rec.sha256)
            if rec.committed:
                loc = OutputLocation(plan.task(rec.task).output)
                if not loc.fs.exists(loc.part_path(rec.instance)):
                    raise ValueError(f"its committed output {loc.part_path(rec.instance)} is gone")
            good[key] = rec
        except Exception as e:  # noqa: BLE001 - any doubt: run the instance again
            if len(problems) < ck.CKPT_REPORT_LINES_MAX:
                problems.append(f"{rec.task}[{rec.instance}] runs again: {e}")
    return good, problems


def _record_bytes(rec: dict) -> int:
    """An upper bound of a record's JSON size, without encoding it (the event loop's time):
    the fixed fields take under 300 bytes, a piece its consumer's name plus under 40."""
    return (300 + len(rec["task"]) + len(rec["node"]) + len(rec["file"] or "")
            + sum(40 + len(p[0]) for p in rec["parts"]))


def _put_parts(parts: list[DurablePart]) -> dict:
    """Read one recovered instance's file (checked) and put its pieces into the object
    store (on a loader thread); (consumer, partition) -> object reference."""
    return {k: ray.put(t) for k, t in load_parts(parts).items()}


# ------------------------------------------------------------ inside the JobMaster

class Checkpointer:
    """The JobMaster's side: writes records (commit thread), hands them to sync, and loads
    recovered partitions when a consumer is dispatched."""

    def __init__(self, job_id: str, root: str | None, gen: int, enabled: bool):
        self.job_id = job_id
        self.dir = job_ckpt_dir(root, job_id) if root else None
        self.gen = gen
        self.enabled = bool(enabled and root)
        self.pending: list[dict] = []  # written, not yet sent
        self.batch: dict | None = None  # sent, not yet acknowledged (resent as it is)
        self._seq = 0
        self.written = self.acked = self.failed = 0
        self.last_error = ""
        self.report: list[str] = []  # what resume found
        self._loader = ThreadPoolExecutor(CKPT_LOAD_THREADS_MAX, thread_name_prefix="ckpt-load")
        self._loading: dict[tuple[str, int], Future] = {}
        self._loaded: dict[tuple[str, int], dict] = {}  # (task, instance) -> part -> ref
        self._held: list[tuple[str, bool, Any]] = []  # (worker, front, spec) awaiting loads
        self._swept = 0.0

    # -- writing

    def write(self, act, output: str | None, loop, executor) -> None:
        """Make ``act``'s instance durable (on ``executor``, the commit thread, after its
        commit), then queue the record for the next sync. ``output``: its task's output URL.
        An instance with nothing to keep gets its record at once."""
        if not self.enabled:
            return
        if not act.outputs and not act.commit:
            self._queued(self._record(act, {"file": None, "bytes": 0, "sha256": "", "parts": []}))
            return
        fut = loop.run_in_executor(executor, self._write, act, output)
        fut.add_done_callback(self._written)

    def _record(self, act, files: dict) -> dict:
        return {"v": ck.CKPT_FORMAT_VERSION, "task": act.task, "instance": act.instance,
                "attempt": act.attempt, "gen": self.gen, "node": act.node_id,
                "committed": bool(act.commit), **files}

    def _write(self, act, output: str | None) -> dict:
        if act.commit:  # its commit ran before this, on the same thread: is the part there?
            from fuxi.io.output import OutputLocation

            loc = OutputLocation(output)
            if not loc.fs.exists(loc.part_path(act.instance)):
                raise RuntimeError(f"{act.task}[{act.instance}] has no committed output")
        files = {"file": None, "bytes": 0, "sha256": "", "parts": []}
        if act.outputs:
            keys = [tuple(k) for k in act.outputs]
            tables = ray.get([act.outputs[k] for k in keys], timeout=CKPT_GET_TIMEOUT_S)
            files = write_parts(self.dir, f"{act.task}-{act.instance}-g{self.gen}-a{act.attempt}"
                                          f".arrow", dict(zip(keys, tables)))
        return self._record(act, files)

    def _written(self, fut) -> None:
        try:
            self._queued(fut.result())
        except Exception as e:  # noqa: BLE001 - not durable: that instance would run again
            self.failed += 1
            self.last_error = repr(e)[:500]
            logger.warning("checkpoint of job %s failed: %r", self.job_id, e)

    def _queued(self, rec: dict) -> None:
        if len(self.pending) >= CKPT_PENDING_MAX:
            self.failed += 1
            self.last_error = f"more than CKPT_PENDING_MAX={CKPT_PENDING_MAX} records unsent"
            return
        self.written += 1
        self.pending.append(rec)

    def next_batch(self) -> dict | None:
        """What this sync carries: the unacknowledged batch again, or a new one."""
        if self.batch is None and self.pending:
            n, size = 0, 0
            while n < len(self.pending) and n < CKPT_SYNC_RECORDS_MAX:
                size += _record_bytes(self.pending[n])
                if n and size > CKPT_SYNC_BYTES_MAX:
                    break
                n += 1
            self._seq += 1
            self.batch = {"gen": self.gen, "seq": self._seq, "records": self.pending[:n]}
            del self.pending[:n]
        return self.batch

    def sync_ok(self, sent: dict | None) -> None:
        """FuxiMaster answered the sync that carried ``sent``: it is stored."""
        if sent is not None and sent is self.batch:
            self.acked += len(sent["records"])
            self.batch = None

    # -- resuming and loading

    @staticmethod
    def needs_load(spec) -> bool:
        return any(isinstance(u, DurablePart) for u in spec.upstream)

    def hold(self, core, worker_id: str, front: bool, spec) -> bool:
        """Keep ``spec`` back until the recovered partitions it reads are in the object
        store; start loading them (every piece of each instance file at once). False: it is
        not to be sent now (``released`` hands it back)."""
        for u in spec.upstream:
            key = (u.task, u.instance) if isinstance(u, DurablePart) else None
            if key is not None and key not in self._loaded and key not in self._loading:
                parts = [p for p in core.instances[u.task][u.instance].outputs.values()
                         if isinstance(p, DurablePart)]
                self._loading[key] = self._loader.submit(_put_parts, parts or [u])
        self._held.append((worker_id, front, spec))
        return False

    def released(self, core) -> tuple[list[tuple[str, bool, Any]], str | None]:
        """Attempts whose recovered inputs are now in the object store, ready to send; and an
        error that must fail the job (a checkpoint file damaged since resume)."""
        for key, fut in list(self._loading.items()):
            if not fut.done():
                continue
            del self._loading[key]
            try:
                self._loaded[key] = fut.result()
            except Exception as e:  # noqa: BLE001
                return [], (f"the checkpoint of {key[0]}[{key[1]}] was damaged after the "
                            f"JobMaster resumed: {e}; the job fails rather than read wrong data")
        out, still = [], []
        for wid, front, spec in self._held:
            a = core.attempts.get(spec.key)
            if a is None or a.state is not AttemptState.QUEUED:
                continue  # stopped or lost while it waited: nothing to send
            keys = {(u.task, u.instance) for u in spec.upstream if isinstance(u, DurablePart)}
            if keys <= self._loaded.keys():
                up = tuple(self._loaded[(u.task, u.instance)][(u.consumer, u.partition)]
                           if isinstance(u, DurablePart) else u for u in spec.upstream)
                out.append((wid, front, dataclasses.replace(spec, upstream=up)))
            else:
                still.append((wid, front, spec))
        self._held = still
        now = time.monotonic()
        if self._loaded and now - self._swept > CKPT_CACHE_SWEEP_S:
            self._swept = now
            for task, index in list(self._loaded):
                if not core.instances[task][index].outputs:  # its consumers are all done
                    del self._loaded[(task, index)]
        return out, None

    def status(self) -> dict:
        return {"enabled": self.enabled, "written": self.written, "stored": self.acked,
                "failed": self.failed, "last_error": self.last_error, "resume_report": self.report}

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def resumable(plan, raws: list, ckpt_dir: str) -> tuple[dict, list[str]]:
    """The checked records a resumed JobMaster may trust, and what was refused (blocking:
    reads every checkpoint file once; on a JobMaster thread)."""
    records, problems = ck.parse_records(plan, raws, ckpt_dir)
    good, bad_files = verify(plan, records, ckpt_dir)
    return good, problems + bad_files


def reopen_outputs(plan) -> None:
    """A resumed job's outputs: create what is missing, clear nothing (its recovered
    instances' parts are in there), even for a job submitted with ``--overwrite``."""
    from fuxi.io.output import OutputLocation

    for t in plan.tasks:
        if t.output:
            loc = OutputLocation(t.output)
            loc.fs.makedirs(loc.path, exist_ok=True)


# ------------------------------------------------------------ inside FuxiMaster

def _ckpt_key(job_id: str, gen: int, seq: int) -> str:
    return f"/jobs/{job_id}/ckpt/g{gen}-{seq}"


def load_records(store, job_id: str) -> list:
    """Every stored record of a job, oldest JobMaster first (blocking: run off the loop)."""
    out: list = []
    for key in store.list(f"/jobs/{job_id}/ckpt/"):
        batch = store.get(key)
        recs = batch.get("records") if isinstance(batch, dict) else None
        if isinstance(recs, list):
            out.extend(recs[: ck.CKPT_RECORDS_MAX - len(out)])
        if len(out) >= ck.CKPT_RECORDS_MAX:
            break
    return out


def discard(store, job_id: str, directory: str | None) -> None:
    """A job ended: its checkpoint records, files and launch record are no longer needed
    (blocking)."""
    for key in store.list(f"/jobs/{job_id}/ckpt/"):
        store.delete(key)
    store.delete(launch_key(job_id))
    if directory and os.path.isdir(directory):
        shutil.rmtree(directory, ignore_errors=True)


class MasterRecovery:
    """FuxiMaster's side: keep records, restart dead JobMasters. Holds only soft state (what
    each running job was started with); the records themselves are in the store."""

    def __init__(self, master):
        self.master = master
        self.root = os.path.join(os.path.dirname(master.log_dir), "ckpt")
        self.launches: dict[str, tuple] = {}  # job -> (plan, who, sys_path) it was started with
        self.not_kept: dict[str, str] = {}  # job -> why its launch record could not be stored
        self.unloaded: dict[str, str] = {}  # adopted job -> why its launch record is unusable
        self._loads: dict[str, asyncio.Task] = {}  # adopted job -> its launch record loading
        self.cancelled: set[str] = set()  # jobs being cancelled: never restarted
        # job -> batch key -> records in it (a resent batch replaces itself; CKPT_RECORDS_MAX)
        self.stored: dict[str, dict[str, int]] = {}

    def launched(self, job_id: str, plan, who, sys_path) -> None:
        self.launches[job_id] = (plan, who, sys_path)

    async def persist(self, job_id: str, plan, who, sys_path) -> None:
        """At submit, before the job's status: keep its launch record (encoded off the loop)."""
        why = await self.master.astore.call(persist_launch, self.master.store, job_id, plan,
                                            getattr(who, "user", who), sys_path)
        if why is not None:
            self.not_kept[job_id] = why

    async def adopt(self, job_id: str) -> None:
        """An adopted job: load its launch record, so its JobMaster can be restarted if it
        dies (a restart that comes meanwhile waits for this)."""
        task = self._loads.get(job_id)
        if task is None:
            task = self._loads[job_id] = asyncio.get_running_loop().create_task(self._load(job_id))
        await asyncio.shield(task)

    async def _load(self, job_id: str) -> None:
        try:
            got, why = await self.master.astore.call(load_launch, self.master.store, job_id)
        except Exception as e:  # noqa: BLE001 - the store failed: not restartable, still runs
            got, why = None, f"its launch record could not be read: {type(e).__name__}: {e}"
        if got is not None:
            self.launches.setdefault(job_id, (got.plan, got.user, list(got.sys_path)))
            self.unloaded.pop(job_id, None)
        else:
            self.unloaded[job_id] = why
            logger.warning("adopted job %s cannot have its JobMaster restarted: %s", job_id, why)

    def view(self, job_id: str) -> dict:
        """For ``fuxi job status``: can a dead JobMaster of this job be restarted now, and
        after a restart of FuxiMaster (once it adopted the job)?"""
        why = self.unloaded.get(job_id) or self.not_kept.get(job_id)
        if why is None and type(self.master.store).__name__ == "MemoryStore":
            why = ("FuxiMaster keeps its records in memory (no data dir, no Nuwa): they do not "
                   "outlive it")
        return {"restartable": job_id in self.launches, "after_master_restart": why is None,
                "why_not": why or ""}

    async def store_batch(self, job_id: str, batch: Any) -> None:
        """Keep a sync's records (idempotent: a resent batch lands on the same key). A batch
        that is malformed or over a limit is dropped with a warning: the heartbeat goes on,
        and those instances would only run again."""
        try:
            if not isinstance(batch, dict) or not isinstance(batch.get("records"), list):
                raise ValueError(f"a checkpoint batch is a mapping with records; got {batch!r:.80}")
            gen, seq, recs = batch.get("gen"), batch.get("seq"), batch["records"]
            if type(gen) is not int or type(seq) is not int or gen < 0 or seq < 0:
                raise ValueError(f"gen={gen!r}, seq={seq!r}; expected integers >= 0")
            if len(recs) > CKPT_SYNC_RECORDS_MAX:
                raise ValueError(f"{len(recs)} records in one sync; CKPT_SYNC_RECORDS_MAX is "
                                 f"{CKPT_SYNC_RECORDS_MAX}")
            key = _ckpt_key(job_id, gen, seq)
            batches = self.stored.setdefault(job_id, {})
            if sum(batches.values()) - batches.get(key, 0) + len(recs) > ck.CKPT_RECORDS_MAX:
                raise ValueError(f"job has CKPT_RECORDS_MAX={ck.CKPT_RECORDS_MAX} records")
            await self.master.astore.put(key, {"records": recs})
            batches[key] = len(recs)
        except Exception as e:  # noqa: BLE001 - a checkpoint lost is work redone, not a failure
            logger.warning("checkpoint batch of job %s dropped: %s", job_id, e)

    async def restart(self, job_id: str, error: BaseException) -> str | None:
        """After ``job_id``'s JobMaster died: start a new one that resumes from the records
        (None), or why not (a line for the job's report)."""
        try:
            return await self._restart(job_id, error)
        except Exception as e:  # noqa: BLE001 - the store failed: the job fails, as before
            logger.exception("restarting the JobMaster of job %s failed", job_id)
            return f"(not restarted: {type(e).__name__}: {e})"

    async def _restart(self, job_id: str, error: BaseException) -> str | None:
        m = self.master
        if not isinstance(error, ray.exceptions.ActorDiedError):
            return "(not restarted: the JobMaster did not die)"
        load = self._loads.get(job_id)
        if load is not None:  # adopted: its launch record is being read
            await asyncio.shield(load)
        if job_id in self.cancelled or job_id not in m.jobmasters:
            return "(not restarted: the job was being cancelled or is unknown)"
        if job_id not in self.launches:
            why = self.unloaded.get(job_id) or "this FuxiMaster does not know how it was started"
            return f"(not restarted after FuxiMaster's restart: {why})"
        return await self._relaunch(job_id, f"JobMaster died ({type(error).__name__})")

    async def restart_orphan(self, job_id: str) -> str | None:
        """A job whose record says it ran but whose JobMaster was gone when this FuxiMaster
        started (it died while no FuxiMaster listened): a new JobMaster resumes it from its
        launch record and checkpoint (None), or the job fails saying why not (returned)."""
        m = self.master
        try:
            await self.adopt(job_id)
            if job_id not in self.launches:
                why = f"(not restarted: {self.unloaded.get(job_id)})"
            else:
                m.seq += 1
                m.submit_seq.setdefault(job_id, m.seq)
                why = await self._relaunch(job_id, "JobMaster gone while FuxiMaster was down")
        except Exception as e:  # noqa: BLE001 - the job fails with the reason, FuxiMaster goes on
            logger.exception("restarting the JobMaster of job %s failed", job_id)
            why = f"(not restarted: {type(e).__name__}: {e})"
        if why is None:
            return None
        try:
            key = f"/jobs/{job_id}/status"
            st = await m.astore.get(key)  # none: an in-memory store lost it, invent none
            if st is not None and st.get("state") not in {s.value for s in TERMINAL_JOB}:
                st.update(state=JobState.FAILED.value, finished_at=time.time(),
                          report=f"FuxiMaster restarted while the job ran; its JobMaster is gone "
                                 f"{why}")
                await m.astore.put(key, st)
            await self.forget(job_id)
        except Exception:  # noqa: BLE001 - the store failed: the record stays as it was
            logger.exception("recording the failure of job %s failed", job_id)
        return why

    async def _relaunch(self, job_id: str, cause: str) -> str | None:
        """Start a new JobMaster for ``job_id`` from its checkpoint (None), or why not."""
        m = self.master
        key = f"/jobs/{job_id}/status"
        st = await m.astore.get(key) or {"job_id": job_id}
        if st.get("state") in {s.value for s in TERMINAL_JOB}:
            return "(not restarted: the job had ended)"
        restarts = int(st.get("jobmaster_restarts") or 0)
        if restarts >= JOBMASTER_RESTARTS_MAX:
            return f"(not restarted: JOBMASTER_RESTARTS_MAX={JOBMASTER_RESTARTS_MAX} reached)"
        m.ledger.release_job(job_id)  # the dead one's workers died with it
        m.demands.pop(job_id, None)
        records = await m.astore.call(load_records, m.store, job_id)
        st.update(jobmaster_restarts=restarts + 1, resumed_at=time.time(),
                  report=f"{cause}; resumed from {len(records)} checkpoint record(s)")
        await m.astore.put(key, st)
        plan, who, sys_path = self.launches[job_id]
        resume = {"gen": restarts + 1, "records": records, "submitted_at": st.get("submitted_at")}
        deadline = time.monotonic() + JOBMASTER_NAME_WAIT_S
        while True:
            try:
                m._start(job_id, plan, who, sys_path, resume=resume)
                break
            except ValueError as e:  # its name is not free yet
                if time.monotonic() > deadline:
                    return f"(not restarted: {e})"
                await asyncio.sleep(JOBMASTER_NAME_RETRY_S)
        events.emit("fuxi", "job_resumed", f"job {job_id}: JobMaster {restarts + 1} resumes from "
                    f"{len(records)} checkpoint record(s)", job=job_id, severity="warning")
        return None

    async def forget(self, job_id: str) -> None:
        self.launches.pop(job_id, None)
        self.not_kept.pop(job_id, None)
        self.unloaded.pop(job_id, None)
        self._loads.pop(job_id, None)
        self.cancelled.discard(job_id)
        self.stored.pop(job_id, None)
        try:
            await self.master.astore.call(discard, self.master.store, job_id,
                                          job_ckpt_dir(self.root, job_id))
        except Exception:  # noqa: BLE001 - leftovers cost disk, not correctness
            logger.warning("discarding the checkpoint of job %s failed", job_id, exc_info=True)
