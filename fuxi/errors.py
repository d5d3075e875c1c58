"""One exception tree for the Fuxi scheduler (see STYLE.md rule 7).

    FuxiError
    ├── BadInput              -- the caller gave something wrong; CLI exit code 2
    │   ├── SpecError         -- a job spec failed validation (names file, field, given, expected)
    │   └── LimitExceeded     -- a named limit (``*_max``, ``*_s``) was exceeded
    ├── ClusterError          -- the cluster could not be reached, started or stopped
    │   └── NoCluster         -- no running cluster was found where one was required
    ├── JobNotFound           -- an unknown job id
    └── JobFailed             -- a job ended failed or cancelled (carries the report)

Ray exceptions are translated in one place (``fuxi.client._translate``).
"""

from __future__ import annotations


class FuxiError(Exception):
    """Base of every error Fuxi raises on purpose."""


class BadInput(FuxiError):
    """The caller gave something wrong. The message says what was given and what was expected."""


class SpecError(BadInput):
    """A job (or service) spec is invalid. ``problems`` lists every problem found, one line
    each."""

    def __init__(self, problems: list[str], source: str | None = None, kind: str = "job"):
        self.problems = list(problems)
        self.source = source
        head = f"invalid {kind} spec {source}" if source else f"invalid {kind} spec"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class LimitExceeded(BadInput):
    """A named limit was exceeded; the message names the limit, its value and what was asked."""


class ClusterError(FuxiError):
    """The cluster could not be reached, started or stopped."""


class NoCluster(ClusterError):
    """No running Fuxi cluster was found."""


class JobNotFound(FuxiError):
    """No job has this id."""


class JobFailed(FuxiError):
    """A job ended failed or cancelled."""

    def __init__(self, message: str, status: dict | None = None):
        self.status = status or {}
        super().__init__(message)
