"""The CLI's calls to FuxiMaster go through the Ray boundary (``base.actors``); what the user
reads stays what it was (the exit code is 3, the platform unavailable, since issue 18): the boundary's own failures get the CLI's advice,
an error FuxiMaster raised passes unchanged."""

from __future__ import annotations

import pytest
import ray.exceptions as rex

from base import actors
from base.errors import EXIT_BAD_INPUT, EXIT_UNAVAILABLE, ClusterError, PlatformError, exit_code
from fuxi.client import explain
from fuxi.errors import JobNotFound, MasterGone, OutcomeUnknown


def _through_boundary(ray_error: BaseException) -> PlatformError:
    """What ``actors.call`` raises when Ray raised ``ray_error``."""
    try:
        try:
            raise ray_error
        except Exception as e:  # noqa: BLE001 - as base.actors.call does
            raise actors.translate(e, "status", 60.0) from None
    except PlatformError as out:
        return out


CASES = [
    # (what Ray raised, the class the user gets, words of the message, exit code)
    (rex.GetTimeoutError("t"), OutcomeUnknown,
     "status: FuxiMaster did not answer within 60s (MASTER_REPLY_TIMEOUT_S)", EXIT_UNAVAILABLE),
    # Died during the call: a ClusterError still, of its own kind (reads are asked again).
    (rex.ActorDiedError(), MasterGone,
     "status: FuxiMaster died while answering (ActorDiedError); Ray starts it again",
     EXIT_UNAVAILABLE),
    (rex.RaySystemError("s"), ClusterError, "status: FuxiMaster is gone (RaySystemError)",
     EXIT_UNAVAILABLE),
    (rex.RayTaskError("status", "tb", TypeError("bug")).as_instanceof_cause(), ClusterError,
     "status: RayTaskError", EXIT_UNAVAILABLE),
]


@pytest.mark.parametrize("ray_error, cls, words, code", CASES)
def test_boundary_failures_read_as_before(ray_error, cls, words, code):
    out = explain(_through_boundary(ray_error), "status")
    assert isinstance(out, cls)
    assert words in str(out)
    assert exit_code(out) == code


def test_an_error_the_master_raised_passes_unchanged():
    mine = JobNotFound("no job with id 'x'")
    wrapped = rex.RayTaskError("status", "tb", mine).as_instanceof_cause()
    out = explain(_through_boundary(wrapped), "status")
    assert out is mine
    assert exit_code(out) == EXIT_BAD_INPUT


def test_an_error_raised_outside_ray_passes_unchanged():
    e = ClusterError("no running cluster 'x'")
    assert explain(e, "status") is e


def test_master_gone_is_a_cluster_error():
    assert issubclass(MasterGone, ClusterError)
