"""The job spec: Fuxi's public contract for a batch job (a DAG of tasks).

A spec arrives as a YAML/JSON file (``fuxi.io.specfile.load_job_spec`` reads it), a plain
dict (``spec_from_dict``) or Python objects (``JobSpec(...)``). The file/dict path runs in this
order, each step reporting every problem it finds at once as one ``SpecError``:

    read file -> apply ``--set key=value`` overrides -> substitute ``${params.NAME}``
    -> pydantic validation (fields, then DAG checks) -> optionally import every task ``fn``

pydantic lives only here, at the boundary (STYLE.md rule 5); the rest of Fuxi reads the
validated models. Parsing, overrides and readable errors, shared with the service spec, are in
``fuxi.core.specparse``. This module never imports ``ray`` and reads no files.
"""

from __future__ import annotations

import copy
import heapq
import importlib
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fuxi.core.attempt_faults import fraction_max as fault_fraction_max
from fuxi.core.attempt_faults import hang_s_max as fault_hang_s_max
from fuxi.core.codeenv import PICKLED_PREFIX, RuntimeEnvSpec
from fuxi.core.specparse import Problems, apply_overrides, fspath_of, humane_errors, join_path
from fuxi.core.inputsplit import OutputFormatSpec, SplitSpec
from fuxi.errors import BadInput, SpecError

__all__ = [
    "FIELD_EXPECTATIONS",
    "JobSpec",
    "ResourceSpec",
    "SHUFFLE_MODES",
    "SpeculationSpec",
    "TaskSpec",
    "check_importable",
    "instances_max",
    "missing_dependency",
    "resolve_fn",
    "spec_bytes_max",
    "spec_from_dict",
    "tasks_max",
]

# ---- limits (TigerStyle: every size and time is bounded, unit last) ----
tasks_max = 1000
instances_max = 100_000
spec_bytes_max = 1024 * 1024
max_retries_max = 100
timeout_s_max = 604_800.0  # one week
priority_max = 100
retry_backoff_s_max = 60.0
retry_backoff_cap_s_max = 600.0  # upper bound of ``retry_backoff_max_s``
input_entries_max = 10_000  # entries in a task's ``input`` list (each may still be a glob)
partition_columns_max = 64

SHUFFLE_MODES = ("hash", "one_to_one", "broadcast", "direct")
SPEC_SUFFIXES = (".yaml", ".yml", ".json")

JOB_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
QUEUE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # a quota group (FuxiMaster's queues)
TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
FN_REF_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
# ``$${`` is an escape for a literal ``${``; a bare ``${`` without ``}`` is reported.
_REF_TOKEN_RE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_PARAM_REF_RE = re.compile(r"^params\.([A-Za-z_][A-Za-z0-9_]*)$")
_WHOLE_REF_RE = re.compile(r"^\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}$")


# ---- models ----


class ResourceSpec(BaseModel):
    """What one task instance needs. ``cpu`` may be fractional; ``custom`` are Ray custom resources."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cpu: float = Field(default=1.0, ge=0.0, strict=True)
    memory_mb: int | None = Field(default=None, gt=0, strict=True)
    custom: dict[str, float] = Field(default_factory=dict)

    @field_validator("custom", mode="before")
    @classmethod
    def _check_custom(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic reports the wrong type
        problems = []
        for name, amount in value.items():
            # CPU and memory have their own fields; allowing them here would make ray_shape ambiguous.
            if not isinstance(name, str) or not name or name in ("CPU", "memory"):
                problems.append(
                    (str(name), f"got resource name {name!r}, expected a non-empty name other than "
                                "'CPU' and 'memory' (use `cpu` and `memory_mb`)"))
            elif (isinstance(amount, bool) or not isinstance(amount, (int, float))
                  or not math.isfinite(amount) or amount <= 0):
                problems.append((name, f"got {amount!r}, expected a number > 0"))
        if problems:
            raise Problems(problems)
        return value

    def ray_shape(self) -> dict[str, float]:
        """Resources in Ray's vocabulary: ``CPU``, ``memory`` (bytes) and custom names.

        Zero CPU is left out rather than sent as ``CPU: 0.0`` so the shape lists only what is
        actually requested.
        """
        shape: dict[str, float] = {}
        if self.cpu > 0:
            shape["CPU"] = float(self.cpu)
        if self.memory_mb is not None:
            shape["memory"] = float(self.memory_mb * 1024 * 1024)
        shape.update({name: float(amount) for name, amount in self.custom.items()})
        return shape


class SpeculationSpec(BaseModel):
    """Backup ("speculative") instances for stragglers.

    Defaults: ``enabled=True``; ``min_done_fraction=0.5`` (0 < x <= 1: fraction of a task's
    instances that must have finished before any backup starts); ``slowdown=2.0`` (>= 1.0: an
    instance is a straggler once it has run this many times longer than the median finished
    instance); ``min_runtime_s=1.0`` (>= 0: never back up an instance younger than this);
    ``max_backup_fraction=0.1`` (0 < x <= 1: at most this fraction of a task's instances may
    have backups).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(default=True, strict=True)
    min_done_fraction: float = Field(default=0.5, gt=0.0, le=1.0, strict=True)
    slowdown: float = Field(default=2.0, ge=1.0, strict=True)
    min_runtime_s: float = Field(default=1.0, ge=0.0, strict=True)
    max_backup_fraction: float = Field(default=0.1, gt=0.0, le=1.0, strict=True)


