"""A job spec resolved into a plan: what each task runs, on how many instances, with which
inputs and how data flows between tasks. Plain frozen dataclasses, picklable, no Ray.

``build_plan`` is pure: the validated spec and facts already resolved by a shell
(``fuxi.io.resolve``: the files each instance reads, the absolute outputs) in, the plan out.
The client lists inputs read-only before submitting (so a glob that matches nothing fails at
submit time with exit code 2); asking Pangu where inputs live (``with_preferred_nodes``) and
preparing the outputs — clearing an old one with ``--overwrite`` — happen in the JobMaster,
after FuxiMaster admitted the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from fuxi.core.attempt_faults import FaultPolicy
from fuxi.core.speculation import SpeculationPolicy


def shape_key(shape: dict[str, float]) -> str:
    """A stable name for a resource shape: workers are pooled per shape."""
    return ",".join(f"{k}={shape[k]:g}" for k in sorted(shape)) or "none"


@dataclass(frozen=True)
class Edge:
    """How the ``consumer`` task reads rows emitted by the ``producer`` task."""

    producer: str
    consumer: str
    mode: str  # "hash" | "one_to_one" | "broadcast"
    partition_by: tuple[str, ...]
    num_partitions: int  # the consumer's instance count


@dataclass(frozen=True)
class TaskPlan:
    name: str
    fn: str
    num_instances: int
    inputs: tuple[tuple[str, ...], ...]  # per instance: the files it reads
    shape: dict[str, float]
    max_retries: int
    timeout_s: float
    upstream: tuple[Edge, ...]  # edges into this task
    downstream: tuple[Edge, ...]  # edges out of this task
    output: str | None  # absolute path or URL where emitted rows land as Parquet
    # per instance: nodes holding most of its input bytes (Pangu inputs), for locality
    preferred_nodes: tuple[tuple[str, ...], ...] = ()

    @property
    def shape_key(self) -> str:
        return shape_key(self.shape)


@dataclass(frozen=True)
class JobPlan:
    name: str
    tasks: tuple[TaskPlan, ...]  # in topological order
    params: dict[str, Any] = field(default_factory=dict)
    speculation: SpeculationPolicy = SpeculationPolicy()
    priority: int = 50
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 10.0
    spec: dict[str, Any] = field(default_factory=dict)  # the validated spec, for the record
    overwrite: bool = False  # the JobMaster clears non-empty outputs before the first task
    queue: str = "default"  # the quota group whose queue the job waits in, whose share it uses
    faults: FaultPolicy | None = None  # injected attempt faults (the spec's ``faults:``; tests)
    checkpoint: bool = True  # finished instances are made durable so a new JobMaster resumes
    # What Ray ships to every worker (fuxi.core.codeenv): local paths until the client uploads
    # them (fuxi.io.codeship), package URIs from then on; None: workers import from sys_path.
    runtime_env: dict[str, Any] | None = None

    def task(self, name: str) -> TaskPlan:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def output(self) -> str | None:
        """The final task's output location (the last sink in topological order that has one)."""
        for t in reversed(self.tasks):
            if t.output and not t.downstream:
                return t.output
        for t in reversed(self.tasks):
            if t.output:
                return t.output
        return None


@dataclass(frozen=True)
class PlanFacts:
    """What a shell found out about a spec's world, for :func:`build_plan` (plain data).

    ``inputs``: per task with an ``input``, the files each instance reads (one tuple per
    instance, so its length is the instance count). ``preferred_nodes``: per task, the nodes
    holding most of each instance's input bytes (Pangu inputs only). ``outputs``: per task
    with an ``output``, its absolute path or URL.
    """

    inputs: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    preferred_nodes: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def with_preferred_nodes(plan: JobPlan,
                         preferred: dict[str, tuple[tuple[str, ...], ...]]) -> JobPlan:
    """The plan with each named task's per-instance preferred nodes (locality) set."""
    tasks = tuple(replace(t, preferred_nodes=tuple(tuple(n) for n in preferred[t.name]))
                  if t.name in preferred else t for t in plan.tasks)
    return replace(plan, tasks=tasks)


def build_plan(spec, facts: PlanFacts = PlanFacts(), overwrite: bool = False) -> JobPlan:
    """Wire a validated ``JobSpec`` and the ``facts`` resolved for it into a plan (pure)."""
    order = spec.topological_order()
    edges: dict[str, list[Edge]] = {name: [] for name in order}
    ins: dict[str, list[Edge]] = {name: [] for name in order}
    for name in order:
        t = spec.tasks[name]
        for producer in t.depends_on:
            e = Edge(
                producer=producer,
                consumer=name,
                mode=t.shuffle_mode,
                partition_by=tuple(t.partition_by or ()),
                num_partitions=0,  # filled below once instance counts are known
            )
            ins[name].append(e)

    counts: dict[str, int] = {}
    inputs: dict[str, tuple[tuple[str, ...], ...]] = {}
    for name in order:
        t = spec.tasks[name]
        if t.input is not None:
            if name not in facts.inputs:
                raise ValueError(f"task {name!r} reads input but the facts list no files for it")
            inputs[name] = tuple(tuple(paths) for paths in facts.inputs[name])
        else:
            inputs[name] = tuple(() for _ in range(t.instances))
        counts[name] = len(inputs[name])

    wired_in: dict[str, tuple[Edge, ...]] = {}
    for name in order:
        wired = tuple(
            Edge(e.producer, e.consumer, e.mode, e.partition_by, counts[name]) for e in ins[name]
        )
        wired_in[name] = wired
        for e in wired:
            edges[e.producer].append(e)

    tasks = []
    for name in order:
        t = spec.tasks[name]
        output = facts.outputs.get(name, t.output) if t.output else None
        tasks.append(
            TaskPlan(
                name=name,
                fn=t.fn,
                num_instances=counts[name],
                inputs=inputs[name],
                shape=t.resources.ray_shape(),
                max_retries=t.max_retries,
                timeout_s=float(t.timeout_s),
                upstream=wired_in[name],
                downstream=tuple(edges[name]),
                output=output,
                preferred_nodes=facts.preferred_nodes.get(name, ()),
            )
        )
    sp = spec.speculation
    return JobPlan(
        name=spec.name,
        tasks=tuple(tasks),
        params=dict(spec.params),
        speculation=SpeculationPolicy(
            enabled=sp.enabled,
            min_done_fraction=sp.min_done_fraction,
            slowdown=sp.slowdown,
            min_runtime_s=sp.min_runtime_s,
            max_backup_fraction=sp.max_backup_fraction,
        ),
        priority=spec.priority,
        retry_backoff_s=spec.retry_backoff_s,
        retry_backoff_max_s=spec.retry_backoff_max_s,
        spec=json.loads(json.dumps(spec.to_json_dict())),
        overwrite=bool(overwrite),
        checkpoint=spec.checkpoint,
        queue=spec.queue,
        runtime_env=(None if spec.runtime_env is None or spec.runtime_env.is_empty()
                     else spec.runtime_env.model_dump(exclude_defaults=True)),
        faults=None if spec.faults is None else FaultPolicy(
            attempt_fail_fraction=spec.faults.attempt_fail_fraction,
            attempt_hang_fraction=spec.faults.attempt_hang_fraction,
            hang_s=spec.faults.hang_s,
            seed=spec.faults.seed,
        ),
    )
