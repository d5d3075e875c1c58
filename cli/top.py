"""``fuxi top``: a live terminal view of the cluster — nodes (resources free, load, memory,
agent health, blacklist), running and waiting jobs (per-task progress, retries, backups),
and services (ready replicas, requests, latency) — refreshed every ``--interval`` seconds.

What it shows is read with the same calls as ``fuxi status``, ``fuxi job list`` /
``status`` and ``fuxi service list``; each poll is bounded (``TOP_CALL_TIMEOUT_S``), a poll
that fails is shown in the frame (the view keeps trying), and at most ``TOP_JOBS_MAX`` jobs
are asked for their per-task counts per frame. ``--once`` (or a stdout that is not a
terminal) prints one frame and exits; Ctrl-C leaves the live view with exit 130.

The frame is built by :func:`frame` from a plain snapshot (pure: tests render it).
"""

from __future__ import annotations

import time
from typing import Any

import typer

from cli.common import ClusterOpt, fail, handle

TOP_INTERVAL_S_MIN = 0.2
TOP_INTERVAL_S_MAX = 3600.0
TOP_CALL_TIMEOUT_S = 10.0  # one poll of FuxiMaster
TOP_JOBS_MAX = 20  # jobs asked for their per-task counts in one frame
TOP_ROWS_MAX = 50  # rows shown per table (the rest counted)
PIPE_WIDTH = 200  # columns of a frame printed to a pipe or file (no terminal to measure)
EXIT_INTERRUPTED = 130

ACTIVE = ("running", "queued", "pending", "starting")


def _gib(n) -> str:
    return "-" if n is None else f"{n / 1024 ** 3:.1f}G"


def _res(free: dict, total: dict, key: str) -> str:
    t = total.get(key, 0) or 0
    if key == "memory":
        return f"{_gib(free.get(key, 0))}/{_gib(t)}"
    return f"{free.get(key, 0):g}/{t:g}"


def _more(table, shown: int, total: int, cols: int) -> None:
    if total > shown:
        table.add_row(f"… {total - shown} more", *[""] * (cols - 1))


