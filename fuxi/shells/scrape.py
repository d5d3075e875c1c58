"""Gathering every component's metrics for the head's ``/metrics`` endpoint.

Each scrape finds the platform's named actors in the cluster's namespace (cached for
``TARGETS_TTL_S``), asks each one the status call listed in ``TARGETS`` -- all at once, each
bounded by ``SCRAPE_CALL_TIMEOUT_S`` -- and turns the answers into one exposition:

* components that keep a ``base.metrics`` registry (FuxiMaster, Nuwa replicas, Pangu
  masters) answer ``metrics()`` with its Prometheus text, parsed here with
  ``prometheus_client.parser``;
* the others answer the status call they already had (a JobMaster's ``status``, a Kuafu
  proxy's ``stats``, a service replica's ``stats``, a chunkserver's or agent's ``info``),
  turned into metrics by ``fuxi.shells.observe``.

Every sample gets the labels ``component``, ``node`` (the Ray node, first 12 hex digits; a
metric that describes a node keeps its own) and ``instance`` (the actor). A component that does
not answer in time, or answers garbage, is left out of that scrape and counted in
``fuxi_scrape_skipped_total{target}`` (``target``: the component): a scrape never waits on a stuck actor.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from base import actors, metrics
from fuxi.shells import observe

SCRAPE_CALL_TIMEOUT_S = 2.0  # one component's answer; slower ones are skipped this scrape
TARGETS_TTL_S = 5.0  # how long the list of actors to ask is reused
DISCOVERY_TIMEOUT_S = 10.0  # listing the named actors (GCS calls, in a thread)
TARGETS_MAX = 2000  # actors asked in one scrape; more are skipped (and counted)
COMPONENT_TEXT_BYTES_MAX = 8 * 1024 * 1024  # one component's exposition; bigger is skipped
SCRAPE_SERIES_MAX = 200_000  # samples in one aggregated answer; more are dropped, counted

# (actor name prefix, component label, the method asked): the first matching prefix wins.
TARGETS = (
    ("FuxiMaster", "fuxi", "metrics"),
    ("jobmaster-", "jobmaster", "status"),
    ("nuwa-", "nuwa", "metrics"),
    ("pangu-master-", "pangu", "metrics"),
    ("pangu-cs-", "pangu_chunkserver", "info"),
    ("kuafu-proxy-", "kuafu", "stats"),
    ("fuxi-svc-", "service", "stats"),
    ("fuxi-agent-", "agent", "info"),
)
COMPONENTS = tuple(sorted({c for _, c, _ in TARGETS}))

SKIPPED = metrics.counter("fuxi_scrape_skipped_total",
                          "Components left out of a scrape (no answer in time, or garbage).",
                          labels=("target",), series_max=32)
SCRAPE_SECONDS = metrics.histogram("fuxi_scrape_duration_seconds",
                                   "Time to gather every component's metrics for /metrics.",
                                   buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
SCRAPE_TARGETS = metrics.gauge("fuxi_scrape_targets", "Actors asked in the last scrape.",
                               labels=("target",), series_max=32)


def component_of(name: str) -> tuple[str, str] | None:
    """(component, method) for an actor name, or None if it is not one we scrape."""
    for prefix, component, method in TARGETS:
        if prefix.endswith("-"):
            if name.startswith(prefix):
                return component, method
        elif name == prefix or (name.startswith(prefix + "-") and name[len(prefix) + 1:].isdigit()):
            return component, method  # FuxiMaster and its candidates FuxiMaster-2, ...
    return None


class _Families:
    """Metric families being merged from many components (by name; first type wins)."""

    def __init__(self):
        self.families: dict[str, Metric] = {}
        self.samples = 0
        self.dropped = 0

    def add_family(self, fam, extra: dict) -> None:
        have = self.families.get(fam.name)
        if have is None:
            have = self.families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
        elif have.type != fam.type:
            self.dropped += len(fam.samples)
            return
        for s in fam.samples:
            if self.samples >= SCRAPE_SERIES_MAX:
                self.dropped += 1
                continue
            labels = {**extra, **s.labels}  # a metric's own label (node=) wins
            have.add_sample(s.name, labels, s.value)
            self.samples += 1

    def render(self) -> str:
        reg = CollectorRegistry(auto_describe=False)

        class _Collected:
            def collect(inner):  # noqa: N805 - a collector object for this registry only
                return list(self.families.values())

        reg.register(_Collected())
        return generate_latest(reg).decode("utf-8")


class Scraper:
    """Finds the cluster's components and gathers their metrics (see the module docstring)."""

    def __init__(self, namespace: str, call_timeout_s: float = SCRAPE_CALL_TIMEOUT_S):
        self.namespace = namespace
        self.call_timeout_s = call_timeout_s
        self._targets: list[dict] = []
        self._targets_at = 0.0
        self._lock = asyncio.Lock()  # one discovery at a time
        self.last_skipped: list[str] = []
        self.node: str | None = None  # this process's Ray node (first 12 hex digits)

    def _discover(self) -> list[dict]:
        """Blocking (GCS calls): every named actor we scrape, its handle, node and restarts."""
        from ray.util import list_named_actors

        names = sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                       if a.get("namespace") == self.namespace and component_of(a["name"]))
        table = actors.actor_table(state="ALIVE")
        out = []
        for name in names[:TARGETS_MAX]:
            handle = actors.named_actor(name, self.namespace)
            if handle is None:
                continue
            row = table.get(actors.actor_id(handle), {})
            component, method = component_of(name)
            out.append({"name": name, "component": component, "method": method,
                        "handle": handle, "node": (row.get("Address") or {}).get("NodeID", ""),
                        "restarts": row.get("NumRestarts", 0)})
        for name in names[TARGETS_MAX:]:
            SKIPPED.inc(target=component_of(name)[0])
        return out

    async def targets(self) -> list[dict]:
        async with self._lock:
            if time.monotonic() - self._targets_at > TARGETS_TTL_S:
                self._targets = await asyncio.wait_for(asyncio.to_thread(self._discover),
                                                       DISCOVERY_TIMEOUT_S)
                self._targets_at = time.monotonic()
            return self._targets

    async def _ask(self, t: dict):
        method = getattr(t["handle"], t["method"])
        return await actors.acall(method, timeout_s=self.call_timeout_s)

    async def _ask_service(self, t: dict):
        stats, info = await asyncio.gather(
            actors.acall(t["handle"].stats, timeout_s=self.call_timeout_s),
            actors.acall(t["handle"].info, timeout_s=self.call_timeout_s))
        return {"stats": stats, "info": info}

    async def scrape(self, components: set[str] | None = None) -> str:
        """The exposition of every component (or only ``components``), plus this process's."""
        t0 = time.monotonic()
        try:
            targets = await self.targets()
        except Exception:  # noqa: BLE001 - no actor list: serve what this process has
            targets = []
            SKIPPED.inc(target="discovery")
        if components:
            targets = [t for t in targets if t["component"] in components]
        answers = await asyncio.gather(
            *((self._ask_service(t) if t["component"] == "service" else self._ask(t))
              for t in targets), return_exceptions=True)
        fams = _Families()
        skipped = []
        counts: dict = {c: 0 for c in COMPONENTS}
        restarts = []
        for t, answer in zip(targets, answers):
            counts[t["component"]] += 1
            extra = {"component": t["component"], "node": t["node"][:12],
                     "instance": t["name"]}
            restarts.append((extra, t["restarts"]))
            try:
                for fam in self._families(t, answer):
                    fams.add_family(fam, extra)
            except Exception:  # noqa: BLE001 - an answer we cannot read: skipped, counted
                skipped.append(t["name"])
                SKIPPED.inc(target=t["component"])
        self.last_skipped = skipped
        SCRAPE_TARGETS.replace({(c,): n for c, n in counts.items()})
        for fam in observe.restarts_family(restarts):
            fams.add_family(fam, {})
        SCRAPE_SECONDS.observe(time.monotonic() - t0)
        if fams.dropped:
            metrics.REGISTRY.dropped.inc(fams.dropped)
        own = {"component": "web", "node": self._own_node(), "instance": "FuxiWeb"}
        for fam in text_string_to_metric_families(metrics.REGISTRY.render()):
            fams.add_family(fam, own)
        return fams.render()

    def _own_node(self) -> str:
        if self.node is None:
            try:
                self.node = actors.this_node_id()[:12]
            except Exception:  # noqa: BLE001 - outside Ray (tests): no node
                self.node = ""
        return self.node

    def _families(self, t: dict, answer) -> list:
        if isinstance(answer, BaseException):
            raise answer
        if t["method"] == "metrics":
            if not isinstance(answer, str) or len(answer) > COMPONENT_TEXT_BYTES_MAX:
                raise ValueError(f"{t['name']}: metrics() gave {type(answer).__name__}; "
                                 f"expected Prometheus text under {COMPONENT_TEXT_BYTES_MAX} B")
            return list(text_string_to_metric_families(answer))
        return observe.families(t["component"], answer)
