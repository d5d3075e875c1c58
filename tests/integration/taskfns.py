"""Task functions used by the integration tests (module-level so workers can import them).

Tests coordinate with running attempts through files under ``ctx.params['dir']``."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa


def _mark(ctx, what: str) -> None:
    d = ctx.params["dir"]
    os.makedirs(d, exist_ok=True)
    import ray

    node = ray.get_runtime_context().get_node_id()
    name = f"{what}-{ctx.task}-{ctx.instance}-{ctx.attempt}"
    tmp = os.path.join(d, f".{name}.tmp")  # hidden: tests glob "run-*" while this is written
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "t": time.time(), "node": node}, f)
    os.replace(tmp, os.path.join(d, name))


def noop(ctx) -> None:
    return None


def emit_instance(ctx):
    """One row per instance, tagged with the attempt that produced it."""
    rows = int(ctx.params.get("rows", 3))
    return pa.table({"instance": [ctx.instance] * rows, "attempt": [ctx.attempt] * rows,
                     "k": list(range(rows))})


def flaky(ctx):
    """Instance ``bad`` raises on its first ``fails`` attempts, then succeeds."""
    _mark(ctx, "run")
    if ctx.instance == int(ctx.params["bad"]) and ctx.attempt < int(ctx.params["fails"]):
        raise ValueError(f"planned failure of attempt {ctx.attempt}")
    ctx.log.info("instance %d attempt %d ok", ctx.instance, ctx.attempt)
    return emit_instance(ctx)


def always_fails(ctx):
    if ctx.instance == int(ctx.params.get("bad", 0)):
        raise RuntimeError("this instance always fails: disk on fire")
    return emit_instance(ctx)


def sleepy(ctx):
    """Sleeps ``sleep_s``; records its pid so a test can kill or watch the worker."""
    _mark(ctx, "run")
    time.sleep(float(ctx.params.get("sleep_s", 0.2)))
    _mark(ctx, "done")
    return emit_instance(ctx)


def slow_first(ctx):
    """The first attempt of the first ``slow`` instances takes ``slow_s``; others ``fast_s``."""
    slow = ctx.instance < int(ctx.params.get("slow", 2)) and ctx.attempt == 0
    time.sleep(float(ctx.params["slow_s"] if slow else ctx.params.get("fast_s", 0.05)))
    return emit_instance(ctx)


def hang_first(ctx):
    """The first attempt of instance 0 hangs past the task's timeout; retries are quick."""
    if ctx.instance == 0 and ctx.attempt == 0:
        time.sleep(float(ctx.params.get("hang_s", 60)))
    return emit_instance(ctx)


def gen_numbers(ctx):
    n = int(ctx.params.get("n", 1000))
    lo = ctx.instance * n
    return pa.table({"key": [i % 97 for i in range(lo, lo + n)], "v": list(range(lo, lo + n))})


def sum_by_key(ctx):
    t = ctx.read_upstream()
    if t.num_rows == 0:
        return None
    return t.group_by("key").aggregate([("v", "sum"), ("v", "count")])


def count_rows(ctx):
    t = ctx.read_upstream()
    return pa.table({"instance": [ctx.instance], "rows": [t.num_rows]})


def read_pangu(ctx):
    """Read ``path`` from Pangu as whoever the job runs as (its submitter); one row: size."""
    import pangu

    with pangu.open(f"pangu://{ctx.params['cluster']}{ctx.params['path']}", "rb") as f:
        data = f.read()
    return pa.table({"size": [len(data)]})


def slow_gen(ctx):
    """``gen_numbers`` after ``sleep_s``, marked: a test can act while the stage runs."""
    _mark(ctx, "run")
    time.sleep(float(ctx.params.get("sleep_s", 1.0)))
    return gen_numbers(ctx)


def fails_on_node(ctx):
    """Fails at once when it runs on node ``bad_node`` (a machine broken for this job);
    elsewhere sleeps ``sleep_s`` and emits its instance, tagged with the node it ran on."""
    import ray

    _mark(ctx, "run")
    node = ray.get_runtime_context().get_node_id()
    if node == ctx.params["bad_node"]:
        raise RuntimeError(f"node {node[:12]} is broken for this job")
    time.sleep(float(ctx.params.get("sleep_s", 0.3)))
    t = emit_instance(ctx)
    return t.append_column("node", pa.array([node] * t.num_rows))
