"""Task functions for the benchmarks (importable by workers)."""

import time


def noop(ctx):
    return None


def straggle(ctx):
    """``fast_s`` per instance; the first attempt of instances in ``slow`` takes ``fast_s * factor``."""
    slow = ctx.instance in set(ctx.params["slow"]) and ctx.attempt == 0
    time.sleep(float(ctx.params["fast_s"]) * (float(ctx.params["factor"]) if slow else 1.0))


def work_rows(ctx):
    """``work_s`` of waiting, then ``rows`` rows keyed for a shuffle (bench_faults' first stage)."""
    import pyarrow as pa

    time.sleep(float(ctx.params["work_s"]))
    rows = int(ctx.params["rows"])
    lo = ctx.instance * rows
    return pa.table({"key": [i % 101 for i in range(lo, lo + rows)], "v": list(range(lo, lo + rows))})


def work_sum(ctx):
    """``work_s`` of waiting, then the per-key sums of the upstream rows."""
    time.sleep(float(ctx.params["work_s"]))
    t = ctx.read_upstream()
    if t.num_rows == 0:
        return None
    return t.group_by("key").aggregate([("v", "sum")])


def work_total(ctx):
    """The grand total and the number of keys (bench_faults' last stage)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    time.sleep(float(ctx.params["work_s"]))
    t = ctx.read_upstream()
    return pa.table({"total": [pc.sum(t.column("v_sum")).as_py()], "keys": [t.num_rows]})


def rows_gen(ctx):
    """``rows`` rows keyed for a shuffle, at once (bench_recovery's first stage)."""
    import numpy as np
    import pyarrow as pa

    rows = int(ctx.params["rows"])
    v = np.arange(ctx.instance * rows, (ctx.instance + 1) * rows, dtype=np.int64)
    return pa.table({"key": v % 101, "v": v})


def rows_pass(ctx):
    """``work_s`` of waiting, then the upstream rows passed on (bench_recovery's middle stage)."""
    time.sleep(float(ctx.params["work_s"]))
    t = ctx.read_upstream()
    return t if t.num_rows else None
