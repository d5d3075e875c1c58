"""FuxiAgent: one actor per node (issue 16 part 5), named ``fuxi-agent-<node id>`` in the
cluster's namespace, no CPU, pinned to its node, restarted by Ray if its process dies.

A thread of its own (never Ray's call threads, never blocking a caller) heartbeats to
FuxiMaster every ``AGENT_HEARTBEAT_S``: the node's health, read without psutil --
``os.getloadavg``, ``MemAvailable`` from ``/proc/meminfo``, ``shutil.disk_usage`` of Ray's
temp directory -- and the Fuxi workers on the node. Its load is the node's own
(``fuxi.shells.nodeload``): the machine's load average, or, where several Ray nodes share a
machine, the runnable threads of this node's processes. Every ``WORKER_SCAN_S`` it reads Ray's
actor table for the ``WorkerActor`` processes alive on its node; one that is gone since the
last scan is reported once as an exit, with a cause (``fuxi.core.agentview.ExitCause``) from
the death cause Ray recorded (Ray's OOM killer -> oom; ``ray.kill``, which only Fuxi sends
its workers -> preempted; a process that exited or a node that died -> crash). Exits not yet
delivered are sent again with the next heartbeat (at most ``HEARTBEAT_EXITS_MAX``; older
ones are dropped and counted).

The agent does not start workers: JobMasters create their WorkerActors pinned to the granted
node, and own them, so a worker fate-shares with its job's master, not with the agent (an
agent restart or a paused agent leaves the node's work running). What the agent adds is the
node's side of the story: health, and why each worker process ended.

Its heartbeat is signed with the token FuxiMaster gave it (``adopt``); a FuxiMaster that
restarted or took over gives a new one. One whose FuxiMaster is unreachable for
``AGENT_ORPHAN_S`` ends itself (a detached agent of a cluster gone for good)."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import time

import ray

from base import actors
from fuxi.core import agentview as av
from fuxi.core.leadership import TermGate
from fuxi.shells.nodeload import NodeLoad

logger = logging.getLogger(__name__)

AGENT_PREFIX = "fuxi-agent-"
AGENT_CALL_TIMEOUT_S = 10.0  # a heartbeat unanswered this long failed (sent again next time)
WORKER_SCAN_S = 2.0  # how often the agent reads Ray's actor table for its node's workers
AGENT_ORPHAN_S = 600.0  # FuxiMaster unreachable this long: the agent ends itself
WORKER_CLASS = "WorkerActor"  # the Ray class name of Fuxi's workers (fuxi.shells.worker)
EXIT_LOOKUPS_MAX = 64  # gone workers whose death cause one scan looks up (the rest: next scan)


def read_health(temp_dir: str, load: float | None = None) -> dict:
    """Load, available memory and free disk of this machine (no psutil). ``load``: the
    node's own (``fuxi.shells.nodeload``); the machine's load average if not given."""
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    mem = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    mem = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        mem = av.REPORTED_BYTES_MAX  # cannot tell: never call it exhausted on no evidence
    try:
        disk = shutil.disk_usage(temp_dir).free
    except OSError:
        disk = av.REPORTED_BYTES_MAX
    return {"load": min(float(load), av.LOAD_MAX), "mem_available_bytes": min(mem, av.REPORTED_BYTES_MAX),
            "disk_free_bytes": min(disk, av.REPORTED_BYTES_MAX)}


def ray_temp_dir() -> str:
    try:
        return actors.temp_dir() or tempfile.gettempdir()
    except Exception:  # noqa: BLE001 - Ray's internals moved: the system's
        return tempfile.gettempdir()


def death_cause(info: dict, mem_available_bytes: int) -> tuple[av.ExitCause, int | None, str]:
    """(cause, exit code if known, detail) from one entry of Ray's actor table."""
    dc = info.get("DeathCause")
    kind = dc.WhichOneof("context") if dc is not None else None
    if kind == "oom_context":
        return av.ExitCause.OOM, None, dc.oom_context.error_message
    if kind == "actor_died_error_context":
        ctx = dc.actor_died_error_context
        reason = type(ctx).Reason.Name(ctx.reason)
        if reason == "RAY_KILL":
            return av.ExitCause.PREEMPTED, None, "stopped by Fuxi (ray.kill)"
        cause = av.classify_exit(message=ctx.error_message, mem_available_bytes=mem_available_bytes)
        return cause, None, f"{reason}: {ctx.error_message}"
    if kind == "creation_task_failure_context":
        return av.ExitCause.CRASH, None, "its constructor failed"
    return av.ExitCause.CRASH, None, f"ended ({kind or 'no cause recorded'})"


