"""Kuafu's routing decisions (pure: no I/O, no clock, no global randomness).

The proxy's shells feed this module what they learned -- Nuwa watch events and listings of
``/services/``, registrations on their own connections, the time (``now``) and a seeded
``random.Random`` -- and act on what it decides:

* ``EndpointTable``: the endpoints of every service, this proxy's own (``local``, by name in
  ``by_name``) and those published by other proxies (``remote``, kept equal to
  ``/services/<service>/<endpoint>`` in Nuwa by ``apply`` and ``replace_remote``);
* ``choose``: the endpoint a call goes to: first a traffic group by weight (a canary
  version's endpoints declare their ``share`` of the service's calls, in percent; the others
  share the rest), then power of two choices on the requests in flight within it (ties fall
  to the random draw, so load spreads);
* ``may_resend``: the no-resend rule -- a call goes again only when it certainly did not
  run, or it is idempotent and no reply has begun;
* ``MissCache``: services Nuwa said have no endpoint, remembered for ``LOOKUP_MISS_TTL_S``,
  at most ``MISSES_KEPT_MAX`` of them;
* ``Latencies`` and ``backup_delay``: when a backup copy of an idempotent call goes out;
* who owns a service name (``registered_owner``, ``scope_refusal``, ``claim_refusal``,
  ``release_refusal``): decided from FuxiMaster's registration record and the Kuafu claim,
  never from whoever holds a live endpoint. A refusal is a ``Refusal`` carrying the reason;
  the shell records it and answers ``Denied``.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable

from kuafu.errors import BadRequest, Overloaded, Unavailable

CONTROL_SERVICE = "kuafu"           # the proxy's own service (register, unregister, ...)
SERVICE_NAME_CHARS_MAX = 200
SERVICES_PATH = "/services/"        # a Nuwa directory: its path ends with "/"
LOOKUP_MISS_TTL_S = 0.5  # after Nuwa says a service has no endpoint, fail fast for this long
MISSES_KEPT_MAX = 4096              # services remembered as having no endpoint (oldest evicted)
LATENCIES_KEPT = 1024    # recent reply times kept per service (for backup percentiles)
BACKUP_SAMPLES_MIN = 20  # replies seen before a percentile can time a backup
LATENCY_SERVICES_MAX = 4096         # services whose reply times are kept (oldest evicted)
BACKUP_DELAY_MS_MAX = 3.6e6         # the longest explicit backup delay a header may ask for
ENDPOINTS_PER_SERVICE_MAX = 10_000
ENDPOINTS_PER_CONNECTION_MAX = 64   # endpoints one server connection may register
LOCAL_ENDPOINTS_MAX = 65_536        # endpoints attached to this proxy in all
ENDPOINT_VERSION_CHARS_MAX = 64   # the version label an endpoint registers with
SHARE_PERCENT_MAX = 100.0           # an endpoint's share of its service's calls, in percent
CLAIM_POLICIES = ("signed-in", "granted")  # who may claim a free name: anyone signed in, or
#                                     only those granted `manage` on it (and administrators)


def check_service_name(name) -> str:
    """``name`` if it may be a service name (it becomes a Nuwa path and a key of bounded
    maps); BadRequest otherwise."""
    if (not isinstance(name, str) or not name or len(name) > SERVICE_NAME_CHARS_MAX
            or not all(c.isalnum() or c in "-_." for c in name) or name.startswith(".")):
        raise BadRequest(f"service name {name!r:.80}: expected 1-{SERVICE_NAME_CHARS_MAX} "
                         f"letters, digits, '-', '_' or '.' (not starting with '.')")
    return name


# ------------------------------------------------------------------ endpoints

class Endpoint:
    __slots__ = ("name", "service", "proxy_id", "address", "conn", "idem", "inflight", "node",
                 "owner", "version", "share", "never")

    def __init__(self, name, service, proxy_id, address, conn=None, idem=(), node="",
                 owner=None, version="", share=None, never=()):
        self.name, self.service, self.proxy_id = name, service, proxy_id
        self.address, self.conn, self.idem = address, conn, set(idem)
        self.inflight, self.node = 0, node
        self.owner = owner  # who registered it (Zhongkui: the service's owner)
        self.version = version  # the service version it serves ("" when not said)
        self.share = share      # percent of the service's calls its version gets (a canary)
        self.never = set(never)  # methods the server declared never idempotent

    def describe(self) -> dict:
        return {"endpoint": self.name, "service": self.service, "proxy": self.address,
                "node": self.node, "local": self.conn is not None, "in_flight": self.inflight,
                "idempotent": sorted(self.idem), "owner": self.owner, "version": self.version,
                "share": self.share, "never_idempotent": sorted(self.never)}

    def record(self, proxy_id: str, node: str) -> bytes:
        """What the proxy publishes at ``/services/<service>/<endpoint>``."""
        return json.dumps({"proxy": self.address, "proxy_id": proxy_id, "node": node,
                           "idempotent": sorted(self.idem), "owner": self.owner,
                           "version": self.version, "share": self.share,
                           "never": sorted(self.never)}).encode()


def check_version(value) -> str:
    """The version label an endpoint registers with ("" for none); BadRequest otherwise."""
    if value is None or value == "":
        return ""
    if (not isinstance(value, str) or len(value) > ENDPOINT_VERSION_CHARS_MAX
            or not all(c.isalnum() or c in "-_.+" for c in value)):
        raise BadRequest(f"version {value!r:.80}: expected up to {ENDPOINT_VERSION_CHARS_MAX} "
                         f"letters, digits, '-', '_', '.' or '+'")
    return value


def check_share(value) -> float | None:
    """An endpoint's traffic share in percent (0 < share < SHARE_PERCENT_MAX), or None for
    "no share of its own" (it takes part in the rest). Text is accepted (control messages
    are maps of strings); BadRequest for anything else."""
    if value is None or value == "":
        return None
    try:
        share = float(value) if isinstance(value, (str, int, float)) and \
            not isinstance(value, bool) else None
    except ValueError:
        share = None
    if share is None or not 0.0 < share < SHARE_PERCENT_MAX:  # NaN fails both tests
        raise BadRequest(f"share {value!r:.40}: expected a percentage of the service's calls "
                         f"above 0 and below {SHARE_PERCENT_MAX:g}")
    return share


def endpoint_from_record(svc: str, name: str, value: bytes, own_proxy_id: str) -> Endpoint | None:
    """The endpoint a published record describes; None for a damaged record or one of this
    proxy's own (those are in the local table)."""
    try:
        d = json.loads(value)
    except ValueError:
        return None
    if not isinstance(d, dict) or d.get("proxy_id") == own_proxy_id or not d.get("proxy"):
        return None
    try:
        version, share = check_version(d.get("version")), check_share(d.get("share"))
    except BadRequest:
        return None  # damaged: routing by a share we cannot read would skew the split
    never = d.get("never") or []  # older proxies publish none
    if not isinstance(never, list) or not all(isinstance(m, str) for m in never):
        return None  # damaged: we could not tell which calls must never be resent
    return Endpoint(name, svc, d["proxy_id"], d["proxy"], None, d.get("idempotent", ()),
                    d.get("node", ""), d.get("owner"), version, share, never)


