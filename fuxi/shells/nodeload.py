"""A node's own load (issue 20 part 2), as its FuxiAgent reports it in every heartbeat.

The machine's load average (``os.getloadavg``) is the honest load of a node that has its
machine to itself. When several Ray nodes share one machine (``ray.cluster_utils.Cluster``,
or two raylets started on one host) every one of them would report the same machine-wide
number, and no node could ever stand above its peers. So the agent counts, like the kernel's
load average does for the whole machine, the runnable threads (state ``R``) -- but only of the
processes of *its* node: the process tree under its raylet (Ray's workers, actors, and
whatever they started). It samples at every heartbeat and keeps an exponential average with a
time constant of ``NODE_LOAD_AVG_S`` (the kernel's 1-minute average is too slow to steer by).

    load = machine load average             when this raylet is alone on its machine
           the node tree's runnable average  when another raylet runs on the same machine

Either way the unit is the load average's: runnable threads (FuxiMaster divides by the node's
CPUs). The agent's own heartbeat thread is not counted. Reading ``/proc`` is bounded by
``NODE_PROCS_SCAN_MAX`` processes and ``NODE_THREADS_SCAN_MAX`` threads per sample; where
``/proc`` cannot be read (not Linux) the machine's load average is all there is.
"""

from __future__ import annotations

import math
import os
import threading

NODE_LOAD_AVG_S = 10.0  # time constant of the node's runnable-threads average, in seconds
NODE_PROCS_SCAN_MAX = 20_000  # processes one sample reads from /proc
NODE_THREADS_SCAN_MAX = 20_000  # threads of the node's processes one sample reads
RAYLET_COMM = "raylet"
PROC = "/proc"


def _stat(path: str) -> tuple[str, str, int] | None:
    """(comm, state, ppid) from a ``/proc/<pid>[/task/<tid>]/stat`` file, None if gone."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096).decode("ascii", "replace")
    except OSError:
        return None
    lp, rp = raw.find("("), raw.rfind(")")
    if lp < 0 or rp < lp:
        return None
    rest = raw[rp + 2:].split()
    if len(rest) < 2:
        return None
    try:
        return raw[lp + 1:rp], rest[0], int(rest[1])
    except ValueError:
        return None


def _pids() -> list[int]:
    try:
        names = os.listdir(PROC)
    except OSError:
        return []
    return [int(n) for n in names if n.isdigit()][:NODE_PROCS_SCAN_MAX]


def find_raylet(pid: int | None = None) -> int | None:
    """The raylet this process descends from (Ray starts workers under it), None if none."""
    pid = os.getpid() if pid is None else pid
    for _ in range(64):  # a process tree is not that deep; a loop in /proc is not followed
        st = _stat(f"{PROC}/{pid}/stat")
        if st is None:
            return None
        if st[0] == RAYLET_COMM:
            return pid
        if st[2] <= 1:
            return None
        pid = st[2]
    return None


def sample(raylet: int, skip_tid: int | None = None) -> tuple[float, int]:
    """(runnable threads in the raylet's process tree, raylets on this machine) now."""
    parent, raylets = {}, 0
    for pid in _pids():
        st = _stat(f"{PROC}/{pid}/stat")
        if st is None:
            continue
        parent[pid] = st[2]
        raylets += st[0] == RAYLET_COMM
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    tree, todo = [], [raylet]
    while todo and len(tree) < NODE_PROCS_SCAN_MAX:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    runnable, threads = 0, 0
    for pid in tree:
        try:
            tids = os.listdir(f"{PROC}/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            threads += 1
            if threads > NODE_THREADS_SCAN_MAX:
                return float(runnable), raylets
            if skip_tid is not None and tid == str(skip_tid):
                continue
            st = _stat(f"{PROC}/{pid}/task/{tid}/stat")
            runnable += st is not None and st[1] == "R"
    return float(runnable), raylets


class NodeLoad:
    """The node's load for the agent's heartbeat: ``read(now)`` once per heartbeat."""

    def __init__(self, avg_s: float = NODE_LOAD_AVG_S):
        if not (isinstance(avg_s, (int, float)) and math.isfinite(avg_s) and avg_s > 0):
            raise ValueError(f"avg_s={avg_s!r}: expected a positive number of seconds")
        self.avg_s = float(avg_s)
        self.raylet = find_raylet()
        self.avg: float | None = None
        self.at: float | None = None
        self.shared = False  # another raylet on this machine at the last sample
        self.source = "machine"

    def read(self, now: float) -> float:
        try:
            machine = os.getloadavg()[0]
        except OSError:
            machine = 0.0
        if self.raylet is None:
            self.source = "machine"
            return machine
        runnable, raylets = sample(self.raylet, skip_tid=threading.get_native_id())
        if self.avg is None or self.at is None:
            self.avg = runnable
        else:
            w = math.exp(-max(0.0, now - self.at) / self.avg_s)
            self.avg = self.avg * w + runnable * (1.0 - w)
        self.at = now
        self.shared = raylets > 1
        self.source = "node" if self.shared else "machine"
        return self.avg if self.shared else machine

