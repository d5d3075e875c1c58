"""ZhongkuiAuthority: the cluster's identity service as its own actor (one per cluster, named
``AUTHORITY_NAME`` in the cluster's namespace, detached under ``fuxi up``, no CPU), started by
``fuxi.runtime`` before FuxiMaster. It holds ``zhongkui.authority.Authority`` -- keys, users,
ACL entries, the audit trail -- and serves:

    the platform's actors (a platform token)   keys, acl, record
    ``fuxi up`` (a platform token)              bootstrap
    users (their token, or their password)      login, whoami, users, user_add, user_rm,
                                                user_groups, passwd, grant, revoke, restrict,
                                                acl_show, rotate, audit, approve
    anyone                                      mode

Two things it does not know, it learns from the **registry**, the actor named at start
(FuxiMaster, by name: zhongkui imports nothing above it):

- who owns a resource (a job, a service, a Nuwa path, a Pangu file), which decides who may
  grant access to it: ``await registry.owner_of(proof, kind, resource)``. An owner that
  cannot be learned is none: only administrators may grant then (deny by default);
- the registry decides on its own resources and signs its jobs' and services' tokens from
  the entries and identities: every change is pushed to it (``zk_set_acl``), awaited (at most
  ACL_PUSH_TIMEOUT_S), before the change is answered; it polls as every guard does too.

Key rotation hands the new keyring to every actor whose name starts with one of
``key_holders`` (the runtime names them: Nuwa replicas, Pangu masters and chunkservers, Kuafu
proxies, FuxiMaster) in parallel, never blocking this actor's loop; those that missed it are
pushed to again in the background."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Callable

import ray

from base import actors
from zhongkui.authority import Authority
from zhongkui.files import private_files
from zhongkui.guard import require_platform
from zhongkui.shell import AUTHORITY_NAME, push_all

__all__ = ["AUTHORITY_NAME", "ZhongkuiAuthority"]

log = logging.getLogger(__name__)

KEYS_PUSH_TIMEOUT_S = 10.0       # per platform actor, after a key rotation
KEYS_PUSH_CONCURRENCY_MAX = 32   # pushes in flight at once (each awaited, none blocking)
KEYS_PUSH_RETRIES_MAX = 5        # an actor that missed the push is retried this often...
KEYS_PUSH_RETRY_S = 5.0          # ...this far apart, in the background
ACL_PUSH_TIMEOUT_S = 5.0         # the registry is told a change before it is answered
OWNER_LOOKUP_TIMEOUT_S = 10.0    # asking the registry who owns a resource
REGISTRY_LOOKUP_TIMEOUT_S = 10.0 # finding a named actor (a GCS call, off the loop)


@ray.remote(num_cpus=0, max_concurrency=256)
class ZhongkuiAuthority:
    def __init__(self, store: Callable, keys_path: str | None, audit_path: str | None,
                 enabled: bool, registry: str | None = None, key_holders: tuple = ()):
        """``store``: a function of a token source returning the state store (users and
        ACL entries; Nuwa under ``fuxi up``); ``registry``: the name of the actor that
        knows owners and is told every change; ``key_holders``: name prefixes of the
        actors a rotation hands the new keys to."""
        private_files()  # keys, the audit trail: 0600/0700 from creation (issue 14)
        self.enabled = bool(enabled)
        self.authority = Authority(store, keys_path, audit_path, enabled=self.enabled)
        self.registry_name = registry
        self.key_holders = tuple(key_holders)
        self._registry = None
        self._tasks: set = set()  # background pushes (asyncio keeps weak references only)
        # Every call into the Authority (scrypt, the store's Nuwa writes, the audit file) runs
        # on this one thread: off the event loop, and one at a time, as on the loop before.
        self._serial = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zhongkui")

    async def _do(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the authority's own thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(
            self._serial, functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------ the platform's actors
    def mode(self) -> dict:
        return {"enabled": self.enabled}

    async def keys(self, proof: str) -> dict:
        return await self._do(self.authority.keys_for_platform, proof)

    async def acl(self, proof: str, have_version: int | None = None) -> dict:
        return await self._do(self.authority.acl_for_platform, proof, have_version)

    async def record(self, proof: str, rec: dict) -> None:
        await self._do(self.authority.record_from_platform, proof, rec)

    async def bootstrap(self, cred: str | None = None) -> dict | None:
        """The first administrator's credentials, for `fuxi up` (which proves itself with a
        platform token signed with the keys it made): nobody else may take them."""
        out = await self._do(self._bootstrap, cred)
        await self._tell_registry()
        return out

    def _bootstrap(self, cred):
        if self.enabled:
            try:
                require_platform(self.authority.guard, cred, "create the first administrator")
            except Exception as e:
                self.authority.audit.record("?", "create the first administrator",
                                            "zhongkui", "denied", type(e).__name__)
                raise
        return self.authority.bootstrap()

    # ------------------------------------------------------------ identities
    async def login(self, user: str, password: str) -> str:
        return await self._do(self.authority.login, user, password)

    async def whoami(self, token: str) -> dict:
        return await self._do(self.authority.whoami, token)

    async def users(self, token: str) -> list[dict]:
        return await self._do(self.authority.list_users, token)

    async def user_add(self, token: str, name: str, password: str, groups: list) -> dict:
        out = await self._do(self.authority.add_user, token, name, password, groups)
        await self._tell_registry()
        return out

    async def user_rm(self, token: str, name: str) -> None:
        await self._do(self.authority.remove_user, token, name)
        await self._tell_registry()

    async def user_groups(self, token: str, name: str, groups: list) -> dict:
        out = await self._do(self.authority.set_groups, token, name, groups)
        await self._tell_registry()
        return out

    async def passwd(self, token: str, name: str, password: str) -> None:
        return await self._do(self.authority.set_password, token, name, password)

    async def audit(self, token: str, who: str | None = None, result: str | None = None) -> list:
        return await self._do(self.authority.audit_records, token, who=who, result=result)

    async def approve(self, token: str | None, action: str, resource: str) -> str:
        """An administrator's operation another entry point performs (``fuxi debug kill``):
        Denied unless an administrator asks (when access control is on); recorded either way."""
        return await self._do(self.authority.approve_admin, token, action, resource)

    # ------------------------------------------------------------ access
    async def grant(self, token: str, kind: str, resource: str, principal: str,
                    perms: list) -> dict:
        owner = await self._owner_of(kind, resource)
        out = await self._do(self.authority.grant, token, kind, resource, principal, perms,
                             owner=owner)
        await self._tell_registry()
        return out

    async def revoke(self, token: str, kind: str, resource: str, principal: str,
                     perms: list | None = None) -> dict | None:
        owner = await self._owner_of(kind, resource)
        out = await self._do(self.authority.revoke, token, kind, resource, principal, perms,
                             owner=owner)
        await self._tell_registry()
        return out

    async def restrict(self, token: str, path: str, on: bool = True) -> list:
        owner = await self._owner_of("nuwa", path)
        out = await self._do(self.authority.restrict, token, path, on, owner=owner)
        await self._tell_registry()
        return out

    async def acl_show(self, token: str, kind: str | None = None,
                       resource: str | None = None) -> dict:
        return await self._do(self.authority.acl_show, token, kind, resource)

    # ------------------------------------------------------------ keys
    async def rotate(self, token: str, revoke_old: bool = False) -> str:
        """A new signing key. Every platform actor is handed the new keyring before anything
        is signed with the new key (proved with a token signed with the old one); an actor
        that misses it fetches the keyring when it first meets the new key, or, after
        ``revoke_old`` (when its own proof no longer counts), is pushed to again in the
        background. The pushes run concurrently (at most KEYS_PUSH_CONCURRENCY_MAX in
        flight, each bounded by KEYS_PUSH_TIMEOUT_S), never blocking this actor's loop."""
        proof, kid, doc = await self._do(self._rotate, token, revoke_old)
        missed = await self._push_keys(proof, doc)
        if missed:
            self._background(self._push_again(proof, doc, missed))
        await self._tell_registry()  # the revoked key ids, with the identities
        return kid

    def _rotate(self, token: str, revoke_old: bool):
        a = self.authority
        proof = a.guard.platform_token()  # signed with the key everyone has
        kid = a.rotate_keys(token, revoke_old=revoke_old)
        a.guard.renew_platform_token()  # from now on signed with the new key
        return proof, kid, a.keyring.to_doc()

    async def _push_keys(self, proof: str, doc: dict, only: list[str] | None = None) -> list[str]:
        """Hand ``doc`` to every key holder; returns the names that did not take it."""
        ns = ray.get_runtime_context().namespace
        holders = self.key_holders

        def targets() -> list:
            from ray.util import list_named_actors

            out = []
            for a in list_named_actors(all_namespaces=True):
                name = a["name"]
                if a.get("namespace") != ns or not name.startswith(holders) or (
                        only and name not in only):
                    continue
                try:
                    out.append((name, ray.get_actor(name, namespace=ns)))
                except Exception:  # noqa: BLE001 - gone meanwhile
                    continue
            return out

        if not holders:
            return []
        found = await asyncio.to_thread(targets)  # GCS look-ups block: not on this loop

        async def push(handle):
            return await actors.acall(handle.zk_set_keys, proof, doc,
                                      timeout_s=KEYS_PUSH_TIMEOUT_S)
        return await push_all(found, push, KEYS_PUSH_CONCURRENCY_MAX, KEYS_PUSH_TIMEOUT_S)

    async def _push_again(self, proof: str, doc: dict, missed: list[str]) -> None:
        for _ in range(KEYS_PUSH_RETRIES_MAX):
            await asyncio.sleep(KEYS_PUSH_RETRY_S)
            missed = await self._push_keys(proof, doc, only=missed)
            if not missed:
                return
        log.warning("the new keys never reached %s; they refuse every caller until they "
                    "restart", missed)

    def _background(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ the registry
    async def _registry_handle(self):
        if self.registry_name is None:
            return None
        if self._registry is None:
            ns = ray.get_runtime_context().namespace
            try:
                self._registry = await asyncio.wait_for(asyncio.to_thread(
                    ray.get_actor, self.registry_name, namespace=ns), REGISTRY_LOOKUP_TIMEOUT_S)
            except (ValueError, asyncio.TimeoutError):
                return None  # not started yet: it learns everything when it starts
        return self._registry

    async def _owner_of(self, kind: str, resource: str) -> str | None:
        """Who owns a resource, as the registry knows it; None when it cannot say (then
        only administrators may grant: deny by default)."""
        handle = await self._registry_handle()
        if handle is None:
            return None
        try:
            proof = await self._do(self.authority.guard.platform_token)
            return await actors.acall(handle.owner_of, proof, kind, resource,
                                      timeout_s=OWNER_LOOKUP_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - no owner known: administrators only
            self._registry = None
            log.warning("could not ask %s who owns %s:%.60s: %s", self.registry_name, kind,
                        resource, type(e).__name__)
            return None

    async def _tell_registry(self) -> None:
        """The entries and identities as they are now, to the registry, before the change
        that made them is answered (its decisions and scoped tokens use them at once)."""
        if not self.enabled:
            return
        handle = await self._registry_handle()
        if handle is None:
            return
        try:
            proof, doc = await self._do(
                lambda: (self.authority.guard.platform_token(), self.authority.acl_doc()))
            await actors.acall(handle.zk_set_acl, proof, doc, timeout_s=ACL_PUSH_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - it polls too: it learns within ACL_REFRESH_S
            self._registry = None
            log.warning("could not hand the new entries to %s: %s", self.registry_name,
                        type(e).__name__)
