"""Output commits and the final check of a job's outputs, on the JobMaster's commit thread
(one at a time and in order, never on its event loop: see ``fuxi.shells.jobmaster``)."""

from __future__ import annotations

import logging
import time

import ray

from fuxi.core import jobcore as jc
from fuxi.io.output import OutputLocation

logger = logging.getLogger("fuxi.shells.jobmaster")

COMMIT_TIMEOUT_S = 300.0  # one commit, retries included; past it the job cannot succeed
FINALIZE_TIMEOUT_S = 300.0  # the final check of every output, retries included
COMMIT_RETRY_S = 1.0  # pause between tries of a commit that hit an unavailable store


def _transient(e: BaseException) -> bool:
    """An error a later try may not meet: the store was unreachable, not the output wrong."""
    from pangu.errors import Unavailable as PanguUnavailable

    return isinstance(e, (PanguUnavailable, ray.exceptions.RayError, TimeoutError,
                          ConnectionError))


def commit(act: jc.Commit) -> str | None:
    """Make an attempt the instance's output (on the commit thread); an error text, or None.
    A commit that met an unavailable store is tried again until COMMIT_TIMEOUT_S (``commit``
    is safe to repeat: a part already in place is left as it is)."""
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while True:
        try:
            OutputLocation(act.output).commit(act.task, act.instance, act.attempt)
            return None
        except Exception as e:  # the job must not report success without this part
            if not _transient(e) or time.monotonic() + COMMIT_RETRY_S > deadline:
                return f"committing {act.task}[{act.instance}] attempt {act.attempt}: {e!r}"
            logger.warning("commit of %s[%s] hit %r; trying again", act.task, act.instance, e)
            time.sleep(COMMIT_RETRY_S)


def finalize(tasks: list) -> dict:
    """Check and seal each task's output (on the commit thread), retrying an unavailable
    store until FINALIZE_TIMEOUT_S."""
    deadline = time.monotonic() + FINALIZE_TIMEOUT_S
    out = {}
    for name, output, n in tasks:
        while True:
            try:
                out[name] = OutputLocation(output).finalize(n)
                break
            except Exception as e:
                if not _transient(e) or time.monotonic() + COMMIT_RETRY_S > deadline:
                    raise
                time.sleep(COMMIT_RETRY_S)
    return out
