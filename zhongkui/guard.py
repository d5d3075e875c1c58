"""The guard every entry point holds: verify a caller's token, decide an operation, record a
denial. Pure apart from the callables a shell gives it (the clock, fetching keys and ACL
entries, reporting to the audit trail).

A guard is built from an ``auth`` document, ``{"enabled": bool, "keys": <keyring doc>}``, which
`fuxi up` hands to the platform's actors when it creates them:

- **disabled** (the embedded local default, and `fuxi up` on one machine without ``--auth``):
  every caller is the local operator, an administrator; tokens are not asked for.
- **enabled**: every call carries a token (``cred``). It is verified here with the cluster's
  keys (HMAC, constant time); a token signed by a key this guard has not seen (the keys were
  rotated after it started) makes it fetch the keyring again, at most once per
  ``KEYS_FETCH_INTERVAL_S``, proving with a token of its own that it holds a key already.

ACL entries come from FuxiMaster's identity service and are cached here for
``ACL_REFRESH_S``; before saying no, the guard fetches them again (at most once per
``ACL_DENY_REFRESH_S``), so a fresh grant works at once and a revoke within ACL_REFRESH_S.

The platform's own actors call each other with ``platform_token()``: a short-lived token of
user ``fuxi-<name>`` in the groups ``admins`` and ``platform``, signed with the keys they
hold. No user can be put in the ``platform`` group.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from zhongkui.acl import ADMIN_GROUP, PLATFORM_GROUP, Decision, Entry, decide
from zhongkui.errors import BadCredentials, Denied, UnknownKey
from zhongkui.tokens import Keyring

log = logging.getLogger("zhongkui.guard")

KEYS_FETCH_INTERVAL_S = 2.0     # at most one keyring fetch per this, however many bad kids
KEYS_FETCH_TIMEOUT_S = 5.0
ACL_REFRESH_S = 2.0             # cached ACL entries are at most this old when they allow
ACL_DENY_REFRESH_S = 0.5        # a denial first refreshes the entries, at most this often
ACL_FETCH_TIMEOUT_S = 5.0
PLATFORM_TOKEN_TTL_S = 3600.0   # the platform's own tokens; renewed at half their life
REPORTS_PER_S_MAX = 50.0        # denials a guard sends to the trail; the rest are counted
DECISIONS_CACHED_MAX = 8192     # decisions remembered until the entries change (then cleared)


@dataclass(frozen=True)
class Principal:
    """Who is calling, as verified."""
    user: str
    groups: tuple[str, ...] = ()
    scope: dict | None = None       # a job's or a service's token: acts as ``user``
    expires_at: float = float("inf")

    @property
    def admin(self) -> bool:
        return ADMIN_GROUP in self.groups

    @property
    def platform(self) -> bool:
        return PLATFORM_GROUP in self.groups and self.scope is None

    def to_doc(self) -> dict:
        return {"user": self.user, "groups": list(self.groups), "scope": self.scope}


LOCAL_OPERATOR = Principal("operator", (ADMIN_GROUP,))


def auth_doc(enabled: bool, keyring: Keyring | None) -> dict:
    """What the platform's actors are created with."""
    return {"enabled": bool(enabled), "keys": keyring.to_doc() if keyring else None}


