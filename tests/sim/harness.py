"""A deterministic simulator that drives ``JobCore`` the way the Ray shell does.

One seed fixes everything: the cluster (nodes x worker slots), the job (one stage, or map ->
reduce over a hash / broadcast / one_to_one edge), every attempt's duration and fate, worker
crashes, network latency. Time is a float on a simulated clock; nothing sleeps.

What is modelled, following ``fuxi.shells.jobmaster`` and ``fuxi.shells.worker``:

* FuxiMaster: a sync every 250 ms grants slots with the very functions FuxiMaster's ``sync``
  calls (``fuxi.core.slots.grant`` plans, ``apply_grants`` re-checks and commits to a real
  ``Ledger``) and sends the fair-share target that the shell turns into ``shrink``; sometimes
  another job shows up for a while and squeezes our share.
* Worker start takes a while and may fail; ``worker_started`` / ``worker_start_failed``.
* One ``exchange`` in flight per worker: it carries pushes and skips, returns as soon as an
  attempt finished (or after 100 ms) with every finished result plus the running attempt and
  its elapsed time. Replies are sometimes very late, so results arrive batched.
* Workers run their queue FIFO, one attempt at a time. ``StopAttempt`` skips a queued attempt
  or interrupts the running one (the worker carries on with its queue); an interrupted attempt
  that will not stop gets the worker killed and reported dead after a grace period.
* Faults: attempts that raise, very slow attempts (timeouts, stragglers), workers that die
  mid-attempt (the shell notices when an exchange fails).
* ``tick`` every 20 ms.

After every event the core's state and the actions it returned are checked against
invariants (see ``Sim.validate`` and ``Sim.apply``); a violation raises ``InvariantError``
carrying the seed so that ``SEED=<n> pytest tests/sim`` replays it.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fuxi.core import slots as slotlib
from fuxi.core.jobcore import (
    AttemptResult,
    Commit,
    JobCore,
    JobDone,
    JobLimits,
    Push,
    ReleaseSlot,
    StartWorker,
    StopAttempt,
    StopWorker,
)
from fuxi.core.plan import Edge, JobPlan, TaskPlan, shape_key
from fuxi.core.speculation import SpeculationPolicy
from fuxi.core.states import TERMINAL_ATTEMPT, AttemptState, InstanceState, JobState

TICK_S = 0.02
SYNC_S = 0.25
EXCHANGE_WAIT_S = 0.1
STOP_GRACE_S = 0.5  # scaled down from the worker's 10 s
SIM_TIME_MAX_S = 600.0  # a job that has not ended by then is stuck
EVENTS_MAX = 400_000
SHAPE = {"CPU": 1.0}
SK = shape_key(SHAPE)
A, I, J = AttemptState, InstanceState, JobState


class InvariantError(AssertionError):
    pass


# ---------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    seed: int
    nodes: int
    slots_per_node: int
    plan: JobPlan
    limits: JobLimits
    base_s: dict[str, float]  # typical attempt duration per task
    p_raise: float
    p_slow: float
    slow_factor: float
    p_die: float  # per attempt: its worker dies while running it
    deaths_max: int
    p_start_fail: float
    p_late_reply: float
    p_lost_output: float  # a success whose output cannot be collected (the shell's take_outputs)
    p_node_crash: float  # per attempt: its whole node goes down while it runs
    p_stuck: float  # an interrupted attempt that does not stop (the worker is killed later)
    squeeze: tuple[float, float] | None  # another job holds a fair share during [t0, t1)

    def describe(self) -> str:
        tasks = ", ".join(f"{t.name}x{t.num_instances}(retries={t.max_retries}, "
                          f"timeout={t.timeout_s:g}s, base={self.base_s[t.name] * 1000:.0f}ms)"
                          for t in self.plan.tasks)
        return (f"seed={self.seed}: {self.nodes} nodes x {self.slots_per_node} slots; {tasks}; "
                f"p_raise={self.p_raise:.2f} p_slow={self.p_slow:.2f} p_die={self.p_die:.2f} "
                f"speculation={self.plan.speculation.enabled} squeeze={self.squeeze}")


def make_scenario(seed: int) -> Scenario:
    rng = random.Random(seed)
    n_map = rng.randint(1, 16)
    two_stage = rng.random() < 0.6
    names = ["map"]
    tasks: list[TaskPlan] = []
    base_s = {"map": rng.choice([0.001, 0.005, 0.02, 0.1, 0.3])}
    timeout = {"map": rng.choice([0.8, 1.5, 3.0])}
    retries = {"map": rng.choice([0, 1, 2, 2, 3, 3, 4])}
    output = {"map": None if two_stage else "/out/map"}
    if two_stage:
        names.append("reduce")
        n_reduce = rng.randint(1, 6)
        mode = rng.choice(["hash", "broadcast", "one_to_one"])
        edge = Edge("map", "reduce", mode, ("k",) if mode == "hash" else (), n_reduce)
        base_s["reduce"] = rng.choice([0.002, 0.02, 0.1, 0.3])
        timeout["reduce"] = rng.choice([0.8, 1.5, 3.0])
        retries["reduce"] = rng.choice([0, 1, 2, 2, 3, 3, 4])
        output["reduce"] = "/out/reduce"
        if rng.random() < 0.3:
            output["map"] = "/out/map"  # a stage may both feed another and write output
        tasks.append(TaskPlan("map", "m:map", n_map, ((),) * n_map, dict(SHAPE), retries["map"],
                              timeout["map"], (), (edge,), output["map"]))
        tasks.append(TaskPlan("reduce", "m:reduce", n_reduce, ((),) * n_reduce, dict(SHAPE),
                              retries["reduce"], timeout["reduce"], (edge,), (), output["reduce"]))
    else:
        tasks.append(TaskPlan("map", "m:map", n_map, ((),) * n_map, dict(SHAPE), retries["map"],
                              timeout["map"], (), (), output["map"]))
    speculation = SpeculationPolicy(
        enabled=rng.random() < 0.7,
        min_done_fraction=rng.choice([0.25, 0.5, 0.75]),
        slowdown=rng.choice([1.5, 2.0, 3.0]),
        min_runtime_s=rng.choice([0.0, 0.05, 0.2]),
        max_backup_fraction=rng.choice([0.1, 0.3, 0.5]),
    )
    plan = JobPlan(name=f"sim{seed}", tasks=tuple(tasks), speculation=speculation,
                   retry_backoff_s=rng.choice([0.0, 0.02, 0.1]), retry_backoff_max_s=0.4)
    limits = JobLimits(
        batch_target_s=rng.choice([0.01, 0.05, 0.2]),
        worker_queue_max=rng.choice([1, 2, 4, 16]),
        worker_failures_max=rng.choice([2, 3, 5]),
        node_failures_max=rng.choice([3, 6, 10]),
        worker_start_failures_max=8,
        idle_release_s=rng.choice([0.1, 0.5, 2.0]),
    )
    squeeze = None
    if rng.random() < 0.3:
        t0 = rng.uniform(0.0, 1.0)
        squeeze = (t0, t0 + rng.uniform(0.2, 2.0))
    return Scenario(
        seed=seed,
        nodes=rng.randint(1, 4),
        slots_per_node=rng.randint(1, 3),
        plan=plan,
        limits=limits,
        base_s=base_s,
        p_raise=rng.choice([0.0, 0.02, 0.1, 0.25]),
        p_slow=rng.choice([0.0, 0.03, 0.1]),
        slow_factor=rng.choice([5.0, 20.0, 100.0]),
        p_die=rng.choice([0.0, 0.02, 0.08]),
        deaths_max=rng.randint(0, 6),
        p_start_fail=rng.choice([0.0, 0.0, 0.05]),
        p_late_reply=rng.choice([0.0, 0.05, 0.2]),
        p_lost_output=rng.choice([0.0, 0.0, 0.05]),
        p_node_crash=rng.choice([0.0, 0.0, 0.02]),
        p_stuck=rng.choice([0.0, 0.1, 0.5]),
        squeeze=squeeze,
    )


# ---------------------------------------------------------------- simulated processes


@dataclass
class SimWorker:
    """The worker actor (its own queue) plus the shell's per-worker slot bookkeeping."""

    wid: str
    node: str
    alive: bool = True
    up: bool = False
    queue: deque = field(default_factory=deque)  # AttemptSpecs, FIFO
    skip: set = field(default_factory=set)
    running: tuple | None = None  # (spec, t0, ok, token)
    finished: list = field(default_factory=list)  # AttemptResults not yet returned
    waiting_exchange: int | None = None  # an exchange parked at the worker (its id)
    # shell side (``_Slot``): present while the shell tracks the worker
    tracked: bool = True
    in_flight: bool = False
    outbox: list = field(default_factory=list)
    frontbox: list = field(default_factory=list)  # backups that jump the worker's queue
    skipbox: list = field(default_factory=list)


