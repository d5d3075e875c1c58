"""Shared benchmark plumbing: one private local Ray per run, timing, result lines."""

from __future__ import annotations

import json
import os
import platform
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def start_ray(num_cpus: int = 2, namespace: str = "fuxi-bench", temp_dir: str | None = None):
    """A fresh local Ray for one side of a benchmark (token auth off: a private loopback
    cluster)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             namespace=namespace, _temp_dir=temp_dir or f"/tmp/fuxi-bench-{os.getuid()}")
    return ray


def machine() -> str:
    return f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}"


def report(name: str, **fields) -> None:
    print(json.dumps({"bench": name, "date": time.strftime("%Y-%m-%d %H:%M"), **fields}))


def run_noop(client, n: int, timeout_s: float, **spec) -> tuple[float, float]:
    """One job of ``n`` no-op instances (speculation off; ``spec`` adds fields): its running
    seconds (start to finish, as its status says) and the seconds from submit to the end."""
    doc = {"name": "noop", "speculation": {"enabled": False}, **spec,
           "tasks": {"t": {"fn": "bench.fns:noop", "instances": n}}}
    t0 = time.perf_counter()
    st = client.wait(client.submit(doc), timeout_s=timeout_s)
    e2e_s = time.perf_counter() - t0
    assert st["state"] == "succeeded", st
    return st["finished_at"] - st["started_at"], e2e_s