class EndpointTable:
    """Every endpoint this proxy knows, by service: its own and those of other proxies."""

    def __init__(self, proxy_id: str):
        self.proxy_id = proxy_id
        self.local: dict[str, dict[str, Endpoint]] = {}
        self.remote: dict[str, dict[str, Endpoint]] = {}
        self.by_name: dict[str, Endpoint] = {}  # this proxy's own endpoints
        # Told the service of every endpoint that appears (calls held for a service scaled
        # to zero go as soon as one does: kuafu.core.coldhold).
        self.on_added: Callable[[str], None] | None = None

    def _added(self, svc: str) -> None:
        if self.on_added is not None:
            self.on_added(svc)

    # -- this proxy's own
    def add_local(self, ep: Endpoint) -> None:
        self.local.setdefault(ep.service, {})[ep.name] = ep
        self.by_name[ep.name] = ep
        self._added(ep.service)

    def remove_local(self, name: str) -> Endpoint | None:
        ep = self.by_name.pop(name, None)
        if ep is None:
            return None
        self.local.get(ep.service, {}).pop(name, None)
        if not self.local.get(ep.service):
            self.local.pop(ep.service, None)
        return ep

    # -- other proxies', from Nuwa
    def replace_remote(self, listing: dict[str, dict[str, Endpoint]]) -> None:
        """A fresh listing of /services (after a watch started)."""
        self.remote = listing

    def apply(self, event: dict) -> None:
        """One watch event under /services: an endpoint created, changed or deleted. The
        requests in flight to a changed endpoint are kept (they still count for choosing)."""
        parts = event["path"].split("/")
        if len(parts) != 4 or not parts[3]:  # /services/<svc>/<endpoint>, not a directory
            return
        _, _, svc, name = parts
        if event["type"] == "deleted":
            eps = self.remote.get(svc)
            if eps is not None:
                eps.pop(name, None)
                if not eps:
                    self.remote.pop(svc, None)
            return
        ep = endpoint_from_record(svc, name, event.get("value") or b"", self.proxy_id)
        if ep is not None:
            old = self.remote.get(svc, {}).get(name)
            if old is not None:
                ep.inflight = old.inflight
            self.remote.setdefault(svc, {})[name] = ep
            self._added(svc)

    def merge_found(self, svc: str, found: dict[str, Endpoint]) -> None:
        """Endpoints a lookup found; what the watch already told us is kept."""
        known = self.remote.setdefault(svc, {})
        for name, ep in found.items():
            known.setdefault(name, ep)
        if found:
            self._added(svc)

    # -- reading
    def known(self, svc: str) -> int:
        return len(self.local.get(svc, {})) + len(self.remote.get(svc, {}))

    def has_any(self, svc: str) -> bool:
        return bool(self.remote.get(svc)) or bool(self.local.get(svc))

    def all(self, svc: str | None = None) -> list[Endpoint]:
        """The endpoints of ``svc`` (every service's when None), local ones first."""
        out = []
        for table in (self.local, self.remote):
            for s, eps in table.items():
                if svc is None or s == svc:
                    out.extend(eps.values())
        return out

    def candidates(self, svc: str, tried, pinned: str | None, peer_down: dict,
                   now: float) -> list[Endpoint]:
        """Where a call may go: the endpoint another proxy chose (``pinned``) if it is still
        ours, else every endpoint not tried yet whose proxy is not marked down."""
        if pinned is not None:
            ep = self.by_name.get(pinned)
            return [ep] if ep is not None and ep.name not in tried else []
        out = [ep for ep in self.local.get(svc, {}).values() if ep.name not in tried]
        for ep in self.remote.get(svc, {}).values():
            if ep.name not in tried and peer_down.get(ep.address, 0) <= now:
                out.append(ep)
        return out

    def check_capacity(self, svc: str, conn_endpoints: int) -> None:
        """May one more endpoint of ``svc`` be attached here, on a connection that already has
        ``conn_endpoints``? Overloaded if a bound is reached."""
        if len(self.local.get(svc, {})) >= ENDPOINTS_PER_SERVICE_MAX:
            raise Overloaded(f"{svc!r} has {ENDPOINTS_PER_SERVICE_MAX} endpoints on this proxy "
                             f"(ENDPOINTS_PER_SERVICE_MAX)")
        if conn_endpoints >= ENDPOINTS_PER_CONNECTION_MAX:
            raise Overloaded(f"this connection registered {ENDPOINTS_PER_CONNECTION_MAX} "
                             f"endpoints (ENDPOINTS_PER_CONNECTION_MAX)")
        if len(self.by_name) >= LOCAL_ENDPOINTS_MAX:
            raise Overloaded(f"this proxy holds {LOCAL_ENDPOINTS_MAX} endpoints "
                             f"(LOCAL_ENDPOINTS_MAX)")