class Sim:
    def __init__(self, sc: Scenario):
        self.sc = sc
        self.rng = random.Random(sc.seed * 7919 + 1)
        self.now = 0.0
        self.core = JobCore(f"job{sc.seed}", sc.plan, now=0.0, limits=sc.limits)
        self.nodes = [f"node{i}" for i in range(sc.nodes)]
        self.ledger = slotlib.Ledger()  # what "FuxiMaster" granted (only this job holds slots)
        self.workers: dict[str, SimWorker] = {}
        self.events: list = []
        self._seq = 0
        self.steps = 0
        self.deaths = 0
        self.start_failures = 0
        self.done: list[JobDone] = []
        self.commits: dict[tuple[str, int], Commit] = {}
        self.winners: dict[tuple[str, int], tuple] = {}
        self.started_keys: set = set()  # attempts a worker began executing
        self.delivered_ok: set = set()  # attempts whose success reached the core in time
        self.raised: set = set()  # attempts whose failure reached the core
        self.outputs: dict[tuple, dict] = {}  # attempt key -> its upstream refs (as produced)
        self.log: deque[str] = deque(maxlen=40)
        self.post_done_actions: list = []

    # ------------------------------------------------------------ plumbing

    def fail(self, msg: str) -> None:
        raise InvariantError(
            f"{msg}\n  replay: SEED={self.sc.seed} pytest tests/sim\n  {self.sc.describe()}\n"
            f"  t={self.now:.3f}s step={self.steps}\n  recent events:\n    "
            + "\n    ".join(self.log))

    def check(self, cond: bool, msg: str) -> None:
        if not cond:
            self.fail(msg)

    def at(self, t: float, kind: str, *payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, payload))

    def net_s(self) -> float:
        if self.rng.random() < self.sc.p_late_reply:
            return self.rng.uniform(0.1, 0.6)  # a late, batched report
        return self.rng.uniform(0.0005, 0.01)

    # ------------------------------------------------------------ the loop

    def run(self) -> "Sim":
        self.at(0.0, "sync")
        self.at(TICK_S, "tick")
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            self.now = t
            self.steps += 1
            self.check(self.steps <= EVENTS_MAX, f"job did not end within {EVENTS_MAX} events")
            self.check(self.now <= SIM_TIME_MAX_S,
                       f"job did not end within {SIM_TIME_MAX_S}s of simulated time: "
                       f"{self.core.status(self.now)['tasks']}")
            if self.done and kind in ("tick", "sync"):
                continue  # the shell's loop has ended
            self.log.append(f"{t:8.3f} {kind} {payload!r:.160}")
            getattr(self, f"on_{kind}")(*payload)
            if not self.done:
                self.flush()
            self.validate()
        self.check(len(self.done) == 1, f"the job never ended (JobDone x{len(self.done)})")
        self.final_checks()
        return self

    def call(self, what: str, acts: list) -> None:
        """Execute the core's actions like ``JobMaster._apply`` and check each one."""
        if self.done:
            self.check(acts == [], f"{what} after JobDone returned actions: {acts!r:.300}")
            return
        for act in acts:
            self.apply(act)

    # ------------------------------------------------------------ actions

    def apply(self, act: Any) -> None:
        core = self.core
        if isinstance(act, StartWorker):
            self.check(act.worker_id not in self.workers, f"worker id reused: {act}")
            self.check(act.node_id in self.nodes, f"StartWorker on unknown node: {act}")
            w = self.workers[act.worker_id] = SimWorker(act.worker_id, act.node_id)
            self.at(self.now + self.rng.uniform(0.005, 0.1), "start_done", w.wid)
        elif isinstance(act, Push):
            cw = core.workers.get(act.worker_id)
            w = self.workers.get(act.worker_id)
            self.check(cw is not None and cw.started and not cw.dead and not cw.draining,
                       f"push to a worker that is not up, dead or draining: {act.worker_id}")
            self.check(w is not None and w.tracked, f"push to an untracked worker {act.worker_id}")
            for spec in act.attempts:
                self.check_upstream(spec)
            (w.frontbox if getattr(act, "front", False) else w.outbox).extend(act.attempts)
        elif isinstance(act, StopAttempt):
            w = self.workers.get(act.worker_id)
            if w is not None and w.tracked:
                w.skipbox.append(act.key)
        elif isinstance(act, StopWorker):
            w = self.workers.get(act.worker_id)
            self.check(w is not None, f"StopWorker for a worker never started: {act}")
            w.tracked = False  # the shell forgets it: late replies are dropped
            self.kill(w)
        elif isinstance(act, ReleaseSlot):
            did = f"me/{act.shape_key}"
            self.check(self.ledger.held(did).get(act.node_id, 0) > 0,
                       f"ReleaseSlot for a slot the job does not hold: {act}")
            self.ledger.release(did, act.node_id, 1)
        elif isinstance(act, Commit):
            key = (act.task, act.instance)
            self.check(key not in self.commits,
                       f"second Commit for {key}: {self.commits.get(key)} then {act}")
            self.check((act.task, act.instance, act.attempt) in self.delivered_ok,
                       f"Commit of an attempt that never reported success: {act}")
            self.check(act.output == core.tasks[act.task].output, f"Commit to the wrong place: {act}")
            self.commits[key] = act
        elif isinstance(act, JobDone):
            self.check(not self.done, f"second JobDone: {act}")
            self.done.append(act)
        else:
            self.fail(f"unknown action {act!r}")

    def check_upstream(self, spec) -> None:
        t = self.core.tasks[spec.task]
        expected = []
        for e in t.upstream:
            for up in self.core.instances[e.producer]:
                self.check(up.state is I.SUCCEEDED,
                           f"{spec.key} dispatched before {e.producer}[{up.index}] succeeded")
                produced = self.outputs[up.winner.key]
                ref = produced.get((spec.task, spec.instance), produced.get((spec.task, -1)))
                if ref is not None:
                    expected.append(ref)
        self.check(spec.upstream == tuple(expected),
                   f"{spec.key} got upstream refs {spec.upstream}, expected {tuple(expected)}")

    # ------------------------------------------------------------ FuxiMaster

    def on_sync(self) -> None:
        self.at(self.now + SYNC_S, "sync")
        demands = self.core.demands()
        totals = {n: {"CPU": float(self.sc.slots_per_node)} for n in self.nodes}
        ds = [slotlib.Demand(f"me/{sk}", "me", 50, 2, shape, n) for sk, (shape, n) in demands.items()]
        sq = self.sc.squeeze
        if sq and sq[0] <= self.now < sq[1]:
            ds.append(slotlib.Demand("other/x", "other", 50, 1, dict(SHAPE),
                                     self.sc.nodes * self.sc.slots_per_node))
        bad = set(self.core.bad_nodes)  # hard exclusions (issue 16 part 6), as FuxiMaster's
        plan = slotlib.grant(totals, self.ledger, ds, "me", excluded_nodes=bad)
        applied = slotlib.apply_grants(self.ledger, totals, plan, ds, excluded_nodes=bad)
        self.check(list(applied) == list(plan.grants),
                   f"a grant planned this instant did not fit: {plan.grants} vs {applied}")
        for sk, (shape, _) in demands.items():
            did = f"me/{sk}"
            for g in sorted((g for g in applied if g.demand_id == did), key=lambda g: g.node_id):
                self.call("slots_granted", self.core.slots_granted(sk, shape, g.node_id, g.n, self.now))
            self.call("shrink", self.core.shrink(sk, plan.targets.get(did, 0), self.now))

    # ------------------------------------------------------------ worker lifecycle

    def on_start_done(self, wid: str) -> None:
        w = self.workers[wid]
        if not w.tracked:
            return
        if not w.alive or self.rng.random() < self.sc.p_start_fail:
            w.tracked = False
            w.alive = False
            self.start_failures += 1
            self.call("worker_start_failed", self.core.worker_start_failed(wid, "RayActorError", self.now))
            return
        w.up = True
        self.call("worker_started", self.core.worker_started(wid, self.now))

    def kill(self, w: SimWorker) -> None:
        if not w.alive:
            return
        w.alive = False
        w.running = None
        w.finished.clear()  # results not yet returned die with the process
        if w.waiting_exchange is not None:
            w.waiting_exchange = None
            self.at(self.now + self.net_s(), "exchange_failed", w.wid)

    def on_crash(self, wid: str) -> None:
        w = self.workers[wid]
        if w.alive:
            self.deaths += 1
            self.kill(w)

    def on_node_crash(self, node: str) -> None:
        for w in self.workers.values():
            if w.node == node and w.alive and w.up:
                self.deaths += 1
                self.kill(w)

    def on_stuck(self, wid: str) -> None:
        """The shell sees a stuck attempt in a reply, kills the worker and reports it dead."""
        w = self.workers[wid]
        if not w.alive or not w.tracked:
            return
        w.tracked = False
        self.kill(w)
        self.call("worker_died", self.core.worker_died(wid, "RuntimeError: attempt did not stop",
                                                       self.now))

    def on_exchange_failed(self, wid: str) -> None:
        w = self.workers[wid]
        w.in_flight = False
        if not w.tracked:
            return
        w.tracked = False
        self.call("worker_died", self.core.worker_died(wid, "ActorDiedError: the actor died", self.now))

    # ------------------------------------------------------------ exchange

    def flush(self) -> None:
        """``JobMaster._flush``: one exchange in flight per started worker."""
        for w in self.workers.values():
            if not w.tracked or not w.up or w.in_flight:
                continue
            cw = self.core.workers.get(w.wid)
            if cw is None or cw.dead:
                continue
            if w.outbox or w.frontbox or w.skipbox or cw.queue:
                push, w.outbox = w.outbox, []
                front, w.frontbox = w.frontbox, []
                skip, w.skipbox = w.skipbox, []
                w.in_flight = True
                self._seq += 1
                self.at(self.now + self.rng.uniform(0.0005, 0.005), "exchange_arrives", w.wid,
                        tuple(push), tuple(skip), self._seq, tuple(front))

    def on_exchange_arrives(self, wid: str, push: tuple, skip: tuple, xid: int,
                            front: tuple = ()) -> None:
        w = self.workers[wid]
        if not w.alive:
            self.at(self.now + self.net_s(), "exchange_failed", wid)
            return
        for key in skip:
            if w.running is not None and w.running[0].key == key:
                w.running = None  # interrupted: its result is never reported
                if self.rng.random() < self.sc.p_stuck:
                    self.at(self.now + STOP_GRACE_S, "stuck", wid)
            else:
                w.skip.add(key)
        w.queue.extend(push)
        w.queue.extendleft(reversed(front))
        pending = sum(1 for s in w.queue if s.key not in w.skip)
        self.check(pending <= self.sc.limits.worker_queue_max,
                   f"worker {wid} holds {pending} attempts > worker_queue_max="
                   f"{self.sc.limits.worker_queue_max}")
        self.start_next(w)
        if w.finished or (w.running is None and not w.queue):
            self.reply(w)
        else:
            w.waiting_exchange = xid
            self.at(self.now + EXCHANGE_WAIT_S, "exchange_wait_over", wid, xid)

    def on_exchange_wait_over(self, wid: str, xid: int) -> None:
        w = self.workers[wid]
        if w.alive and w.waiting_exchange == xid:
            self.reply(w)

    def reply(self, w: SimWorker) -> None:
        w.waiting_exchange = None
        finished, w.finished = w.finished, []
        running = []
        if w.running is not None:
            spec, t0, _, _ = w.running
            running.append((spec.key, self.now - t0))
        self.at(self.now + self.net_s(), "reply", w.wid, tuple(finished), tuple(running))

    def on_reply(self, wid: str, finished: tuple, running: tuple) -> None:
        w = self.workers[wid]
        w.in_flight = False
        if not w.tracked:
            return  # the shell already dropped this worker
        delivered = []
        for res in finished:
            if res.ok and res.outputs and self.rng.random() < self.sc.p_lost_output:
                res = AttemptResult(key=res.key, ok=False, duration_s=res.duration_s,
                                    kind="lost_output", error="output of a finished attempt was lost")
            a = self.core.attempts.get(res.key)
            if res.ok and a is not None and a.state not in TERMINAL_ATTEMPT:
                # Only a success the core can still accept counts as one: a result that comes
                # after a timeout or a lost race is the attempt's failure, not its success.
                self.delivered_ok.add(res.key)
            elif not res.ok:
                self.raised.add(res.key)
            delivered.append(res)
        finished = tuple(delivered)
        self.call("worker_report", self.core.worker_report(wid, list(running), list(finished), self.now))

    # ------------------------------------------------------------ execution

    def start_next(self, w: SimWorker) -> None:
        while w.alive and w.running is None and w.queue:
            spec = w.queue.popleft()
            if spec.key in w.skip:
                w.skip.discard(spec.key)
                continue
            a = self.core.attempts.get(spec.key)
            self.check(a is not None and a.worker_id == w.wid,
                       f"worker {w.wid} runs {spec.key} that the core placed elsewhere")
            self.check(a.state in (A.QUEUED, A.RUNNING, A.KILLED),
                       f"worker {w.wid} starts {spec.key} which the core has as {a.state.value}")
            self.check(self.core.workers[w.wid].dead is False or a.state is A.KILLED,
                       f"{spec.key} starts on a worker the core thinks is dead")
            self.started_keys.add(spec.key)
            sc, rng = self.sc, self.rng
            d = sc.base_s[spec.task] * rng.uniform(0.5, 1.5)
            if rng.random() < sc.p_slow:
                d *= sc.slow_factor
            ok = rng.random() >= sc.p_raise
            self._seq += 1
            w.running = (spec, self.now, ok, self._seq)
            self.at(self.now + d, "attempt_ends", w.wid, self._seq)
            if self.deaths < sc.deaths_max and rng.random() < sc.p_die:
                self.at(self.now + d * rng.uniform(0.05, 0.95), "crash", w.wid)
            if self.deaths < sc.deaths_max and rng.random() < sc.p_node_crash:
                self.at(self.now + d * rng.uniform(0.05, 0.95), "node_crash", w.node)

    def on_attempt_ends(self, wid: str, token: int) -> None:
        w = self.workers[wid]
        if not w.alive or w.running is None or w.running[3] != token:
            return
        spec, t0, ok, _ = w.running
        w.running = None
        d = self.now - t0
        if ok:
            outputs = {}
            for e in spec.downstream:
                if e.mode == "hash":
                    parts = range(e.num_partitions)
                elif e.mode == "one_to_one":
                    parts = [spec.instance % e.num_partitions]
                else:
                    parts = [-1]
                for p in parts:
                    outputs[(e.consumer, p)] = f"ref:{spec.task}.{spec.instance}.{spec.attempt}->{p}"
            self.outputs[spec.key] = outputs
            res = AttemptResult(key=spec.key, ok=True, duration_s=d, outputs=outputs)
        else:
            res = AttemptResult(key=spec.key, ok=False, duration_s=d,
                                error=f"Traceback (most recent call last):\n"
                                      f"RuntimeError: injected fault in {spec.key}")
        w.finished.append(res)
        self.start_next(w)
        if w.waiting_exchange is not None:
            self.reply(w)

    # ------------------------------------------------------------ time

    def on_tick(self) -> None:
        self.at(self.now + TICK_S, "tick")
        self.call("tick", self.core.tick(self.now))

    # ------------------------------------------------------------ invariants

    def validate(self) -> None:
        core = self.core
        qmax = self.sc.limits.worker_queue_max
        for name, insts in core.instances.items():
            for inst in insts:
                won = [a for a in inst.attempts if a.state is A.SUCCEEDED
                       and inst.winner is not None and a is inst.winner]
                succeeded = [a for a in inst.attempts if a.state is A.SUCCEEDED]
                self.check(len(succeeded) <= 1, f"{inst.key} has two winners: "
                           f"{[a.key for a in succeeded]}")
                if inst.state is I.SUCCEEDED:
                    self.check(len(won) == 1, f"{inst.key} succeeded without a winner")
                    prev = self.winners.setdefault(inst.key, inst.winner.key)
                    self.check(prev == inst.winner.key,
                               f"{inst.key} winner changed {prev} -> {inst.winner.key}")
                    self.check(inst.winner.key in self.delivered_ok,
                               f"{inst.key} won by {inst.winner.key}, which never reported success")
                live = inst.live()
                if inst.state is I.RUNNING:
                    self.check(bool(live), f"{inst.key} RUNNING without a live attempt")
                else:
                    self.check(not live, f"{inst.key} is {inst.state.value} with live attempts "
                                         f"{[a.key for a in live]}")
                for a in live:
                    w = core.workers[a.worker_id]
                    self.check(not w.dead, f"live attempt {a.key} on dead worker {w.worker_id}")
                    self.check(a.key in w.queue, f"live attempt {a.key} missing from {w.worker_id}'s queue")
        for w in core.workers.values():
            self.check(len(w.queue) <= qmax,
                       f"worker {w.worker_id} queue {len(w.queue)} > worker_queue_max={qmax}")
            if w.dead:
                self.check(not w.queue, f"dead worker {w.worker_id} still has {w.queue}")
            for key in w.queue:
                a = core.attempts[key]
                self.check(a.state not in TERMINAL_ATTEMPT and a.worker_id == w.worker_id,
                           f"{w.worker_id}'s queue holds {key} ({a.state.value}, on {a.worker_id})")
        if not self.done:
            # Every slot the job holds has exactly one live worker, and vice versa.
            per_node: dict[str, int] = {n: 0 for n in self.nodes}
            for w in core.workers.values():
                if not w.dead:
                    per_node[w.node_id] += 1
            held = {n: self.ledger.held(f"me/{SK}").get(n, 0) for n in self.nodes}
            self.check(per_node == held,
                       f"slots held {held} != live workers per node {per_node}")

    def faults(self) -> dict[tuple[str, int], int]:
        """Per instance: attempts that began running and did not deliver a success — raised,
        died with their worker, or were stopped (timed out, lost a race, blacklisted)."""
        out: dict[tuple[str, int], int] = {}
        for key in self.started_keys:
            if key not in self.delivered_ok:
                out[key[:2]] = out.get(key[:2], 0) + 1
        return out

    def final_checks(self) -> None:
        core, done = self.core, self.done[0]
        self.check(done.state is core.state, f"JobDone({done.state}) but core is {core.state}")
        succeeded = {(n, i.index) for n, insts in core.instances.items() for i in insts
                     if i.state is I.SUCCEEDED}
        with_output = {k for k in succeeded if core.tasks[k[0]].output}
        self.check(set(self.commits) == with_output,
                   f"commits {sorted(self.commits)} != succeeded instances with output "
                   f"{sorted(with_output)}")
        faults = self.faults()
        within = all(faults.get((t.name, i), 0) <= t.max_retries
                     for t in core.plan.tasks for i in range(t.num_instances))
        starts_ok = self.start_failures <= self.sc.limits.worker_start_failures_max
        if within and starts_ok:
            self.check(done.state is J.SUCCEEDED,
                       f"every instance stayed within max_retries {faults} but the job ended "
                       f"{done.state.value}: {done.report[:2000]}")
        if done.state is J.SUCCEEDED:
            self.check(len(succeeded) == sum(t.num_instances for t in core.plan.tasks),
                       "job succeeded with unfinished instances")
        elif done.state is J.FAILED and not done.report.startswith("could not start workers"):
            # The report names the instance that ran out of retries; it really did fail often.
            bad = [(t.name, i) for t in core.plan.tasks for i in range(t.num_instances)
                   if f"task {t.name!r} instance {i} failed after" in done.report]
            self.check(len(bad) == 1, f"failure report names no instance: {done.report[:500]}")
            t = core.tasks[bad[0][0]]
            self.check(faults.get(bad[0], 0) > t.max_retries,
                       f"{bad[0]} blamed with only {faults.get(bad[0], 0)} faults "
                       f"(max_retries={t.max_retries}): {done.report[:1500]}")
            self.check("last traceback:" in done.report, "report lacks the traceback")
        for w in self.workers.values():
            self.check(not w.alive or not w.tracked or core.workers[w.wid].dead is False,
                       "inconsistent worker")
        # After the end nothing the core tracks is alive.
        self.check(all(w.dead for w in core.workers.values()), "a worker outlived the job")


def simulate(seed: int) -> Sim:
    return Sim(make_scenario(seed)).run()
