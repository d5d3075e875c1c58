"""Fault injection on a live cluster (issue 16 part 8): find what ``fuxi debug kill`` is to
kill and kill it. Never on by default: only an operator's command gets here, an
administrator's when access control is on (``authorize``: Zhongkui decides and records it
in the audit trail).

    master               FuxiMaster's process; Ray starts it again (``max_restarts``) and the
                         new one adopts the running jobs (``fuxi.shells.adoption``)
    jobmaster <job>      the job's JobMaster (``jobmaster-<job id>``, detached); FuxiMaster's
                         recovery starts a new one from its checkpoint (``fuxi.shells.recovery``)
    agent <node>         the node's FuxiAgent, for good: the node shows missing, and
                         FuxiMaster deploys a new agent there (``fuxi.shells.agents``)
    worker <job> [<w>]   one worker process of the job (SIGKILL: a crash); its JobMaster
                         runs the lost attempt again
    node <node>          a node that is not the head: its raylet, the workers under it and
                         the node's other Ray processes (SIGKILL), when this machine runs them

Actors are killed through Ray (``base.actors.kill``), from anywhere; processes by PID, only
on the machine that runs them: a node's raylet is recognised on this machine by its command
line (``--node_id=<node id>``, how Ray starts every raylet), a worker by being a process under
that raylet with the pid Ray's actor table records for it. Target lookups are GCS calls:
this is for drivers (the CLI, tests), never an actor's event loop.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

from base import actors
from base.cluster import MASTER_NAME
from fuxi.core import chaos as cc
from fuxi.core.agentview import AGENT_HEARTBEAT_S, AGENT_MISSED_HEARTBEATS_MAX
from fuxi.errors import BadInput, TargetNotFound
from fuxi.shells.adoption import jobmaster_name
from fuxi.shells.agent import WORKER_CLASS
from fuxi.shells.agents import AGENT_READOPT_S, agent_name

PROC_DIR = "/proc"
PROC_CMDLINE_BYTES_MAX = 64 * 1024  # of one process's command line, read from /proc
PLATFORM_CLASSES = ("FuxiMaster", "JobMaster", "WorkerActor", "FuxiAgent", "ZhongkuiAuthority")
AUDIT_ACTION = "kill"


@dataclass
class Target:
    """One thing to kill: what it is (for the confirmation and the audit trail), what
    happens after, and how."""

    kind: str
    what: str        # "JobMaster of job j-1 (pid 123 on node 0a1b2c3d4e5f)"
    resource: str    # for the audit trail: "job:j-1", "node:<id>", "fuxi:FuxiMaster"
    after: str       # what the platform does about it
    _kill: Callable[[], dict] = field(repr=False)

    def execute(self) -> dict:
        out = {"kind": self.kind, "killed": self.what, "resource": self.resource,
               "after": self.after}
        out.update(self._kill())
        return out


def authorize(authority, token: str | None, target: Target) -> str:
    """Zhongkui's verdict on this kill (administrators only when access control is on; Denied
    otherwise), recorded in the cluster's audit trail either way; who it was recorded as."""
    from fuxi.client import MASTER_REPLY_TIMEOUT_S

    return actors.call(authority.approve, token or None, f"{AUDIT_ACTION} {target.kind}",
                       target.resource, timeout_s=MASTER_REPLY_TIMEOUT_S)


def _killer(handle, restart: bool) -> Callable[[], dict]:
    def kill() -> dict:
        actors.kill(handle, restart=restart)
        return {"restart": restart}

    return kill


# ------------------------------------------------------------------ this machine's processes

def local_processes(proc_dir: str = PROC_DIR) -> list[tuple[int, int, list[str]]]:
    """(pid, parent pid, argv) of every process this user can see on this machine."""
    out = []
    try:
        names = os.listdir(proc_dir)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_dir, name, "stat"), "rb") as f:
                stat = f.read(4096).decode("utf-8", "replace")
            with open(os.path.join(proc_dir, name, "cmdline"), "rb") as f:
                raw = f.read(PROC_CMDLINE_BYTES_MAX)
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        out.append((int(name), ppid, argv))
    return out


def _sigkill(pids: list[int]) -> list[int]:
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass  # ended meanwhile
    return killed


# ------------------------------------------------------------------ finding targets

