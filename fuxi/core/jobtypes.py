"""The job core's vocabulary: its limits, the actions it returns (plain frozen data), the
result events it takes, and the records it keeps per instance, attempt, worker and task.

Split from ``fuxi.core.jobcore`` (the state machine) so the shapes that cross the core's
boundary — what the shell executes and feeds back — are listed in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fuxi.core.blacklist import JOB_BLACKLIST_EXPIRY_S
from fuxi.core.plan import Edge
from fuxi.core.speculation import RunningMedian
from fuxi.core.states import TERMINAL_ATTEMPT, AttemptState, InstanceState, JobState

A, I = AttemptState, InstanceState


@dataclass(frozen=True)
class JobLimits:
    """Bounds on the job master's own behaviour (not the user's task limits)."""

    batch_target_s: float = 0.05  # queue about this much work per worker
    prefetch_below_s: float = 1.0  # instances shorter than this get one extra queued attempt
    worker_queue_max: int = 256  # attempts queued on one worker at most
    # A worker is blacklisted after this many failed attempts *in a row*, or after at least
    # this many that are more than worker_failure_fraction_max of the attempts it finished:
    # random faults (another service's hiccup, an injected fault) spread over every worker
    # and must not cost a new worker each time a total of three is reached.
    worker_failures_max: int = 3
    worker_failure_fraction_max: float = 0.5
    node_failures_max: int = 6  # failed attempts on one node (from >= 2 workers) before blacklisting
    node_blacklist_s: float = JOB_BLACKLIST_EXPIRY_S  # a node blacklisted for the job stays out this long
    workers_max: int = 1024  # worker slots one job asks for at most
    worker_start_failures_max: int = 8  # failed worker starts before the job gives up
    idle_release_s: float = 2.0  # an idle worker with nothing left to do is released after this
    error_chars_max: int = 8000  # traceback text kept per failed attempt
    # An instance whose input has replicas on some nodes (Pangu) waits at most this long for a
    # worker there -- started or starting -- before it runs elsewhere (delay scheduling).
    locality_wait_s: float = 1.0


# ---------------------------------------------------------------- actions (plain data)


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a worker needs to run one attempt. Sent to the worker; picklable."""

    job_id: str
    task: str
    instance: int
    num_instances: int
    attempt: int
    fn: str
    params: dict[str, Any]
    input_paths: tuple[str, ...]
    upstream: tuple[Any, ...]  # opaque object references to this instance's upstream partitions
    downstream: tuple[Edge, ...]
    output: str | None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.task, self.instance, self.attempt)


@dataclass(frozen=True)
class StartWorker:
    worker_id: str
    node_id: str
    shape: dict[str, float]


@dataclass(frozen=True)
class StopWorker:
    worker_id: str
    reason: str


@dataclass(frozen=True)
class Push:
    worker_id: str
    attempts: tuple[AttemptSpec, ...]
    front: bool = False  # backups jump the worker's queue: a straggler is on the critical path


@dataclass(frozen=True)
class Commit:
    task: str
    instance: int
    attempt: int
    output: str


@dataclass(frozen=True)
class Checkpoint:
    """An instance succeeded: make its outputs durable and record it (``fuxi.core.checkpoint``),
    so a JobMaster that replaces this one need not run it again. ``outputs``: (consumer,
    partition) -> opaque reference, as in ``AttemptResult``; ``commit``: its final output is
    committed first (by the ``Commit`` just before this action)."""

    task: str
    instance: int
    attempt: int
    node_id: str
    outputs: dict[Any, Any]
    commit: bool


@dataclass(frozen=True)
class ReleaseSlot:
    shape_key: str
    node_id: str


@dataclass(frozen=True)
class JobDone:
    state: JobState
    report: str


# ---------------------------------------------------------------- events' payloads


@dataclass(frozen=True)
class AttemptResult:
    """A finished attempt as reported by a worker."""

    key: tuple[str, int, int]
    ok: bool
    duration_s: float
    error: str = ""
    rows: int = 0
    outputs: dict[Any, Any] = field(default_factory=dict)  # (consumer, partition) -> object ref
    logs: tuple[str, ...] = ()
    kind: str = "error"  # for failures: "error" (raised) | "lost_output"


# ---------------------------------------------------------------- internal records


@dataclass
class Attempt:
    key: tuple[str, int, int]
    worker_id: str
    node_id: str
    backup: bool
    state: AttemptState = A.QUEUED
    queued_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str = ""
    why: str = ""  # the reason of its last move (for a killed or lost one: why it ended)


@dataclass
class Instance:
    task: str
    index: int
    state: InstanceState = I.WAITING
    attempts: list[Attempt] = field(default_factory=list)
    failures: int = 0
    not_before: float = 0.0
    winner: Attempt | None = None
    outputs: dict[Any, Any] = field(default_factory=dict)
    bad_workers: set[str] = field(default_factory=set)
    bad_nodes: set[str] = field(default_factory=set)
    last_error: str = ""
    ready_at: float = 0.0  # when it first became ready (the locality wait counts from here)

    @property
    def key(self) -> tuple[str, int]:
        return (self.task, self.index)

    def live(self) -> list[Attempt]:
        return [a for a in self.attempts if a.state not in TERMINAL_ATTEMPT]


@dataclass
class Worker:
    worker_id: str
    node_id: str
    shape_key: str
    shape: dict[str, float]
    started: bool = False
    dead: bool = False
    queue: list[tuple[str, int, int]] = field(default_factory=list)  # attempts pushed, not finished
    failures: int = 0
    failure_streak: int = 0  # failed attempts since its last success
    succeeded: int = 0
    idle_since: float | None = None
    draining: bool = False  # over the fair share: gets no new work, released when empty


@dataclass
class TaskStats:
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    backups_launched: int = 0
    backups_won: int = 0
    data_local: int = 0  # instances whose winning attempt ran on a node holding their input
    recovered: int = 0  # instances taken as done from a dead JobMaster's checkpoint
    rerun: int = 0  # in a resumed job: instances this JobMaster ran (again) itself
    durations: list[float] = field(default_factory=list)
    running_median: RunningMedian = field(default_factory=RunningMedian)  # of durations

    def median_s(self) -> float | None:
        return self.running_median.median()

    def add_duration(self, d: float) -> None:
        self.durations.append(d)
        self.running_median.add(d)


# ---------------------------------------------------------------- the core


@dataclass(frozen=True)
class StopAttempt:
    """Tell a worker to stop an attempt: skip it if queued, interrupt it if running (it lost the
    race to another attempt, timed out, or its job ended)."""

    worker_id: str
    key: tuple[str, int, int]
