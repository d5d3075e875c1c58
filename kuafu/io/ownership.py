"""Who owns a service name at Kuafu, read from Nuwa (the decisions are
``kuafu.core.routing``'s).

With access control on, a name registered as a Fuxi service (FuxiMaster's record
``<records_root>/services/<name>``, its owner in ``<records_root>/service-owners/<name>``) is
served by that service's replicas and administrators; any other name is claimed by its first
attacher (``/kuafu/claims/<name>``, persistent, at most ``CLAIMS_MAX``) and stays theirs until
they release it. Without Nuwa the claims are kept in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict

from kuafu.core import routing
from kuafu.errors import BadRequest, Denied, Overloaded
from kuafu.io.watcher import NUWA_TIMEOUT_S

CLAIMS_MAX = 10_000                 # names claimed at Kuafu (unregistered with Fuxi), in all
CLAIMS_PATH = "/kuafu/claims/"      # persistent: a claimed name stays its claimer's
SERVICE_RECORDS_ROOT = "/fuxi"      # FuxiMaster's store in Nuwa: <root>/services/<name> is a
#                                     registered service, <root>/service-owners/<name> its owner


class Ownership:
    """``watcher.nuwa`` is read when a decision is made (None: no Nuwa, claims in memory);
    ``registry(name)`` -> {"owner": user} or None replaces FuxiMaster's records (tests)."""

    def __init__(self, guard, watcher, counters: dict, *, claim_policy: str = "signed-in",
                 registry=None, records_root: str = SERVICE_RECORDS_ROOT):
        if claim_policy not in routing.CLAIM_POLICIES:
            raise BadRequest(f"claim_policy={claim_policy!r}: expected one of "
                             f"{routing.CLAIM_POLICIES}")
        self.guard = guard
        self.watcher = watcher
        self.counters = counters
        self.claim_policy = claim_policy
        self.registry = registry
        self.records_root = records_root.rstrip("/")
        self.claims: OrderedDict[str, str] = OrderedDict()  # without Nuwa: name -> owner

    @property
    def nuwa(self):
        return self.watcher.nuwa

    def deny(self, who, svc: str, refusal: routing.Refusal) -> Denied:
        self.counters["denied"] += 1
        self.guard.report_denial(who.user, "attach", f"service:{svc}", refusal.why)
        return Denied(f"{who.user!r} may not attach {svc!r}: {refusal.why}")

    async def owner_for(self, svc: str, who) -> str:
        """The owner the endpoint is published with, or Denied. A name registered as a Fuxi
        service is served only by that service's replicas (a token scoped to it, of its
        owner) and administrators; a free name is claimed by its first attacher (if
        ``claim_policy`` allows) and stays theirs; others need ``manage`` on it."""
        rec = await self.registration(svc)
        if rec is not None:
            owner = routing.registered_owner(who, svc, rec)
            if isinstance(owner, routing.Refusal):
                raise self.deny(who, svc, owner)
            return owner
        refusal = routing.scope_refusal(who, svc)
        if refusal is not None:
            raise self.deny(who, svc, refusal)
        claim = await self.claim_of(svc)
        if claim is None:
            refusal = routing.claim_refusal(
                who, svc, self.claim_policy,
                lambda: self.guard.decision(who, "service", svc, "manage").allowed)
            if refusal is not None:
                raise self.deny(who, svc, refusal)
            claim = await self.claim(svc, who.user)
        if routing.claimer_may_serve(who, svc, claim):
            return claim
        if self.guard.decision(who, "service", svc, "manage", claim).allowed:
            return claim
        await self.guard.refresh_before_denial()
        if self.guard.decision(who, "service", svc, "manage", claim).allowed:
            return claim
        raise self.deny(who, svc, routing.claimed_refusal(claim))

    async def registration(self, svc: str) -> dict | None:
        """FuxiMaster's record of ``svc`` as a registered service ({"owner": user}), or None."""
        if self.registry is not None:
            return await self.registry(svc)
        if self.nuwa is None:
            return None
        from nuwa import errors as NE

        try:
            await asyncio.wait_for(self.nuwa.get(f"{self.records_root}/services/{svc}"),
                                   NUWA_TIMEOUT_S)
        except NE.NoNode:
            return None
        try:
            value, _ = await asyncio.wait_for(
                self.nuwa.get(f"{self.records_root}/service-owners/{svc}"),
                NUWA_TIMEOUT_S)
        except NE.NoNode:
            value = b""  # registered a moment ago: its owner is being written
        return {"owner": routing.owner_from_record(value)}

    async def claim_of(self, svc: str) -> str | None:
        if self.nuwa is None:
            return self.claims.get(svc)
        from nuwa import errors as NE

        try:
            value, _ = await asyncio.wait_for(self.nuwa.get(CLAIMS_PATH + svc),
                                              NUWA_TIMEOUT_S)
        except NE.NoNode:
            return None
        return routing.claimer_from_record(svc, value, CLAIMS_PATH)

    async def claim(self, svc: str, user: str) -> str:
        """Claim ``svc`` for ``user``; returns the owner (another's, if they were first)."""
        if self.nuwa is None:
            if svc not in self.claims and len(self.claims) >= CLAIMS_MAX:
                raise Overloaded(f"{CLAIMS_MAX} names are claimed (CLAIMS_MAX)")
            return self.claims.setdefault(svc, user)
        from nuwa import errors as NE

        try:
            n = len(await asyncio.wait_for(self.nuwa.list(CLAIMS_PATH),
                                           NUWA_TIMEOUT_S))
        except NE.NoNode:
            n = 0
        if n >= CLAIMS_MAX:
            raise Overloaded(f"{n} names are claimed at Kuafu (CLAIMS_MAX={CLAIMS_MAX}); "
                             f"register the service with Fuxi or release a claim")
        value = json.dumps({"user": user, "at": time.time()}).encode()
        try:
            await asyncio.wait_for(self.nuwa.create(CLAIMS_PATH + svc, value, parents=True),
                                   NUWA_TIMEOUT_S)
            return user
        except NE.NodeExists:  # someone else was first
            owner = await self.claim_of(svc)
            return owner if owner is not None else user

    async def release(self, svc: str, who, has_endpoints) -> None:
        """Free ``svc``'s claim (its claimer or an administrator, once no endpoint is left)."""
        if self.guard is None:
            raise BadRequest("with access control off names are not claimed")
        claim = await self.claim_of(svc)
        if claim is None:
            raise BadRequest(f"{svc!r} is not claimed")
        refusal = routing.release_refusal(who, svc, claim)
        if refusal is not None:
            raise self.deny(who, svc, refusal)
        if has_endpoints():
            raise BadRequest(f"{svc!r} still has endpoints; detach them first")
        if self.nuwa is None:
            self.claims.pop(svc, None)
        else:
            from nuwa import errors as NE

            with contextlib.suppress(NE.NoNode):
                await asyncio.wait_for(self.nuwa.delete(CLAIMS_PATH + svc),
                                       NUWA_TIMEOUT_S)
