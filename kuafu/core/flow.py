"""Flow-control windows (pure: no I/O, no clock).

A ``Window`` bounds what is in flight on one connection (or queued for one service): at most
``requests_max`` requests and ``bytes_max`` bytes. ``try_acquire(n)`` admits a request of
``n`` bytes or refuses it; ``release(n)`` returns its room. A request bigger than the whole
byte window is admitted only when nothing else is in flight, so a large message can always
make progress (it then travels in pieces) but never shares the window's room with others.

The async shell puts waiting senders in a FIFO (``Waiters``), so a small request cannot
overtake a large one forever: room is granted in arrival order.
"""

from __future__ import annotations

from collections import deque

from kuafu.errors import Overloaded

REQUESTS_IN_FLIGHT_MAX = 256
BYTES_IN_FLIGHT_MAX = 64 * 1024 * 1024
WAITERS_MAX = 10_000  # senders queued for room on one window


class Window:
    def __init__(self, requests_max: int = REQUESTS_IN_FLIGHT_MAX,
                 bytes_max: int = BYTES_IN_FLIGHT_MAX):
        if requests_max < 1 or bytes_max < 1:
            raise ValueError(f"a window needs requests_max >= 1 and bytes_max >= 1; got "
                             f"{requests_max}, {bytes_max}")
        self.requests_max, self.bytes_max = requests_max, bytes_max
        self.requests = 0
        self.bytes = 0

    def fits(self, n: int) -> bool:
        if n < 0:
            raise ValueError(f"a request of {n} bytes; expected >= 0")
        if self.requests >= self.requests_max:
            return False
        if n > self.bytes_max:
            return self.requests == 0  # alone, so it can always progress
        return self.bytes + n <= self.bytes_max

    def try_acquire(self, n: int) -> bool:
        if not self.fits(n):
            return False
        self.requests += 1
        self.bytes += n
        return True

    def acquire_or_raise(self, n: int) -> None:
        if not self.try_acquire(n):
            raise Overloaded(f"flow-control window full: {self.requests}/{self.requests_max} "
                             f"requests and {self.bytes}/{self.bytes_max} bytes in flight; a "
                             f"request of {n} bytes must wait")

    def release(self, n: int) -> None:
        if self.requests < 1 or n < 0 or n > self.bytes:
            raise ValueError(f"release of {n} bytes with {self.requests} requests and "
                             f"{self.bytes} bytes in flight: not acquired")
        self.requests -= 1
        self.bytes -= n


class Waiters:
    """FIFO of (token, bytes) waiting for room on a window; ``grant`` admits from the head
    while the head fits, so arrival order is kept."""

    def __init__(self, window: Window, waiters_max: int = WAITERS_MAX):
        self.window = window
        self.waiters_max = waiters_max
        self.queue: deque = deque()

    def arrive(self, token, n: int) -> bool:
        """True: admitted now. False: queued (``grant`` will return it later)."""
        if not self.queue and self.window.try_acquire(n):
            return True
        if len(self.queue) >= self.waiters_max:
            raise Overloaded(f"{len(self.queue)} senders already wait for this window "
                             f"(WAITERS_MAX={self.waiters_max})")
        self.queue.append((token, n))
        return False

    def leave(self, token) -> tuple[bool, list]:
        """A waiter gave up (timeout, cancel): (whether it was still queued, the tokens
        admitted because it no longer blocks the head of the queue)."""
        for i, (t, _) in enumerate(self.queue):
            if t is token:
                del self.queue[i]
                return True, self._admit()
        return False, []

    def release(self, n: int) -> list:
        """Return a finished request's room; the tokens admitted in its place, in order."""
        self.window.release(n)
        return self._admit()

    def _admit(self) -> list:
        admitted = []
        while self.queue and self.window.try_acquire(self.queue[0][1]):
            admitted.append(self.queue.popleft()[0])
        return admitted
