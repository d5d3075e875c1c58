"""Multi-level node blacklists (issue 16 part 6): pure, time is an argument.

Two levels, both HARD exclusions with expiry (a blacklisted node gets no new slot of the
jobs it applies to until its entry expires; the ledger's re-check refuses grants on it too):

job level (:class:`JobBlacklist`, kept by the job's ``JobCore``)
    A node where this job's attempts failed ``failures_max`` times, from at least two of its
    workers (one bad worker is that worker's fault, not the node's), and fail there at a rate
    of at least ``NODE_FAILURE_RATE_MIN`` and ``NODE_FAILURE_RATE_RATIO_MIN`` times the job's
    rate on its other nodes (random faults hit every node alike), is excluded for this job
    for ``expiry_s`` (``JOB_BLACKLIST_EXPIRY_S`` by default). A straggler beaten by its backup
    on another node counts as a failure of its node (it slowed the job). When the entry
    expires the node comes back with its counts cleared; it comes back ``returns_max`` times
    (``JOB_BLACKLIST_RETURNS_MAX``, once): blacklisted again after that, it stays out for the
    rest of the job (``expires_at`` None).

cluster level (:class:`ClusterBlacklist`, kept by FuxiMaster)
    JobMasters report, in every sync, their job-level blacklist and their failures per node
    (totals since the job began). A node on which at least ``CLUSTER_FAILURE_JOBS_MIN``
    distinct jobs each had ``CLUSTER_FAILURES_PER_JOB_MIN`` failures (or blacklisted it)
    within ``CLUSTER_FAILURE_WINDOW_S`` -- or that the shell reports unhealthy (missed
    heartbeats, a failing health check) -- is excluded for every job for
    ``CLUSTER_BLACKLIST_EXPIRY_S``; its tallies start afresh when it comes back. One job
    counts once per node however much it reports, so no job alone can blacklist a node for
    the others.

Never the last nodes
    At most ``BLACKLIST_FRACTION_MAX`` of the nodes (rounded down, and always leaving one)
    are excluded for a job: the job level counts the nodes the job has been granted; the
    cluster level counts the alive nodes; and when a job's own entries plus the cluster's
    would exceed it, :meth:`ClusterBlacklist.for_job` keeps the oldest exclusions (cluster
    entries first) and *demotes* the rest to avoided -- used only when nothing else fits, the
    soft blacklist of before -- so a job can always run somewhere. A new entry that would
    exceed the cap is not made (``refused`` counts them).

Bounded: entries per blacklist <= ``BLACKLIST_ENTRIES_MAX``; failure tallies only for alive
nodes, at most ``JOBS_PER_NODE_TRACKED_MAX`` jobs per node, dropped after the window; a
report is checked (types, sizes) before it touches state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection

from fuxi.errors import BadInput

JOB_BLACKLIST_EXPIRY_S = 300.0  # a job-level entry lasts this long
JOB_BLACKLIST_RETURNS_MAX = 1  # times a node comes back to a job after its entry expired
CLUSTER_BLACKLIST_EXPIRY_S = 600.0  # a cluster-level entry lasts this long
CLUSTER_FAILURE_WINDOW_S = 600.0  # failures of distinct jobs must fall within this window
CLUSTER_FAILURE_JOBS_MIN = 3  # distinct jobs with failures on a node before the cluster excludes it
CLUSTER_FAILURES_PER_JOB_MIN = 2  # failures of one job on a node for it to count there
BLACKLIST_FRACTION_MAX = 0.5  # of the nodes, excluded for one job at most (always leaving one)
BLACKLIST_ENTRIES_MAX = 1024  # entries in one blacklist
JOBS_PER_NODE_TRACKED_MAX = 256  # jobs whose failures are tallied per node (oldest dropped)
NODE_REPORT_ENTRIES_MAX = 4096  # nodes named in one sync's blacklist or failure report
FAILURE_COUNT_MAX = 10**9  # a failure total one report may claim for a node
REASON_CHARS_MAX = 200  # characters of an entry's reason kept
# A node is blacklisted for a job only when its attempts fail (or straggle) far more often than
# the job's do elsewhere: random faults spread over every node, a broken node's do not.
NODE_FAILURE_RATE_MIN = 0.3  # failed or slow attempts per ended attempt on the node, at least
NODE_FAILURE_RATE_RATIO_MIN = 2.0  # times the job's rate on its other nodes, at least
JOB_NODES_KNOWN_MAX = 100_000  # nodes one job's blacklist remembers it was granted
SWEEP_PERIOD_S = 1.0  # the cluster blacklist's tallies are swept for age at most this often

JOB, CLUSTER = "job", "cluster"
UNHEALTHY_PREFIX = "unhealthy: "  # the reason of an entry the health input made


@dataclass(frozen=True)
class Entry:
    node: str
    level: str  # JOB or CLUSTER
    reason: str
    since: float
    expires_at: float | None  # None: for the rest of the job

    def view(self, now: float) -> dict[str, Any]:
        left = None if self.expires_at is None else max(0.0, self.expires_at - now)
        return {"node": self.node, "level": self.level, "reason": self.reason,
                "since": self.since, "expires_at": self.expires_at, "expires_in_s": left}


def cap(nodes: int) -> int:
    """Nodes that may be excluded out of ``nodes``: BLACKLIST_FRACTION_MAX of them, rounded
    down, never all (so one node, or none known, allows none)."""
    return max(0, min(nodes - 1, math.floor(BLACKLIST_FRACTION_MAX * nodes)))


def _check_limit(name: str, value: float, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={value!r}: expected a finite number > 0")


class JobBlacklist:
    """One job's blacklist: failures counted per node and worker, entries with expiry."""

    def __init__(self, failures_max: int, expiry_s: float = JOB_BLACKLIST_EXPIRY_S,
                 returns_max: int = JOB_BLACKLIST_RETURNS_MAX):
        _check_limit("failures_max", failures_max)
        _check_limit("expiry_s", expiry_s)
        self.failures_max = failures_max
        self.expiry_s = float(expiry_s)
        self.returns_max = returns_max
        self.entries: dict[str, Entry] = {}  # oldest first
        self.failures: dict[str, dict[str, int]] = {}  # node -> worker -> since it came back
        self.totals: dict[str, int] = {}  # node -> failures in the whole job (for FuxiMaster)
        self.ended: dict[str, int] = {}  # node -> attempts ended there (failed, slow or won)
        self._failed_all = self._ended_all = 0  # the sums of both, kept as they grow
        self.returns: dict[str, int] = {}  # node -> times its entry expired
        self.known: set[str] = set()  # nodes this job has been granted
        self.refused = 0  # entries not made: the cap would have been exceeded
        self.outside: frozenset[str] = frozenset()  # excluded by FuxiMaster (cluster level)
        self._nodes: frozenset[str] = frozenset()
        self._due = math.inf  # the earliest expiry: a tick before it costs nothing

    def saw(self, node: str) -> None:
        if len(self.known) < JOB_NODES_KNOWN_MAX:
            self.known.add(node)

    def nodes(self) -> frozenset[str]:
        """The nodes excluded now (as of the last :meth:`expire`): this job's entries and
        what FuxiMaster excludes for it (:meth:`set_outside`)."""
        return self._nodes

    def set_outside(self, nodes: Collection[str]) -> frozenset[str]:
        """FuxiMaster's exclusions for this job (cluster level), as its last sync said; the
        nodes newly excluded by them."""
        new = frozenset(nodes) - self._nodes
        self.outside = frozenset(nodes)
        self._nodes = frozenset(self.entries) | self.outside
        return new

    def ordered(self) -> list[str]:
        """The excluded nodes, oldest entry first (what the JobMaster reports)."""
        return list(self.entries)

    def succeeded(self, node: str) -> None:
        """An attempt won on ``node`` (the other side of its failure rate)."""
        if node in self.known:
            self.ended[node] = self.ended.get(node, 0) + 1
            self._ended_all += 1

    def charge(self, node: str, worker_id: str, now: float,
               others_usable: bool | Callable[[], bool], gone: Collection[str] = ()) -> bool:
        """Count one failure (or straggler) on ``node`` by ``worker_id``; True if that made
        ``node`` blacklisted. ``others_usable`` (or a function asked only when the rest
        holds): the job has live workers on another node that is not blacklisted (the caller
        knows its workers) -- without one, nothing is made."""
        per = self.failures.setdefault(node, {})
        per[worker_id] = per.get(worker_id, 0) + 1
        self.totals[node] = self.totals.get(node, 0) + 1
        self.ended[node] = self.ended.get(node, 0) + 1
        self._failed_all += 1
        self._ended_all += 1
        total = sum(per.values())
        if node in self.entries or total < self.failures_max or len(per) < 2 \
                or not self._stands_out(node):
            return False
        if not (others_usable() if callable(others_usable) else others_usable):
            return False
        return self.add(node, f"{total} failed or slow attempts of this job from {len(per)} "
                              f"workers", now, gone)

    def _stands_out(self, node: str) -> bool:
        """``node`` fails this job much more often than its other nodes do."""
        here = self.totals[node] / self.ended[node]
        others_failed = self._failed_all - self.totals[node]
        others_ended = self._ended_all - self.ended[node]
        elsewhere = others_failed / others_ended if others_ended else 0.0
        return here >= NODE_FAILURE_RATE_MIN and here >= NODE_FAILURE_RATE_RATIO_MIN * elsewhere

    def add(self, node: str, reason: str, now: float, gone: Collection[str] = ()) -> bool:
        """Blacklist ``node`` for this job unless the cap forbids it (then ``refused`` grows)."""
        if node in self.entries:
            return False
        usable = len(self.known - set(gone)) if gone else len(self.known)
        live_entries = sum(1 for n in self.entries if n not in gone)
        if live_entries + 1 > cap(usable) or len(self.entries) >= BLACKLIST_ENTRIES_MAX:
            self.refused += 1
            return False
        final = self.returns.get(node, 0) >= self.returns_max
        self.entries[node] = Entry(node, JOB, reason[:REASON_CHARS_MAX], now,
                                   None if final else now + self.expiry_s)
        self._due = min(self._due, math.inf if final else now + self.expiry_s)
        self._nodes = frozenset(self.entries) | self.outside
        return True

    def expire(self, now: float) -> list[str]:
        """Drop entries whose time is up; their nodes come back with clean counts."""
        if now < self._due:
            return []
        back = [n for n, e in self.entries.items() if e.expires_at is not None and e.expires_at <= now]
        for n in back:
            del self.entries[n]
            self.failures.pop(n, None)
            self.returns[n] = self.returns.get(n, 0) + 1
        self._due = min((e.expires_at for e in self.entries.values() if e.expires_at is not None),
                        default=math.inf)
        if back:
            self._nodes = frozenset(self.entries) | self.outside
        return back

    def view(self, now: float) -> list[dict[str, Any]]:
        return [e.view(now) for e in self.entries.values()]