class FaultSpec(BaseModel):
    """Fault injection for testing (never on by default): ``attempt_fail_fraction`` of the
    job's attempts fail before their function runs, ``attempt_hang_fraction`` hang for
    ``hang_s`` seconds and then fail. Which attempts is decided by ``seed`` (the same spec
    gives the same faults on every run). See ``fuxi.core.attempt_faults``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    attempt_fail_fraction: float = Field(default=0.0, ge=0.0, le=fault_fraction_max, strict=True)
    attempt_hang_fraction: float = Field(default=0.0, ge=0.0, le=fault_fraction_max, strict=True)
    hang_s: float = Field(default=60.0, gt=0.0, le=fault_hang_s_max, strict=True)
    seed: int = Field(default=0, strict=True)

    @model_validator(mode="after")
    def _check_total(self) -> FaultSpec:
        total = self.attempt_fail_fraction + self.attempt_hang_fraction
        if total > fault_fraction_max:
            raise ValueError(f"attempt_fail_fraction + attempt_hang_fraction is {total:g}, "
                             f"expected at most {fault_fraction_max}")
        return self


def _fn_ref_of_callable(fn: Callable) -> str:
    """``module:qualname`` for a module-level callable, or ValueError saying why it has none.

    Tasks run in other processes that import the function by name, so it must be reachable
    by that name: no lambdas, closures, bound methods or functions defined in ``__main__``.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if inspect.ismethod(fn) or not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(f"got {fn!r}, expected a module-level function or a 'module:function' string")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(
            f"got {module}:{qualname}, expected a module-level function; lambdas and functions "
            "defined inside other functions cannot be imported by workers")
    if module == "__main__":
        raise ValueError(
            f"got __main__:{qualname}, expected a function in an importable module; workers "
            "cannot import __main__, so move it into a module")
    owner = sys.modules.get(module)
    if owner is not None:
        target: Any = owner
        for part in qualname.split("."):
            target = getattr(target, part, None)
        if target is not fn:
            raise ValueError(
                f"got {fn!r}, but {module}:{qualname} names a different object; expected a "
                "function reachable by its module and qualified name")
    return f"{module}:{qualname}"


