"""``JobCore.validate_state``: every incremental count and index recomputed from scratch.

JobCore keeps, instead of scanning (issue 16): instance counts by state per task, the worker
index (``fuxi.core.jobindex``), the running median of durations, the deadline heap, the
start-ordered running attempts per task and the instances with a backup running. Tests call
``validate`` after every event of random event sequences; it raises ``AssertionError`` naming
the first thing that differs. O(workers + instances + attempts): for tests, never for a shell.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from fuxi.core.states import TERMINAL_ATTEMPT, AttemptState, InstanceState

A, I = AttemptState, InstanceState


def validate(core: Any) -> None:
    _instances(core)
    _workers(core)
    _attempts(core)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"JobCore state: {what}")


def _instances(core: Any) -> None:
    in_ready = {id(i) for q in core.ready.values() for i in q}
    in_delayed = {(task, index) for _, _, task, index in core.delayed}
    for name, insts in core.instances.items():
        counted = {s: n for s, n in core.counts[name].items() if n}
        actual = dict(Counter(i.state for i in insts))
        _check(counted == actual, f"task {name!r}: counts by state {counted} but instances are {actual}")
        succeeded = actual.get(I.SUCCEEDED, 0)
        _check(core.remaining[name] == len(insts) - succeeded,
               f"task {name!r}: remaining={core.remaining[name]} but {succeeded} of {len(insts)} succeeded")
        st = core.stats[name]
        _check(len(st.running_median) == len(st.durations),
               f"task {name!r}: running median of {len(st.running_median)} durations, "
               f"{len(st.durations)} recorded")
        want = statistics.median(st.durations) if st.durations else None
        _check(st.median_s() == want, f"task {name!r}: running median {st.median_s()} != {want}")
        for inst in insts:
            live = inst.live()
            if inst.state is I.READY and not core.done():
                _check(id(inst) in in_ready or inst.key in in_delayed,
                       f"{inst.key} is ready but in neither the ready queue nor the delayed heap")
            if inst.state is I.RUNNING and len(live) >= 2:
                _check(inst.index in core.doubled[name], f"{inst.key} runs a backup not counted")
            if inst.state is not I.RUNNING:
                _check(not live, f"{inst.key} is {inst.state.value} with live attempts")


def _workers(core: Any) -> None:
    ix = core.index
    live = [w for w in core.workers.values() if not w.dead]
    taking = [w for w in live if w.started and not w.draining]
    _check(ix.live_total == len(live), f"{ix.live_total} live workers counted, {len(live)} live")
    _check(list(ix.seq) == list(core.workers), "creation order differs from the workers' order")
    held: dict[str, dict[str, int]] = {}
    for w in live:
        held.setdefault(w.shape_key, {}).setdefault(w.node_id, 0)
        held[w.shape_key][w.node_id] += 1
    _check(ix.held == held, f"held {ix.held} but live workers hold {held}")
    _check(core.held() == held, "held() differs from the live workers")
    _same(ix.live_by_shape, _group(live, lambda w: w.shape_key), "live workers per shape")
    _same(ix.live_on_node, _group(live, lambda w: w.node_id), "live workers per node")
    _same(ix.taking, _group(taking, lambda w: w.shape_key), "workers taking work per shape")
    _same(ix.taking_on, _group(taking, lambda w: (w.shape_key, w.node_id)), "... per shape and node")
    _same(ix.idle, _group([w for w in live if w.started and not w.queue], lambda w: w.shape_key),
          "idle workers per shape")
    placed = Counter((w.shape_key, w.node_id) for w in live if not w.draining)
    _check(ix.placed == dict(placed), f"placed {ix.placed} but workers are {dict(placed)}")
    started = Counter(w.shape_key for w in live if w.started)
    _check(ix.started == dict(started), f"started {ix.started} but workers are {dict(started)}")
    for w in core.workers.values():
        was = ix.was[w.worker_id]
        _check((was.live, was.started, was.draining, was.load)
               == (not w.dead, w.started, w.draining, len(w.queue)),
               f"worker {w.worker_id} recorded as ({was.live}, {was.started}, {was.draining}, {was.load}) but is "
               f"(live={not w.dead}, started={w.started}, draining={w.draining}, load={len(w.queue)})")
    # Every worker taking work has one current entry in its shape's heap and its node's heap.
    for heaps, key in ((ix.heaps, lambda w: w.shape_key), (ix.node_heaps, lambda w: (w.shape_key, w.node_id))):
        current = {(wid, load) for h in heaps.values() for load, wid, ver in h if ver == ix.version[wid]}
        want = {(w.worker_id, len(w.queue)) for w in taking}
        _check(current == want, f"heap entries {sorted(current - want)} stale or "
                                f"{sorted(want - current)} missing")
        for k, h in heaps.items():
            for load, wid, ver in h:
                if ver == ix.version[wid]:
                    _check(key(core.workers[wid]) == k, f"worker {wid} is in the heap of {k}")
    # The least-loaded worker with room, as a scan would find it.
    for sk in {w.shape_key for w in taking}:
        for cap in (1, 2, core.limits.worker_queue_max):
            scan = min(((len(w.queue), w.worker_id) for w in taking
                        if w.shape_key == sk and len(w.queue) < cap), default=None)
            got = ix.first(ix.heaps.get(sk), cap)
            _check(got == scan, f"shape {sk} cap {cap}: index finds {got}, a scan {scan}")
    for w in live:
        for key in w.queue:
            a = core.attempts[key]
            _check(a.state not in TERMINAL_ATTEMPT and a.worker_id == w.worker_id,
                   f"worker {w.worker_id} queues {key}, which is {a.state.value} on {a.worker_id}")


def _attempts(core: Any) -> None:
    running = [a for a in core.attempts.values() if a.state is A.RUNNING]
    deadlines = {key for _, _, key in core.deadlines}
    for a in running:
        w = core.workers[a.worker_id]
        if not w.dead and a.key in w.queue and not core.done():
            _check(a.key in deadlines, f"running attempt {a.key} has no deadline")
        if not core.done():
            entries = set(core.by_start[a.key[0]].heap)
            _check((a.started_at, a.key[1], a.key[2]) in entries,
                   f"running attempt {a.key} is not in its task's start order")


def _group(workers, key) -> dict:
    out: dict = {}
    for w in workers:
        out.setdefault(key(w), set()).add(w.worker_id)
    return out


def _same(got: dict, want: dict, what: str) -> None:
    got = {k: v for k, v in got.items() if v}
    _check(got == want, f"{what}: index {got}, workers {want}")