def traffic_groups(candidates: list[Endpoint]) -> list[tuple[float, list[Endpoint]]]:
    """The candidates by traffic group, each with its weight: the endpoints that declare a
    share, by (version, share), weigh that share; those that declare none weigh what is left
    of 100 (nothing when the shares add up to 100 or more). Groups keep the candidates' order;
    the declared ones come first."""
    declared: dict[tuple, list[Endpoint]] = {}
    rest: list[Endpoint] = []
    for ep in candidates:
        if ep.share is None:
            rest.append(ep)
        else:
            declared.setdefault((ep.version, ep.share), []).append(ep)
    groups = [(key[1], eps) for key, eps in declared.items()]
    if rest:
        groups.append((max(0.0, SHARE_PERCENT_MAX - sum(w for w, _ in groups)), rest))
    return groups


def pick_group(groups: list[tuple[float, list]], rng) -> list:
    """One group, drawn by weight (uniformly when every weight is 0)."""
    if len(groups) == 1:
        return groups[0][1]
    total = sum(w for w, _ in groups)
    if total <= 0:
        return groups[rng.randrange(len(groups))][1]
    x = rng.random() * total
    for w, eps in groups:
        if x < w:
            return eps
        x -= w
    return groups[-1][1]  # float rounding at the top end


def choose(candidates: list[Endpoint], rng, avoid=frozenset()) -> Endpoint | None:
    """A traffic group by weight (``traffic_groups``), then power of two choices on the
    requests in flight within it; ``rng`` is a ``random.Random``. A group whose endpoints are
    all tried or unreachable is not a candidate, so its share goes to the others.
    ``avoid``: names of hot endpoints (``kuafu.core.hotroute``), left out while others remain."""
    if avoid:  # the hot-spot hook: steer away, never to nothing
        candidates = [c for c in candidates if c.name not in avoid] or candidates
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    group = pick_group(traffic_groups(candidates), rng)
    if len(group) == 1:
        return group[0]
    a, b = rng.sample(group, 2)  # on a tie, the random draw decides: load spreads
    return b if b.inflight < a.inflight else a


