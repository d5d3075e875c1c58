"""A Kuafu proxy's view of Nuwa: the endpoints it follows and those it publishes.

The proxy learns every endpoint in the cluster from **one recursive watch** on
``/services/`` (a listing after the watch starts, then events), applied to its
``EndpointTable`` -- no lookups per call. When it knows no endpoint of a service it asks Nuwa
once (``look_up``) before failing the call, because the service may have been registered a
moment ago; a miss is remembered (``MissCache``). It publishes itself under
``/kuafu/proxies/`` and each endpoint attached to it under ``/services/<svc>/<endpoint>``,
as ephemeral nodes of its own session, and publishes them again after a session loss."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from kuafu.core import routing
from kuafu.core.routing import SERVICES_PATH
from kuafu.errors import Overloaded

log = logging.getLogger("kuafu.io.proxy")  # the proxy's log, as before the split

PROXIES_PATH = "/kuafu/proxies/"
NUWA_TIMEOUT_S = 10.0
LOOKUPS_IN_FLIGHT_MAX = 256         # services being looked up in Nuwa at once
SESSION_CHECK_PERIOD_S = 1.0        # how often the proxy checks its Nuwa session is the same
REWATCH_PAUSE_S = 0.5               # pause before watching /services again after an error


class EndpointWatcher:
    def __init__(self, proxy_id: str, node: str, endpoints: routing.EndpointTable,
                 nuwa_addresses, token, counters: dict):
        self.proxy_id, self.node = proxy_id, node
        self.counters = counters
        self.endpoints = endpoints
        self.nuwa_addresses = nuwa_addresses
        self.token = token  # the platform token (a callable) or "" without authentication
        self.nuwa = None    # an AsyncNuwa once started
        self.misses = routing.MissCache()
        self.lookups: dict[str, list] = {}  # service -> the requests waiting for its lookup
        self.published: dict[str, str] = {}  # endpoint name -> Nuwa path
        self.info: dict = {}  # what the proxy publishes about itself
        self.loop = None
        self.tasks: list[asyncio.Task] = []

    async def start(self, info: dict) -> None:
        from nuwa.client import AsyncNuwa

        self.loop = asyncio.get_running_loop()
        self.nuwa = AsyncNuwa([tuple(a) for a in self.nuwa_addresses], NUWA_TIMEOUT_S,
                              creator=f"kuafu-proxy:{self.proxy_id}", token=self.token)
        await self._ensure_dir(SERVICES_PATH)
        await self._ensure_dir(PROXIES_PATH)
        self.info = info
        await self._publish_self()
        self.tasks.append(self.loop.create_task(self._follow()))
        self.tasks.append(self.loop.create_task(self._keep_published()))

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.nuwa is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nuwa.close(), NUWA_TIMEOUT_S)

    # ------------------------------------------------------------ publishing
    async def _ensure_dir(self, path: str) -> None:
        from nuwa import errors as NE

        with contextlib.suppress(NE.NodeExists):
            await self.nuwa.create(path, b"", parents=True)

    async def _create_ephemeral(self, path: str, value: bytes) -> None:
        from nuwa import errors as NE

        try:
            await self.nuwa.create(path, value, ephemeral=True, parents=True)
        except NE.NodeExists:
            # Left by an earlier life of this proxy whose session has not expired yet.
            with contextlib.suppress(NE.NoNode):
                await self.nuwa.delete(path)
            await self.nuwa.create(path, value, ephemeral=True, parents=True)

    async def _publish_self(self) -> None:
        await self._create_ephemeral(f"{PROXIES_PATH}{self.proxy_id}",
                                     json.dumps(self.info).encode())

    async def publish(self, ep: routing.Endpoint) -> None:
        path = f"{SERVICES_PATH}{ep.service}/{ep.name}"
        await self._create_ephemeral(path, ep.record(self.proxy_id, self.node))
        self.published[ep.name] = path

    async def unpublish(self, name: str) -> None:
        from nuwa import errors as NE

        path = self.published.pop(name, None)
        if path is not None and self.nuwa is not None:
            with contextlib.suppress(NE.NoNode, NE.NuwaError):
                await self.nuwa.delete(path)

    def withdraw_soon(self, name: str) -> None:
        """Unpublish ``name`` in the background, if it was published."""
        if name in self.published and self.nuwa is not None:
            self.loop.create_task(self.unpublish(name))

    async def _keep_published(self) -> None:
        """After a Nuwa session loss (a partition longer than its TTL), publish again."""
        session_id = None
        while True:
            await asyncio.sleep(SESSION_CHECK_PERIOD_S)
            try:
                s = await self.nuwa.default_session()
                if session_id is not None and s.id != session_id:
                    await self._publish_self()
                    for ep in list(self.endpoints.by_name.values()):
                        if ep.name in self.published:
                            await self.publish(ep)
                session_id = s.id
            except Exception as e:  # noqa: BLE001 - keep trying
                log.warning("kuafu proxy %s: Nuwa session check failed: %s", self.proxy_id, e)

    # ------------------------------------------------------------ following
    async def _follow(self) -> None:
        """Keep the remote endpoints equal to /services in Nuwa: watch first, then list."""
        while True:
            try:
                w = await self.nuwa.watch(SERVICES_PATH, recursive=True)
                self.endpoints.replace_remote(await self._list_services())
                while True:
                    ev = await w.__anext__()
                    self.endpoints.apply(ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - re-watch and re-list
                log.warning("kuafu proxy %s: watch on %s ended (%s); re-watching",
                            self.proxy_id, SERVICES_PATH, e)
                await asyncio.sleep(REWATCH_PAUSE_S)

    async def _list_services(self) -> dict:
        from nuwa import errors as NE

        out: dict[str, dict[str, routing.Endpoint]] = {}
        for svc in await self.nuwa.list(SERVICES_PATH):
            if not svc.endswith("/"):
                continue
            svc = svc[:-1]
            try:
                names = await self.nuwa.list(f"{SERVICES_PATH}{svc}/")
            except NE.NoNode:
                continue
            for name in names:
                try:
                    value, _ = await self.nuwa.get(f"{SERVICES_PATH}{svc}/{name}")
                except NE.NoNode:
                    continue
                ep = routing.endpoint_from_record(svc, name, value, self.proxy_id)
                if ep is not None:
                    out.setdefault(svc, {})[name] = ep
        return out

    # ------------------------------------------------------------ lookups on a miss
    def look_up(self, svc: str, r, done) -> None:
        """Ask Nuwa for ``svc``'s endpoints on behalf of ``r``; ``done(waiting)`` is called
        with every request that waited for this lookup. Overloaded when
        LOOKUPS_IN_FLIGHT_MAX other services are being looked up."""
        waiting = self.lookups.get(svc)
        if waiting is not None:
            waiting.append(r)
            return
        if len(self.lookups) >= LOOKUPS_IN_FLIGHT_MAX:
            raise Overloaded(
                f"no endpoint of {svc!r} is known here and {len(self.lookups)} other "
                f"services are being looked up in Nuwa (LOOKUPS_IN_FLIGHT_MAX); not sent")
        self.lookups[svc] = [r]
        self.loop.create_task(self._look(svc, done))

    async def _look(self, svc: str, done) -> None:
        from nuwa import errors as NE

        found = {}
        try:
            path = f"{SERVICES_PATH}{svc}/"
            for name in await self.nuwa.list(path):
                with contextlib.suppress(NE.NoNode):
                    value, _ = await self.nuwa.get(path + name)
                    ep = routing.endpoint_from_record(svc, name, value, self.proxy_id)
                    if ep is not None:
                        found[name] = ep
        except Exception:  # noqa: BLE001 - a failed lookup is a miss
            pass
        if found:
            self.endpoints.merge_found(svc, found)
        else:
            self.note_miss(svc)
        done(self.lookups.pop(svc, []))

    def note_miss(self, svc: str) -> None:
        self.counters["misses_evicted"] += self.misses.note(svc, self.loop.time())

    def sweep(self, now: float) -> None:
        self.misses.sweep(now)
