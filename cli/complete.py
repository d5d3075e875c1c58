"""Shell completion of job ids and service names, read from the cluster when it is reachable.

Completion runs on every Tab press, so it must be quick and never fail: it reads the
cluster's Nuwa over its sockets (no Ray; bounded by COMPLETE_TIMEOUT_S), or the job records
on disk when no cluster runs; anything that goes wrong completes nothing."""

from __future__ import annotations

import typer

COMPLETE_TIMEOUT_S = 1.0  # one Nuwa request while the user waits at a Tab press
COMPLETIONS_MAX = 200  # candidates offered at once
STATE_ROOT = "/fuxi"  # where FuxiMaster keeps its state in Nuwa (fuxi.io.store.NuwaStore)


def _names(ctx, directory: str) -> list[str]:
    """Children of ``STATE_ROOT/directory`` in the cluster's Nuwa, or of the job records on
    disk; [] whatever goes wrong."""
    try:
        from base.cluster import cluster_dir, cluster_for, find_cluster

        params = ctx.params if ctx is not None else {}
        root = ctx.find_root().params.get("cluster") if ctx is not None else None
        cluster = cluster_for(params.get("cluster") or root)
        rec = find_cluster(cluster)
        if rec is None or not rec.nuwa:
            if directory != "jobs":
                return []
            from fuxi.client import OfflineJobs

            return [st["job_id"] for st in OfflineJobs(cluster_dir(cluster)).list()]
        from nuwa.client import connect
        from zhongkui import creds

        c = connect([tuple(a) for a in rec.nuwa], timeout_s=COMPLETE_TIMEOUT_S,
                    creator="cli-complete", token=creds.token(cluster))
        try:
            return [n.rstrip("/") for n in c.list(f"{STATE_ROOT}/{directory}/")]
        finally:
            c.close()
    except Exception:  # noqa: BLE001 - a Tab press never shows a traceback
        return []


def _matching(names: list[str], incomplete: str) -> list[str]:
    return sorted(n for n in names if n.startswith(incomplete))[:COMPLETIONS_MAX]


def job_ids(ctx: typer.Context, incomplete: str) -> list[str]:
    """Job ids of the cluster that start with what was typed."""
    return _matching(_names(ctx, "jobs"), incomplete)


def service_names(ctx: typer.Context, incomplete: str) -> list[str]:
    """Registered services' names that start with what was typed."""
    return _matching(_names(ctx, "services"), incomplete)