class Chaos:
    """The targets of one cluster: its namespace (FuxiMaster, JobMasters, agents) and a
    ``fuxi.client.FuxiClient`` (job states). ``procs``: this machine's processes (tests
    give their own)."""

    def __init__(self, namespace: str, client, procs: Callable[[], list] = local_processes):
        self.namespace = namespace
        self.client = client
        self.procs = procs

    def find(self, kind: Any, ident: Any = None, which: Any = None,
             no_restart: bool = False) -> Target:
        """The target of ``fuxi debug kill <kind> [<ident> [<which>]]``: BadInput for a
        malformed request, TargetNotFound when nothing matches (both exit 2)."""
        kind = cc.check_kind(kind)
        if no_restart and kind != "master":
            raise BadInput(f"--no-restart applies to `master` only, not {kind}: Ray restarts "
                           f"FuxiMaster alone; JobMasters and agents are brought back by "
                           f"FuxiMaster, workers replaced by their JobMaster, and a killed node "
                           f"stays dead")
        needs = {"master": 0, "jobmaster": 1, "agent": 1, "worker": 1, "node": 1}[kind]
        if needs and ident is None:
            noun = "a job id (`fuxi job list`)" if kind in ("jobmaster", "worker") \
                else "a node id (`fuxi node list`)"
            raise BadInput(f"kill {kind}: expected {noun}")
        if ident is not None and not needs:
            raise BadInput(f"kill master takes no argument, got {str(ident)[:40]!r}")
        if which is not None and kind != "worker":
            raise BadInput(f"kill {kind}: unexpected extra argument {str(which)[:40]!r}")
        return {"master": self._master, "jobmaster": self._jobmaster, "agent": self._agent,
                "worker": self._worker, "node": self._kill_node}[kind](ident, which, no_restart)

    def _actor(self, name: str) -> tuple[Any, dict]:
        h = actors.named_actor(name, self.namespace)
        if h is None:
            return None, {}
        return h, actors.actor_table(actors.actor_id(h)) or {}

    @staticmethod
    def _where(info: dict) -> str:
        node = (info.get("Address") or {}).get("NodeID", "")
        return f"pid {info.get('Pid', '?')} on node {node[:12] or '?'}"

    def _master(self, _ident, _which, no_restart: bool) -> Target:
        # The leading FuxiMaster: the one this client talks to (it follows the leader).
        h = getattr(self.client, "master", None)
        info = (actors.actor_table(actors.actor_id(h)) or {}) if h is not None else {}
        if not info:
            h, info = self._actor(MASTER_NAME)
        if h is None or info.get("State") not in ("ALIVE", "RESTARTING", "PENDING_CREATION"):
            raise TargetNotFound(f"no FuxiMaster is alive in namespace {self.namespace!r}: "
                                 f"nothing to kill (`fuxi status`)")
        after = ("it stays dead: no job is scheduled until the next `fuxi` command starts a "
                 "new one (which adopts the running jobs)" if no_restart else
                 "a standby takes over where there is one (else Ray starts it again); the "
                 "new leader adopts the running jobs")
        return Target("master", f"FuxiMaster ({self._where(info)}, restarted "
                                f"{info.get('NumRestarts', 0)} times so far)",
                      f"fuxi:{info.get('Name') or MASTER_NAME}", after,
                      _killer(h, restart=not no_restart))

    def _running_job(self, job_id: Any) -> dict:
        job_id = cc.check_job_id(job_id)
        st = self.client.status(job_id)  # JobNotFound names `fuxi job list`
        state = st.get("state")
        if state in ("succeeded", "failed", "cancelled"):
            raise TargetNotFound(f"job {job_id} has ended ({state}): it has no JobMaster or "
                                 f"workers left to kill (`fuxi job list` shows running jobs)")
        if state == "queued":
            raise TargetNotFound(f"job {job_id} waits in its queue: it has no JobMaster or "
                                 f"workers yet (`fuxi job list` shows running jobs)")
        return st

    def _jobmaster_of(self, job_id: str) -> tuple[Any, dict]:
        h, info = self._actor(jobmaster_name(job_id))
        if h is None or info.get("State") != "ALIVE":
            raise TargetNotFound(f"job {job_id}: its JobMaster is not alive now (FuxiMaster's "
                                 f"recovery may be starting a new one): nothing to kill; try "
                                 f"again in a few seconds")
        return h, info

    def _jobmaster(self, job_id, _which, _no_restart) -> Target:
        self._running_job(job_id)
        h, info = self._jobmaster_of(job_id)
        return Target("jobmaster", f"JobMaster of job {job_id} ({self._where(info)})",
                      f"job:{job_id}",
                      "FuxiMaster's recovery starts a new JobMaster from the job's checkpoint "
                      "(`fuxi job status` counts jobmaster_restarts)",
                      _killer(h, restart=False))

    def _under(self, nid: str, raylet_too: bool = False) -> set[int]:
        """The node's processes on this machine now (looked at again just before a SIGKILL:
        a pid that ended meanwhile may belong to someone else by then)."""
        pids = cc.node_processes(nid, self.procs())
        return set(pids if raylet_too else pids[1:])

    def _signal(self, nid: str, pids: list[int], raylet_too: bool) -> dict:
        killed = _sigkill([p for p in pids if p in self._under(nid, raylet_too)])
        if not killed:
            raise TargetNotFound(f"pid {', '.join(map(str, pids[:cc.CHOICES_SHOWN_MAX]))} of "
                                 f"node {nid[:12]} ended before it was killed: nothing killed")
        return {"pids": killed}

    def _node(self, ref: Any) -> dict:
        return dict(cc.resolve_node(ref, actors.nodes()))

    def _agent(self, ref, _which, _no_restart) -> Target:
        node = self._node(ref)
        nid = node["NodeID"]
        h, info = self._actor(agent_name(nid))
        if h is None or info.get("State") not in ("ALIVE", "RESTARTING"):
            raise TargetNotFound(f"node {nid[:12]} has no FuxiAgent alive now: nothing to kill "
                                 f"(`fuxi node list` shows each node's agent)")
        missing_s = AGENT_HEARTBEAT_S * AGENT_MISSED_HEARTBEATS_MAX
        return Target("agent", f"FuxiAgent of node {nid[:12]} ({self._where(info)})",
                      f"node:{nid}",
                      f"the node shows its agent missing in `fuxi node list` after "
                      f"{missing_s:g} s and is excluded for every job; FuxiMaster deploys a "
                      f"new agent about {AGENT_READOPT_S:g} s later and the node comes back",
                      _killer(h, restart=False))

    def _worker(self, job_id, which, _no_restart) -> Target:
        if which is not None:
            cc.check_worker_ref(which)  # garbage is refused before any lookup
        self._running_job(job_id)
        _, jm = self._jobmaster_of(job_id)
        table = actors.actor_table(state="ALIVE")
        w = cc.pick_worker(cc.owned_workers(table, jm.get("Address") or {}, WORKER_CLASS),
                           which, job_id)
        pid, nid = w["pid"], w["node_id"]
        local = cc.node_processes(nid, self.procs())
        if pid not in local[1:]:
            raise TargetNotFound(
                f"worker {w['actor_id'][:12]} of job {job_id} (pid {pid}) runs on node "
                f"{nid[:12]}, whose processes are not on this machine: run the command on "
                f"that node's machine" if not local else
                f"worker {w['actor_id'][:12]} of job {job_id}: pid {pid} is not a process "
                f"of its node's raylet on this machine (it ended meanwhile?)")
        return Target("worker", f"worker {w['actor_id'][:12]} of job {job_id} (pid {pid} on "
                                f"node {nid[:12]})", f"job:{job_id}",
                      "its JobMaster sees the worker gone and runs its attempts again "
                      "(the node's agent reports the exit as a crash)",
                      lambda: self._signal(nid, [pid], raylet_too=False))

    def _kill_node(self, ref, _which, _no_restart) -> Target:
        node = self._node(ref)
        nid = node["NodeID"]
        if cc.is_head(node):
            raise BadInput(f"node {nid[:12]} is the head node: killing it takes down Ray's "
                           f"control store (GCS) and with it the whole cluster, not one "
                           f"node; choose another node (`fuxi node list`) or `fuxi down`")
        if nid == actors.this_node_id():
            raise BadInput(f"node {nid[:12]} is the node this command is attached to: "
                           f"killing it would kill this command; run it from another node")
        pids = cc.node_processes(nid, self.procs())
        if not pids:
            raise TargetNotFound(
                f"node {nid[:12]} ({node.get('NodeManagerAddress', '?')}): its raylet is not "
                f"a process of this machine: run the command on that node's machine")
        ours = sorted(a.get("ActorClassName", "?") for a in actors.actor_table(state="ALIVE").values()
                      if (a.get("Address") or {}).get("NodeID") == nid
                      and a.get("ActorClassName") in PLATFORM_CLASSES)
        on_it = ", ".join(f"{ours.count(c)} {c}" for c in dict.fromkeys(ours)) or "no platform actors"
        return Target("node", f"node {nid[:12]} (raylet pid {pids[0]}, {len(pids)} processes; "
                              f"{on_it})", f"node:{nid}",
                      "Ray marks the node dead; its workers' attempts run again elsewhere, "
                      "and actors that may restart (FuxiMaster) start on another node",
                      lambda: self._signal(nid, pids, raylet_too=True))
