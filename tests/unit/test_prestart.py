"""Warm workers for the embedded default (base.prestart) and the autoscaler monitor it no
longer starts (base.actors.no_autoscaler_monitor), without starting Ray."""

import math

import pytest

from base.actors import no_autoscaler_monitor
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


def test_the_monitor_hook_skips_the_start_and_puts_it_back():
    from ray._private.node import Node

    original = Node.__dict__["start_monitor"]
    started = []
    with no_autoscaler_monitor():
        assert Node.__dict__["start_monitor"] is not original
        assert Node.start_monitor(started) is None  # does nothing (would start a process)
    assert Node.__dict__["start_monitor"] is original
    with pytest.raises(RuntimeError):
        with no_autoscaler_monitor():
            raise RuntimeError("ray.init failed")
    assert Node.__dict__["start_monitor"] is original  # restored after a failed start too
