"""base.actors on real Ray: what a caller gets back for an answer, an error of ours, a slow
actor, a dead actor and a bad deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from base import actors
from base.errors import BadInput, OutcomeUnknown, Unavailable

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class Probe:
    def echo(self, x):
        return x

    def refuse(self):
        raise BadInput("x=-1: expected x >= 0")

    def slow(self, s):
        time.sleep(s)
        return "late"


@pytest.fixture(scope="module")
def probe(ray_cluster):
    # The session's shared cluster (conftest): a module of its own ray.init would fail
    # whenever an earlier module had started that cluster.
    p = Probe.remote()
    try:
        yield p
    finally:
        ray.kill(p)


def test_answers_errors_of_ours_and_timeouts(probe):
    assert actors.call(probe.echo, 7, timeout_s=30) == 7
    with pytest.raises(BadInput, match="expected x >= 0"):
        actors.call(probe.refuse, timeout_s=30)
    with pytest.raises(OutcomeUnknown, match="slow: no answer within 0.2 s"):
        actors.call(probe.slow, 2, timeout_s=0.2)
    assert asyncio.run(actors.acall(probe.echo, "a", timeout_s=30)) == "a"
    with pytest.raises(OutcomeUnknown):
        asyncio.run(actors.acall(probe.slow, 2, timeout_s=0.2))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), 1e9, "5"])
def test_a_deadline_must_be_a_bounded_number_of_seconds(probe, bad):
    with pytest.raises(ValueError, match="timeout_s"):
        actors.call(probe.echo, 1, timeout_s=bad)


def test_a_dead_actor_is_unavailable(probe):
    p = Probe.remote()
    assert actors.call(p.echo, 1, timeout_s=30) == 1
    ray.kill(p)  # asynchronous: a call just after may still be answered
    deadline = time.monotonic() + 30
    while True:
        try:
            actors.call(p.echo, 1, timeout_s=30)
        except Unavailable as e:
            assert not isinstance(e, OutcomeUnknown), e
            break
        assert time.monotonic() < deadline, "the killed actor still answers after 30 s"
        time.sleep(0.05)
    with pytest.raises(Unavailable) as e:  # and stays so
        actors.call(p.echo, 1, timeout_s=30)
    assert not isinstance(e.value, OutcomeUnknown)
