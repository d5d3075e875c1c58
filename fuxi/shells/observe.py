"""Status answers turned into Prometheus metric families, for components that keep no
``base.metrics`` registry of their own: a JobMaster's ``status()``, a Kuafu proxy's
``stats()``, a service replica's ``stats()`` and ``info()``, a chunkserver's and a FuxiAgent's
``info()`` (``fuxi.shells.scrape`` asks them). Plain functions of plain dicts: a missing or
non-numeric field is left out, never raised on; a label value a stranger chose (a job id, a
service name) is bounded like every other (``base.metrics.label_value``).
"""

from __future__ import annotations

import math

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from base.metrics import label_value

FAMILY_SERIES_MAX = 5000  # series one answer may add to one family; more are left out
INSTANCE_STATES = ("running", "succeeded", "failed")


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


class _Out:
    """Families being built from one answer."""

    def __init__(self):
        self.fams: dict[str, object] = {}

    def _fam(self, cls, name: str, help: str, labels: tuple):
        f = self.fams.get(name)
        if f is None:
            f = self.fams[name] = cls(name, help, labels=list(labels))
        return f

    def add(self, typ: str, name: str, help: str, value, **labels) -> None:
        v = _num(value)
        if v is None:
            return
        cls = CounterMetricFamily if typ == "counter" else GaugeMetricFamily
        f = self._fam(cls, name, help, tuple(labels))
        if len(f.samples) < FAMILY_SERIES_MAX:
            f.add_metric([label_value(x) for x in labels.values()], v)

    def list(self) -> list:
        return list(self.fams.values())


def jobmaster(st: dict) -> list:
    out = _Out()
    job = str(st.get("job_id", ""))
    out.add("gauge", "fuxi_jobmaster_workers", "Workers a running job holds.",
            st.get("workers"), job_id=job)
    out.add("counter", "fuxi_jobmaster_workers_started_total",
            "Workers a running job started.", st.get("workers_started"), job_id=job)
    tasks = st.get("tasks") if isinstance(st.get("tasks"), dict) else {}
    for task, t in list(tasks.items())[:FAMILY_SERIES_MAX]:
        if not isinstance(t, dict):
            continue
        out.add("gauge", "fuxi_jobmaster_task_instances", "Instances of each task of a running job.",
                t.get("instances"), job_id=job, task=task)
        for state in INSTANCE_STATES:
            out.add("gauge", "fuxi_jobmaster_instances", "Instances of a running job by state.",
                    t.get(state), job_id=job, task=task, state=state)
        out.add("counter", "fuxi_jobmaster_attempts_total", "Attempts a running job started.",
                t.get("attempts"), job_id=job, task=task)
        out.add("counter", "fuxi_jobmaster_retries_total", "Attempts of a running job retried.",
                t.get("retries"), job_id=job, task=task)
        out.add("counter", "fuxi_jobmaster_backups_launched_total",
                "Backup instances a running job launched for stragglers.",
                t.get("backups_launched"), job_id=job, task=task)
        out.add("counter", "fuxi_jobmaster_backups_won_total",
                "Backup instances of a running job that beat their original.",
                t.get("backups_won"), job_id=job, task=task)
    return out.list()


def kuafu_proxy(st: dict) -> list:
    out = _Out()
    counters = st.get("counters") if isinstance(st.get("counters"), dict) else {}
    for kind, n in counters.items():
        if kind == "held_bytes_max":  # a high-water mark, not a count
            out.add("gauge", "kuafu_proxy_peak_held_bytes", "Most bytes a proxy ever held.", n)
            continue
        out.add("counter", "kuafu_proxy_events_total",
                "What Kuafu proxies did and refused (requests, errors, retries, backups, ...).",
                n, kind=kind)
    conns = st.get("connections") if isinstance(st.get("connections"), dict) else {}
    for kind, n in conns.items():
        out.add("gauge", "kuafu_proxy_connections", "Open connections by kind.", n, kind=kind)
    for key, help in (("routes", "Calls being routed."), ("inbound", "Inbound calls in flight."),
                      ("queued", "Calls waiting for a window."),
                      ("preauth_connections", "Connections not yet authenticated.")):
        out.add("gauge", f"kuafu_proxy_{key}", help, st.get(key))
    out.add("gauge", "kuafu_proxy_held_bytes", "Bytes of calls a proxy holds.", st.get("held_bytes"))
    out.add("gauge", "kuafu_proxy_uptime_seconds", "Seconds since the proxy started.",
            st.get("uptime_s"))
    for where in ("local", "remote"):
        svcs = st.get(f"{where}_services")
        for svc, n in (svcs.items() if isinstance(svcs, dict) else ()):
            out.add("gauge", "kuafu_proxy_endpoints", "Endpoints a proxy knows per service.",
                    n, service=svc, where=where)
    return out.list()


