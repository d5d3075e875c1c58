"""FuxiAgent heartbeats and FuxiMaster's view of them (issue 16 part 5): pure, time is an
argument.

One FuxiAgent runs on every node. Every ``AGENT_HEARTBEAT_S`` it sends FuxiMaster a
heartbeat: the node's health (load, memory available, disk free in Ray's temp directory), the
Fuxi workers running there (pid -> worker) and the workers that exited since the last one,
each with a cause (:class:`ExitCause`). This module checks a heartbeat (types, sizes, bounds:
:func:`parse_heartbeat`), classifies exits (:func:`classify_exit`, :func:`cause_of_error`)
and keeps the master-side view (:class:`AgentView`):

    STARTING --heartbeat, healthy--> HEALTHY <--AGENT_HEALTHY_HEARTBEATS_MIN good ones in a row--+
        |                               |                                                        |
        |  nothing heard for            |  health below a threshold                              |
        |  AGENT_START_GRACE_S          v                                                        |
        +--------------------------> MISSING / UNHEALTHY --------------------------------------+
                                     (AGENT_MISSED_HEARTBEATS_MAX heartbeats missed)

A node MISSING or UNHEALTHY is what the shell feeds ``ClusterBlacklist.unhealthy`` (excluded
for every job, capped, with expiry); one that comes back is given back
(``ClusterBlacklist.recovered``). Freshness is judged by the master's clock only (the agent's
``at`` is shown, never trusted), so clock skew between nodes cannot hide a silent agent.

Who may speak for a node: FuxiMaster gives each agent it deploys a secret token; a heartbeat
for a node must carry that node's token, so a caller who is not that node's agent (another
node's agent, a stranger holding the actor handle) can neither report for it nor blacklist it.
"""

from __future__ import annotations

import enum
import hmac
import math
from dataclasses import dataclass, field
from typing import Any

from fuxi.errors import BadInput

AGENT_HEARTBEAT_S = 1.0  # an agent heartbeats this often
AGENT_MISSED_HEARTBEATS_MAX = 5  # heartbeats missed in a row before its node counts as missing
AGENT_START_GRACE_S = 60.0  # a deployed agent not heard from for this long counts as missing
AGENT_HEALTHY_HEARTBEATS_MIN = 3  # good heartbeats in a row before a bad node comes back
MEM_AVAILABLE_BYTES_MIN = 256 * 1024**2  # less available memory than this: memory exhausted
DISK_FREE_BYTES_MIN = 512 * 1024**2  # less free disk in Ray's temp directory: disk full
AGENTS_MAX = 100_000  # agents one FuxiMaster tracks (one per node)
HEARTBEAT_WORKERS_MAX = 4096  # workers one heartbeat may list
HEARTBEAT_EXITS_MAX = 256  # exits one heartbeat may report
EXITS_KEPT_PER_NODE_MAX = 50  # recent exits kept per node for `fuxi node list`
TEXT_CHARS_MAX = 200  # characters of a name, a reason or an exit's detail kept
NODE_ID_CHARS_MAX = 128  # characters of a node id
TOKEN_CHARS_MAX = 128  # characters of an agent's token
HEARTBEAT_SEQ_MAX = 2**63 - 1  # a heartbeat's sequence number, at most
REPORTED_BYTES_MAX = 2**62  # a byte count one heartbeat may claim
LOAD_MAX = 1e6  # a load average one heartbeat may claim
PID_MAX = 2**31 - 1  # a process id, at most
EXIT_CODE_MAX = 255  # an exit status, at most (signals are reported apart)
SIGNAL_MAX = 128  # a signal number, at most

SIGKILL = 9  # Linux's signal number; the OOM killer sends it


class ExitCause(str, enum.Enum):
    EXITED = "exited"  # ended on its own with status 0
    CRASH = "crash"  # a nonzero exit status or a signal nobody of ours sent
    OOM = "oom"  # killed for memory: Ray's OOM killer, or SIGKILL under memory pressure
    PREEMPTED = "preempted"  # stopped by us (FuxiMaster took its slot back, the job shrank)
    TIMED_OUT = "timed_out"  # killed by us at a deadline (it did not answer in time)