class TaskSpec(BaseModel):
    """One task of the DAG: ``instances`` copies of ``fn`` (or one per ``input`` file).

    If both ``instances`` and ``input`` are given, ``instances`` wins and the input files are
    shared among that many instances.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    fn: str
    instances: int | None = Field(default=None, ge=1, le=instances_max, strict=True)
    input: str | list[str] | None = None
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    max_retries: int = Field(default=3, ge=0, le=max_retries_max, strict=True)
    timeout_s: float = Field(default=3600.0, gt=0.0, le=timeout_s_max, strict=True)
    depends_on: list[str] = Field(default_factory=list)
    partition_by: list[str] | None = None
    shuffle: Literal["hash", "one_to_one", "broadcast", "direct"] | None = None
    output: str | None = None
    split: SplitSpec | None = None  # cut input files by byte ranges (fuxi.core.inputsplit)
    output_format: OutputFormatSpec | None = None  # parquet (default), arrow or raw records

    @field_validator("output_format", mode="before")
    @classmethod
    def _output_format_name(cls, value: Any) -> Any:
        return {"format": value} if isinstance(value, str) else value

    # The output is a path every node sees (a shared mount): allowed on a multi-machine cluster.
    output_shared: bool = Field(default=False, strict=True)
    # A callable no worker can import by name, shipped by value (``fuxi.io.codeship``).
    _by_value: Callable | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _unwrap(cls, data: Any, handler: Any) -> Any:
        """``output: {path, shared}`` into ``output`` + ``output_shared``; a function defined in
        ``__main__``, a notebook, a lambda or a closure kept aside to be shipped by value."""
        by_value = None
        if isinstance(data, dict):
            out = data.get("output")
            if isinstance(out, dict):
                extra = sorted(set(map(str, out)) - {"path", "shared"})
                if extra or "path" not in out:
                    raise ValueError(f"output: got keys {sorted(map(str, out))}, expected "
                                     "{path: ..., shared: true|false}")
                data = {**data, "output": out["path"], "output_shared": out.get("shared", False)}
            fn = data.get("fn")
            if callable(fn) and not isinstance(fn, str):
                try:
                    _fn_ref_of_callable(fn)
                except ValueError:
                    by_value = fn
                    data = {**data, "fn": f"{PICKLED_PREFIX}pending:fn"}
        model = handler(data)
        if by_value is not None:
            model._by_value = by_value
        return model

    @property
    def by_value(self) -> Callable | None:
        """The callable to ship by value, when ``fn`` could not be named (else None)."""
        return self._by_value

    def shipping(self, fn: Callable | None) -> TaskSpec:
        """A copy that ships ``fn`` by value (kept across ``--set`` overrides)."""
        task = self.model_copy()
        task._by_value = fn
        return task

    @field_validator("fn", mode="before")
    @classmethod
    def _check_fn(cls, value: Any) -> Any:
        if callable(value) and not isinstance(value, str):
            return _fn_ref_of_callable(value)
        if not isinstance(value, str) or not FN_REF_RE.match(value):
            raise ValueError(f"got {value!r}, expected 'module:function' (e.g. 'jobs.wordcount:map_words')")
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        if value is None:
            return None
        value = fspath_of(value)
        if isinstance(value, str):
            if not value:
                raise ValueError("got '', expected a non-empty path, glob or URL")
            return value
        if isinstance(value, (list, tuple)):
            items = [fspath_of(v) for v in value]
            if not items or len(items) > input_entries_max:
                raise ValueError(f"got a list of {len(items)} entries, expected 1..{input_entries_max} "
                                 "(input_entries_max)")
            bad = [(i, v) for i, v in enumerate(items) if not isinstance(v, str) or not v]
            if bad:
                raise Problems([(f"[{i}]", f"got {v!r}, expected a non-empty path, glob or URL") for i, v in bad])
            return items
        raise ValueError(f"got {value!r}, expected a path/glob/URL string or a list of them")

    @field_validator("output", mode="before")
    @classmethod
    def _check_output(cls, value: Any) -> Any:
        value = fspath_of(value)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"got {value!r}, expected a non-empty directory path or URL")
        return value

    @field_validator("depends_on", "partition_by", mode="before")
    @classmethod
    def _check_name_list(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name == "partition_by":
            return None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"got {value!r}, expected a list of names")
        what = "task names" if info.field_name == "depends_on" else "column names"
        if info.field_name == "partition_by" and not 1 <= len(value) <= partition_columns_max:
            raise ValueError(f"got {len(value)} columns, expected 1..{partition_columns_max} "
                             "(partition_columns_max)")
        problems = [(f"[{i}]", f"got {v!r}, expected one of the {what} as a non-empty string")
                    for i, v in enumerate(value) if not isinstance(v, str) or not v]
        dupes = sorted({v for v in value if isinstance(v, str) and value.count(v) > 1})
        if dupes:
            problems.append(("", f"got duplicates {dupes}, expected each name once"))
        if problems:
            raise Problems(problems)
        return list(value)

    @model_validator(mode="after")
    def _check_shuffle(self) -> TaskSpec:
        problems = []
        if self.instances is None and self.input is None:
            problems.append(("", "got neither instances nor input, expected `instances` or `input`"))
        if self.shuffle == "hash" and not self.partition_by:
            problems.append(("shuffle", "got 'hash' without `partition_by`, expected `partition_by: "
                                        "[column, ...]` to hash on"))
        if self.shuffle == "direct" and len(self.partition_by or ()) != 1:
            problems.append(("shuffle", "got 'direct' without exactly one `partition_by` column, "
                                        "expected `partition_by: [column]` holding each row's "
                                        "consumer instance"))
        if self.partition_by and self.shuffle not in (None, "hash", "direct"):
            problems.append(("partition_by", f"got partition_by with shuffle {self.shuffle!r}, expected "
                                             "shuffle 'hash' or 'direct' (or omitted) when "
                                             "partition_by is set"))
        if self.split is not None and self.input is None:
            problems.append(("split", "got split on a task with no `input`, expected it only "
                                      "on tasks that read input files"))
        if self.output_format is not None and self.output is None:
            problems.append(("output_format", "got output_format on a task with no `output`, "
                                              "expected it only with `output`"))
        # Shuffling only makes sense for rows coming from upstream tasks.
        if not self.depends_on and (self.shuffle is not None or self.partition_by):
            field = "shuffle" if self.shuffle is not None else "partition_by"
            problems.append((field, f"got {field} on a task with no `depends_on`, expected it only "
                                    "on tasks that read upstream output"))
        if problems:
            raise Problems(problems)
        return self

    @property
    def shuffle_mode(self) -> str:
        """The effective shuffle: ``shuffle`` if set, else hash with ``partition_by``, else one_to_one."""
        if self.shuffle is not None:
            return self.shuffle
        return "hash" if self.partition_by else "one_to_one"


def _json_like_problem(value: Any, path: str) -> tuple[str, str] | None:
    """The first non-JSON-like part of a param value, as a problem, or None."""
    if value is None or isinstance(value, (str, bool, int)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"got {value!r}, expected a finite number")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _json_like_problem(item, join_path(path, i))
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (path, f"got key {key!r}, expected string keys")
            found = _json_like_problem(item, join_path(path, key))
            if found:
                return found
        return None
    return (path, f"got {value!r} ({type(value).__name__}), expected a JSON-like value "
                  "(string, number, bool, null, list or mapping)")


def check_named_json(value: dict, name_ok: Callable[[str], bool], what: str,
                     expected: str) -> None:
    """Raise ``Problems`` for every key that is not a str passing ``name_ok`` and every value
    that is not JSON-like (params of a job, config of a service)."""
    problems = []
    for key, item in value.items():
        if not isinstance(key, str) or not name_ok(key):
            problems.append((str(key), f"got {what} {key!r}, expected {expected}"))
            continue
        found = _json_like_problem(item, key)
        if found:
            problems.append(found)
    if problems:
        raise Problems(problems)


class JobSpec(BaseModel):
    """A whole job: named params, speculation policy, priority, retry backoff and the task DAG.

    ``priority`` 0..100, higher runs first. A failed instance is retried after
    ``retry_backoff_s`` seconds, doubled per retry, capped at ``retry_backoff_max_s``.
    Python-API construction raises pydantic's ValidationError; use ``spec_from_dict`` to get
    a ``SpecError`` with one readable line per problem.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=JOB_NAME_RE.pattern)
    params: dict[str, Any] = Field(default_factory=dict)
    speculation: SpeculationSpec = Field(default_factory=SpeculationSpec)
    priority: int = Field(default=50, ge=0, le=priority_max, strict=True)
    retry_backoff_s: float = Field(default=0.2, ge=0.0, le=retry_backoff_s_max, strict=True)
    retry_backoff_max_s: float = Field(default=10.0, ge=0.0, le=retry_backoff_cap_s_max, strict=True)
    queue: str = Field(default="default", pattern=QUEUE_NAME_RE.pattern)
    faults: FaultSpec | None = None
    # Finished instances' outputs are written durably so a restarted JobMaster resumes without
    # running them again (docs/jobs.md, "Recovery"); off: a dead JobMaster's job starts over.
    checkpoint: bool = Field(default=True, strict=True)
    # What Ray ships to every worker: code (working_dir, py_modules), pip, env_vars
    # (fuxi.core.codeenv; docs/jobs.md "How code reaches workers").
    runtime_env: RuntimeEnvSpec | None = None
    tasks: dict[str, TaskSpec]

    @field_validator("params", mode="before")
    @classmethod
    def _check_params(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic reports the wrong type
        check_named_json(value, lambda k: bool(PARAM_NAME_RE.match(k)), "param name",
                         f"a name matching {PARAM_NAME_RE.pattern}")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _check_task_names(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # pydantic reports the wrong type
        if not value:
            raise ValueError("got no tasks, expected at least one")
        if len(value) > tasks_max:
            raise ValueError(f"got {len(value)} tasks, expected at most tasks_max={tasks_max}")
        bad = [k for k in value if not isinstance(k, str) or not TASK_NAME_RE.match(k)]
        if bad:
            raise Problems([(str(k), f"got task name {k!r}, expected a name matching "
                                      f"{TASK_NAME_RE.pattern}") for k in bad])
        return value

    @model_validator(mode="after")
    def _check_dag(self) -> JobSpec:
        problems: list[tuple[str, str]] = []
        if self.retry_backoff_max_s < self.retry_backoff_s:
            problems.append(("retry_backoff_max_s", f"got {self.retry_backoff_max_s!r}, expected at least "
                                                    f"retry_backoff_s ({self.retry_backoff_s!r})"))
        problems += _dag_problems({name: task.depends_on for name, task in self.tasks.items()})
        if problems:
            raise Problems(problems)
        return self

    # ---- DAG queries ----

    def _edges(self) -> dict[str, list[str]]:
        return _edges_of({name: task.depends_on for name, task in self.tasks.items()})

    def topological_order(self) -> list[str]:
        """Every task after all it depends on; ties go to the task listed first (Kahn)."""
        index = {name: i for i, name in enumerate(self.tasks)}
        edges = self._edges()
        waiting = {name: len(set(task.depends_on) & set(edges) - {name}) for name, task in self.tasks.items()}
        ready = [index[name] for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        names = list(self.tasks)
        order = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for child in edges[name]:
                waiting[child] -= 1
                if waiting[child] == 0:
                    heapq.heappush(ready, index[child])
        assert len(order) == len(self.tasks), "validated JobSpec has a cycle"
        return order

    def downstream(self, task: str) -> list[str]:
        """Tasks that list ``task`` directly in their ``depends_on``, in spec order."""
        if task not in self.tasks:
            raise BadInput(f"got task {task!r}, expected one of: {', '.join(self.tasks)}")
        return list(self._edges()[task])

    def sinks(self) -> list[str]:
        """Tasks no other task depends on (the job's final outputs), in spec order."""
        return [name for name, children in self._edges().items() if not children]

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``JobSpec.model_validate`` of it gives an equal spec.

        It holds the spec after override and ``${params...}`` substitution, so feed it to
        ``JobSpec.model_validate``, not back through ``spec_from_dict``.
        """
        return self.model_dump(mode="json")


def _edges_of(deps: dict[str, list[str]]) -> dict[str, list[str]]:
    """upstream -> downstream edges in spec order, ignoring unknown and self dependencies."""
    edges: dict[str, list[str]] = {name: [] for name in deps}
    for name, upstream in deps.items():
        for dep in upstream:
            if dep in edges and dep != name and name not in edges[dep]:
                edges[dep].append(name)
    return edges


def _dag_problems(deps: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Unknown and self dependencies and every cycle, given each task's ``depends_on``."""
    problems = []
    known = ", ".join(deps)
    for name, upstream in deps.items():
        for dep in upstream:
            if dep == name:
                problems.append((f"tasks.{name}.depends_on",
                                 f"task {name!r} depends on itself; expected other task names"))
            elif dep not in deps:
                problems.append((f"tasks.{name}.depends_on",
                                 f"task {name!r} depends on unknown task {dep!r}; known tasks: {known}"))
    for cycle in _find_cycles(_edges_of(deps)):
        problems.append(("tasks", "dependency cycle " + " -> ".join(cycle) + " (each task feeds the next)"))
    return problems


def _raw_dag_problems(doc: dict) -> list[str]:
    """DAG problems read straight from an unvalidated document, as best it can.

    pydantic skips JobSpec's DAG check when any field is invalid; this lets one run report a
    bad field and a cycle together instead of making the user fix them one at a time.
    """
    tasks = doc.get("tasks")
    if not isinstance(tasks, dict):
        return []
    deps: dict[str, list[str]] = {}
    for name, task in tasks.items():
        upstream = task.get("depends_on") if isinstance(task, dict) else None
        if not isinstance(upstream, list):
            upstream = []
        deps[str(name)] = [d for d in upstream if isinstance(d, str)]
    return [f"{path}: {message}" for path, message in _dag_problems(deps)]


def _find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle path per strongly connected component with a cycle, e.g. ``[a, b, a]``.

    Deterministic: components and their start nodes follow the order of ``edges``.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    # Iterative Tarjan so a 1000-task chain cannot hit Python's recursion limit.
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child_i = work.pop()
            if child_i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            children = edges[node]
            if child_i < len(children):
                work.append((node, child_i + 1))
                child = children[child_i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    order = {name: i for i, name in enumerate(edges)}
    cycles = []
    for component in sorted(components, key=lambda c: min(order[n] for n in c)):
        start = min(component, key=order.__getitem__)
        # BFS inside the component for the shortest way back to ``start``.
        parent: dict[str, str] = {}
        frontier = [start]
        seen = {start}
        end = None
        while frontier and end is None:
            nxt = []
            for node in frontier:
                for child in edges[node]:
                    if child == start:
                        end = node
                        break
                    if child in component and child not in seen:
                        seen.add(child)
                        parent[child] = node
                        nxt.append(child)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append([*reversed(path), start])
    return cycles


# ---- functions ----


def resolve_fn(ref: str) -> Callable:
    """Import ``module:attr.path`` and return the callable it names."""
    if not isinstance(ref, str) or not FN_REF_RE.match(ref):
        raise BadInput(f"got function reference {ref!r}, expected 'module:function'")
    module_name, attr_path = ref.split(":", 1)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a module that fails while importing is a user error to report
        raise BadInput(f"cannot import {ref!r}: {_exc_text(exc)}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise BadInput(f"cannot import {ref!r}: {exc}") from exc
    if not callable(target):
        raise BadInput(f"{ref!r} is not callable: got {type(target).__name__}, expected a function")
    return target


def _exc_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"


def check_importable(spec: JobSpec, source: str | None = None) -> None:
    """Resolve every task's ``fn`` here and now, so a typo fails at submit, not on a worker
    (left to the worker when only a dependency is missing that ``runtime_env.pip`` gives it)."""
    pip = bool(spec.runtime_env is not None and spec.runtime_env.pip)
    problems = []
    for name, task in spec.tasks.items():
        if task.by_value is not None:
            continue  # shipped by value: never imported (nor run) here
        try:
            resolve_fn(task.fn)
        except BadInput as exc:
            if pip and missing_dependency(task.fn, exc.__cause__):
                continue
            problems.append(_prefix(source, f"tasks.{name}.fn: {exc}"))
    if problems:
        raise SpecError(problems, source=source)


def missing_dependency(ref: str, exc: BaseException | None) -> bool:
    """Whether ``ref``'s import failed for want of a module not on its own path (a dependency)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return False
    own = ref.split(":", 1)[0]
    return not (own == exc.name or own.startswith(exc.name + "."))


def _prefix(source: str | None, line: str) -> str:
    return f"{source}: {line}" if source else line


def spec_from_dict(doc: dict, overrides: Sequence[str] = (), source: str = "<dict>",
                   check_functions: bool = True) -> JobSpec:
    """Override, substitute and validate a parsed spec (what ``load_job_spec`` does after
    reading the file). ``doc`` is not modified."""
    if not isinstance(doc, dict):
        given = "an empty document" if doc is None else type(doc).__name__
        raise SpecError([f"{source}: got {given} at top level, expected a mapping "
                         "(name:, tasks:, ...)"], source=source)
    doc = copy.deepcopy(doc)
    apply_overrides(doc, overrides)
    problems: list[str] = []
    doc = _substitute_params(doc, problems)
    if problems:
        raise SpecError([f"{source}: {p}" for p in problems], source=source)
    try:
        spec = JobSpec.model_validate(doc)
    except ValidationError as exc:
        lines = humane_errors(exc, JobSpec, FIELD_EXPECTATIONS)
        lines += [line for line in _raw_dag_problems(doc) if line not in lines]
        raise SpecError([f"{source}: {line}" for line in lines], source=source) from None
    if check_functions:
        check_importable(spec, source=source)
    return spec


# ---- overrides and substitution ----


def _substitute_params(doc: dict, problems: list[str]) -> dict:
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        params = {}  # pydantic reports the wrong type; references are reported as unknown
    out = {}
    for key, value in doc.items():
        out[key] = value if key == "params" else _substitute(value, str(key), params, problems)
    return out


def _substitute(value: Any, path: str, params: dict, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, join_path(path, str(k)), params, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, join_path(path, i), params, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    known = ", ".join(params) or "(none)"
    whole = _WHOLE_REF_RE.match(value)
    if whole:
        # A lone reference keeps the param's type, so `instances: ${params.n}` is an int.
        name = whole.group(1)
        if name not in params:
            problems.append(f"{path}: unknown param in {value!r}; known params: {known}")
            return value
        return copy.deepcopy(params[name])

    def replace(match: re.Match) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        inner = match.group(1)
        ref = _PARAM_REF_RE.match(inner) if inner is not None else None
        if ref is None:
            problems.append(f"{path}: got {token!r} in {value!r}, expected ${{params.NAME}} "
                            "(write $${ for a literal ${)")
            return token
        if ref.group(1) not in params:
            problems.append(f"{path}: unknown param in {token!r}; known params: {known}")
            return token
        return str(params[ref.group(1)])

    return _REF_TOKEN_RE.sub(replace, value)


# ---- pydantic errors -> one readable line each ----

FIELD_EXPECTATIONS: dict[tuple[str, str], str] = {
    ("JobSpec", "name"): f"a job name matching {JOB_NAME_RE.pattern}",
    ("JobSpec", "priority"): f"an integer from 0 to {priority_max} (higher runs first)",
    ("JobSpec", "retry_backoff_s"): f"a number of seconds from 0 to {retry_backoff_s_max:g}",
    ("JobSpec", "retry_backoff_max_s"): f"a number of seconds from 0 to {retry_backoff_cap_s_max:g}",
    ("JobSpec", "params"): "a mapping of param names to values",
    ("JobSpec", "tasks"): "a mapping of task names to tasks",
    ("JobSpec", "speculation"): "a mapping (enabled, min_done_fraction, slowdown, ...)",
    ("JobSpec", "queue"): f"a queue (quota group) name matching {QUEUE_NAME_RE.pattern}",
    ("JobSpec", "checkpoint"): "true or false (make finished instances durable for recovery)",
    ("JobSpec", "faults"): "a mapping (attempt_fail_fraction, attempt_hang_fraction, hang_s, seed)",
    ("FaultSpec", "attempt_fail_fraction"): f"a number from 0 to {fault_fraction_max}",
    ("FaultSpec", "attempt_hang_fraction"): f"a number from 0 to {fault_fraction_max}",
    ("FaultSpec", "hang_s"): f"a number of seconds > 0 and <= {fault_hang_s_max:g}",
    ("FaultSpec", "seed"): "an integer",
    ("SpeculationSpec", "enabled"): "true or false",
    ("SpeculationSpec", "min_done_fraction"): "a number > 0 and <= 1",
    ("SpeculationSpec", "slowdown"): "a number >= 1.0",
    ("SpeculationSpec", "min_runtime_s"): "a number of seconds >= 0",
    ("SpeculationSpec", "max_backup_fraction"): "a number > 0 and <= 1",
    ("TaskSpec", "instances"): f"an integer from 1 to instances_max={instances_max}",
    ("TaskSpec", "max_retries"): f"an integer from 0 to {max_retries_max}",
    ("TaskSpec", "timeout_s"): f"a number of seconds > 0 and <= {timeout_s_max:g}",
    ("TaskSpec", "shuffle"): "one of: " + ", ".join(SHUFFLE_MODES),
    ("TaskSpec", "resources"): "a mapping (cpu, memory_mb, custom)",
    ("TaskSpec", "depends_on"): "a list of task names",
    ("TaskSpec", "partition_by"): "a list of column names",
    ("ResourceSpec", "cpu"): "a number of CPUs >= 0 (fractions allowed)",
    ("ResourceSpec", "memory_mb"): "an integer number of MiB > 0",
    ("ResourceSpec", "custom"): "a mapping of resource names to numbers > 0",
}