def _actor_class():
    @ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)
    class FuxiAgent:
        def __init__(self, node: str, token: str, master, heartbeat_s: float = av.AGENT_HEARTBEAT_S,
                     namespace: str | None = None):
            self.node = node
            self.token = token
            self.master = master
            self.namespace = namespace or ray.get_runtime_context().namespace  # FuxiMaster's
            self.heartbeat_s = float(heartbeat_s)
            self.boot = secrets.token_hex(8)  # a restart starts its seq afresh
            self.seq = 0
            self.temp_dir = ray_temp_dir()
            self.load = NodeLoad()  # this node's own load, not its machine's (shared hosts)
            self.last_error: str | None = None
            self.last_ok = time.monotonic()
            self.exits_dropped = 0
            self._unsent: list[dict] = []
            self._workers: dict[str, int] = {}  # actor id -> pid, alive at the last scan
            self._scanned_at = float("-inf")
            self._lock = threading.Lock()
            self.terms = TermGate()  # the highest FuxiMaster term seen (fuxi.core.leadership)
            threading.Thread(target=self._run, name="fuxi-agent-heartbeat", daemon=True).start()

        def adopt(self, token: str, master, term: int = 0) -> dict:
            """FuxiMaster (new, restarted or taking over) takes this agent: its token and
            handle from now on -- unless its leadership term is older than one this agent
            has seen (a deposed FuxiMaster: ``StaleTerm``, nothing changes)."""
            with self._lock:
                self.terms.admit(term, f"adopt the agent of node {self.node[:12]}")
                self.token, self.master = token, master
            return self.info()

        def info(self) -> dict:
            return {"node": self.node, "pid": os.getpid(), "boot": self.boot, "seq": self.seq,
                    "term": self.terms.seen, "stale_refused": self.terms.refused,
                    "last_error": self.last_error, "workers": len(self._workers),
                    "exits_dropped": self.exits_dropped, "load_source": self.load.source,
                    "raylet_pid": self.load.raylet}

        def read_logs(self, token: str, kind: str, name: str, query: dict) -> dict:
            """This node's captured output of a job or service (issue 18 part 2), for
            FuxiMaster only (it checked the caller; ``token`` is the one it gave this agent)."""
            import hmac

            from fuxi.shells import logreads, tasklogs

            with self._lock:
                mine = self.token
            if not isinstance(token, str) or not hmac.compare_digest(token, mine):
                raise PermissionError(f"read_logs on the agent of node {self.node[:12]}: only "
                                      f"FuxiMaster reads through it")
            q = logreads.check_query(kind, query)
            return logreads.read_local(
                tasklogs.logs_root(tasklogs.cluster_of_namespace(self.namespace)), kind, name, q)

        # ---------------------------------------------------------------- the thread

        def _run(self) -> None:
            while True:
                started = time.monotonic()
                try:
                    self._beat()
                    self.last_ok, self.last_error = time.monotonic(), None
                except Exception as e:  # noqa: BLE001 - reported, and tried again
                    self.last_error = f"{type(e).__name__}: {e}"[:av.TEXT_CHARS_MAX]
                    self._find_master()
                if time.monotonic() - self.last_ok > AGENT_ORPHAN_S:
                    logger.warning("FuxiMaster unreachable for %.0fs: agent of %s exits",
                                   AGENT_ORPHAN_S, self.node[:12])
                    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
                    return  # not a crash: nobody is left to report to
                time.sleep(max(0.0, self.heartbeat_s - (time.monotonic() - started)))

        def _beat(self) -> None:
            try:
                load = self.load.read(time.monotonic())
            except Exception:  # noqa: BLE001 - /proc unreadable: the machine's load average
                load = None
            health = read_health(self.temp_dir, load)
            if time.monotonic() - self._scanned_at >= WORKER_SCAN_S:
                self._scanned_at = time.monotonic()
                self._scan(health["mem_available_bytes"])
            with self._lock:
                token, master = self.token, self.master
            self.seq += 1
            exits = self._unsent[-av.HEARTBEAT_EXITS_MAX:]
            doc = {"node": self.node, "boot": self.boot, "seq": self.seq, "at": time.time(),
                   **health, "workers": {pid: aid[:12] for aid, pid in  # reported in part, all watched
                                          list(self._workers.items())[:av.HEARTBEAT_WORKERS_MAX]},
                   "exits": exits}
            ray.get(master.agent_heartbeat.remote(self.node, token, doc),
                    timeout=AGENT_CALL_TIMEOUT_S)
            self._unsent = self._unsent[:-len(exits)] if exits else self._unsent  # delivered

        def _scan(self, mem_available_bytes: int) -> None:
            """The WorkerActors alive on this node now; those gone since the last scan become
            exits with their cause."""
            table = actors.actor_table(state="ALIVE")
            alive = {aid: int(a.get("Pid") or 0) for aid, a in table.items()
                     if a.get("ActorClassName") == WORKER_CLASS
                     and a.get("Address", {}).get("NodeID") == self.node}
            gone = [aid for aid in self._workers if aid not in alive]
            for aid in gone[:EXIT_LOOKUPS_MAX]:
                info = actors.actor_table(aid) or {}
                if info and info.get("State") != "DEAD":  # {}: Ray forgot it, so dead
                    alive[aid] = self._workers[aid]  # restarting: look again next scan
                    continue
                cause, code, detail = death_cause(info, mem_available_bytes)
                self._unsent.append({"worker": aid[:12], "pid": min(self._workers[aid], av.PID_MAX),
                                     "cause": cause.value, "exit_code": code,
                                     "at": float(info.get("EndTime") or 0) / 1000.0 or time.time(),
                                     "detail": detail[:av.TEXT_CHARS_MAX]})
            for aid in gone[EXIT_LOOKUPS_MAX:]:
                alive[aid] = self._workers[aid]  # looked up next scan
            if len(self._unsent) > av.HEARTBEAT_EXITS_MAX:
                self.exits_dropped += len(self._unsent) - av.HEARTBEAT_EXITS_MAX
                self._unsent = self._unsent[-av.HEARTBEAT_EXITS_MAX:]
            self._workers = alive

        def _find_master(self) -> None:
            """The FuxiMaster by name, for when the handle's actor is gone for good."""
            from base.cluster import MASTER_NAME

            try:
                handle = ray.get_actor(MASTER_NAME, namespace=self.namespace)
            except Exception:  # noqa: BLE001 - none now: keep the old handle, try next time
                return
            with self._lock:
                self.master = handle

    return FuxiAgent


_cls = None


def agent_class():
    global _cls
    if _cls is None:
        _cls = _actor_class()
    return _cls
