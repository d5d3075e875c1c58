"""The Fuxi scheduler's errors (see STYLE.md rule 7); the root derives from
``base.errors.PlatformError``, and each shared condition from its base class.

    FuxiError
    ├── BadInput              -- the caller gave something wrong; CLI exit code 2
    │   ├── SpecError         -- a job spec failed validation (names file, field, given, expected)
    │   └── LimitExceeded     -- a named limit (``*_max``, ``*_s``) was exceeded
    ├── ClusterError          -- the cluster could not be reached, started or stopped
    │   ├── NoCluster         -- no running cluster was found where one was required
    │   ├── OutcomeUnknown    -- FuxiMaster did not answer: the request may have taken effect
    │   ├── MasterGone        -- FuxiMaster died during the call (Ray restarts it)
    │   └── NotLeader         -- a standby FuxiMaster answered: ``leader`` names the leader
    ├── StaleTerm             -- a deposed FuxiMaster's write or command (an older term), refused
    ├── JobNotFound           -- an unknown job id
    ├── JobFailed             -- a job ended failed or cancelled (carries the status)
    ├── JobWaitTimeout        -- a wait ran out before the job ended (carries the status)
    └── RequestConflict       -- a submit's request id was used for a different spec

Ray exceptions are translated in one place (``base.actors.translate``); ``fuxi.client.explain``
adds what to do when FuxiMaster could not be reached.
"""

from __future__ import annotations

from base import errors as base_errors


class FuxiError(base_errors.PlatformError):
    """Base of every error Fuxi raises on purpose."""


class BadInput(FuxiError, base_errors.BadInput):
    """The caller gave something wrong. The message says what was given and what was expected."""


class SpecError(BadInput):
    """A job (or service) spec is invalid. ``problems`` lists every problem found, one line
    each."""

    def __init__(self, problems: list[str], source: str | None = None, kind: str = "job"):
        self.problems = list(problems)
        self.source = source
        head = f"invalid {kind} spec {source}" if source else f"invalid {kind} spec"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class LimitExceeded(BadInput, base_errors.LimitExceeded):
    """A named limit was exceeded; the message names the limit, its value and what was asked."""


ClusterError = base_errors.ClusterError  # cluster discovery lives in base.cluster
NoCluster = base_errors.NoCluster


class OutcomeUnknown(FuxiError, ClusterError, base_errors.OutcomeUnknown):
    """FuxiMaster did not answer in time: the request may or may not have taken effect
    (a submit is retried with the same request id, which makes it idempotent)."""


class MasterGone(FuxiError, ClusterError):
    """FuxiMaster's process died while the call was in flight. Ray starts it again and the
    new one adopts the running jobs; a read (status, wait, list) is simply asked again."""


class JobNotFound(FuxiError, base_errors.NotFound):
    """No job has this id."""


class JobFailed(FuxiError, base_errors.Failed):
    """A job ended failed or cancelled."""

    def __init__(self, message: str, status: dict | None = None):
        self.status = status or {}
        super().__init__(message)


class JobWaitTimeout(FuxiError, base_errors.WaitTimedOut):
    """A wait ran out before the job ended; the job goes on. ``status``: the last status."""


class TargetNotFound(FuxiError, base_errors.NotFound):
    """Fault injection (``fuxi debug kill``): no node, job, actor or process to kill matches
    what was asked, or the cluster has nothing of that kind to kill now."""


class NotLeader(FuxiError, ClusterError):
    """This FuxiMaster is a standby (``fuxi.shells.leadership``): ``leader`` is the actor name
    of the one that leads (None while an election is under way). Nothing was done: ask the
    leader."""

    def __init__(self, message: str, leader: str | None = None):
        super().__init__(message)
        self.leader = leader

    def __reduce__(self):
        return (type(self), (str(self), self.leader))


class StaleTerm(FuxiError, base_errors.Denied):
    """A write or command from a FuxiMaster whose leadership term is older than one already
    seen (it was deposed -- paused, partitioned -- without knowing it): refused, not applied."""


class RequestConflict(FuxiError, base_errors.Conflict):
    """A submit's request id was used already for a different job spec: refused (the same
    id with the same spec is a retry and gets the same job)."""
