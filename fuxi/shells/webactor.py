"""FuxiWeb: the platform's HTTP endpoint on the head, an actor of its own.

``fuxi up`` starts it (detached, no CPU, next to FuxiMaster, named ``FuxiWeb``) with the
``--web-host`` / ``--web-port`` settings. It serves, from a ``fuxi.shells.web``
server in a thread of its own:

* ``GET /metrics`` -- every component's metrics (``fuxi.shells.scrape``), Prometheus text;
  ``?component=nuwa`` (repeatable) narrows it to some components;
* the web console (``fuxi.shells.console``): ``/``, ``/jobs``, ``/jobs/<id>``, ``/services``,
  ``/services/<name>``, ``/storage``, ``/coordination``, ``/login``, ``/logout``, ``/healthz``.

An actor of its own, rather than a thread in FuxiMaster, so a slow scrape or a flood of HTTP
clients never takes time from scheduling, and so a FuxiMaster restart does not take the
endpoint down. Ray restarts it if it dies; it binds the same port again (with port 0 it gets a
new one and rewrites the file_sd file and the cluster record's URL is then stale -- use a
fixed port in production).

It also writes ``$FUXI_HOME/<cluster>/prometheus_targets.json``, a Prometheus ``file_sd``
file: one target per component (``__param_component`` selects it), for those who scrape each
component on its own.
"""

from __future__ import annotations

import asyncio
import json
import os

import ray
from aiohttp import web

from base import metrics
from fuxi.shells.scrape import COMPONENTS, Scraper
from fuxi.shells.web import WEB_STOP_TIMEOUT_S, WebServer

WEB_NAME = "FuxiWeb"
WEB_PORT_DEFAULT = 9469  # `fuxi up --web-port` (or FUXI_WEB_PORT); 0 picks a free port
WEB_HOST_DEFAULT = "127.0.0.1"  # `fuxi up --web-host`; 0.0.0.0 to be reached from afar
FILE_SD_NAME = "prometheus_targets.json"
WEB_RESTARTS_MAX = 100
COMPONENT_PARAMS_MAX = 16  # ?component= values in one request
SCRAPE_TEXT_TIMEOUT_S = 30.0  # scrape_text(): one whole scrape for the alert rules
SCRAPES_WAITING_MAX = 16  # /metrics requests waiting for the one scrape in progress; more: 503


def file_sd_path(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_SD_NAME)


def file_sd(cluster: str, host: str, port: int) -> list[dict]:
    """The file_sd document: the aggregate endpoint, one target per component."""
    target = f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    return [{"targets": [target],
             "labels": {"cluster": cluster, "__param_component": c, "scraped_component": c}}
            for c in COMPONENTS]


@ray.remote(num_cpus=0, max_concurrency=4)
class FuxiWeb:
    def __init__(self, cluster: str, namespace: str, data_dir: str | None, host: str,
                 port: int, auth: bool = False):
        from fuxi.shells.console import ConsoleApp

        self.cluster, self.data_dir = cluster, data_dir
        self.scraper = Scraper(namespace)
        self.server = WebServer()
        if metrics.ENABLED:  # FUXI_METRICS=0: nothing recorded, nothing to serve
            self.server.route("GET", "/metrics", self._metrics)
        self.console = ConsoleApp(cluster, namespace, auth)
        self.console.routes(self.server)
        self.host, self.port = self.server.start_in_thread(host, port)
        self._scrape_lock: asyncio.Lock | None = None  # made on the server's loop
        self._waiting = 0  # requests for /metrics in or waiting for the scrape lock
        if data_dir:
            path = file_sd_path(data_dir)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(file_sd(cluster, self.host, self.port), f, indent=2)
            os.replace(tmp, path)

    def info(self) -> dict:
        return {"metrics": self.server.url + "/metrics" if metrics.ENABLED else None,
                "web": self.server.url, "console": self.console.info(), "host": self.host,
                "port": self.port, "pid": os.getpid(),
                "file_sd": file_sd_path(self.data_dir) if self.data_dir else None}

    def stop(self) -> None:
        self.server.stop()

    def scrape_text(self) -> str:
        """One scrape of every component, as ``/metrics`` would answer (FuxiMaster's alert
        rules read it); run on the server's loop, where the scraper lives."""
        return self.server.run(self._scrape_once(None), SCRAPE_TEXT_TIMEOUT_S)

    async def _scrape_once(self, wanted) -> str:
        if self._scrape_lock is None:
            self._scrape_lock = asyncio.Lock()
        async with self._scrape_lock:
            return await self.scraper.scrape(wanted)

    async def _metrics(self, request: web.Request) -> web.Response:
        wanted = request.query.getall("component", [])
        if len(wanted) > COMPONENT_PARAMS_MAX or any(c not in COMPONENTS for c in wanted):
            shown = [c[:40] for c in wanted[:COMPONENT_PARAMS_MAX]]
            return web.Response(status=400, text=f"component={shown}: expected at most "
                                f"{COMPONENT_PARAMS_MAX} of {list(COMPONENTS)}\n")
        if self._scrape_lock is None:
            self._scrape_lock = asyncio.Lock()
        if self._waiting >= SCRAPES_WAITING_MAX:
            return web.Response(status=503, text=f"{self._waiting} scrapes already waiting "
                                f"(SCRAPES_WAITING_MAX); try again\n")
        self._waiting += 1
        try:
            async with self._scrape_lock:  # one scrape at a time: a flood waits, never fans out
                text = await self.scraper.scrape(set(wanted) or None)
        finally:
            self._waiting -= 1
        return web.Response(body=text.encode("utf-8"),
                            headers={"Content-Type": metrics.CONTENT_TYPE})


def start_web(cluster: str, namespace: str, data_dir: str | None, host: str, port: int,
              node_id: str | None, timeout_s: float, auth: bool = False) -> dict:
    """Start FuxiWeb (detached, on ``node_id`` if given) and return its ``info()``."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from base import actors

    opts = {"name": WEB_NAME, "namespace": namespace, "lifetime": "detached",
            "get_if_exists": True, "max_restarts": WEB_RESTARTS_MAX}
    if node_id:
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
    handle = FuxiWeb.options(**opts).remote(cluster, namespace, data_dir, host, port, auth)
    return actors.call(handle.info, timeout_s=timeout_s)


def stop_web(namespace: str, data_dir: str | None) -> None:
    """Stop FuxiWeb (``fuxi down``) and remove its file_sd file."""
    import contextlib

    from base import actors

    handle = actors.named_actor(WEB_NAME, namespace)
    if handle is not None:
        with contextlib.suppress(Exception):
            actors.call(handle.stop, timeout_s=WEB_STOP_TIMEOUT_S)
        with contextlib.suppress(Exception):
            actors.kill(handle, restart=False)
    if data_dir:
        with contextlib.suppress(FileNotFoundError):
            os.remove(file_sd_path(data_dir))
