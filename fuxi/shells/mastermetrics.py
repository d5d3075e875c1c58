"""FuxiMaster's metrics: what it counts as jobs end, and the gauges it sets from its own
in-memory state (nodes and their agents' health, jobs running and waiting, what each quota
group holds) each time ``FuxiMaster.metrics()`` is asked -- no store read, no Ray call, so a
scrape every second costs the master a few dictionary walks."""

from __future__ import annotations

import time

from base import metrics

NODE_SERIES_MAX = 10_000  # nodes shown (a cluster of 100,000 simulated nodes overflows)
QUEUE_SERIES_MAX = 1000

INSTANCES_SUCCEEDED = metrics.counter("fuxi_instances_succeeded_total",
                                      "Task instances that succeeded, counted as their jobs end.")
ATTEMPTS = metrics.counter("fuxi_attempts_total",
                           "Attempts run (first runs, retries and backups), as their jobs end.")
RETRIES = metrics.counter("fuxi_attempts_retried_total",
                          "Attempts run again after a failure, as their jobs end.")
BACKUPS_LAUNCHED = metrics.counter("fuxi_backups_launched_total",
                                   "Backup instances launched for stragglers, as their jobs end.")
BACKUPS_WON = metrics.counter("fuxi_backups_won_total",
                              "Backup instances that finished before their original.")
JOB_SECONDS = metrics.histogram("fuxi_job_duration_seconds",
                                "Time from a job's start to its end.",
                                buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600))
JOBS = metrics.gauge("fuxi_jobs", "Jobs now running or waiting in a queue.", labels=("state",),
                     series_max=8)
NODES = metrics.gauge("fuxi_nodes", "Nodes FuxiMaster sees, by agent state.", labels=("state",),
                      series_max=16)
NODE_CPUS = metrics.gauge("fuxi_node_cpus", "CPUs a node offers.", labels=("node",),
                          series_max=NODE_SERIES_MAX)
NODE_CPUS_FREE = metrics.gauge("fuxi_node_cpus_free", "CPUs of a node no slot holds.",
                               labels=("node",), series_max=NODE_SERIES_MAX)
NODE_MEMORY = metrics.gauge("fuxi_node_memory_bytes", "Memory a node offers to Ray.",
                            labels=("node",), series_max=NODE_SERIES_MAX)
NODE_MEMORY_AVAILABLE = metrics.gauge("fuxi_node_memory_available_bytes",
                                      "A node's available memory (its FuxiAgent's heartbeat).",
                                      labels=("node",), series_max=NODE_SERIES_MAX)
NODE_DISK_FREE = metrics.gauge("fuxi_node_disk_free_bytes",
                               "Free disk under a node's Ray temp dir (its FuxiAgent's heartbeat).",
                               labels=("node",), series_max=NODE_SERIES_MAX)
NODE_LOAD = metrics.gauge("fuxi_node_load1", "A node's 1-minute load average (its agent).",
                          labels=("node",), series_max=NODE_SERIES_MAX)
NODE_HEARTBEAT_AGE = metrics.gauge("fuxi_node_heartbeat_age_seconds",
                                   "Seconds since a node's FuxiAgent was last heard.",
                                   labels=("node",), series_max=NODE_SERIES_MAX)
NODE_HEALTHY = metrics.gauge("fuxi_node_healthy", "1 if a node's agent reports it healthy.",
                             labels=("node",), series_max=NODE_SERIES_MAX)
NODE_BLACKLISTED = metrics.gauge("fuxi_node_blacklisted",
                                 "1 if a node is excluded for every job (cluster blacklist).",
                                 labels=("node",), series_max=NODE_SERIES_MAX)
QUEUE_USED = metrics.gauge("fuxi_queue_used", "Resources a quota group's jobs hold (slots).",
                           labels=("queue", "resource"), series_max=QUEUE_SERIES_MAX)