def service_replica(ans: dict) -> list:
    out = _Out()
    stats = ans.get("stats") if isinstance(ans.get("stats"), dict) else {}
    info = ans.get("info") if isinstance(ans.get("info"), dict) else {}
    rid = str(info.get("rid", ""))
    labels = {"service": rid.rpartition("-")[0] or rid, "replica": rid,
              "version": str(info.get("version", ""))}
    out.add("counter", "fuxi_service_requests_total", "Calls a service replica served.",
            stats.get("served"), **labels)
    out.add("counter", "fuxi_service_errors_total", "Calls a service replica failed.",
            stats.get("failed"), **labels)
    out.add("gauge", "fuxi_service_requests_running", "Calls running in a service replica.",
            stats.get("running"), **labels)
    out.add("gauge", "fuxi_service_requests_queued", "Calls queued at a service replica.",
            stats.get("queued"), **labels)
    for q, key in (("0.5", "p50_ms"), ("0.99", "p99_ms")):
        v = _num(stats.get(key))
        if v is not None:
            out.add("gauge", "fuxi_service_latency_seconds",
                    "Call latency quantiles of a replica's recent calls.", v / 1e3,
                    quantile=q, **labels)
    return out.list()


def chunkserver(st: dict) -> list:
    out = _Out()
    out.add("gauge", "pangu_chunkserver_capacity_bytes", "A chunkserver's disk capacity.",
            st.get("capacity_bytes"))
    out.add("gauge", "pangu_chunkserver_used_bytes", "Bytes of chunks a chunkserver holds.",
            st.get("used_bytes"))
    out.add("gauge", "pangu_chunkserver_chunks", "Chunk replicas a chunkserver holds.",
            st.get("chunks"))
    out.add("counter", "pangu_chunkserver_scrubbed_total", "Chunks a chunkserver has scrubbed.",
            st.get("scrubbed"))
    return out.list()


def agent(st: dict) -> list:
    out = _Out()
    out.add("gauge", "fuxi_agent_workers", "Fuxi workers an agent sees on its node.",
            st.get("workers"))
    out.add("counter", "fuxi_agent_heartbeats_total", "Heartbeats an agent sent.", st.get("seq"))
    out.add("counter", "fuxi_agent_exits_dropped_total",
            "Worker exits an agent could not report (its bound).", st.get("exits_dropped"))
    return out.list()


CONVERTERS = {"jobmaster": jobmaster, "kuafu": kuafu_proxy, "service": service_replica,
              "pangu_chunkserver": chunkserver, "agent": agent}


def families(component: str, answer) -> list:
    """The metric families of one component's status answer."""
    if not isinstance(answer, dict):
        raise ValueError(f"{component}: a {type(answer).__name__} answer; expected a dict")
    return CONVERTERS[component](answer)


def restarts_family(rows: list[tuple[dict, int]]) -> list:
    """``fuxi_actor_restarts_total`` of every actor scraped ((labels, restarts) pairs)."""
    f = CounterMetricFamily("fuxi_actor_restarts_total",
                            "Times Ray restarted a platform actor (killed or crashed).",
                            labels=["component", "node", "instance"])
    for labels, n in rows[:FAMILY_SERIES_MAX]:
        v = _num(n)
        if v is not None:
            f.add_metric([labels["component"], labels["node"], labels["instance"]], v)
    return [f]
