"""Idempotent submits (``fuxi submit --request-id``): the same request id with the same spec
is a retry and gets the job the first try made; the same id with a different spec is refused.

Pure: FuxiMaster keeps the table (request id -> (job id, digest of the spec)); this decides."""

from __future__ import annotations

import hashlib
import json

from fuxi.errors import BadInput, RequestConflict

REQUEST_ID_CHARS_MAX = 128  # a request id's length; letters, digits, '-', '_', '.', ':'
REQUEST_ID_EXTRA_CHARS = frozenset("-_.:")


def check_request_id(request_id) -> None:
    """Refuse what no client would send: not a str, empty, too long, or other characters."""
    if (not isinstance(request_id, str) or not request_id
            or len(request_id) > REQUEST_ID_CHARS_MAX
            or not all(c.isascii() and (c.isalnum() or c in REQUEST_ID_EXTRA_CHARS)
                       for c in request_id)):
        shown = request_id[:40] + "..." if isinstance(request_id, str) and len(request_id) > 40 \
            else request_id
        raise BadInput(f"request id {shown!r}: expected 1 to {REQUEST_ID_CHARS_MAX} letters, "
                       f"digits, '-', '_', '.' or ':'")


def plan_digest(plan) -> str:
    """What makes two submits the same request: the validated spec and --overwrite."""
    doc = json.dumps({"spec": plan.spec, "overwrite": plan.overwrite}, sort_keys=True,
                     default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def same_request(requests: dict, request_id: str, plan) -> str:
    """The job of an earlier submit with this request id; ``RequestConflict`` when that one
    was for a different spec."""
    job_id, digest = requests[request_id]
    if digest != plan_digest(plan):
        raise RequestConflict(f"request id {request_id!r} was used for job {job_id} with a "
                              f"different spec; a retry must send the same spec (or use a "
                              f"new request id)")
    return job_id


def remember(requests: dict, request_id: str, plan, job_id: str, kept_max: int) -> None:
    """Record a submit; the oldest beyond ``kept_max`` are forgotten."""
    requests[request_id] = (job_id, plan_digest(plan))
    while len(requests) > kept_max:
        requests.pop(next(iter(requests)))