class AgentState(str, enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    MISSING = "missing"


BAD_STATES = frozenset({AgentState.UNHEALTHY, AgentState.MISSING})

# Ray's words for a process it killed for memory (ray.exceptions.OutOfMemoryError and the
# memory monitor's messages), lower case.
OOM_MARKERS = ("outofmemoryerror", "out of memory", "running low on memory", "oom killer",
               "killed due to memory", "memory pressure")
TIMEOUT_MARKERS = ("timeouterror", "did not answer within", "not started after", "did not stop")


def classify_exit(exit_code: int | None = None, signal: int | None = None, *,
                  stopped_by_us: bool = False, deadline: bool = False, message: str = "",
                  mem_available_bytes: int | None = None) -> ExitCause:
    """Why a worker process ended. ``deadline``: we killed it because a deadline passed;
    ``stopped_by_us``: we stopped it on purpose (preemption, shrink); ``message``: what Ray
    said; ``mem_available_bytes``: the node's available memory when it ended (a SIGKILL under
    memory pressure is the kernel's OOM killer)."""
    text = (message or "").lower()
    if deadline:
        return ExitCause.TIMED_OUT
    if stopped_by_us:
        return ExitCause.PREEMPTED
    if any(m in text for m in OOM_MARKERS):
        return ExitCause.OOM
    if signal == SIGKILL and mem_available_bytes is not None \
            and mem_available_bytes < MEM_AVAILABLE_BYTES_MIN:
        return ExitCause.OOM
    if exit_code == 0 and not signal:
        return ExitCause.EXITED
    return ExitCause.CRASH


def cause_of_error(error_type: str, message: str) -> ExitCause:
    """The cause of a worker's death as its JobMaster saw it (the exception it got)."""
    text = f"{error_type}: {message}".lower()
    if any(m in text for m in OOM_MARKERS):
        return ExitCause.OOM
    if any(m in text for m in TIMEOUT_MARKERS):
        return ExitCause.TIMED_OUT
    if "ray.kill" in text or "intended" in text:
        return ExitCause.PREEMPTED
    return ExitCause.CRASH


def death_text(error: BaseException) -> str:
    """A dead worker's error as its attempts' error and story show it, its cause first:
    ``"[oom] OutOfMemoryError: ..."``."""
    return f"[{cause_of_error(type(error).__name__, str(error)).value}] " \
           f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- heartbeats


@dataclass(frozen=True)
class Exit:
    worker: str
    pid: int
    cause: ExitCause
    exit_code: int | None
    signal: int | None
    at: float
    detail: str = ""

    def view(self) -> dict[str, Any]:
        return {"worker": self.worker, "pid": self.pid, "cause": self.cause.value,
                "exit_code": self.exit_code, "signal": self.signal, "at": self.at,
                "detail": self.detail}


@dataclass(frozen=True)
class Heartbeat:
    node: str
    boot: str  # one per start of the agent: seq starts afresh with it
    seq: int
    at: float  # the agent's clock (shown only)
    load: float
    mem_available_bytes: int
    disk_free_bytes: int
    workers: dict[int, str] = field(default_factory=dict)
    exits: tuple[Exit, ...] = ()

    def problems(self) -> list[str]:
        """Why this node is unhealthy, if it is (named thresholds)."""
        out = []
        if self.mem_available_bytes < MEM_AVAILABLE_BYTES_MIN:
            out.append(f"memory exhausted: {self.mem_available_bytes // 1024**2} MiB available "
                       f"< MEM_AVAILABLE_BYTES_MIN={MEM_AVAILABLE_BYTES_MIN // 1024**2} MiB")
        if self.disk_free_bytes < DISK_FREE_BYTES_MIN:
            out.append(f"disk full: {self.disk_free_bytes // 1024**2} MiB free "
                       f"< DISK_FREE_BYTES_MIN={DISK_FREE_BYTES_MIN // 1024**2} MiB")
        return out


def _text(what: str, v: Any, chars_max: int = TEXT_CHARS_MAX, empty_ok: bool = True) -> str:
    if not isinstance(v, str):
        raise BadInput(f"heartbeat {what}: got {type(v).__name__}, expected a string")
    if len(v) > chars_max or (not v and not empty_ok):
        raise BadInput(f"heartbeat {what}: {len(v)} characters, expected 1..{chars_max}")
    return v


def _int(what: str, v: Any, lo: int, hi: int, none_ok: bool = False) -> int | None:
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadInput(f"heartbeat {what}={v!r:.60}: expected an integer {lo}..{hi}")
    return v


def _num(what: str, v: Any, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0 <= v <= hi:
        raise BadInput(f"heartbeat {what}={v!r:.60}: expected a finite number 0..{hi:g}")
    return float(v)


def _dict(what: str, v: Any, keys: set[str], required: set[str]) -> dict:
    if not isinstance(v, dict):
        raise BadInput(f"heartbeat {what}: got {type(v).__name__}, expected a dict")
    extra = [k for k in v if k not in keys]
    if extra:
        raise BadInput(f"heartbeat {what}: unknown field {extra[0]!r:.60}, expected only "
                       f"{sorted(keys)}")
    missing = sorted(required - set(v))
    if missing:
        raise BadInput(f"heartbeat {what}: missing field {missing[0]!r}")
    return v


HEARTBEAT_FIELDS = {"node", "boot", "seq", "at", "load", "mem_available_bytes",
                    "disk_free_bytes", "workers", "exits"}
EXIT_FIELDS = {"worker", "pid", "cause", "exit_code", "signal", "at", "detail"}


def parse_heartbeat(doc: Any) -> Heartbeat:
    """A heartbeat document checked field by field; BadInput names what was wrong."""
    d = _dict("", doc, HEARTBEAT_FIELDS, HEARTBEAT_FIELDS - {"exits", "workers"})
    workers = d.get("workers") or {}
    if not isinstance(workers, dict):
        raise BadInput(f"heartbeat workers: got {type(workers).__name__}, expected a dict "
                       f"pid -> worker")
    if len(workers) > HEARTBEAT_WORKERS_MAX:
        raise BadInput(f"heartbeat workers: {len(workers)}, expected at most "
                       f"HEARTBEAT_WORKERS_MAX={HEARTBEAT_WORKERS_MAX}")
    exits = d.get("exits") or []
    if not isinstance(exits, (list, tuple)):
        raise BadInput(f"heartbeat exits: got {type(exits).__name__}, expected a list")
    if len(exits) > HEARTBEAT_EXITS_MAX:
        raise BadInput(f"heartbeat exits: {len(exits)}, expected at most "
                       f"HEARTBEAT_EXITS_MAX={HEARTBEAT_EXITS_MAX}")
    parsed = []
    for i, e in enumerate(exits):
        e = _dict(f"exits[{i}]", e, EXIT_FIELDS, {"worker", "pid", "cause", "at"})
        try:
            cause = ExitCause(e["cause"])
        except (ValueError, TypeError):
            raise BadInput(f"heartbeat exits[{i}].cause={e['cause']!r:.60}: expected one of "
                           f"{[c.value for c in ExitCause]}") from None
        parsed.append(Exit(
            worker=_text(f"exits[{i}].worker", e["worker"]),
            pid=_int(f"exits[{i}].pid", e["pid"], 0, PID_MAX), cause=cause,
            exit_code=_int(f"exits[{i}].exit_code", e.get("exit_code"), 0, EXIT_CODE_MAX, True),
            signal=_int(f"exits[{i}].signal", e.get("signal"), 1, SIGNAL_MAX, True),
            at=_num(f"exits[{i}].at", e["at"], 1e12),
            detail=_text(f"exits[{i}].detail", e.get("detail", ""), 10**6)[:TEXT_CHARS_MAX]))
    return Heartbeat(
        node=_text("node", d["node"], NODE_ID_CHARS_MAX, empty_ok=False),
        boot=_text("boot", d["boot"], TEXT_CHARS_MAX, empty_ok=False),
        seq=_int("seq", d["seq"], 0, HEARTBEAT_SEQ_MAX),
        at=_num("at", d["at"], 1e12),
        load=_num("load", d["load"], LOAD_MAX),
        mem_available_bytes=_int("mem_available_bytes", d["mem_available_bytes"], 0,
                                 REPORTED_BYTES_MAX),
        disk_free_bytes=_int("disk_free_bytes", d["disk_free_bytes"], 0, REPORTED_BYTES_MAX),
        workers={_int("workers key (a pid)", p, 0, PID_MAX): _text(f"workers[{p}]", w)
                 for p, w in workers.items()},
        exits=tuple(parsed))


# --------------------------------------------------------------------------- the master's view


@dataclass
class NodeAgent:
    node: str
    token: str
    deployed_at: float
    state: AgentState = AgentState.STARTING
    reason: str = ""
    last: Heartbeat | None = None
    heard_at: float | None = None
    good_in_row: int = 0
    heartbeats: int = 0
    exits: list[Exit] = field(default_factory=list)  # the most recent, oldest first


@dataclass(frozen=True)
class Verdicts:
    """What the shell does after a tick: exclude ``bad`` (node -> reason) at cluster level,
    give ``recovered`` back."""
    bad: dict[str, str]
    recovered: list[str]


class AgentView:
    """FuxiMaster's view of its agents: one per node it deployed one on."""

    def __init__(self, heartbeat_s: float = AGENT_HEARTBEAT_S,
                 missed_max: int = AGENT_MISSED_HEARTBEATS_MAX,
                 start_grace_s: float = AGENT_START_GRACE_S,
                 healthy_min: int = AGENT_HEALTHY_HEARTBEATS_MIN):
        for name, v in (("heartbeat_s", heartbeat_s), ("missed_max", missed_max),
                        ("start_grace_s", start_grace_s), ("healthy_min", healthy_min)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise ValueError(f"{name}={v!r}: expected a finite number > 0")
        self.heartbeat_s, self.missed_max = float(heartbeat_s), int(missed_max)
        self.start_grace_s, self.healthy_min = float(start_grace_s), int(healthy_min)
        self.agents: dict[str, NodeAgent] = {}
        self._recovered: list[str] = []  # came back since the last tick
        self._ticked_at: float | None = None
        self.refused = 0  # heartbeats refused (bad token, garbage, unknown node)

    @property
    def missing_after_s(self) -> float:
        return self.heartbeat_s * self.missed_max

    def deployed(self, node: str, token: str, now: float) -> None:
        """An agent was started (or adopted) on ``node`` with ``token``; a new token replaces
        the old one (the old agent can no longer speak for the node)."""
        if not isinstance(node, str) or not 0 < len(node) <= NODE_ID_CHARS_MAX:
            raise BadInput(f"node {node!r:.60}: expected a node id of 1..{NODE_ID_CHARS_MAX} "
                           f"characters")
        if not isinstance(token, str) or not 0 < len(token) <= TOKEN_CHARS_MAX:
            raise BadInput(f"agent token: expected 1..{TOKEN_CHARS_MAX} characters")
        a = self.agents.get(node)
        if a is None and len(self.agents) >= AGENTS_MAX:
            raise BadInput(f"{len(self.agents)} agents tracked, AGENTS_MAX={AGENTS_MAX}")
        if a is None:
            self.agents[node] = NodeAgent(node, token, now)
        else:
            a.token, a.deployed_at = token, now

    def retired(self, node: str) -> bool:
        """The node left: forget its agent. True if there was one."""
        return self.agents.pop(node, None) is not None

    def token_of(self, node: str) -> str | None:
        a = self.agents.get(node)
        return None if a is None else a.token

    def heartbeat(self, node: Any, token: Any, doc: Any, now: float) -> bool:
        """One heartbeat from the agent of ``node``; True if taken, False if stale (an older
        seq of the same boot: reordered). BadInput for garbage, for an unknown node, and for
        a token that is not that node's (nothing changes)."""
        a = self.agents.get(node) if isinstance(node, str) else None
        if a is None:
            self.refused += 1
            raise BadInput(f"heartbeat for node {node!r:.40}: no agent was deployed there by "
                           f"this FuxiMaster")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), a.token.encode()):
            self.refused += 1
            raise BadInput(f"heartbeat for node {node[:16]!r}: not signed with that node's "
                           f"agent token")
        try:
            hb = parse_heartbeat(doc)
        except BadInput:
            self.refused += 1
            raise
        if hb.node != node:
            self.refused += 1
            raise BadInput(f"heartbeat names node {hb.node[:16]!r}, but was sent for "
                           f"{node[:16]!r}")
        if a.last is not None and a.last.boot == hb.boot and hb.seq <= a.last.seq:
            return False
        a.last, a.heard_at, a.heartbeats = hb, now, a.heartbeats + 1
        if hb.exits:
            a.exits = (a.exits + list(hb.exits))[-EXITS_KEPT_PER_NODE_MAX:]
        problems = hb.problems()
        if problems:
            a.good_in_row = 0
            a.state, a.reason = AgentState.UNHEALTHY, "; ".join(problems)
            return True
        a.good_in_row += 1
        if a.state is AgentState.STARTING or (a.state in BAD_STATES
                                              and a.good_in_row >= self.healthy_min):
            if a.state in BAD_STATES:
                self._recovered.append(node)
            a.state, a.reason = AgentState.HEALTHY, ""
        return True

    def tick(self, now: float) -> Verdicts:
        """Mark agents missing whose heartbeats stopped; every bad node (to exclude, which is
        idempotent) and the nodes that came back since the last tick.

        A master that hears nobody blames nobody: no agent is judged missing when this view
        itself was not looked at for longer than the missing limit (FuxiMaster's loop stalled
        or its process was paused: the heartbeats queued meanwhile are not yet read), nor
        when every one of two or more agents is silent (more likely the master's side)."""
        stalled = self._ticked_at is not None and now - self._ticked_at > self.missing_after_s
        self._ticked_at = now
        heard = [a.heard_at for a in self.agents.values() if a.heard_at is not None]
        all_silent = len(self.agents) > 1 and bool(heard) \
            and now - max(heard) > self.missing_after_s
        for a in self.agents.values():
            if a.state is AgentState.MISSING or stalled or (all_silent and a.heard_at is not None):
                continue
            if a.heard_at is None:
                silent = now - a.deployed_at
                limit = self.start_grace_s
            else:
                silent = now - a.heard_at
                limit = self.missing_after_s
            if silent > limit:
                a.state, a.good_in_row = AgentState.MISSING, 0
                a.reason = (f"agent silent for {silent:.1f}s (more than {limit:g}s: "
                            f"{'AGENT_START_GRACE_S' if a.heard_at is None else 'AGENT_MISSED_HEARTBEATS_MAX heartbeats'})")
        recovered, self._recovered = self._recovered, []
        bad = {n: f"{a.state.value}: {a.reason}" for n, a in self.agents.items()
               if a.state in BAD_STATES}
        return Verdicts(bad, [n for n in dict.fromkeys(recovered) if n not in bad])

    def view(self, now: float) -> dict[str, dict[str, Any]]:
        """node -> the agent's state, last heartbeat age, health, workers, recent exits."""
        out = {}
        for n, a in self.agents.items():
            hb = a.last
            out[n] = {
                "state": a.state.value, "reason": a.reason,
                "heartbeat_age_s": None if a.heard_at is None else max(0.0, now - a.heard_at),
                "heartbeats": a.heartbeats,
                "load": hb.load if hb else None,
                "mem_available_bytes": hb.mem_available_bytes if hb else None,
                "disk_free_bytes": hb.disk_free_bytes if hb else None,
                "workers": len(hb.workers) if hb else 0,
                "exits": [e.view() for e in a.exits[-5:]],
            }
        return out
