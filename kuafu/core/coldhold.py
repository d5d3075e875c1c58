"""Calls held at a Kuafu proxy for a service scaled to zero (pure: no I/O, no clock).

The service manager tells each proxy which services are *asleep* (autoscaled with
``min_replicas: 0`` and at zero replicas now), each for a time to live it renews while the
service sleeps. A call to an asleep service with no endpoint known is not failed: it is held
here, and the service is reported as *wanting a wake* (one entry per service however many
calls wait) until an endpoint appears; then the held calls are sent, in arrival order, each
once (a held call was never sent, so even a non-idempotent one goes exactly once).

Bounds: at most ``HELD_CALLS_MAX`` calls per service and ``COLD_SERVICES_MAX`` services;
each call waits at most ``COLD_CALL_WAIT_S`` (or its own deadline, whichever is earlier, which
the forwarder's deadline sweep enforces). Over a bound, or past the wait, the caller gets a
typed ``Unavailable`` (HTTP 503 with Retry-After) that says which limit, and the call was
not sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HELD_CALLS_MAX = 256        # calls held for one asleep service at one proxy
COLD_SERVICES_MAX = 1024    # asleep services one proxy keeps (and holds calls for)
COLD_CALL_WAIT_S = 60.0     # longest a held call waits for the first replica
ASLEEP_TTL_S_MAX = 60.0     # longest the manager's word "asleep" holds without renewal
# A held call is given up this long before its deadline, so its caller hears "not sent" from
# the proxy before its own timer fires (and never has to guess whether it ran).
COLD_DEADLINE_MARGIN_S = 0.1


@dataclass
class Held:
    key: object               # the forwarder's handle on the call
    until: float              # when it stops waiting (COLD_CALL_WAIT_S)


@dataclass
class ColdHolds:
    held_max: int = HELD_CALLS_MAX
    services_max: int = COLD_SERVICES_MAX
    wait_s: float = COLD_CALL_WAIT_S
    asleep: dict[str, float] = field(default_factory=dict)   # service -> asleep until
    held: dict[str, list[Held]] = field(default_factory=dict)
    wanted_since: dict[str, float] = field(default_factory=dict)  # service -> first hold
    counts: dict[str, int] = field(default_factory=lambda: {"held": 0, "over_limit": 0,
                                                             "expired": 0, "released": 0})

    def set_asleep(self, services: dict, now: float) -> None:
        """The manager's word: {service: ttl_s} asleep now (others keep their own ttl)."""
        if not isinstance(services, dict):
            raise ValueError(f"asleep services: got {type(services).__name__}, expected a "
                             f"mapping of service name to seconds")
        for svc, ttl in services.items():
            if not isinstance(svc, str) or isinstance(ttl, bool) or \
                    not isinstance(ttl, (int, float)) or not 0 <= ttl <= ASLEEP_TTL_S_MAX:
                raise ValueError(f"asleep {svc!r:.60}: {ttl!r:.40}: expected a service name "
                                 f"and 0..{ASLEEP_TTL_S_MAX:g} seconds")
        for svc, ttl in services.items():
            if svc not in self.asleep and len(self.asleep) >= self.services_max:
                self._forget_expired(now)
                if len(self.asleep) >= self.services_max:
                    raise ValueError(f"{self.services_max} services are asleep here "
                                     f"(COLD_SERVICES_MAX)")
            self.asleep[svc] = now + float(ttl)

    def is_asleep(self, svc: str, now: float) -> bool:
        return self.asleep.get(svc, 0.0) > now

    def hold(self, svc: str, key, now: float, live=lambda k: True) -> str | None:
        """Hold the call ``key`` for ``svc``: None when held, else why it cannot be (the
        caller's error text). ``live(key)`` drops calls that ended meanwhile first."""
        q = self.held.get(svc)
        if q is None:
            if len(self.held) >= self.services_max:
                self.counts["over_limit"] += 1
                return (f"{self.services_max} services have calls held here "
                        f"(COLD_SERVICES_MAX)")
            q = self.held[svc] = []
            self.wanted_since[svc] = now
        if len(q) >= self.held_max:
            q[:] = [h for h in q if live(h.key)]
        if len(q) >= self.held_max:
            self.counts["over_limit"] += 1
            return (f"{svc!r} is scaled to zero and {len(q)} calls already wait here for its "
                    f"first replica (HELD_CALLS_MAX={self.held_max}); retry later")
        q.append(Held(key, now + self.wait_s))
        self.counts["held"] += 1
        return None

    def release(self, svc: str) -> list:
        """An endpoint of ``svc`` appeared: its held calls, oldest first, to send now."""
        q = self.held.pop(svc, [])
        self.wanted_since.pop(svc, None)
        self.counts["released"] += len(q)
        return [h.key for h in q]

    def expired(self, now: float, live=lambda k: True) -> list:
        """Held calls past ``COLD_CALL_WAIT_S`` (to fail), dropping ended ones; services with
        nothing held left stop wanting a wake."""
        out = []
        for svc in list(self.held):
            keep = []
            for h in self.held[svc]:
                if not live(h.key):
                    continue
                (out if now >= h.until else keep).append(h)
            if keep:
                self.held[svc] = keep
            else:
                del self.held[svc]
                self.wanted_since.pop(svc, None)
        self.counts["expired"] += len(out)
        self._forget_expired(now)
        return [h.key for h in out]

    def wanted(self) -> dict[str, int]:
        """{service: calls held} for every service that wants a wake."""
        return {svc: len(q) for svc, q in self.held.items() if q}

    def _forget_expired(self, now: float) -> None:
        for svc in [s for s, until in self.asleep.items() if until <= now]:
            del self.asleep[svc]
