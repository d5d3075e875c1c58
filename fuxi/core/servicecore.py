"""The service manager's reconcile core (pure: no Ray, no I/O, no clock of its own).

One ``ServiceCore`` per service holds the desired state (the spec, the last good spec to roll
back to) and what it knows of the replicas. The shell feeds it what happened (a replica
became ready, failed to start, failed health checks, died, stopped) and asks ``plan(now,
nodes)`` what to do next: start replicas on chosen nodes, drain replicas, kill replicas.

    replica states:  STARTING --ready--> READY --drain--> DRAINING --stopped--> (gone)
                        |                  |
                        +--failed--> FAILED <--unhealthy/died--+   --stopped--> (gone)

Rules, each step:
* The target version is the spec's. A live replica (STARTING or READY) of another version is
  *old*.
* Start replicas of the target version while there are fewer than ``replicas`` of it and
  fewer than ``replicas + max_surge`` live in all, unless starts are backing off.
* Drain old replicas while the READY count stays at least ``replicas - max_unavailable``
  without them (an old replica that is not ready yet goes at once).
* With no old replicas left, drain the extra ones of a scale-down (not-ready ones first).
* A replica that fails to start or fails ``failure_threshold`` health checks in a row is
  FAILED: killed, then replaced. Repeated failures of one version back off exponentially
  (``START_BACKOFF_S``).
* During an upgrade, ``ROLLBACK_AFTER_FAILURES`` failed replicas of the new version roll the
  service back to the previous spec, which the same rules then restore.
* A canary (``start_canary``) runs a new version beside the current one, apart from these
  rules: ``canary_replicas_wanted`` replicas started with its share of the calls (``share``,
  registered with Kuafu, which routes that percent to them). ``promote_canary`` rolls the
  service to its version (its replicas are replaced like old ones); ``rollback_canary`` -- or
  ``ROLLBACK_AFTER_FAILURES`` failed canary replicas -- drains them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

STARTING, READY, DRAINING, FAILED = "starting", "ready", "draining", "failed"
LIVE = (STARTING, READY)
START_BACKOFF_S = (0.5, 30.0)   # first and longest pause before starting after a failure
ROLLBACK_AFTER_FAILURES = 2     # failed replicas of a new version before it is rolled back
EVENTS_KEPT = 100
CANARY_PERCENT_MIN = 0.1        # the smallest share of calls a canary may take, in percent


@dataclass
class Replica:
    rid: str
    version: str
    node: str | None
    state: str
    created_at: float
    ready_at: float | None = None
    failures: int = 0          # health checks failed in a row
    reason: str = ""
    kill_sent: bool = False
    placed: bool = False       # Ray has scheduled its actor (it holds its resources)
    share: float | None = None  # a canary replica's percent of the calls (its endpoint's)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Action:
    kind: str                   # "start" | "drain" | "kill"
    rid: str
    node: str | None = None
    spec: dict | None = None    # for "start": the spec of the replica's version
    grace_s: float = 0.0


@dataclass
class ServiceCore:
    spec: dict                  # ServiceSpec.to_doc() of the target version
    previous: dict | None = None  # the spec before the last upgrade (to roll back to)
    replicas: dict[str, Replica] = field(default_factory=dict)
    seq: int = 0
    crashes: int = 0            # failures of the target version in a row
    backoff_until: float = 0.0
    rollout: dict = field(default_factory=dict)  # {"from", "to", "state", "reason"}
    events: list[str] = field(default_factory=list)
    removing: bool = False
    canary: dict | None = None  # {"spec", "percent"}: a new version taking a share of calls
    _hot: frozenset = field(default=frozenset(), repr=False, compare=False)  # plan()'s, soft

    # ------------------------------------------------------------ desired state
    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def version(self) -> str:
        return self.spec["version"]

    def scale(self, replicas: int, now: float, reason: str = "") -> None:
        """A new desired count: by hand, or the autoscaler's (``reason``: its why)."""
        before = self.spec["replicas"]
        self.spec = dict(self.spec, replicas=int(replicas))
        if self.previous is not None:
            self.previous = dict(self.previous, replicas=int(replicas))
        self._event(now, f"autoscaled {before} -> {replicas} replicas: {reason}" if reason
                    else f"scaled to {replicas} replicas")

    def upgrade(self, spec: dict, now: float) -> None:
        """A new spec. A new version starts a rolling upgrade; the same version with other
        settings applies them to replicas started from now on."""
        if spec["name"] != self.name:
            raise ValueError(f"upgrade of {self.name!r} with a spec named {spec['name']!r}")
        if spec["version"] != self.version:
            self.previous = copy.deepcopy(self.spec)
            self.rollout = {"from": self.version, "to": spec["version"], "state": "rolling",
                            "reason": ""}
            self.crashes, self.backoff_until = 0, 0.0
            self._event(now, f"upgrade {self.version} -> {spec['version']} started")
        self.spec = copy.deepcopy(spec)

    def remove(self, now: float) -> None:
        self.removing = True
        self.spec = dict(self.spec, replicas=0)
        self._event(now, "removal requested: draining every replica")

    # ------------------------------------------------------------ what happened
    def ready(self, rid: str, now: float) -> None:
        r = self.replicas.get(rid)
        if r is None or r.state != STARTING:
            return
        r.state, r.ready_at, r.failures = READY, now, 0
        if r.version == self.version:
            self.crashes = 0
        self._event(now, f"{rid} ({r.version}) ready on {(r.node or '?')[:12]}")
        self._check_rollout_done(now)

    def start_failed(self, rid: str, error: str, now: float) -> None:
        self._fail(rid, f"failed to start: {error}", now)

    def health(self, rid: str, ok: bool, error: str, now: float) -> None:
        r = self.replicas.get(rid)
        if r is None or r.state != READY:
            return
        if ok:
            r.failures = 0
            return
        r.failures += 1
        threshold = int(self._spec_of(r.version)["health_check"]["failure_threshold"])
        if r.failures >= threshold:
            self._fail(rid, f"unhealthy: {r.failures} failed health checks in a row "
                            f"(last: {error})", now)

    def died(self, rid: str, error: str, now: float) -> None:
        r = self.replicas.get(rid)
        if r is None:
            return
        if r.state != DRAINING:
            self._fail(rid, f"died: {error}", now)  # counts toward backoff and rollback
        self.stopped(rid, now)  # nothing left to kill or drain

    def stopped(self, rid: str, now: float) -> None:
        r = self.replicas.pop(rid, None)
        if r is not None:
            self._event(now, f"{rid} ({r.version}) stopped{': ' + r.reason if r.reason else ''}")

    def _fail(self, rid: str, reason: str, now: float) -> None:
        r = self.replicas.get(rid)
        if r is None or r.state in (FAILED, DRAINING):
            return
        r.state, r.reason = FAILED, reason
        self._event(now, f"{rid} ({r.version}) {reason}")
        if self._is_canary(r):
            self._canary_failed(reason, now)
            return
        if r.version == self.version:
            self.crashes += 1
            pause = min(START_BACKOFF_S[0] * 2 ** (self.crashes - 1), START_BACKOFF_S[1])
            self.backoff_until = now + pause
            if (self.rollout.get("state") == "rolling" and self.previous is not None
                    and self.crashes >= ROLLBACK_AFTER_FAILURES):
                self._roll_back(reason, now)

    def _roll_back(self, reason: str, now: float) -> None:
        bad = self.version
        self.spec, self.previous = copy.deepcopy(self.previous), None
        self.rollout = {"from": bad, "to": self.version, "state": "rolled_back",
                        "reason": f"version {bad}: {reason}"}
        self.crashes, self.backoff_until = 0, 0.0
        self._event(now, f"rolled back to {self.version}: version {bad} failed "
                         f"{ROLLBACK_AFTER_FAILURES} replicas ({reason})")

    def _check_rollout_done(self, now: float) -> None:
        if self.rollout.get("state") != "rolling":
            return
        live = [r for r in self.replicas.values() if r.state in LIVE]
        ready_new = [r for r in live if r.version == self.version and r.state == READY
                     and r.share is None]
        if len(ready_new) >= self.spec["replicas"] and all(
                r.version == self.version and r.share is None for r in live):
            self.rollout["state"] = "done"
            self._event(now, f"upgrade to {self.version} done")

    # ------------------------------------------------------------ deciding
    def plan(self, now: float, nodes: dict[str, float],
             leaving: frozenset[str] = frozenset(),
             hot: frozenset[str] = frozenset()) -> list[Action]:
        """Actions for now. ``nodes``: alive node id -> free CPU there (for placement).
        ``hot``: nodes loaded well above their peers (``fuxi.core.hotnodes``): a new replica
        goes there only when no other node fits (a replica needing no CPU fits anywhere, so
        hiding a hot node's room alone would not keep it away).
        ``leaving``: nodes being drained (``fuxi.core.drain``): nothing is placed there, and
        their replicas are replaced like old ones, surge first: a replacement starts
        elsewhere (even when ``max_surge`` is 0) and the replica there drains only once the
        ready count stays at ``replicas`` without it."""
        self._hot = frozenset(hot)
        nodes = {k: v for k, v in nodes.items() if k not in leaving}
        acts: list[Action] = []
        for r in self.replicas.values():
            if r.state == FAILED and not r.kill_sent:
                r.kill_sent = True
                acts.append(Action("kill", r.rid))
        canary_acts = self._plan_canary(now, nodes, leaving)  # its replicas are apart
        live = [r for r in self.replicas.values() if r.state in LIVE and not self._is_canary(r)]
        n = int(self.spec["replicas"])
        rollout = self.spec["rollout"]
        new = [r for r in live if r.version == self.version and r.node not in leaving
               and r.share is None]
        old = [r for r in live if r.version != self.version or r.node in leaving
               or r.share is not None]  # a canary replica left over is replaced
        moving = any(r.node in leaving for r in old)
        # Start replicas of the target version.
        surge = max(int(rollout["max_surge"]), 1 if moving else 0)
        room = n + surge - len(live) if old else n - len(new)
        want = min(n - len(new), room)
        if want > 0 and now >= self.backoff_until and not self.removing:
            load = self._load(nodes)
            cpu = float(self.spec["resources"].get("cpu") or 0.0)
            for _ in range(want):
                node = self._place(load, nodes, cpu)
                self.seq += 1
                rid = f"{self.name}-{self.seq}"
                rep = Replica(rid, self.version, node, STARTING, now)
                self.replicas[rid] = rep
                live.append(rep)
                if node is not None:
                    load[node] = load.get(node, 0) + 1
                    nodes = dict(nodes, **{node: nodes.get(node, 0.0) - cpu})
                acts.append(Action("start", rid, node, copy.deepcopy(self.spec)))
        # Drain old replicas while enough stay ready.
        min_ready = n - int(rollout["max_unavailable"])
        ready = [r for r in live if r.state == READY]
        for r in sorted(old, key=lambda r: (r.state == READY, r.created_at)):
            was_ready = r.state == READY
            floor = n if r.node in leaving else min_ready  # a move never lowers the ready count
            if was_ready and len(ready) - 1 < floor and not self.removing:
                continue
            acts.append(self._drain(r, "moved: its node is draining" if r.node in leaving
                                    else "replaced by version " + self.version))
            if was_ready:
                ready.remove(r)
            live.remove(r)
        # Scale down (only when no old version remains).
        new = [r for r in live if r.version == self.version and r.share is None]
        if not old and len(new) > n:
            crowd = self._load({})
            extra = sorted(new, key=lambda r: (r.state == READY, -crowd.get(r.node, 0),
                                               -r.created_at))
            for r in extra[:len(new) - n]:
                acts.append(self._drain(r, "scaled down" if not self.removing else "removed"))
        self._check_rollout_done(now)
        return acts + canary_acts

    # ------------------------------------------------------------ canary (traffic split)
    def _is_canary(self, r: Replica) -> bool:
        """A replica of the canary now running (its version, started with its share)."""
        c = self.canary
        return (c is not None and r.share is not None and r.version == c["spec"]["version"]
                and r.share == c["percent"])

    def canary_replicas_wanted(self) -> int:
        """Replicas of a canary at ``percent``: its share of the stable replica count, at
        least one (the routing gives it ``percent`` of the calls however many it has)."""
        if self.canary is None:
            return 0
        return max(1, math.ceil(int(self.spec["replicas"]) * self.canary["percent"] / 100.0))

    def start_canary(self, spec: dict, percent: float, now: float) -> None:
        """Run ``spec`` (a new version) beside the current one, taking ``percent`` of the
        calls. A canary already running is replaced (another version or percent)."""
        if spec["name"] != self.name:
            raise ValueError(f"canary of {self.name!r} with a spec named {spec['name']!r}")
        if spec["version"] == self.version:
            raise ValueError(f"{self.name!r} already runs version {self.version}; a canary "
                             f"needs a new version")
        if self.removing:
            raise ValueError(f"{self.name!r} is being removed")
        if self.rollout.get("state") == "rolling":
            raise ValueError(f"{self.name!r} is rolling to version {self.version}; a canary "
                             f"can start once it is done")
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) \
                or not CANARY_PERCENT_MIN <= percent < 100.0:
            raise ValueError(f"canary percent {percent!r}: expected a number from "
                             f"{CANARY_PERCENT_MIN:g} to below 100")
        self.canary = {"spec": copy.deepcopy(spec), "percent": float(percent), "failures": 0,
                       "backoff_until": 0.0}
        self._event(now, f"canary {spec['version']} started: {float(percent):g}% of calls "
                         f"(stable {self.version})")

    def promote_canary(self, now: float) -> None:
        """The canary's version becomes the service's: a rolling upgrade to it with the
        stable replica count (its canary replicas are replaced like old ones)."""
        if self.canary is None:
            raise ValueError(f"{self.name!r} has no canary to promote")
        spec = dict(copy.deepcopy(self.canary["spec"]), replicas=int(self.spec["replicas"]))
        self.canary = None
        self._event(now, f"canary {spec['version']} promoted")
        self.upgrade(spec, now)

    def rollback_canary(self, now: float, reason: str = "by command") -> None:
        """Stop the canary: its replicas drain; every call goes to the stable version."""
        if self.canary is None:
            raise ValueError(f"{self.name!r} has no canary to roll back")
        version = self.canary["spec"]["version"]
        self.canary = None
        self._event(now, f"canary {version} rolled back ({reason}); all calls to "
                         f"{self.version}")

    def _canary_failed(self, reason: str, now: float) -> None:
        c = self.canary
        c["failures"] = int(c.get("failures", 0)) + 1
        pause = min(START_BACKOFF_S[0] * 2 ** (c["failures"] - 1), START_BACKOFF_S[1])
        c["backoff_until"] = now + pause
        if c["failures"] >= ROLLBACK_AFTER_FAILURES:
            self.rollback_canary(now, f"{c['failures']} of its replicas failed: {reason}")

    def _plan_canary(self, now: float, nodes: dict[str, float],
                     leaving: frozenset[str]) -> list[Action]:
        """Keep ``canary_replicas_wanted`` canary replicas (off leaving nodes)."""
        if self.canary is not None and self.removing:
            self.canary = None  # its replicas are old now: drained with the rest
        c = self.canary
        if c is None:
            return []
        ours = [r for r in self.replicas.values() if r.state in LIVE and self._is_canary(r)]
        fresh = [r for r in ours if r.node not in leaving]
        want = self.canary_replicas_wanted()
        acts: list[Action] = []
        if len(fresh) < want and now >= float(c.get("backoff_until", 0.0)):
            load = self._load(nodes)
            cpu = float(c["spec"]["resources"].get("cpu") or 0.0)
            for _ in range(want - len(fresh)):
                node = self._place(load, nodes, cpu)
                self.seq += 1
                rid = f"{self.name}-{self.seq}"
                rep = Replica(rid, c["spec"]["version"], node, STARTING, now,
                              share=c["percent"])
                self.replicas[rid] = rep
                fresh.append(rep)
                if node is not None:
                    load[node] = load.get(node, 0) + 1
                    nodes = dict(nodes, **{node: nodes.get(node, 0.0) - cpu})
                acts.append(Action("start", rid, node,
                                   dict(copy.deepcopy(c["spec"]), traffic_share=c["percent"])))
        ready = sum(1 for r in fresh if r.state == READY)
        for r in ours:
            if r.node in leaving and ready >= want:  # moved once its replacement serves
                acts.append(self._drain(r, "moved: its node is draining"))
        extra = sorted(fresh, key=lambda r: (r.state == READY, -r.created_at))
        for r in extra[:max(0, len(fresh) - want)]:
            acts.append(self._drain(r, "canary scaled down"))
        return acts

    def _drain(self, r: Replica, reason: str) -> Action:
        r.state, r.reason = DRAINING, reason
        grace = float(self._spec_of(r.version).get("drain_grace_s", 10.0))
        return Action("drain", r.rid, r.node, grace_s=grace)

    def _load(self, nodes: dict) -> dict[str, int]:
        load = {n: 0 for n in nodes}
        for r in self.replicas.values():
            if r.state in LIVE and r.node is not None:
                load[r.node] = load.get(r.node, 0) + 1
        return load

    def _place(self, load: dict[str, int], nodes: dict[str, float], cpu: float) -> str | None:
        if not nodes:
            return None
        fitting = [n for n in nodes if nodes[n] + 1e-9 >= cpu] or list(nodes)
        fitting = [n for n in fitting if n not in self._hot] or fitting  # hot nodes last
        if self.spec["placement"]["spread"]:
            return min(fitting, key=lambda n: (load.get(n, 0), -nodes[n], n))
        return max(fitting, key=lambda n: (load.get(n, 0), nodes[n], n))

    def _spec_of(self, version: str) -> dict:
        if self.canary is not None and version == self.canary["spec"]["version"] \
                and version != self.version:
            return self.canary["spec"]
        if version == self.version or self.previous is None:
            return self.spec
        return self.previous if self.previous["version"] == version else self.spec

    def _event(self, now: float, text: str) -> None:
        self.events = (self.events + [f"{now:.3f} {text}"])[-EVENTS_KEPT:]
        self.events_total = getattr(self, "events_total", 0) + 1  # the shell forwards the new

    # ------------------------------------------------------------ views and persistence
    @property
    def gone(self) -> bool:
        """Removed and nothing left running."""
        return self.removing and not self.replicas

    def counts(self) -> dict:
        c = {STARTING: 0, READY: 0, DRAINING: 0, FAILED: 0}
        for r in self.replicas.values():
            c[r.state] += 1
        return c

    def desired_doc(self) -> dict:
        """What must survive a restart of the platform: the desired state, not the replicas
        (those are found again as running actors)."""
        return {"spec": self.spec, "previous": self.previous, "seq": self.seq,
                "rollout": self.rollout, "removing": self.removing, "canary": self.canary}

    @classmethod
    def from_desired(cls, doc: dict) -> "ServiceCore":
        return cls(spec=doc["spec"], previous=doc.get("previous"), seq=int(doc.get("seq", 0)),
                   rollout=dict(doc.get("rollout") or {}), removing=bool(doc.get("removing")),
                   canary=doc.get("canary"))

    def adopt(self, rid: str, version: str, node: str | None, now: float,
              share: float | None = None) -> None:
        """A replica actor found running after a restart: checked before it counts as READY."""
        if rid not in self.replicas:
            self.replicas[rid] = Replica(rid, version, node, STARTING, now, placed=True,
                                         share=share)
            try:
                self.seq = max(self.seq, int(rid.rsplit("-", 1)[1]))
            except (IndexError, ValueError):
                pass
