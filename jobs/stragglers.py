"""A job that injects slow first attempts, to show backup instances at work.

Every instance sleeps ``work_s``; the *first attempt* of ``slow_count`` instances spread over the
task sleeps ``slowdown`` times longer, like a task on an overloaded machine. With speculation
on, those instances get a backup attempt on another worker that finishes first; the slow
attempt is stopped. Each instance emits one row naming the attempt that produced it, so the
output shows which attempts won (and that each instance appears exactly once).
"""

from __future__ import annotations

import time

import pyarrow as pa


def slow_instances(num_instances: int, slow_count: int) -> set[int]:
    if slow_count <= 0:
        return set()
    step = max(1, num_instances // slow_count)
    return {min(num_instances - 1, step // 2 + i * step) for i in range(slow_count)}


def work(ctx):
    slow = ctx.attempt == 0 and ctx.instance in slow_instances(
        ctx.num_instances, int(ctx.params["slow_count"]))
    seconds = float(ctx.params["work_s"]) * (float(ctx.params["slowdown"]) if slow else 1.0)
    if slow:
        ctx.log.info("first attempt is a straggler: sleeping %.2fs", seconds)
    time.sleep(seconds)
    return pa.table({"instance": [ctx.instance], "attempt": [ctx.attempt],
                     "straggler_attempt": [slow], "seconds": [seconds]})