class Guard:
    def __init__(self, auth: dict | None = None, *, name: str = "platform",
                 clock: Callable[[], float] = time.time,
                 fetch_keys: Callable[[str], Awaitable[dict]] | None = None,
                 fetch_acl: Callable[[str, int], Awaitable[dict]] | None = None,
                 report: Callable[[str, dict], Any] | None = None,
                 keyring: Keyring | None = None):
        """``keyring``: share this keyring object instead of one made from ``auth["keys"]``
        (FuxiMaster's guards: a rotation there is seen by them at once)."""
        auth = auth or {}
        self.enabled = bool(auth.get("enabled"))
        self.keyring = keyring or (Keyring.from_doc(auth["keys"]) if auth.get("keys") else None)
        if self.enabled and self.keyring is None:
            raise ValueError("an enabled guard needs the cluster's keys")
        self.name = name
        self.clock = clock
        self.fetch_keys, self.fetch_acl, self.report = fetch_keys, fetch_acl, report
        self.entries: list[Entry] = []
        self.restricted: list[str] = []
        self.acl_version = -1
        self._acl_at = float("-inf")
        self._acl_deny_at = float("-inf")
        self._keys_at = float("-inf")
        self._platform: tuple[str, float] | None = None
        self._refreshing = None  # the background refresh task, while one runs
        self._decisions: dict[tuple, Decision] = {}  # for the entries as they are now
        self._report_budget = REPORTS_PER_S_MAX
        self._report_at = clock()
        self.reports_suppressed = 0  # denials not sent (over REPORTS_PER_S_MAX), not yet told
        self.counters = {"allowed": 0, "denied": 0, "bad_credentials": 0}

    # ------------------------------------------------------------ keys and ACL
    def set_keys(self, doc: dict) -> None:
        self.keyring = Keyring.from_doc(doc)
        self.renew_platform_token()

    def renew_platform_token(self) -> None:
        """The next platform token is signed afresh, with the keyring's current key."""
        self._platform = None

    def accept_keys(self, proof, doc: dict) -> int:
        """New keys pushed by FuxiMaster after a rotation; ``proof`` is a platform token
        signed with a key this guard holds. Returns how many keys it holds now."""
        if not self.enabled:
            return 0
        if not self.identify(proof).platform:
            raise Denied("only the platform's own actors may hand out keys")
        self.set_keys(doc)
        return len(self.keyring.keys)

    def set_acl(self, doc: dict) -> None:
        """``{"version", "entries": [entry docs], "restricted": [nuwa prefixes]}``, or
        ``{"version", "unchanged": True}`` when this guard has that version already."""
        if doc.get("unchanged") and doc.get("version") == self.acl_version:
            self._acl_at = self.clock()
            return
        if doc.get("version", 0) < self.acl_version or "entries" not in doc:
            return
        self.entries = [Entry.from_doc(e) for e in doc.get("entries", ())]
        self.restricted = list(doc.get("restricted", ()))
        self._decisions = {}
        self.acl_version = doc.get("version", 0)
        self._acl_at = self.clock()

    def acl_stale(self) -> bool:
        return self.enabled and self.clock() - self._acl_at > ACL_REFRESH_S

    async def refresh_acl(self) -> bool:
        if self.fetch_acl is None:
            return False
        try:
            self.set_acl(await self.fetch_acl(self.platform_token(), self.acl_version))
            return True
        except Exception as e:  # noqa: BLE001 - keep the entries we have; try again later
            log.warning("%s: fetching the ACL entries failed: %s", self.name, type(e).__name__)
            self._acl_at = self.clock() - ACL_REFRESH_S / 2
            return False

    def platform_token(self) -> str:
        """A token for this actor's calls to the rest of the platform ('' when disabled)."""
        if not self.enabled:
            return ""
        now = self.clock()
        if self._platform is None or now > self._platform[1]:
            tok = self.keyring.sign(f"fuxi-{self.name}", [ADMIN_GROUP, PLATFORM_GROUP], now=now,
                                    ttl_s=PLATFORM_TOKEN_TTL_S)
            self._platform = (tok, now + PLATFORM_TOKEN_TTL_S / 2)
        return self._platform[0]

    # ------------------------------------------------------------ identify
    def identify(self, token) -> Principal:
        """The verified caller, or BadCredentials saying what is wrong with the token. With
        authentication off: whoever a valid token names, else the local operator."""
        if not self.enabled:
            if token and self.keyring is not None:
                try:
                    c = self.keyring.verify(token, self.clock())
                    return Principal(c.user, tuple(c.groups), c.scope, c.expires_at)
                except BadCredentials:
                    pass
            return LOCAL_OPERATOR
        try:
            c = self.keyring.verify(token, self.clock())
        except BadCredentials as e:
            self.counters["bad_credentials"] += 1
            self.report_denial("?", "authenticate", "-", type(e).__name__)
            raise
        return Principal(c.user, tuple(c.groups), c.scope, c.expires_at)

    async def aidentify(self, token) -> Principal:
        """``identify``, fetching the keyring again when the token's key is new to us."""
        try:
            return self.identify(token)
        except UnknownKey:
            if self.fetch_keys is None or self.clock() - self._keys_at < KEYS_FETCH_INTERVAL_S:
                raise
            self._keys_at = self.clock()
            try:
                self.set_keys(await self.fetch_keys(self.platform_token()))
            except Exception as e:  # noqa: BLE001 - answer with the original refusal
                log.warning("%s: fetching the cluster's keys failed: %s", self.name,
                            type(e).__name__)
            return self.identify(token)

    # ------------------------------------------------------------ decide
    def decision(self, who: Principal, kind: str, resource: str, perm: str,
                 owner: str | None = None) -> Decision:
        if not self.enabled:
            return Decision(True, "authentication is off")
        if who.expires_at <= self.clock():
            return Decision(False, f"the token of {who.user!r} expired; log in again")
        # A hot path (every Kuafu call, every Nuwa request): the same caller doing the same
        # thing gets the remembered answer until the entries change.
        key = (who.user, who.groups, kind, resource, perm, owner)
        d = self._decisions.get(key)
        if d is None:
            d = decide(self.entries, who.user, who.groups, kind, resource, perm, owner,
                       self.restricted)
            if len(self._decisions) >= DECISIONS_CACHED_MAX:
                self._decisions.clear()
            self._decisions[key] = d
        return d

    def check(self, who: Principal, kind: str, resource: str, perm: str,
              owner: str | None = None) -> Decision:
        """Allow, or raise Denied (recorded in the audit trail)."""
        d = self.decision(who, kind, resource, perm, owner)
        if d.allowed:
            self.counters["allowed"] += 1
            return d
        self.counters["denied"] += 1
        self.report_denial(who.user, perm, f"{kind}:{resource}", d.reason)
        raise Denied(d.reason)

    async def acheck(self, who: Principal, kind: str, resource: str, perm: str,
                     owner: str | None = None) -> Decision:
        """``check`` for async shells: stale entries are refreshed in the background (an
        allowed call never waits for FuxiMaster), and once more, awaited, before a denial."""
        d = self.decision(who, kind, resource, perm, owner)
        if d.allowed:
            if self.acl_stale():
                self.refresh_soon()
            self.counters["allowed"] += 1
            return d
        if self.may_refresh_before_denial():
            await self.refresh_acl()
        return self.check(who, kind, resource, perm, owner)

    def may_refresh_before_denial(self) -> bool:
        """True at most once per ACL_DENY_REFRESH_S: a flood of refused calls must not become
        a flood of fetches."""
        if self.fetch_acl is None or self.clock() - self._acl_deny_at <= ACL_DENY_REFRESH_S:
            return False
        self._acl_deny_at = self.clock()
        return True

    def refresh_soon(self) -> None:
        """Refresh the entries in the background (one refresh at a time)."""
        if self.fetch_acl is None or self._refreshing is not None:
            return
        import asyncio

        async def run():
            try:
                await self.refresh_acl()
            finally:
                self._refreshing = None
        self._refreshing = asyncio.get_running_loop().create_task(run())

    async def authorize(self, token, kind: str, resource: str, perm: str,
                        owner: str | None = None) -> Principal:
        who = await self.aidentify(token)
        await self.acheck(who, kind, resource, perm, owner)
        return who

    def report_denial(self, who: str, action: str, resource: str, detail: str) -> None:
        """Send a denial to the trail: at most REPORTS_PER_S_MAX per second (a client
        hammering with a bad token must not become a flood of calls to FuxiMaster); those
        over the budget are counted and the count goes with the next one sent."""
        if self.report is None:
            return
        now = self.clock()
        self._report_budget = min(REPORTS_PER_S_MAX, self._report_budget
                                  + (now - self._report_at) * REPORTS_PER_S_MAX)
        self._report_at = now
        if self._report_budget < 1:
            self.reports_suppressed += 1
            return
        self._report_budget -= 1
        if self.reports_suppressed:
            detail += f" ({self.reports_suppressed} more denials here were not recorded)"
            self.reports_suppressed = 0
        try:
            self.report(self.platform_token(), {"who": who, "action": action,
                                                "resource": resource, "result": "denied",
                                                "detail": f"at {self.name}: {detail}"})
        except Exception:  # noqa: BLE001 - the trail must not break the answer
            pass