# --------------------------------------------------------------------------- cluster level


def _check_nodes(what: str, value: Any) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise BadInput(f"{what}: got {type(value).__name__}, expected a list of node ids")
    if len(value) > NODE_REPORT_ENTRIES_MAX:
        raise BadInput(f"{what}: {len(value)} nodes, expected at most "
                       f"NODE_REPORT_ENTRIES_MAX={NODE_REPORT_ENTRIES_MAX}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise BadInput(f"{what}: {bad[0]!r} is not a node id, expected strings")
    return list(dict.fromkeys(value))


def _check_failures(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"node_failures: got {type(value).__name__}, expected a dict "
                       f"node id -> failures")
    if len(value) > NODE_REPORT_ENTRIES_MAX:
        raise BadInput(f"node_failures: {len(value)} nodes, expected at most "
                       f"NODE_REPORT_ENTRIES_MAX={NODE_REPORT_ENTRIES_MAX}")
    for k, v in value.items():
        if not isinstance(k, str):
            raise BadInput(f"node_failures: key {k!r} is not a node id, expected strings")
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= FAILURE_COUNT_MAX:
            raise BadInput(f"node_failures[{k!r}]={v!r}: expected an integer 0.."
                           f"{FAILURE_COUNT_MAX} (FAILURE_COUNT_MAX)")
    return value


@dataclass
class _Tally:
    total: int = 0  # the job's last reported total on the node
    times: tuple[float, ...] = ()  # when each failure within the window was seen
    blacklisted_at: float | None = None  # the job blacklisted the node itself


class ClusterBlacklist:
    """FuxiMaster's view: failures per node and job, cluster entries, and per job what to
    exclude and what only to avoid."""

    def __init__(self, expiry_s: float = CLUSTER_BLACKLIST_EXPIRY_S,
                 window_s: float = CLUSTER_FAILURE_WINDOW_S, jobs_min: int = CLUSTER_FAILURE_JOBS_MIN,
                 per_job_min: int = CLUSTER_FAILURES_PER_JOB_MIN):
        for name, v in (("expiry_s", expiry_s), ("window_s", window_s), ("jobs_min", jobs_min),
                        ("per_job_min", per_job_min)):
            _check_limit(name, v)
        self.expiry_s, self.window_s = float(expiry_s), float(window_s)
        self.jobs_min, self.per_job_min = jobs_min, per_job_min
        self.entries: dict[str, Entry] = {}  # oldest first
        self.tallies: dict[str, dict[str, _Tally]] = {}  # node -> job -> tally
        self.refused = 0
        self._swept_at = -math.inf

    # ------------------------------------------------------------ inputs

    def report(self, job_id: str, blacklisted: Any, failures: Any, alive: Collection[str],
               now: float) -> None:
        """A JobMaster's sync: its job-level blacklist and failure totals per node. Checked
        first (BadInput names what was wrong); nodes not alive are ignored."""
        nodes = _check_nodes("avoid_nodes", blacklisted)
        counts = _check_failures(failures)
        for node, total in counts.items():
            if node not in alive:
                continue
            t = self._tally(node, job_id)
            if total > t.total:
                new = min(total - t.total, self.per_job_min)  # only the last few matter
                t.times = (t.times + (now,) * new)[-self.per_job_min:]
            t.total = total
        for node in nodes:
            if node in alive:
                t = self._tally(node, job_id)
                if t.blacklisted_at is None:
                    t.blacklisted_at = now
        for node in set(counts) | set(nodes):
            if node in alive:
                self._judge(node, alive, now)

    def unhealthy(self, node: str, reason: str, alive: Collection[str], now: float) -> bool:
        """The shell's health input (missed heartbeats, a failing check): exclude ``node`` for
        every job (within the cap). True if an entry was made."""
        if not isinstance(node, str) or node not in alive:
            return False
        return self._add(node, f"{UNHEALTHY_PREFIX}{reason}", alive, now)

    def recovered(self, node: str) -> bool:
        """The health input again: ``node`` is healthy once more, so an entry ``unhealthy``
        made is dropped before its expiry (one made for failures across jobs stays). True if
        one was dropped."""
        e = self.entries.get(node) if isinstance(node, str) else None
        if e is None or not e.reason.startswith(UNHEALTHY_PREFIX):
            return False
        del self.entries[node]
        return True

    def expire(self, now: float, alive: Collection[str]) -> list[str]:
        """Drop entries whose time is up (their tallies start afresh) or whose node is gone;
        at most every SWEEP_PERIOD_S also tallies of gone nodes and failures older than the
        window."""
        back = [n for n, e in self.entries.items() if e.expires_at is not None and e.expires_at <= now]
        for n in back:
            del self.entries[n]
            self.tallies.pop(n, None)
        for n in [n for n in self.entries if n not in alive]:
            del self.entries[n]  # gone: nothing to exclude
        if now - self._swept_at < SWEEP_PERIOD_S:
            return back
        self._swept_at = now
        for node in list(self.tallies):
            if node not in alive:
                del self.tallies[node]
                continue
            jobs = self.tallies[node]
            for jid in list(jobs):
                t = jobs[jid]
                t.times = tuple(x for x in t.times if now - x <= self.window_s)
                if t.blacklisted_at is not None and now - t.blacklisted_at > self.window_s:
                    t.blacklisted_at = None
                if not t.times and t.blacklisted_at is None:
                    jobs.pop(jid)  # its last total stays forgotten: a late report starts over
            if not jobs:
                del self.tallies[node]
        return back

    # ------------------------------------------------------------ outputs

    def for_job(self, blacklisted: list[str], alive: Collection[str]) -> tuple[set[str], set[str]]:
        """(excluded, avoided) for one job's grants: cluster entries, then the job's own
        (``blacklisted``, oldest first), alive ones only; beyond the cap the rest are only
        avoided."""
        order = [n for n in self.entries if n in alive]
        order += [n for n in dict.fromkeys(blacklisted) if n in alive and n not in self.entries]
        k = cap(len(alive))
        return set(order[:k]), set(order[k:])

    def sync(self, job_id: str, blacklisted: Any, failures: Any, alive: Collection[str],
             now: float) -> tuple[set[str], set[str]]:
        """One JobMaster sync, all FuxiMaster calls: expire, take the report (BadInput on
        garbage), and return (excluded, avoided) for the job's grants."""
        self.expire(now, alive)
        self.report(job_id, blacklisted, failures, alive, now)
        return self.for_job(blacklisted, alive)

    def view(self, now: float) -> list[dict[str, Any]]:
        return [e.view(now) for e in self.entries.values()]

    def node_view(self, now: float) -> dict[str, dict[str, Any]]:
        """node -> its cluster entry, for the node list."""
        return {n: e.view(now) for n, e in self.entries.items()}

    # ------------------------------------------------------------ internals

    def _tally(self, node: str, job_id: str) -> _Tally:
        jobs = self.tallies.setdefault(node, {})
        t = jobs.get(job_id)
        if t is None:
            if len(jobs) >= JOBS_PER_NODE_TRACKED_MAX:
                jobs.pop(next(iter(jobs)))  # the oldest tracked job
            t = jobs[job_id] = _Tally()
        return t

    def _judge(self, node: str, alive: Collection[str], now: float) -> None:
        if node in self.entries:
            return
        jobs = [jid for jid, t in self.tallies.get(node, {}).items()
                if (t.blacklisted_at is not None and now - t.blacklisted_at <= self.window_s)
                or sum(1 for x in t.times if now - x <= self.window_s) >= self.per_job_min]
        if len(jobs) >= self.jobs_min:
            self._add(node, f"failures in {len(jobs)} jobs within {self.window_s:g}s", alive, now)

    def _add(self, node: str, reason: str, alive: Collection[str], now: float) -> bool:
        if node in self.entries:
            return False
        live = sum(1 for n in self.entries if n in alive)
        if live + 1 > cap(len(alive)) or len(self.entries) >= BLACKLIST_ENTRIES_MAX:
            self.refused += 1
            return False
        self.entries[node] = Entry(node, CLUSTER, reason[:REASON_CHARS_MAX], now, now + self.expiry_s)
        return True
