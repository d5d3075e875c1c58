"""Warm Ray worker processes for a private, one-command Ray (the embedded default).

Every actor gets a process of its own, and the raylet keeps only as many idle ones ready as
the node has CPUs (two here). The embedded default's FuxiMaster and the job's JobMaster take
those two; the job's WorkerActors then wait for fresh processes (~0.5 s each, in a chain
after the JobMaster's grant), where a plain Ray script's tasks run on the two ready ones.
``prestart_workers`` asks the local raylet (its ``PrestartWorkers`` call, the one Ray's own
core worker makes for a task backlog) to start ``n`` more idle Python workers for this
driver's job, kept for at most ``keep_alive_s``: they boot while FuxiMaster starts, and the
WorkerActors take them. They hold no resources (Ray's or Fuxi's ledger): an idle process
that nobody takes is ended by the raylet after the keep-alive.

Best effort: Ray's private modules move between versions, so any failure is returned as a
reason (the start log shows it) and the command goes on exactly as without warm workers."""

from __future__ import annotations

WARM_WORKERS_MAX = 8  # processes; ~50 MB of memory each while idle (shared/RAY_NOTES.md)
WARM_WORKER_KEEPALIVE_S = 30  # the raylet ends an untaken warm worker after this
PRESTART_CALL_TIMEOUT_S = 2.0  # the raylet answers at once; the processes start after


def warm_worker_count(cpus: float | None) -> int:
    """How many extra workers to warm for a node with ``cpus`` CPUs: one per CPU (the job's
    WorkerActors: Fuxi gives a plain task one CPU per instance), within WARM_WORKERS_MAX."""
    if cpus is None or cpus != cpus or cpus < 1:  # None, NaN, no CPU: no worker would run
        return 0
    return int(min(cpus, WARM_WORKERS_MAX))


def prestart_workers(n: int, keep_alive_s: int = WARM_WORKER_KEEPALIVE_S) -> str | None:
    """Ask this node's raylet for ``n`` warm Python workers for the current driver's job
    (default runtime environment). Returns None when asked, else why not (one line)."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= WARM_WORKERS_MAX:
        raise ValueError(f"warm workers: {n!r}: expected a whole number from 0 to "
                         f"{WARM_WORKERS_MAX} (WARM_WORKERS_MAX)")
    if isinstance(keep_alive_s, bool) or not isinstance(keep_alive_s, int) \
            or not 1 <= keep_alive_s <= WARM_WORKER_KEEPALIVE_S:
        raise ValueError(f"warm workers keep-alive {keep_alive_s!r}: expected whole seconds "
                         f"from 1 to {WARM_WORKER_KEEPALIVE_S} (WARM_WORKER_KEEPALIVE_S)")
    if n == 0:
        return None
    try:
        from base.actors import raylet_prestart

        raylet_prestart(n, keep_alive_s, PRESTART_CALL_TIMEOUT_S)
    except Exception as e:  # another Ray version, a refusal: go on without
        return f"the raylet's prestart call failed ({type(e).__name__}: {str(e)[:120]})"
    return None
