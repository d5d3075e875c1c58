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

ACL entries come from the authority actor (zhongkui.actor) and are cached here for
``ACL_REFRESH_S``; before saying no, the guard fetches them again (at most once per
``ACL_DENY_REFRESH_S``), so a fresh grant works at once and a revoke within ACL_REFRESH_S.

**Revocation** (issue 14, defect 5) rides on the same poll: the ACL document carries the
cluster's identities -- every user's generation and current groups, and the revoked key ids.
A token names a user *and* the generation of that account; the guard refuses it (``Revoked``)
once the user is gone or was re-created, and decides with the user's groups as the directory
has them now, not as the token says. Every decision re-applies this, so a principal cached on a
connection is refused too. A guard allows nothing on identities older than
``REVOCATION_CONFIRM_S``: past that, the call first waits (at most ``REVOCATION_WAIT_S``) for a
fresh answer. So a revocation is honoured everywhere within ``REVOKE_WITHIN_S``. While the
identity service cannot be reached the guard keeps the last state it learned (availability),
except that a guard whose own proof is refused (its keys were revoked) refuses everyone until
the authority hands it the new keys.

Timers (refresh ages, rate limits) run on a monotonic clock; only token lifetimes use the
wall clock, so a wall clock stepped by an hour neither freezes the refresh nor floods it.

The platform's own actors call each other with ``platform_token()``: a short-lived token of
user ``fuxi-<name>`` in the groups ``admins`` and ``platform``, signed with the keys they
hold. No user can be put in the ``platform`` group.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

from zhongkui.core.acl import ADMIN_GROUP, PLATFORM_GROUP, Decision, Entry, decide
from zhongkui.errors import BadCredentials, Denied, Revoked, UnknownKey, UnknownUser
from zhongkui.keys import Keyring

log = logging.getLogger("zhongkui.guard")

KEYS_FETCH_INTERVAL_S = 2.0     # at most one keyring fetch per this, however many bad kids
KEYS_FETCH_TIMEOUT_S = 5.0
ACL_REFRESH_S = 2.0             # cached ACL entries are at most this old when they allow
ACL_DENY_REFRESH_S = 0.5        # a denial first refreshes the entries, at most this often
ACL_FETCH_TIMEOUT_S = 5.0
# A call about to be denied waits for a refresh that starts after it (so a grant made before
# the call is always seen), shared with every other call waiting then: at most this long.
ACL_DENY_WAIT_S = ACL_DENY_REFRESH_S + 2 * ACL_FETCH_TIMEOUT_S
PLATFORM_TOKEN_TTL_S = 3600.0   # the platform's own tokens; renewed at half their life
REPORTS_PER_S_MAX = 50.0        # denials a guard sends to the trail; the rest are counted
DECISIONS_CACHED_MAX = 8192     # decisions remembered until the entries change (then cleared)
REVOKE_WITHIN_S = 5.0           # a removed user, changed groups or revoked key: refused by then
REVOCATION_CONFIRM_S = 3.0      # identities older than this are confirmed before allowing
REVOCATION_WAIT_S = 1.0         # how long a call waits for that confirmation, at most
assert REVOCATION_CONFIRM_S + REVOCATION_WAIT_S < REVOKE_WITHIN_S


