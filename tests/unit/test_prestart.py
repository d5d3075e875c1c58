"""Warm workers for the embedded default (base.prestart) and the helper processes it no
longer starts (base.actors.lean_local_head), without starting Ray."""

import math

import pytest

from base.actors import LEAN_SKIPPED, lean_local_head
from base.prestart import (WARM_WORKER_KEEPALIVE_S, WARM_WORKERS_MAX, prestart_workers,
                           warm_worker_count)


@pytest.mark.parametrize("cpus, want", [(None, 0), (math.nan, 0), (0, 0), (0.5, 0), (-3, 0),
                                        (1, 1), (2, 2), (2.5, 2), (64, WARM_WORKERS_MAX),
                                        (math.inf, WARM_WORKERS_MAX)])
def test_one_warm_worker_per_cpu_within_the_bound(cpus, want):
    assert warm_worker_count(cpus) == want


@pytest.mark.parametrize("n", [-1, WARM_WORKERS_MAX + 1, True, 1.5, "2", None])
def test_garbage_counts_are_refused_naming_the_bound(n):
    with pytest.raises(ValueError, match="WARM_WORKERS_MAX"):
        prestart_workers(n)


@pytest.mark.parametrize("keep", [0, -5, WARM_WORKER_KEEPALIVE_S + 1, 2.0, False, "10"])
def test_garbage_keep_alive_is_refused_naming_the_bound(keep):
    with pytest.raises(ValueError, match="WARM_WORKER_KEEPALIVE_S"):
        prestart_workers(1, keep)


def test_zero_workers_asks_nothing():
    assert prestart_workers(0) is None  # no Ray here: asking would have failed with a reason


def test_without_a_running_ray_it_says_why_instead_of_raising():
    why = prestart_workers(1)
    assert "not initialized" in why  # said, not raised, and no Ray of its own was started


def test_the_lean_hook_skips_those_starts_and_puts_them_back():
    from ray._private.node import Node

    originals = {name: Node.__dict__[name] for name in LEAN_SKIPPED}
    assert set(originals) == {"start_monitor", "start_api_server", "start_log_monitor"}
    with lean_local_head():
        for name in LEAN_SKIPPED:
            assert Node.__dict__[name] is not originals[name]
            assert getattr(Node, name)(object()) is None  # does nothing (would start a process)
        assert Node.start_api_server(object(), include_dashboard=False,
                                     raise_on_failure=False) is None
        assert Node.__dict__["start_raylet"] is not None  # everything else starts as before
    assert {name: Node.__dict__[name] for name in LEAN_SKIPPED} == originals
    with pytest.raises(RuntimeError):
        with lean_local_head():
            raise RuntimeError("ray.init failed")
    assert {name: Node.__dict__[name] for name in LEAN_SKIPPED} == originals  # after a failure
