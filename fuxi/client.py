"""The Python API: submit a job, watch it, cancel it, read its logs.

    import fuxi
    status = fuxi.run("jobs/wordcount.yaml", overrides=["output=out/wc"])   # embedded default
    print(status["state"], status["output"])

or, against a running cluster, with the same spec as Python objects::

    from fuxi import JobSpec, TaskSpec, connect, FuxiClient
    spec = JobSpec(name="sq", tasks={"sq": TaskSpec(fn="mymod:square", instances=4)})
    with connect() as conn:
        client = FuxiClient(conn.master)
        job_id = client.submit(spec)
        print(client.wait(job_id, timeout_s=60))
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import uuid
from typing import Callable, Sequence

from base.errors import PlatformError
from fuxi.errors import (ClusterError, JobFailed, JobNotFound, JobWaitTimeout, MasterGone,
                         NotLeader, OutcomeUnknown)
from fuxi.core.plan import JobPlan, build_plan
from fuxi.core.spec import JobSpec, check_importable, spec_from_dict
from fuxi.io.specfile import load_job_spec
from fuxi.core.states import TERMINAL_JOB

MASTER_REPLY_TIMEOUT_S = 60.0
POLL_S = 0.3
SUBMIT_TRIES_MAX = 3  # a submit that times out is retried with the same request id (idempotent)
MASTER_FAILOVER_WAIT_S = 60.0  # a read whose FuxiMaster died is asked again for this long
FAILOVER_RETRY_S = 0.5  # pause between those tries (the new FuxiMaster is starting)
LEADER_HOPS_MAX = 3  # standbys' NotLeader hints followed in one call
TERMINAL = {s.value for s in TERMINAL_JOB}


def load(spec: str | os.PathLike | dict | JobSpec, overrides: Sequence[str] = (),
         base_dir: str | None = None, overwrite: bool = False,
         working_dir: str | None = None) -> JobPlan:
    """Validate a spec (file path, dict or ``JobSpec``) and resolve it into a plan.

    Raises ``SpecError``/``BadInput`` before anything runs. Reads only: with ``overwrite``
    the old output is cleared by the job's JobMaster, once FuxiMaster admitted the job.
    ``working_dir``: ship that directory to every worker (``fuxi.io.codeship``), over the
    spec's ``runtime_env.working_dir``."""
    from fuxi.io import codeship

    base_dir = base_dir or os.getcwd()
    for where in (base_dir, working_dir and os.path.abspath(os.path.join(base_dir, working_dir))):
        if where and where not in sys.path:
            sys.path.insert(0, where)  # task modules are found relative to where you submit
    if isinstance(spec, JobSpec):
        js = spec
        if overrides:  # functions given by value are kept across the overrides
            js = spec_from_dict(spec.to_json_dict(), overrides, source="<JobSpec>",
                                check_functions=False)
            js = js.model_copy(update={"tasks": {
                n: t.shipping(spec.tasks[n].by_value) if n in spec.tasks else t
                for n, t in js.tasks.items()}})
        check_importable(js)
    elif isinstance(spec, dict):
        js = spec_from_dict(spec, overrides)
    else:
        js = load_job_spec(spec, overrides)
    from fuxi.io.resolve import check_outputs, resolve_facts  # fsspec, pyarrow: on first use

    js = codeship.prepare(js, base_dir, working_dir)
    plan = build_plan(js, resolve_facts(js, base_dir), overwrite=overwrite)
    check_outputs(plan)
    return plan


def explain(e: PlatformError, what: str, timeout_s: float = MASTER_REPLY_TIMEOUT_S) -> PlatformError:
    """What a user reads when FuxiMaster's call failed at the Ray boundary (``base.actors``,
    the one translation of Ray's errors): the advice the CLI always gave. An error FuxiMaster
    raised itself passes unchanged (the boundary hands back the very object Ray carried)."""
    import ray.exceptions as rex

    ray_error = e.__context__
    if not isinstance(ray_error, rex.RayError) or getattr(ray_error, "cause", None) is e:
        return e
    if isinstance(ray_error, rex.GetTimeoutError):
        return OutcomeUnknown(f"{what}: FuxiMaster did not answer within {timeout_s:g}s "
                              f"(MASTER_REPLY_TIMEOUT_S); the outcome is unknown — check "
                              f"`fuxi job list`")
    if isinstance(ray_error, rex.RayActorError):
        return MasterGone(f"{what}: FuxiMaster died while answering ({type(ray_error).__name__});"
                          f" Ray starts it again and it adopts the running jobs — if this "
                          f"persists, `fuxi status` shows what is running")
    if isinstance(ray_error, rex.RaySystemError):
        return ClusterError(f"{what}: FuxiMaster is gone ({type(ray_error).__name__}); was "
                            f"the cluster stopped? `fuxi status` shows what is running")
    return ClusterError(f"{what}: {type(ray_error).__name__}: {ray_error}")