def call_idempotent(method: str, caller_says: bool, declared: set, never: set) -> bool:
    """Is a call idempotent at this endpoint? The server's declaration wins: a method it
    declared ``idempotent=False`` never is, one it declared True always is; an undeclared
    one is only when the caller said so. The safe default: not idempotent."""
    if method in never:
        return False
    return method in declared or bool(caller_says)


def may_resend(*, sent: bool, idempotent: bool, retryable: bool, answered: bool,
               not_run: bool = False) -> bool:
    """The no-resend rule: may the proxy send a call again (to another endpoint)?

    Never once a reply has begun (``answered``) or when its body was not kept whole
    (``retryable`` False: a message in pieces). Otherwise yes when it certainly did not run --
    it was never written to a connection (``sent`` False), or the server answered that it did
    not run it (``not_run``: an ``Unavailable`` without ``ex``) -- and, for a call that may
    have run (the connection carrying it was lost), only when it is ``idempotent``."""
    if answered or not retryable:
        return False
    if not sent or not_run:
        return True
    return idempotent


def no_endpoint_reason(svc: str, pinned: str | None, tried: int, known: int) -> str:
    """Why a call found nowhere to go (it was not sent)."""
    if pinned is not None:
        return f"endpoint {pinned!r} of {svc!r} is not on this proxy any more"
    if tried:
        return f"all {tried} endpoints of {svc!r} tried failed"
    if known:
        return f"no reachable endpoint of {svc!r} ({known} known)"
    return f"no endpoint of service {svc!r} is registered"


