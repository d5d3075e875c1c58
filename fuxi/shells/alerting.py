"""Alerts, evaluated by FuxiMaster (issue 17 part 3): every ``ALERT_EVAL_S`` the rules
(``fuxi.core.alerts``) see the cluster's metrics — one scrape through FuxiWeb, the same text
``/metrics`` serves — and the events the cluster log took since the last round. A change of
state becomes an event (``alert_firing``, ``alert_resolved``) in the same log; the active and
recently resolved alerts are in ``cluster_info()["alerts"]`` (``fuxi alerts``, the console).

The rules are the default set unless the cluster's data directory holds ``alerts.yaml``
(``fuxi up --alert-rules FILE`` puts it there; it is read when FuxiMaster starts). A cluster
without Nuwa drops the rules on ``nuwa_`` metrics. When no scrape is possible (no FuxiWeb: the
embedded default, or it does not answer) the metric rules are not evaluated that round — an
unknown is not a zero — and the view says so (``metrics_error``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from base import actors, events
from fuxi.core import alerts as al

logger = logging.getLogger(__name__)

ALERT_EVAL_S = 5.0  # one round of every rule
ALERT_SCRAPE_TIMEOUT_S = 10.0
ALERT_EVENTS_ROUND_MAX = 5000  # events one round reads (the rest wait for the next)
RULES_FILE = "alerts.yaml"
RESERVED_FIELDS = ("source", "kind", "message", "severity", "rule")  # emit's own arguments


def load_rules(data_dir: str | None, has_nuwa: bool) -> tuple[list[al.Rule], str]:
    """The rules and where they came from. A rules file that does not parse is an error at
    start, not a silent fallback (``fuxi up --alert-rules`` checks it before it copies it)."""
    path = os.path.join(data_dir, RULES_FILE) if data_dir else None
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rules, source = al.parse_rules(f.read(), path), path
    else:
        rules, source = al.default_rules(), "default rules"
    if not has_nuwa:
        rules = [r for r in rules if not (r.metric or "").startswith("nuwa_")]
    return rules, source


def samples_of(text: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


class Alerting:
    def __init__(self, cluster_events, namespace: str, data_dir: str | None, has_nuwa: bool,
                 store=None, blacklists=None):
        from fuxi.shells.liveconfig import LiveConfig

        self.log = cluster_events  # fuxi.shells.clusterlog.ClusterEvents
        self.namespace = namespace
        self.rules, self.source = load_rules(data_dir, has_nuwa)
        self.book = al.AlertBook(self.rules)
        self.since_id: int | None = None
        self.metrics_error: str | None = "not evaluated yet"
        self.rounds = 0
        self.task: asyncio.Task | None = None
        self.web = None  # FuxiWeb's handle, once found
        self.eval_s = ALERT_EVAL_S  # online: `fuxi config set alerts.eval_s` (liveconfig)
        self.live = LiveConfig(store, self, cluster_events, blacklists)

    def start(self, tasks: set) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._loop())
            tasks.add(self.task)

    async def _loop(self) -> None:
        while True:
            try:
                await self.once(time.time())
            except Exception:  # noqa: BLE001 - the next round tries again
                logger.exception("alert evaluation failed")
            await self.live.refresh()  # the online settings, this loop's period among them
            await asyncio.sleep(self.eval_s)

    async def _scrape(self) -> list[tuple[str, dict, float]] | None:
        from fuxi.shells.webactor import WEB_NAME

        try:
            if self.web is None:  # looked up again only after a failure (a GCS call)
                self.web = await asyncio.to_thread(actors.named_actor, WEB_NAME, self.namespace)
            if self.web is None:
                self.metrics_error = "no FuxiWeb in this cluster: metric rules not evaluated"
                return None
            text = await actors.acall(self.web.scrape_text, timeout_s=ALERT_SCRAPE_TIMEOUT_S)
            samples = await asyncio.to_thread(samples_of, text)
        except Exception as e:  # noqa: BLE001 - an unknown is not a zero
            self.web = None
            self.metrics_error = f"scrape failed: {type(e).__name__}: {str(e)[:200]}"
            return None
        self.metrics_error = None
        return samples

    async def once(self, now: float) -> list[al.Transition]:
        out: list[al.Transition] = []
        if self.since_id is None:  # start at the log's end: old events are history
            self.since_id = max(self.log.next_id - 1, 0)
        got = await self.log.query(self.since_id, None, None, ALERT_EVENTS_ROUND_MAX, 0.0, None)
        evs = got["events"]
        if evs:
            self.since_id = evs[-1]["id"]
        out += self.book.observe_events(evs, now)
        samples = await self._scrape()
        if samples is not None:
            out += self.book.evaluate(samples, now)
        for t in out:
            a = t.alert
            events.emit("fuxi", f"alert_{t.to}", f"alert {a['rule']} {t.to}: {a['summary']}",
                        severity=a["severity"] if t.to == "firing" else "info",
                        rule=a["rule"], **{k: v for k, v in list(a["labels"].items())[:8]
                                           if k not in RESERVED_FIELDS})
        self.rounds += 1
        return out

    def view(self) -> dict:
        v = self.book.view()
        v["resolved"] = v["resolved"][:20]
        v.update(source=self.source, rounds=self.rounds, metrics_error=self.metrics_error,
                 eval_s=self.eval_s, live_config=self.live.applied,
                 live_config_error=self.live.error)
        return v