def frame(snap: dict[str, Any]):
    """The view of one snapshot: ``{"cluster", "at", "info" (cluster_info), "jobs" (job list
    rows), "statuses" (job id -> status), "services" (service list rows), "errors"}``."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    info = snap.get("info") or {}
    nodes = info.get("nodes") or []
    jobs = snap.get("jobs") or []
    services = snap.get("services") or []
    active = [j for j in jobs if j.get("state") in ACTIVE]
    head = Text(f"fuxi top — cluster {snap.get('cluster')!r}: {len(nodes)} node(s), "
                f"{sum(1 for j in active if j.get('state') == 'running')} job(s) running, "
                f"{sum(1 for j in active if j.get('state') != 'running')} waiting, "
                f"{len(services)} service(s) — "
                f"{time.strftime('%H:%M:%S', time.localtime(snap.get('at') or 0))}",
                style="bold")
    parts: list = [head]
    for e in snap.get("errors") or ():
        parts.append(Text(f"! {e}", style="red"))

    nt = Table(title="nodes", title_justify="left", expand=True)
    for c in ("NODE", "ADDRESS", "CPU free", "MEM free", "GPU free", "LOAD", "AGENT",
              "WORKERS", "BLACKLIST"):
        nt.add_column(c, no_wrap=True)
    for n in nodes[:TOP_ROWS_MAX]:
        total, free = n.get("resources") or {}, n.get("free") or {}
        ag = n.get("agent") or {}
        bl = n.get("blacklisted")
        load = ag.get("load")
        nt.add_row(str(n.get("node_id", ""))[:12], str(n.get("address") or "-"),
                   _res(free, total, "CPU"), _res(free, total, "memory"),
                   _res(free, total, "GPU") if total.get("GPU") else "-",
                   "-" if load is None else f"{load:.2f}",
                   str(ag.get("state") or "-"), str(ag.get("workers", "-")),
                   Text(str(bl.get("reason", "yes"))[:40], style="red") if bl else "-")
    _more(nt, min(len(nodes), TOP_ROWS_MAX), len(nodes), 9)
    parts.append(nt)

    jt = Table(title="jobs", title_justify="left", expand=True)
    for c in ("JOB", "NAME", "STATE", "QUEUE", "DONE", "RUNNING", "FAILED", "RETRIES",
              "BACKUPS won/launched"):
        jt.add_column(c, no_wrap=True)
    statuses = snap.get("statuses") or {}
    for j in active[:TOP_ROWS_MAX]:
        st = statuses.get(j["job_id"]) or {}
        tasks = (st.get("tasks") or {}).values()
        state = j.get("state", "")
        if state == "queued" and j.get("position"):
            state = f"queued #{j['position']}"
        if tasks:
            done = f"{sum(t.get('succeeded', 0) for t in tasks)}/" \
                   f"{sum(t.get('instances', 0) for t in tasks)}"
            cells = [done, str(sum(t.get("running", 0) for t in tasks)),
                     str(sum(t.get("failed", 0) for t in tasks)),
                     str(sum(t.get("retries", 0) for t in tasks)),
                     f"{sum(t.get('backups_won', 0) for t in tasks)}/"
                     f"{sum(t.get('backups_launched', 0) for t in tasks)}"]
        else:
            cells = ["-"] * 5
        jt.add_row(str(j["job_id"])[:24], str(j.get("name") or "")[:24], state,
                   str(j.get("queue") or "default"), *cells)
    _more(jt, min(len(active), TOP_ROWS_MAX), len(active), 9)
    parts.append(jt)

    st = Table(title="services", title_justify="left", expand=True)
    for c in ("SERVICE", "VERSION", "READY", "REQ/S", "ROLLOUT"):
        st.add_column(c, no_wrap=True)
    for s in services[:TOP_ROWS_MAX]:
        ready, desired = s.get("ready", 0), s.get("desired", 0)
        st.add_row(str(s.get("name")), str(s.get("version")),
                   Text(f"{ready}/{desired}", style="red" if ready < desired else ""),
                   str(s.get("requests_per_s", "-")), str(s.get("rollout") or "-"))
    _more(st, min(len(services), TOP_ROWS_MAX), len(services), 5)
    parts.append(st)
    return Group(*parts)


def snapshot(cluster: str, conn) -> dict[str, Any]:
    """One poll of the running cluster through ``conn`` (``fuxi.runtime.connect``); what
    failed is in ``errors``, never raised."""
    from base import actors
    from zhongkui import creds

    snap: dict[str, Any] = {"cluster": cluster, "at": time.time(), "errors": [], "statuses": {}}
    kw = {"cred": creds.token(cluster) or None}

    def ask(what: str, method: str, *args, cred: bool = True):
        try:
            return actors.call(getattr(conn.master, method), *args,
                               timeout_s=TOP_CALL_TIMEOUT_S, **(kw if cred else {}))
        except Exception as e:  # noqa: BLE001 - shown in the frame; the next poll tries again
            snap["errors"].append(f"{what}: {type(e).__name__}: {str(e)[:200]}")
            return None

    snap["info"] = ask("nodes", "cluster_info", cred=False)
    snap["jobs"] = ask("jobs", "list_jobs") or []
    for j in [j for j in snap["jobs"] if j.get("state") == "running"][:TOP_JOBS_MAX]:
        st = ask(f"job {j['job_id']}", "status", j["job_id"])
        if st is not None:
            snap["statuses"][j["job_id"]] = st
    snap["services"] = ask("services", "service_list") or []
    return snap


def top(
    interval: float = typer.Option(2.0, "--interval", "-n", help="Seconds between refreshes."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    cluster: str = ClusterOpt,
) -> None:
    """A live view of nodes, running jobs and services (Ctrl-C to leave)."""
    import sys

    from rich.console import Console
    from rich.live import Live

    from fuxi.errors import NoCluster
    from fuxi.runtime import connect, find_cluster

    if not TOP_INTERVAL_S_MIN <= interval <= TOP_INTERVAL_S_MAX:
        fail(f"--interval {interval:g}: expected seconds between {TOP_INTERVAL_S_MIN} and "
             f"{TOP_INTERVAL_S_MAX:g}", 2)
    try:
        if find_cluster(cluster) is None:
            raise NoCluster(f"no running cluster {cluster!r}: `fuxi top` needs a persistent "
                            f"cluster; start one with `fuxi up`")
        with connect(cluster, embedded_ok=False) as conn:
            tty = sys.stdout.isatty()
            console = Console(width=None if tty else PIPE_WIDTH)
            if once or not tty:
                console.print(frame(snapshot(cluster, conn)))
                return
            try:
                with Live(frame(snapshot(cluster, conn)), console=console,
                          refresh_per_second=4, screen=False) as live:
                    while True:
                        time.sleep(interval)
                        live.update(frame(snapshot(cluster, conn)))
            except KeyboardInterrupt:
                raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - our errors become exit codes
        handle(e)


__all__ = ["frame", "snapshot", "top"]
