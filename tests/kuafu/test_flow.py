"""Flow-control windows: never over their limits, room returned exactly, waiters admitted in
arrival order (rule-based model test)."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kuafu.errors import Overloaded
from kuafu.core.flow import Waiters, Window


class WindowModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.w = Window(requests_max=4, bytes_max=100)
        self.waiters = Waiters(self.w, waiters_max=50)
        self.in_flight: list[int] = []  # sizes admitted, not yet released
        self.queued: list[tuple[object, int]] = []
        self.admitted_order: list[object] = []
        self.arrival_order: list[object] = []

    @rule(n=st.integers(0, 150))
    def arrive(self, n):
        token = object()
        self.arrival_order.append(token)
        if self.waiters.arrive(token, n):
            self.in_flight.append(n)
            self.admitted_order.append(token)
        else:
            self.queued.append((token, n))

    def _admitted(self, tokens):
        for token in tokens:
            t, size = self.queued.pop(0)
            assert t is token  # FIFO: the head of the queue is admitted first
            self.in_flight.append(size)
            self.admitted_order.append(token)

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 1000))
    def finish(self, i):
        n = self.in_flight.pop(i % len(self.in_flight))
        self._admitted(self.waiters.release(n))

    @precondition(lambda self: self.queued)
    @rule(i=st.integers(0, 1000))
    def give_up(self, i):
        token, _ = self.queued.pop(i % len(self.queued))
        was_queued, admitted = self.waiters.leave(token)
        assert was_queued
        self.arrival_order.remove(token)
        self._admitted(admitted)

    @invariant()
    def within_limits(self):
        assert self.w.requests == len(self.in_flight) <= 4
        assert self.w.bytes == sum(self.in_flight)
        # Over the byte limit only with one oversized request alone.
        assert self.w.bytes <= 100 or (len(self.in_flight) == 1 and self.in_flight[0] > 100)

    @invariant()
    def arrival_order_kept(self):
        admitted = [t for t in self.arrival_order if any(t is a for a in self.admitted_order)]
        assert all(a is b for a, b in zip(admitted, self.admitted_order))

    @invariant()
    def no_one_waits_needlessly(self):
        if self.queued:
            assert not self.w.fits(self.queued[0][1])


TestWindow = WindowModel.TestCase


def test_overloaded_says_what_is_in_flight():
    w = Window(requests_max=1, bytes_max=10)
    w.acquire_or_raise(5)
    with pytest.raises(Overloaded, match="1/1 requests"):
        w.acquire_or_raise(1)
    w.release(5)
    w.acquire_or_raise(1)
    with pytest.raises(ValueError, match="not acquired"):
        w.release(7)


def test_queue_of_waiters_is_bounded():
    w = Window(requests_max=1, bytes_max=10)
    q = Waiters(w, waiters_max=2)
    assert q.arrive("a", 1)
    assert not q.arrive("b", 1) and not q.arrive("c", 1)
    with pytest.raises(Overloaded, match="WAITERS_MAX=2"):
        q.arrive("d", 1)