class MissCache:
    """Services Nuwa said have no endpoint, each until ``now + LOOKUP_MISS_TTL_S``; at most
    ``kept_max`` names (default MISSES_KEPT_MAX, read when a miss is noted): the oldest is
    forgotten, which only costs another lookup."""

    def __init__(self, ttl_s: float = LOOKUP_MISS_TTL_S, kept_max: int | None = None):
        self.ttl_s = ttl_s
        self.kept_max = kept_max
        self.until: OrderedDict[str, float] = OrderedDict()  # oldest first; one TTL for all

    def __len__(self) -> int:
        return len(self.until)

    def missing(self, svc: str, now: float) -> bool:
        """Is ``svc`` still remembered as having no endpoint?"""
        return self.until.get(svc, 0) > now

    def note(self, svc: str, now: float) -> int:
        """Remember a miss; returns how many older names were forgotten to make room."""
        self.until.pop(svc, None)
        self.until[svc] = now + self.ttl_s
        kept_max = MISSES_KEPT_MAX if self.kept_max is None else self.kept_max
        evicted = 0
        while len(self.until) > kept_max:
            self.until.popitem(last=False)
            evicted += 1
        return evicted

    def sweep(self, now: float) -> None:
        """Forget the misses that expired."""
        while self.until:
            svc, until = next(iter(self.until.items()))
            if until > now:
                break
            del self.until[svc]


def may_look_up(table: EndpointTable, misses: MissCache, svc: str, *, tried: bool,
                pinned: str | None, looked_up: bool, now: float) -> bool:
    """A service this proxy knows no endpoint of may have been registered a moment ago
    elsewhere (the watch has not told us yet): ask Nuwa once before failing the call."""
    return (not tried and pinned is None and not table.has_any(svc)
            and not misses.missing(svc, now) and not looked_up)


# ------------------------------------------------------------------ backup requests

class Latencies:
    """Recent reply times per service (LATENCIES_KEPT each), for at most
    LATENCY_SERVICES_MAX services (the least recently used is dropped)."""

    def __init__(self, services_max: int = LATENCY_SERVICES_MAX, kept: int = LATENCIES_KEPT):
        self.services_max, self.kept = services_max, kept
        self.by_service: OrderedDict[str, deque] = OrderedDict()

    def __len__(self) -> int:
        return len(self.by_service)

    def record(self, svc: str, seconds: float) -> None:
        lat = self.by_service.get(svc)
        if lat is None:
            lat = self.by_service[svc] = deque(maxlen=self.kept)
            while len(self.by_service) > self.services_max:
                self.by_service.popitem(last=False)
        else:
            self.by_service.move_to_end(svc)
        lat.append(seconds)

    def percentile(self, svc: str, pct: float) -> float | None:
        """The ``pct``-th percentile of ``svc``'s recent reply times, once
        BACKUP_SAMPLES_MIN are known; else None."""
        lat = self.by_service.get(svc)
        if lat is None or len(lat) < BACKUP_SAMPLES_MIN:
            return None
        ordered = sorted(lat)
        return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100.0))]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def backup_delay(bk, idempotent: bool, retryable: bool,
                 percentile: Callable[[float], float | None]) -> float | None:
    """Seconds after which a backup copy of a call goes to another endpoint, or None for no
    backup. ``bk`` (from the header) asks for one after ``ms`` milliseconds or after the
    service's ``p``-th latency percentile (``percentile(p)``), whichever is later; only an
    idempotent call kept whole (``retryable``) may have one."""
    if not isinstance(bk, dict) or not idempotent or not retryable:
        return None
    delay = None
    ms = bk.get("ms")
    if _number(ms) and 0 <= ms < BACKUP_DELAY_MS_MAX:
        delay = ms / 1000.0
    pct = bk.get("p")
    if _number(pct) and 0 < pct < 100:
        lat = percentile(float(pct))
        if lat is not None:
            delay = lat if delay is None else max(delay, lat)
    return delay  # None: no explicit delay and too few samples for a percentile yet