QUEUE_JOBS = metrics.gauge("fuxi_queue_jobs", "Jobs of a queue, running or waiting.",
                           labels=("queue", "state"), series_max=QUEUE_SERIES_MAX)
SERVICE_SERIES_MAX = 1000
SERVICE_REPLICAS = metrics.gauge("fuxi_service_replicas",
                                 "A service's replicas: desired, ready, starting, draining, failed.",
                                 labels=("service", "state"), series_max=SERVICE_SERIES_MAX * 5)


def _n(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def job_ended(status: dict) -> None:
    """Count a finished job's instances, attempts, retries and backups (its final status)."""
    tasks = status.get("tasks") if isinstance(status.get("tasks"), dict) else {}
    for t in tasks.values():
        if not isinstance(t, dict):
            continue
        for metric, key in ((INSTANCES_SUCCEEDED, "succeeded"), (ATTEMPTS, "attempts"),
                            (RETRIES, "retries"), (BACKUPS_LAUNCHED, "backups_launched"),
                            (BACKUPS_WON, "backups_won")):
            n = _n(t.get(key))
            if n is not None and n >= 0:
                metric.inc(n)
    start, end = _n(status.get("started_at")), _n(status.get("finished_at"))
    if start is not None and end is not None and end >= start:
        JOB_SECONDS.observe(end - start)


def _series(d: dict, key: str) -> dict:
    out = {}
    for node, v in d.items():
        n = _n(v.get(key)) if isinstance(v, dict) else None
        if n is not None:
            out[(node[:12],)] = n
    return out


def snapshot(master) -> str:
    """Set the gauges from FuxiMaster's state; the process's whole registry as text."""
    now = time.time()
    node_info = dict(master.node_info)
    free = master.ledger.free(master.nodes)
    agents = master.agents.node_view(now)
    NODE_CPUS.replace({(n[:12],): i["resources"].get("CPU", 0) for n, i in node_info.items()})
    NODE_MEMORY.replace({(n[:12],): i["resources"].get("memory", 0)
                         for n, i in node_info.items()})
    NODE_CPUS_FREE.replace({(n[:12],): free.get(n, {}).get("CPU", 0) for n in node_info})
    NODE_MEMORY_AVAILABLE.replace(_series(agents, "mem_available_bytes"))
    NODE_DISK_FREE.replace(_series(agents, "disk_free_bytes"))
    NODE_LOAD.replace(_series(agents, "load"))
    NODE_HEARTBEAT_AGE.replace(_series(agents, "heartbeat_age_s"))
    NODE_HEALTHY.replace({(n[:12],): float((agents.get(n) or {}).get("state") == "healthy")
                          for n in node_info})
    black = master.blacklists.node_view(now)
    NODE_BLACKLISTED.replace({(n[:12],): float(n in black) for n in node_info})
    states: dict = {}
    for n in node_info:
        s = str((agents.get(n) or {}).get("state", "no_agent"))
        states[(s,)] = states.get((s,), 0) + 1
    NODES.replace(states)
    master.admissions.observe(master.ledger)
    view = master.admissions.view()["queues"]
    used, jobs = {}, {}
    waiting = 0
    for q, v in view.items():
        for res, amount in (v.get("used") or {}).items():
            if _n(amount) is not None:
                used[(q, res)] = amount
        jobs[(q, "running")] = v.get("running", 0)
        jobs[(q, "waiting")] = v.get("waiting", 0)
        waiting += v.get("waiting", 0) or 0
    QUEUE_USED.replace(used)
    QUEUE_JOBS.replace(jobs)
    JOBS.replace({("running",): len(master.jobmasters), ("waiting",): waiting})
    replicas = {}
    for svc in (master.services.list() if master.services is not None else [])[:SERVICE_SERIES_MAX]:
        for state in ("desired", "ready", "starting", "draining", "failed"):
            if _n(svc.get(state)) is not None:
                replicas[(svc["name"], state)] = svc[state]
    SERVICE_REPLICAS.replace(replicas)
    return metrics.REGISTRY.render()
