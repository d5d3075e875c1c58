"""Guards for the platform's actors (Nuwa replicas, Pangu masters and chunkservers, Kuafu
proxies): keys and ACL entries fetched from FuxiMaster's identity service, denials sent to its
audit trail. Every fetch proves itself with the actor's own platform token."""

from __future__ import annotations

import asyncio
import logging

from zhongkui.guard import ACL_FETCH_TIMEOUT_S, KEYS_FETCH_TIMEOUT_S, Guard

log = logging.getLogger(__name__)


class _Master:
    """FuxiMaster's handle in ``namespace``, looked up when first needed and again after a
    failure (it may have restarted)."""

    def __init__(self, namespace: str | None):
        self.namespace = namespace
        self.handle = None

    def get(self):
        import ray

        from base.cluster import MASTER_NAME

        if self.handle is None:
            self.handle = ray.get_actor(MASTER_NAME, namespace=self.namespace)
        return self.handle

    async def call(self, method: str, timeout_s: float, *args):
        ref = getattr(self.get(), method).remote(*args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)
        except Exception:
            self.handle = None
            raise


def make_guard(auth: dict | None, name: str, namespace: str | None) -> Guard:
    """A guard that knows where FuxiMaster is (when ``auth`` is enabled)."""
    if not (auth or {}).get("enabled"):
        return Guard(auth, name=name)
    master = _Master(namespace)

    async def fetch_keys(proof: str) -> dict:
        return await master.call("auth_keys", KEYS_FETCH_TIMEOUT_S, proof)

    async def fetch_acl(proof: str, have_version: int) -> dict:
        return await master.call("auth_acl", ACL_FETCH_TIMEOUT_S, proof, have_version)

    def report(proof: str, rec: dict) -> None:
        try:
            master.get().auth_record.remote(proof, rec)  # fire and forget
        except Exception as e:  # noqa: BLE001 - no master right now: the denial still holds
            master.handle = None
            log.info("could not send a denial to the audit trail: %s", type(e).__name__)

    return Guard(auth, name=name, fetch_keys=fetch_keys, fetch_acl=fetch_acl, report=report)


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