# ------------------------------------------------------------------ who owns a service name

@dataclass(frozen=True)
class Refusal:
    """A caller may not attach (or release) a name; ``why`` says so to them and the audit."""

    why: str


def _rights(who, svc: str) -> tuple[dict | None, bool, bool]:
    """(scope, acts as administrator, holds the service's own token). ``who`` is a verified
    caller with ``user``, ``admin`` and ``scope``."""
    scope = who.scope if isinstance(who.scope, dict) else None
    admin = bool(who.admin) and scope is None  # a scoped token acts only for its scope
    return scope, admin, scope == {"kind": "service", "id": svc}


def registered_owner(who, svc: str, record: dict) -> str | Refusal:
    """A name registered as a Fuxi service (``record``: {"owner": user or None}) is served
    only by that service's replicas (a token scoped to it, of its owner) and administrators;
    returns the owner its endpoints are published with."""
    _, admin, own_scope = _rights(who, svc)
    owner = record.get("owner") if isinstance(record.get("owner"), str) else None
    if admin:
        return owner or who.user
    if own_scope and owner in (None, who.user):
        return who.user
    return Refusal(f"it is a registered Fuxi service (owner {owner!r}); only its replicas "
                   f"(with the service's own token) or an administrator may attach it")


def scope_refusal(who, svc: str) -> Refusal | None:
    """A token scoped to one service attaches only that service."""
    scope, _, own_scope = _rights(who, svc)
    if scope is not None and scope.get("kind") == "service" and not own_scope:
        return Refusal(f"a token of service {scope.get('id')!r:.80} attaches only that service")
    return None


def claim_refusal(who, svc: str, policy: str, may_manage: Callable[[], bool]) -> Refusal | None:
    """May ``who`` claim the free name ``svc``? Anyone signed in may under the policy
    "signed-in"; under "granted" only administrators and those with ``manage`` on it
    (``may_manage()``, asked only then)."""
    _, admin, _ = _rights(who, svc)
    if admin or policy == "signed-in" or may_manage():
        return None
    return Refusal("it is not registered and claiming a free name needs `manage` on it "
                   "(claim_policy='granted')")


def claimer_may_serve(who, svc: str, claim: str) -> bool:
    """The claimer and administrators serve a claimed name without further checks; others
    need ``manage`` on it (which the shell asks the ACL, refreshing it once)."""
    _, admin, _ = _rights(who, svc)
    return claim == who.user or admin


def claimed_refusal(claim: str) -> Refusal:
    return Refusal(f"the name is claimed by {claim!r}, even while no endpoint of it is live; "
                   f"serving it needs `manage` on it")


def release_refusal(who, svc: str, claim: str) -> Refusal | None:
    """Only the claimer or an administrator (with an unscoped token) frees a claim."""
    if claim != who.user and not (who.admin and who.scope is None):
        return Refusal(f"the claim is {claim!r}'s")
    return None


def owner_from_record(value) -> str | None:
    """The user in FuxiMaster's owner record of a service (``{"user": ...}``), or None while
    it is being written or unreadable."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc.get("user") if isinstance(doc, dict) else None


def claimer_from_record(svc: str, value, claims_path: str) -> str:
    """The user of a Kuafu claim record; Unavailable for a damaged one (fail closed)."""
    try:
        user = json.loads(value).get("user")
    except (ValueError, AttributeError):
        user = None
    if not isinstance(user, str):
        raise Unavailable(f"the claim record of {svc!r} is damaged; an administrator may "
                          f"remove {claims_path}{svc}")
    return user