class FuxiClient:
    def __init__(self, master, cluster: str | None = None, token: str | None = None,
                 candidates: list[str] | None = None, namespace: str | None = None):
        """``token``: what calls present to a cluster with access control (Zhongkui); default
        this process's (``zhongkui.creds``: a job's own, ``FUXI_TOKEN``, or the one `fuxi
        login` stored for ``cluster``). ``candidates``: the FuxiMaster candidates' names
        (hot standby, ``fuxi.shells.leadership``), tried when ``master`` dies; a standby's
        ``NotLeader`` is followed to the leader it names in any case."""
        self.master = master
        self.cluster = cluster
        self.token = token
        self.candidates = list(candidates or ())
        self.namespace = namespace

    def _call(self, method: str, *args, timeout_s: float = MASTER_REPLY_TIMEOUT_S, **kw):
        from base import actors
        from zhongkui import creds

        cred = self.token if self.token is not None else creds.token(self.cluster)
        for hop in range(LEADER_HOPS_MAX + 1):
            try:
                return actors.call(getattr(self.master, method), *args, cred=cred or None,
                                   timeout_s=timeout_s, **kw)
            except NotLeader as e:  # a standby answered, having done nothing: ask the leader
                if hop == LEADER_HOPS_MAX or (e.leader is None and not self.candidates):
                    raise MasterGone(f"{method}: {e}") from None  # a read asks again
                if e.leader is None:
                    self._find_leader()
                else:
                    self.master = self._named(e.leader)
            except PlatformError as e:
                err = explain(e, method, timeout_s)
                if isinstance(err, MasterGone) and self.candidates:
                    self._find_leader()  # the handle's actor died: try the candidates
                raise err from None
        raise AssertionError("unreachable")

    def _named(self, name: str):
        import ray

        try:
            return ray.get_actor(name, **({"namespace": self.namespace} if self.namespace
                                          else {}))
        except ValueError:
            raise MasterGone(f"FuxiMaster {name!r} (named the leader) does not exist; "
                             f"a take-over is under way") from None

    def _find_leader(self) -> None:
        from fuxi.shells.leadership import find_leader

        try:
            self.master = find_leader(self.namespace, self.candidates, timeout_s=FAILOVER_RETRY_S)
        except PlatformError:
            pass  # none serves yet: the caller's retry comes back here

    def _read(self, method: str, *args, timeout_s: float = MASTER_REPLY_TIMEOUT_S, **kw):
        """A call that changes nothing, asked again while FuxiMaster fails over."""
        deadline = time.monotonic() + MASTER_FAILOVER_WAIT_S
        while True:
            try:
                return self._call(method, *args, timeout_s=timeout_s, **kw)
            except MasterGone:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(FAILOVER_RETRY_S)

    def submit(self, spec: JobPlan | JobSpec | str | dict, overrides: Sequence[str] = (),
               request_id: str | None = None, overwrite: bool = False) -> str:
        from fuxi.core.submits import check_request_id
        from fuxi.io import codeship

        if request_id is not None:
            check_request_id(request_id)  # before the spec is read
        plan = spec if isinstance(spec, JobPlan) else load(spec, overrides, overwrite=overwrite)
        machine_count = codeship.cluster_machines()
        codeship.check_shared_outputs(plan, machine_count)
        env = plan.runtime_env
        if machine_count > 1 and not codeship.shipped_working_dir(env):
            # Across machines the submit directory is not on the workers' disks: ship it.
            env = codeship.prepare_working_dir(env, os.getcwd())
        if env:  # packaged and uploaded once, here; workers get URIs
            plan = dataclasses.replace(plan, runtime_env=codeship.ship(env))
        # Workers import task modules from the directory the job was submitted from, unless
        # that directory was shipped (then it is their working directory).
        sys_path = [] if codeship.shipped_working_dir(plan.runtime_env) else [os.getcwd()]
        request_id = request_id or uuid.uuid4().hex
        for attempt in range(SUBMIT_TRIES_MAX):
            try:
                return self._call("submit", plan, request_id, sys_path)
            except OutcomeUnknown:
                if attempt == SUBMIT_TRIES_MAX - 1:
                    raise
        raise AssertionError("unreachable")

    def status(self, job_id: str) -> dict:
        return self._read("status", job_id)

    def service_list(self) -> list[dict]:
        return self._read("service_list")

    def service_status(self, name: str) -> dict:
        return self._read("service_status", name)

    def service_scale(self, name: str, replicas: int) -> dict:
        return self._call("service_scale", name, replicas)

    def service_register(self, spec: dict) -> dict:
        """Register a service from its spec document (``ServiceSpec.to_doc()``, code shipped)."""
        return self._call("service_register", spec)

    def service_upgrade(self, spec: dict) -> dict:
        return self._call("service_upgrade", spec)

    def service_remove(self, name: str) -> dict:
        return self._call("service_remove", name)

    def cluster_info(self) -> dict:
        """The cluster: its nodes (free resources, agent, blacklist), running jobs (a read
        that takes no credentials, as for `fuxi status`)."""
        from base import actors

        try:
            return actors.call(self.master.cluster_info, timeout_s=MASTER_REPLY_TIMEOUT_S)
        except PlatformError as e:
            raise explain(e, "cluster_info") from None

    def list(self) -> list[dict]:
        return self._read("list_jobs")

    def cancel(self, job_id: str) -> dict:
        return self._call("cancel", job_id)

    def queues(self) -> dict:
        """The queues (quota groups): each one's limit, running and waiting jobs."""
        return self._read("queues")

    def configure_queues(self, queues: dict | None = None,
                         jobs_running_max: int | None = None) -> dict:
        """Replace the queues (name -> {"jobs_running_max": int or None}) and/or the cluster's
        jobs_running_max (an administrator's call)."""
        return self._call("configure_queues", queues, jobs_running_max)

    def logs(self, job_id: str, task: str | None = None, instance: int | None = None) -> list[dict]:
        return self._read("logs", job_id, task, instance)

    def attempts(self, job_id: str) -> dict:
        """Every attempt of a job (``fuxi.core.story`` tells and draws them)."""
        return self._read("job_attempts", job_id)

    def output(self, job_id: str, task: str | None = None, instance: int | None = None,
               attempt: int | None = None, cursor: str = "", bytes_max: int | None = None) -> dict:
        """Captured stdout, stderr and logging of a job's attempts from ``cursor`` on (a token
        of a previous reply's ``cursor``): {attempts: [{task, instance, attempt, lines:
        [[stream, text]], cursor, ...}], more, unreachable} -- see docs/operations.md."""
        return self._read("logs", job_id, output=output_query(task, instance, attempt, cursor,
                                                              bytes_max))

    def service_output(self, name: str, replica: str | None = None, cursor: str = "",
                       bytes_max: int | None = None) -> dict:
        """Captured output of a service's replicas, like ``output``."""
        q = {"replica": replica, "cursors": cursor}
        if bytes_max is not None:
            q["bytes_max"] = bytes_max
        return self._read("service_status", name, output=q)

    def events(self, since_id: int = 0, since_at: float | None = None, kinds=None,
               limit: int = 1000, wait_s: float = 0.0, match: dict | None = None) -> dict:
        """The cluster's event log: ``{"events": [...], "last_id": n}``, oldest first; with
        ``wait_s``, waits that long (at most EVENTS_WAIT_S_MAX) for the first new one."""
        return self._read("events_since", since_id, since_at, kinds, limit, wait_s, match,
                          timeout_s=wait_s + MASTER_REPLY_TIMEOUT_S)

    def follow_events(self, since_id: int = 0, since_at: float | None = None, kinds=None,
                      wait_s: float = 10.0, match: dict | None = None):
        """Every event from ``since_id`` on, as it happens (long polls of ``wait_s`` each,
        resumed from the last id seen); runs until the caller stops iterating."""
        while True:
            got = self.events(since_id, since_at, kinds, 1000, wait_s, match)
            for e in got["events"]:
                since_id = max(since_id, e["id"])
                yield e
            if not got["events"]:
                since_id = max(since_id, got.get("last_id", since_id))

    def wait(self, job_id: str, timeout_s: float | None = None,
             on_update: Callable[[dict], None] | None = None, poll_s: float = POLL_S) -> dict:
        """Wait until the job ends (or ``timeout_s`` passes); returns the last status."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        wait = 0.0
        while True:
            # FuxiMaster.wait returns early when the job ends, so this is no busy poll.
            st = self._read("wait", job_id, wait, timeout_s=wait + MASTER_REPLY_TIMEOUT_S)
            if on_update is not None:
                on_update(st)
            if st["state"] in TERMINAL or (deadline is not None and time.time() >= deadline):
                return st
            wait = poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.time()))


def checked(st: dict, timeout_s: float | None) -> dict:
    """A wait's last status, or the error it means: ``JobFailed`` (failed, cancelled) or
    ``JobWaitTimeout`` (still running after ``timeout_s``), each carrying ``status``."""
    if st["state"] == "succeeded":
        return st
    if st["state"] in TERMINAL:
        first = (st.get("report") or "").strip().splitlines()[:1]
        raise JobFailed(f"job {st['job_id']} {st['state']}" + (f": {first[0]}" if first else ""),
                        st)
    raise JobWaitTimeout(f"job {st['job_id']} is still {st['state']} after {timeout_s:g}s; it "
                         f"keeps running", st)


def run(spec: str | os.PathLike | dict | JobSpec, overrides: Sequence[str] = (),
        cluster: str = "default", timeout_s: float | None = None, overwrite: bool = False,
        check: bool = True, request_id: str | None = None) -> dict:
    """Submit a job and wait for it (on the running cluster, or the embedded default); the
    final status. ``check`` (the default): a job that failed or was cancelled raises
    ``JobFailed`` and one still running after ``timeout_s`` raises ``JobWaitTimeout``, each
    with ``.status``; ``check=False`` returns the status whatever it is."""
    from fuxi.runtime import connect

    plan = load(spec, overrides, overwrite=overwrite)
    with connect(cluster) as conn:
        client = FuxiClient(conn.master, cluster)
        job_id = client.submit(plan, request_id=request_id)
        st = client.wait(job_id, timeout_s=timeout_s)
    return checked(st, timeout_s) if check else st


def output_query(task, instance, attempt, cursor: str, bytes_max) -> dict:
    q = {"task": task, "instance": instance, "attempt": attempt, "cursors": cursor}
    if bytes_max is not None:
        q["bytes_max"] = bytes_max
    return q


class OfflineJobs:
    """Read job records and logs straight from a cluster's data directory, without Ray —
    used when no cluster is running (e.g. jobs that ran on the embedded default)."""

    def __init__(self, data_dir: str):
        from fuxi.io.store import FileStore

        self.data_dir = data_dir
        self.store = FileStore(os.path.join(data_dir, "state"))

    def status(self, job_id: str) -> dict:
        st = self.store.get(f"/jobs/{job_id}/status")
        if st is None:
            raise JobNotFound(f"no job with id {job_id!r} under {self.data_dir}; "
                              f"`fuxi job list` shows the known jobs")
        return st

    def list(self) -> list[dict]:
        keys = [k for k in self.store.list("/jobs/") if k.endswith("/status")]
        return sorted((self.store.get(k) for k in keys), key=lambda s: s.get("submitted_at") or 0)

    def logs(self, job_id: str, task: str | None = None, instance: int | None = None) -> list[dict]:
        from fuxi.io.store import read_job_logs

        self.status(job_id)
        return read_job_logs(os.path.join(self.data_dir, "logs"), job_id, task, instance)

    def output(self, job_id: str, task: str | None = None, instance: int | None = None,
               attempt: int | None = None, cursor: str = "", bytes_max: int | None = None) -> dict:
        """Captured output kept on this machine (``FuxiClient.output``), read without Ray."""
        from fuxi.shells.logreads import check_query, read_local

        self.status(job_id)
        q = check_query("job", output_query(task, instance, attempt, cursor, bytes_max))
        return {**read_local(os.path.join(self.data_dir, "logs"), "job", job_id, q), "unreachable": []}

    def attempts(self, job_id: str) -> dict:
        from fuxi.shells.jobstory import read_attempts

        self.status(job_id)
        return read_attempts(os.path.join(self.data_dir, "logs"), job_id)

    def events(self, since_id: int = 0, since_at: float | None = None, kinds=None,
               limit: int = 1000, wait_s: float = 0.0, match: dict | None = None) -> dict:
        from fuxi.shells.clusterlog import offline_events

        return offline_events(self.data_dir, since_id, since_at, kinds, limit, match)
