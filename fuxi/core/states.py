"""Named states and the only legal transitions between them.

Instance of a task (one unit of work, retried and backed up as *attempts*)::

                 upstream_done            dispatch
    WAITING ───────────────────▶ READY ─────────────▶ RUNNING ──attempt_succeeded──▶ SUCCEEDED
       │                          ▲  │                 │   │
       │                          │  └──────┐          │   └──retries_exhausted──▶ FAILED
       │                          └─retry───┼──────────┘
       │                                    │ (worker lost before the attempt started: requeue)
       └──────────── cancel (from WAITING, READY or RUNNING) ─────────────────────▶ CANCELLED
    WAITING ──recovered (a dead JobMaster's checkpoint, before anything runs)──▶ SUCCEEDED

Attempt (one try of an instance on one worker)::

    QUEUED ──started──▶ RUNNING ──succeeded──▶ SUCCEEDED
      │                   │ ╲───failed──────▶ FAILED      (raised, timed out, worker died)
      │                   ╰─────killed──────▶ KILLED      (lost the race to another attempt, cancel)
      ├──requeued──▶ LOST   (its worker went away before it started; no retry is charged)
      ├──succeeded / failed / killed  (a fast attempt may finish before we saw it start)

Job: [QUEUED ──admitted──▶] PENDING ──▶ RUNNING ──▶ SUCCEEDED | FAILED | CANCELLED (PENDING may
go straight to an end). QUEUED is FuxiMaster's alone: the job waits in its quota group's queue
(``fuxi.core.jobqueue``) for room and has no JobMaster yet; it ends only by being admitted or
cancelled. A JobCore always starts in PENDING.

Every change goes through ``move``; an unlisted change raises ``IllegalTransition`` because it
means the scheduler's bookkeeping is wrong, and continuing would risk duplicate output.
"""

from __future__ import annotations

import enum


class IllegalTransition(AssertionError):
    """A programmer error: the state machine was asked for a move it does not allow."""


class InstanceState(str, enum.Enum):
    WAITING = "waiting"
    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"


class JobState(str, enum.Enum):
    QUEUED = "queued"  # FuxiMaster's only: waiting in its quota group's queue, no JobMaster yet
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


I = InstanceState
A = AttemptState
J = JobState

INSTANCE_TRANSITIONS: dict[tuple[InstanceState, InstanceState], str] = {
    (I.WAITING, I.READY): "upstream_done",
    (I.READY, I.RUNNING): "dispatch",
    (I.RUNNING, I.READY): "retry",  # also "requeue" when the attempt never started
    (I.RUNNING, I.SUCCEEDED): "attempt_succeeded",
    (I.WAITING, I.SUCCEEDED): "recovered",  # from a dead JobMaster's checkpoint, on resume
    (I.RUNNING, I.FAILED): "retries_exhausted",
    (I.WAITING, I.CANCELLED): "cancel",
    (I.READY, I.CANCELLED): "cancel",
    (I.RUNNING, I.CANCELLED): "cancel",
}

ATTEMPT_TRANSITIONS: dict[tuple[AttemptState, AttemptState], str] = {
    (A.QUEUED, A.RUNNING): "started",
    (A.QUEUED, A.SUCCEEDED): "succeeded",
    (A.QUEUED, A.FAILED): "failed",
    (A.QUEUED, A.KILLED): "killed",
    (A.QUEUED, A.LOST): "requeued",
    (A.RUNNING, A.SUCCEEDED): "succeeded",
    (A.RUNNING, A.FAILED): "failed",
    (A.RUNNING, A.KILLED): "killed",
}

JOB_TRANSITIONS: dict[tuple[JobState, JobState], str] = {
    (J.QUEUED, J.PENDING): "admitted",
    (J.QUEUED, J.CANCELLED): "cancel",
    (J.PENDING, J.RUNNING): "first_worker",
    (J.PENDING, J.SUCCEEDED): "succeeded",
    (J.PENDING, J.FAILED): "failed",
    (J.PENDING, J.CANCELLED): "cancel",
    (J.RUNNING, J.SUCCEEDED): "succeeded",
    (J.RUNNING, J.FAILED): "failed",
    (J.RUNNING, J.CANCELLED): "cancel",
}

TERMINAL_INSTANCE = frozenset({I.SUCCEEDED, I.FAILED, I.CANCELLED})
TERMINAL_ATTEMPT = frozenset({A.SUCCEEDED, A.FAILED, A.KILLED, A.LOST})
TERMINAL_JOB = frozenset({J.SUCCEEDED, J.FAILED, J.CANCELLED})

_TABLES = {
    InstanceState: INSTANCE_TRANSITIONS,
    AttemptState: ATTEMPT_TRANSITIONS,
    JobState: JOB_TRANSITIONS,
}


def move(obj, to, why: str = "") -> str:
    """Move ``obj.state`` to ``to`` if the table allows it; return the transition's name."""
    frm = obj.state
    name = _TABLES[type(to)].get((frm, to))
    if name is None:
        raise IllegalTransition(
            f"{type(obj).__name__} {getattr(obj, 'key', '')}: {frm.value} -> {to.value} is not a "
            f"legal transition ({why or 'no reason given'})"
        )
    obj.state = to
    if to.__class__ is AttemptState:  # an attempt keeps why it last moved (``fuxi explain``)
        obj.why = why
    return name
