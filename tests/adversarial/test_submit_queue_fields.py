"""A submit's plan is built by the caller: the queue and priority FuxiMaster's admission acts
on are checked there, whatever a hostile client puts in them (garbage types, huge strings),
with a clear BadInput and nothing reserved or queued."""

from __future__ import annotations

import pytest

from fuxi.core.plan import build_plan
from fuxi.core.spec import spec_from_dict
from fuxi.errors import BadInput
from fuxi.shells.admission import Admissions


def admissions() -> Admissions:
    return Admissions(astore=None, stored=None, running=lambda: (), start=lambda *a: None,
                      tasks=set())


@pytest.mark.parametrize("queue", [["default"], {"a": 1}, None, 7, "", "x" * 10**6, "../etc",
                                   "default\x00", "DEFAULT"])
def test_garbage_queues_are_refused_with_the_expected_form(queue):
    with pytest.raises(BadInput, match="expected a queue name matching"):
        admissions().check_queue(queue, "c")


@pytest.mark.parametrize("priority", [-1, 101, 10**30, 1.5, "50", True, None])
def test_garbage_priorities_reserve_nothing(priority):
    import dataclasses

    a = admissions()
    plan = dataclasses.replace(build_plan(spec_from_dict(
        {"name": "j", "tasks": {"t": {"fn": "bench.fns:noop", "instances": 1}}})), priority=priority)
    with pytest.raises(BadInput, match="priority: got"):
        a.reserve("j-1", "default", plan, None, None, 1, 0.0)
    assert len(a.queue) == 0 and not a.job_queues and a.running_in("default") == 0
