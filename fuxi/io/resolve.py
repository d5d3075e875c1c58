"""The facts a job plan needs from the world, and the one step that changes it.

* :func:`resolve_facts` (read-only): list each task's input files and split them over its
  instances, make outputs absolute. The client runs it before submitting, so a glob that
  matches nothing fails with exit code 2 before any cluster is asked anything. A task with
  ``split:`` gets byte ranges instead of whole files (``fuxi.core.inputsplit``).
* :func:`check_outputs` (read-only): an output that is a file, or a non-empty directory
  without ``--overwrite``, is refused at once (exit code 2).
* :func:`locate_inputs` (read-only, asks Pangu) and :func:`prepare_outputs` (destructive:
  create each output location and, for a job submitted with ``--overwrite``, clear what an
  earlier run left there). The JobMaster runs both (in a thread) before its first task, i.e.
  only after FuxiMaster admitted the job: a submit that is refused (a duplicate, a quota, ACL,
  or a task no node can hold) asks Pangu nothing and leaves the old output alone.

The pure part, wiring the facts into a plan, is ``fuxi.core.plan.build_plan``.
"""

from __future__ import annotations

import os

from fuxi.core.inputsplit import decode_input, encode_range, split_ranges
from fuxi.core.plan import JobPlan, PlanFacts, with_preferred_nodes
from fuxi.io.inputs import expand_inputs, split_files
from fuxi.io.output import OutputLocation

__all__ = ["absolute", "check_outputs", "input_file", "locate_inputs", "output_format",
           "prepare_outputs", "resolve_facts"]


def absolute(location: str, base_dir: str) -> str:
    """A URL as it is; a path made absolute against ``base_dir`` (``~`` expanded)."""
    if "://" in location:
        return location
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(location)))


def resolve_facts(spec, base_dir: str) -> PlanFacts:
    """List and split the inputs of a validated ``JobSpec``, resolve outputs against
    ``base_dir`` (the submitter's working directory). Reads only."""
    inputs: dict[str, tuple[tuple[str, ...], ...]] = {}
    outputs: dict[str, str] = {}
    for name in spec.topological_order():
        t = spec.tasks[name]
        if t.input is not None:
            files = expand_inputs(t.input, base_dir)
            if t.split is not None and t.split.format != "files":
                shares = split_ranges([(f.path, f.size_bytes) for f in files], t.split,
                                      t.instances)
                inputs[name] = tuple(tuple(encode_range(r) for r in share) for share in shares)
            else:
                split = split_files(files, t.instances or len(files))
                inputs[name] = tuple(tuple(paths) for paths in split)
        if t.output:
            outputs[name] = absolute(t.output, base_dir)
    return PlanFacts(inputs=inputs, outputs=outputs)


def input_file(entry: str) -> str:
    """The file a plan's input entry reads (a path, or the file of a byte range)."""
    r = decode_input(entry)
    return entry if r is None else r.path


def locate_inputs(plan: JobPlan) -> JobPlan:
    """The plan with, per instance reading ``pangu://`` files, the nodes holding most of its
    input bytes (for data-local scheduling). Asks Pangu; changes nothing."""
    preferred = {}
    for t in plan.tasks:
        files = tuple(tuple(dict.fromkeys(input_file(p) for p in paths)) for paths in t.inputs)
        if any(p.startswith("pangu://") for paths in files for p in paths):
            from pangu.client import locality

            preferred[t.name] = tuple(locality(paths) for paths in files)
    return with_preferred_nodes(plan, preferred) if preferred else plan


def _outputs(plan: JobPlan) -> list[str]:
    return [t.output for t in plan.tasks if t.output]


def check_outputs(plan: JobPlan) -> None:
    """Refuse an output location the job could not use (a file; a non-empty directory
    unless the plan says ``overwrite``). Reads only; raises ``BadInput``."""
    for url in _outputs(plan):
        OutputLocation(url).check(overwrite=plan.overwrite)


def output_format(plan: JobPlan, task: str) -> tuple[str, int | None]:
    """A task's output format and record size, from the plan's validated spec."""
    t = (plan.spec.get("tasks") or {}).get(task) or {}
    fmt = t.get("output_format") or {}
    return fmt.get("format") or "parquet", fmt.get("record_bytes")


def prepare_outputs(plan: JobPlan) -> None:
    """Create every output location in its task's format, clearing old contents if the plan
    says ``overwrite``."""
    for t in plan.tasks:
        if t.output:
            fmt, width = output_format(plan, t.name)
            OutputLocation(t.output).prepare(overwrite=plan.overwrite, fmt=fmt,
                                             record_bytes=width)