@dataclass(frozen=True)
class Principal:
    """Who is calling, as verified."""
    user: str
    groups: tuple[str, ...] = ()
    scope: dict | None = None       # a job's or a service's token: acts as ``user``
    expires_at: float = float("inf")
    gen: str = ""                   # the account's generation the token was signed for
    key_id: str = ""                # the key that signed it

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
                 keyring: Keyring | None = None,
                 monotonic: Callable[[], float] | None = None):
        """``keyring``: share this keyring object instead of one made from ``auth["keys"]``
        (the authority's guard: a rotation there is seen by it at once). ``monotonic``: the
        clock of ages and rate limits; by default time.monotonic, or ``clock`` when a test
        gives one clock only."""
        if monotonic is None:
            monotonic = time.monotonic if clock is time.time else clock
        auth = auth or {}
        self.enabled = bool(auth.get("enabled"))
        self.keyring = keyring or (Keyring.from_doc(auth["keys"]) if auth.get("keys") else None)
        if self.enabled and self.keyring is None:
            raise ValueError("an enabled guard needs the cluster's keys")
        self.name = name
        self.clock = clock          # wall clock: token lifetimes
        self.monotonic = monotonic  # ages, intervals and rate limits
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
        self._report_at = monotonic()
        self.reports_suppressed = 0  # denials not sent (over REPORTS_PER_S_MAX), not yet told
        self.counters = {"allowed": 0, "denied": 0, "bad_credentials": 0, "revoked": 0}
        # user -> (generation, current groups, groups version); None until learned (then
        # not checked)
        self.users: dict[str, tuple[str, tuple[str, ...], int]] | None = None
        self.cut_off = ""  # why this guard's own proof is refused (its keys were revoked)
        self._refresh_started = float("-inf")
        self._deny_refresh = None  # (task, its refresh number): what denials wait for, while it runs
        self._refresh_no = 0  # refreshes of the entries started so far
        self._fresh_no = 0  # the number of the newest one that succeeded

    # ------------------------------------------------------------ keys and ACL
    def set_keys(self, doc: dict) -> None:
        self.keyring = Keyring.from_doc(doc)
        self.cut_off = ""
        self._acl_at = float("-inf")  # confirm the identities with the new proof at once
        self.renew_platform_token()

    def renew_platform_token(self) -> None:
        """The next platform token is signed afresh, with the keyring's current key."""
        self._platform = None

    def accept_keys(self, proof, doc: dict) -> int:
        """New keys pushed by the authority after a rotation; ``proof`` is a platform token
        signed with a key this guard holds. Returns how many keys it holds now."""
        if not self.enabled:
            return 0
        if not self.identify(proof).platform:
            raise Denied("only the platform's own actors may hand out keys")
        self.set_keys(doc)
        return len(self.keyring.keys)

    def accept_acl(self, proof, doc: dict) -> int:
        """ACL entries and identities pushed by the authority after a change (FuxiMaster
        decides jobs and services on them, and signs its jobs' tokens from them); ``proof``
        is a platform token. Returns the version this guard holds now."""
        if not self.enabled:
            return self.acl_version
        if not self.identify(proof).platform:
            raise Denied("only the platform's own actors may hand out ACL entries")
        self.set_acl(doc)
        return self.acl_version

    def set_acl(self, doc: dict) -> None:
        """``{"version", "entries": [entry docs], "restricted": [nuwa prefixes]}``, or
        ``{"version", "unchanged": True}`` when this guard has that version already."""
        if doc.get("unchanged") and doc.get("version") == self.acl_version:
            self._acl_at = self.monotonic()
            return
        if doc.get("version", 0) < self.acl_version or "entries" not in doc:
            return
        self.entries = [Entry.from_doc(e) for e in doc.get("entries", ())]
        self.restricted = list(doc.get("restricted", ()))
        ids = doc.get("identities")
        if isinstance(ids, dict):
            self.set_identities(ids)
        self._decisions = {}
        self.acl_version = doc.get("version", 0)
        self._acl_at = self.monotonic()

    def set_identities(self, ids: dict) -> None:
        """``{"users": {name: {"gen", "groups"}}, "revoked_keys": [kid]}``."""
        users = ids.get("users")
        if isinstance(users, dict):
            self.users = {str(u): (str(d.get("gen", "")), tuple(sorted(d.get("groups", ()))),
                                   int(d.get("gv", 0)))
                          for u, d in users.items() if isinstance(d, dict)}
        revoked = ids.get("revoked_keys")
        if self.keyring is not None and isinstance(revoked, list):
            fresh = [k for k in revoked if k not in self.keyring.revoked]
            if fresh:
                self.keyring.revoke(fresh)
        self._decisions = {}

    def acl_stale(self) -> bool:
        return self.enabled and self.monotonic() - self._acl_at > ACL_REFRESH_S

    def must_confirm(self) -> bool:
        """True when identities must be confirmed before anything is allowed (they are older
        than REVOCATION_CONFIRM_S and a refresh is possible)."""
        return (self.enabled and self.fetch_acl is not None
                and self.monotonic() - self._acl_at > REVOCATION_CONFIRM_S)

    async def confirm(self) -> None:
        """Bring the identities up to date, waiting at most REVOCATION_WAIT_S; one refresh
        at a time, shared by every caller. A refresh that has run longer than that (the
        authority is slow or down) is not waited for again: calls go on with what is known."""
        import asyncio

        if not self.must_confirm():
            return
        task = self._refreshing
        if task is None:
            self.refresh_soon()
            task = self._refreshing
        elif self.monotonic() - self._refresh_started > REVOCATION_WAIT_S:
            return
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), REVOCATION_WAIT_S)
        except Exception:  # noqa: BLE001 - timed out or failed: decide on what is known
            pass

    def chunk_gen(self, who: Principal) -> str:
        """What a chunk access token for ``who`` carries as its generation: the account's
        and its groups' version, so the token ends when either changes."""
        rec = (self.users or {}).get(who.user)
        return f"{rec[0]}/{rec[2]}" if rec is not None else who.gen

    def current(self, who: Principal) -> Principal:
        """``who`` as the directory has them now: Revoked when the user is gone, was
        re-created, or the key that signed the token was revoked; else with the user's
        current groups (a token's groups are what they were when it was signed)."""
        if not self.enabled or who is LOCAL_OPERATOR:
            return who
        if self.cut_off and not who.platform:  # the authority's push must still get through
            raise Revoked(f"this entry point ({self.name}) is waiting for the cluster's new "
                          f"keys: {self.cut_off}")
        if self.keyring is not None and who.key_id and who.key_id in self.keyring.revoked:
            raise Revoked("the token was signed by a key that was revoked; log in again")
        if who.platform or self.users is None:
            return who
        rec = self.users.get(who.user)
        if rec is None:
            raise UnknownUser(f"user {who.user!r} no longer exists")
        gen, groups, gv = rec
        if (who.scope or {}).get("kind") == "chunk":
            # A chunk access token was decided on the groups of its day: it ends with them.
            gen = f"{gen}/{gv}"
        if who.gen != gen:
            raise UnknownUser(f"the token belongs to an earlier account named {who.user!r} "
                          f"(removed since); log in again")
        return who if groups == who.groups else replace(who, groups=groups)

    async def refresh_acl(self) -> bool:
        if self.fetch_acl is None:
            return False
        self._refresh_no += 1
        number = self._refresh_no
        try:
            self.set_acl(await self.fetch_acl(self.platform_token(), self.acl_version))
            self.cut_off = ""
            self._fresh_no = max(self._fresh_no, number)
            return True
        except (BadCredentials, Denied) as e:
            # Our own proof is refused: our keys were revoked and the push of the new ones
            # missed us. Fail closed until they arrive (the authority pushes again).
            self.cut_off = f"its proof was refused ({type(e).__name__})"
            log.warning("%s: the identity service refuses this guard's proof: %s", self.name,
                        type(e).__name__)
            self._acl_at = self.monotonic() - ACL_REFRESH_S / 2
            return False
        except Exception as e:  # noqa: BLE001 - keep the entries we have; try again later
            log.warning("%s: fetching the ACL entries failed: %s", self.name, type(e).__name__)
            self._acl_at = self.monotonic() - ACL_REFRESH_S / 2
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
            who = self.current(Principal(c.user, tuple(c.groups), c.scope, c.expires_at,
                                         c.gen, c.key_id))
        except BadCredentials as e:
            self.counters["bad_credentials"] += 1
            if isinstance(e, Revoked):
                self.counters["revoked"] += 1
            self.report_denial("?", "authenticate", "-", type(e).__name__)
            raise
        if self.acl_stale():
            self._refresh_from_sync_code()
        return who

    def _refresh_from_sync_code(self) -> None:
        try:
            self.refresh_soon()
        except RuntimeError:  # no running event loop here: the next async caller refreshes
            pass

    async def aidentify(self, token) -> Principal:
        """``identify``, on identities confirmed within REVOCATION_CONFIRM_S, fetching the
        keyring again when the token's key is new to us."""
        arrived = self._refresh_no
        try:
            who = await self._identify_fetching_keys(token)
        except UnknownUser:
            # Removed -- or added since our last poll: ask once more (shared, rate limited).
            if self.fetch_acl is None:
                raise
            await self.refresh_before_denial(arrived)
            return self.identify(token)
        if who.platform or not self.must_confirm():
            return who  # the platform's own tokens end only with their key (pushed)
        await self.confirm()
        return self.identify(token)

    async def _identify_fetching_keys(self, token) -> Principal:
        try:
            return self.identify(token)
        except UnknownKey as e:
            if isinstance(e, Revoked) or self.fetch_keys is None or \
                    self.monotonic() - self._keys_at < KEYS_FETCH_INTERVAL_S:
                raise
            self._keys_at = self.monotonic()
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
        try:
            who = self.current(who)  # a principal cached on a connection is checked again
        except Revoked as e:
            self.counters["revoked"] += 1
            return Decision(False, str(e))
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
        allowed call never waits for the authority unless its identities are older than
        REVOCATION_CONFIRM_S), and once more, awaited, before a denial."""
        arrived = self._refresh_no
        if not who.platform:
            await self.confirm()
        d = self.decision(who, kind, resource, perm, owner)
        if d.allowed:
            if self.acl_stale():
                self.refresh_soon()
            self.counters["allowed"] += 1
            return d
        await self.refresh_before_denial(arrived)
        return self.check(who, kind, resource, perm, owner)

    def may_refresh_before_denial(self) -> bool:
        """True at most once per ACL_DENY_REFRESH_S: a flood of refused calls must not become
        a flood of fetches. (Synchronous callers; async ones use refresh_before_denial.)"""
        if self.fetch_acl is None or self.monotonic() - self._acl_deny_at <= ACL_DENY_REFRESH_S:
            return False
        self._acl_deny_at = self.monotonic()
        return True

    async def refresh_before_denial(self, since: int | None = None) -> None:
        """Before a denial: wait for a refresh of the entries that *starts after the call
        came*, so a grant (or a new user) the authority had before the call is seen. One
        such refresh at a time, shared by every call waiting; at most one per
        ACL_DENY_REFRESH_S (a call that comes sooner waits for the next one instead of being
        denied on stale entries -- a flood of refused calls is slowed, not turned into
        fetches). ``since``: ``refresh_no`` when the call came (a refresh started after it,
        for instance to confirm its identities, is enough); default now."""
        import asyncio

        if self.fetch_acl is None:
            return
        since = self._refresh_no if since is None else since
        slept = False
        for _ in range(3):  # a sleep, one refresh under way from before, ours
            if self._fresh_no > since:
                return
            if self._deny_refresh is None:
                gap = self._acl_deny_at + ACL_DENY_REFRESH_S - self.monotonic()
                if gap > 0 and not slept:
                    slept = True
                    await asyncio.sleep(min(gap, ACL_DENY_REFRESH_S))
                    continue
                self._start_deny_refresh()
            task, number = self._deny_refresh
            try:
                await asyncio.wait_for(asyncio.shield(task), ACL_FETCH_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - timed out: decide on what is known
                return
            if number > since:
                return  # asked after the call came (and failed, if _fresh_no is older)

    def _start_deny_refresh(self) -> None:
        import asyncio

        self._acl_deny_at = self.monotonic()

        async def run():
            try:
                await self.refresh_acl()
            finally:
                self._deny_refresh = None
        # refresh_acl numbers itself synchronously, before its first await
        task = asyncio.get_running_loop().create_task(run())
        self._deny_refresh = (task, self._refresh_no + 1)

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
        self._refresh_started = self.monotonic()

    async def authorize(self, token, kind: str, resource: str, perm: str,
                        owner: str | None = None) -> Principal:
        who = await self.aidentify(token)
        await self.acheck(who, kind, resource, perm, owner)
        return who

    def report_denial(self, who: str, action: str, resource: str, detail: str) -> None:
        """Send a denial to the trail: at most REPORTS_PER_S_MAX per second (a client
        hammering with a bad token must not become a flood of calls to the authority); those
        over the budget are counted and the count goes with the next one sent."""
        if self.report is None:
            return
        now = self.monotonic()
        self._report_budget = min(REPORTS_PER_S_MAX, self._report_budget
                                  + max(0.0, now - self._report_at) * REPORTS_PER_S_MAX)
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


# ---------------------------------------------------------------- actor methods (defect 8)
# Ray does not say who called an actor method: every method that changes state takes a
# credential and checks it with one of these (deny by default). docs/zhongkui.md lists them.

def require_platform(guard: "Guard | None", cred, what: str, admin_ok: bool = False):
    """The caller of an actor method must be one of the platform's own actors (or, with
    ``admin_ok``, an administrator with an unscoped token); BadCredentials or Denied
    otherwise. Nothing is asked when ``guard`` is off (every caller is the operator)."""
    if guard is None or not guard.enabled:
        return None
    who = guard.identify(cred)
    if who.platform or (admin_ok and who.admin and who.scope is None):
        return who
    guard.report_denial(who.user, what, f"actor:{guard.name}",
                        "not a platform actor" + (" nor an administrator" if admin_ok else ""))
    raise Denied(f"user {who.user!r} may not {what}: the platform's own actors only"
                 + (" (or an administrator)" if admin_ok else ""))


def require_capability(expected: str, given, what: str) -> None:
    """A per-job (or per-replica) call: the caller must present the token this actor was
    created with (its job's scoped token), compared in constant time. Nothing is asked when
    the actor has none (access control off)."""
    import hmac

    if not expected:
        return
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Denied(f"{what}: only the job's own master and workers may call this "
                     f"(the call did not carry the job's token)")

