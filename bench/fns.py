"""Task functions for the benchmarks (importable by workers)."""

import time


def noop(ctx):
    return None


def straggle(ctx):
    """``fast_s`` per instance; the first attempt of instances in ``slow`` takes ``fast_s * factor``."""
    slow = ctx.instance in set(ctx.params["slow"]) and ctx.attempt == 0
    time.sleep(float(ctx.params["fast_s"]) * (float(ctx.params["factor"]) if slow else 1.0))
