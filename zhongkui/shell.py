"""Guards for the platform's actors (FuxiMaster, Nuwa replicas, Pangu masters and
chunkservers, Kuafu proxies): keys and ACL entries fetched from the authority actor
(``zhongkui.actor.ZhongkuiAuthority``, named AUTHORITY_NAME in the cluster's namespace),
denials sent to its audit trail. Every fetch proves itself with the actor's own platform
token. ``Delegate`` is what an entry point that also hands out scoped tokens holds
(FuxiMaster: its jobs and services)."""

from __future__ import annotations

import asyncio
import logging

from zhongkui.core.tokens import TTL_S_DEFAULT, TTL_S_MAX
from zhongkui.errors import Denied
from zhongkui.guard import ACL_FETCH_TIMEOUT_S, KEYS_FETCH_TIMEOUT_S, Guard, Principal
from zhongkui.keys import Keyring

log = logging.getLogger(__name__)

AUTHORITY_NAME = "ZhongkuiAuthority"  # the authority's actor, in the cluster's namespace
SCOPED_TOKEN_TTL_S_MIN = 60.0


class _Authority:
    """The authority actor's handle in ``namespace``, looked up when first needed and again
    after a failure (it may have restarted)."""

    def __init__(self, namespace: str | None):
        self.namespace = namespace
        self.handle = None

    def get(self):
        import ray

        if self.handle is None:
            self.handle = ray.get_actor(AUTHORITY_NAME, namespace=self.namespace)
        return self.handle

    async def call(self, method: str, timeout_s: float, *args):
        ref = getattr(self.get(), method).remote(*args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except Exception:
            self.handle = None
            raise


def make_guard(auth: dict | None, name: str, namespace: str | None,
               keyring: Keyring | None = None) -> Guard:
    """A guard that knows where the authority is (when ``auth`` is enabled). ``keyring``:
    the keys, when not in ``auth`` (FuxiMaster loads them from their file)."""
    if not (auth or {}).get("enabled"):
        return Guard(auth, name=name, keyring=keyring)
    authority = _Authority(namespace)

    async def fetch_keys(proof: str) -> dict:
        return await authority.call("keys", KEYS_FETCH_TIMEOUT_S, proof)

    async def fetch_acl(proof: str, have_version: int) -> dict:
        return await authority.call("acl", ACL_FETCH_TIMEOUT_S, proof, have_version)

    def report(proof: str, rec: dict) -> None:
        try:
            authority.get().record.remote(proof, rec)  # fire and forget
        except Exception as e:  # noqa: BLE001 - no authority right now: the denial still holds
            authority.handle = None
            log.info("could not send a denial to the audit trail: %s", type(e).__name__)

    return Guard(auth, name=name, fetch_keys=fetch_keys, fetch_acl=fetch_acl, report=report,
                 keyring=keyring)


def fetch_acl_now(guard: Guard, namespace: str | None, timeout_s: float) -> None:
    """Learn the entries and identities before serving (blocking: for an actor's
    constructor, before its event loop runs). Raises when the authority cannot be reached:
    an entry point that decides on identities it never learned would let removed users in."""
    import ray

    from base import actors

    handle = ray.get_actor(AUTHORITY_NAME, namespace=namespace)
    guard.set_acl(actors.call(handle.acl, guard.platform_token(), None, timeout_s=timeout_s))


class _Trail:
    """The audit trail as an entry point writes to it: its denials go to the authority's
    one trail, at most REPORTS_PER_S_MAX a second (``Guard.report_denial``)."""

    def __init__(self, guard: Guard):
        self.guard = guard

    def record(self, who: str, action: str, resource: str, result: str = "denied",
               detail: str = "") -> None:
        self.guard.report_denial(who, action, resource, detail if result == "denied"
                                 else f"{result}: {detail}")


class Delegate:
    """What an entry point holds that decides on resources of its own and hands their code
    tokens (FuxiMaster: jobs and services): its guard, fed by the authority (which pushes
    every change of entries and identities to it before answering the change, so a grant,
    a new user or a removal counts here at once), the trail, and the signing of scoped
    tokens from the identities as the authority has them now."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.audit = _Trail(guard)

    def principal(self, token) -> Principal:
        """The verified caller (the local operator when authentication is off)."""
        return self.guard.identify(token)

    def check(self, who: Principal, kind: str, resource: str, perm: str,
              owner: str | None = None) -> None:
        """Allow, or raise Denied (sent to the trail)."""
        self.guard.check(who, kind, resource, perm, owner)

    def scoped_token(self, who: Principal | str, kind: str, ident: str,
                     ttl_s: float = TTL_S_DEFAULT) -> str:
        """A token for a job's instances or a service's replicas: they act as ``who``, with
        no more rights than that user. Signed from the identities as they are now (groups
        and the account's generation), never from what was stored beside a job or service:
        Denied when the user no longer exists -- or when no identities were learned yet."""
        if not self.guard.enabled:
            return ""
        user = who if isinstance(who, str) else who.user
        rec = (self.guard.users or {}).get(user)
        if rec is None:
            raise Denied(f"user {user!r} no longer exists: no token is signed for their "
                         f"{kind} {ident!r}")
        gen, groups, _ = rec
        return self.guard.keyring.sign(user, groups, now=self.guard.clock(),
                                       ttl_s=min(max(ttl_s, SCOPED_TOKEN_TTL_S_MIN), TTL_S_MAX),
                                       scope={"kind": kind, "id": ident}, gen=gen)


async def push_all(targets, push, concurrency_max: int, timeout_s: float) -> list[str]:
    """``await push(handle)`` for every ``(name, handle)`` in ``targets`` at once, at most
    ``concurrency_max`` in flight, each bounded by ``timeout_s``, never blocking the loop;
    returns the names that failed or timed out (a rotation's key push, issue 14 defect 11)."""
    gate = asyncio.Semaphore(concurrency_max)

    async def one(name, handle):
        async with gate:
            try:
                await asyncio.wait_for(push(handle), timeout_s)
                return None
            except Exception as e:  # noqa: BLE001 - retried, or it fetches the keys itself
                log.warning("could not hand the new keys to %s: %s", name, type(e).__name__)
                return name
    done = await asyncio.gather(*(one(n, h) for n, h in targets))
    return [n for n in done if n is not None]

