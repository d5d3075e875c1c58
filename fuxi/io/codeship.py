"""Shipping a job's or a service's code to the nodes that run it (issue 18 part 1).

At submit, on the submitter's machine:

1. ``prepare`` (while the spec is loaded, before anything runs): ``working_dir`` and
   ``py_modules`` made absolute (relative to the submit directory) and measured against
   ``WORKING_DIR_BYTES_MAX`` / ``WORKING_DIR_FILES_MAX`` after the excludes; functions given
   as callables that no worker can import by name (``__main__``, a notebook, a lambda, a
   closure) pickled with cloudpickle (at most ``PICKLED_FN_BYTES_MAX``) into a one-file
   module ``fuxi_fn_<hash>`` in a scratch directory, added to ``py_modules``.
2. ``ship`` (connected to the cluster): each local directory packaged and uploaded to Ray's
   GCS once (``base.actors.upload_code``), so the plan FuxiMaster keeps -- and the launch
   record a restarted FuxiMaster resumes from -- holds only ``gcs://`` URIs. The JobMaster
   creates its workers with that runtime_env; each node's raylet downloads and unpacks a
   package once and reuses it for every worker of the job there (Ray caches by URI).

Nothing is unpickled here, nor in FuxiMaster or the JobMaster: the module that unpickles a
function runs only when a worker imports it.
"""

from __future__ import annotations

import atexit
import fnmatch
import os
import shutil
import tempfile

from fuxi.core.codeenv import (
    WORKING_DIR_BYTES_MAX,
    WORKING_DIR_FILES_MAX,
    RuntimeEnvSpec,
    local_output_problems,
    machines,
    pickled_module,
)
from fuxi.errors import BadInput, SpecError

# What Ray leaves out of every package anyway, and what is never code.
DEFAULT_EXCLUDES = (".git", "__pycache__", "*.pyc", ".venv", "venv", ".mypy_cache",
                    ".pytest_cache", "node_modules")

_LOADER = '''"""A function shipped by value by Fuxi (fuxi.io.codeship); unpickled here, in a worker."""
import os

import cloudpickle

with open(os.path.join(os.path.dirname(__file__), "fn.pkl"), "rb") as _f:
    fn = cloudpickle.loads(_f.read())
'''

_scratch: list[str] = []  # scratch directories of this process, removed at exit


def _excluded(rel: str, name: str, patterns: tuple[str, ...]) -> bool:
    for p in patterns:
        p = p.rstrip("/")
        if fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) or rel.startswith(p + "/"):
            return True
    return False


def measure(path: str, excludes: tuple[str, ...] = ()) -> tuple[int, int]:
    """(bytes, files) that packaging ``path`` would take after the excludes; ``BadInput`` as
    soon as either passes its limit (the walk stops there: a huge tree costs no more)."""
    if not os.path.isdir(path):
        raise BadInput(f"runtime_env: {path!r} is not a directory, expected the directory "
                       "holding the job's code")
    patterns = DEFAULT_EXCLUDES + tuple(excludes)
    total = files = 0
    for root, dirs, names in os.walk(path, followlinks=False):
        rel_root = os.path.relpath(root, path)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not _excluded(rel_root + d, d, patterns)]
        for name in names:
            if _excluded(rel_root + name, name, patterns):
                continue
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # gone while walking: Ray will not package it either
            files += 1
            if files > WORKING_DIR_FILES_MAX:
                raise BadInput(f"runtime_env: {path} has more than {WORKING_DIR_FILES_MAX} files "
                               "to ship (WORKING_DIR_FILES_MAX); add `excludes:` or point "
                               "`--working-dir` at the code's own directory")
            if total > WORKING_DIR_BYTES_MAX:
                raise BadInput(f"runtime_env: {path} holds more than {WORKING_DIR_BYTES_MAX} bytes "
                               "to ship (WORKING_DIR_BYTES_MAX); add `excludes:` (data, outputs) "
                               "or point `--working-dir` at the code's own directory")
    return total, files


def _scratch_dir() -> str:
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="fuxi-ship-"))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def pickle_by_value(fn) -> tuple[str, str]:
    """(module name, local module directory) of ``fn`` pickled by value."""
    import cloudpickle

    try:
        payload = cloudpickle.dumps(fn)
    except Exception as e:  # noqa: BLE001 - what cannot be pickled is the user's to fix
        raise BadInput(f"cannot ship {getattr(fn, '__qualname__', fn)!r:.80} by value: "
                       f"{type(e).__name__}: {str(e)[:200]}") from None
    try:
        module = pickled_module(payload)
    except ValueError as e:
        raise BadInput(str(e)) from None
    where = os.path.join(_scratch_dir(), module)
    if not os.path.isdir(where):
        os.makedirs(where)
        with open(os.path.join(where, "fn.pkl"), "wb") as f:
            f.write(payload)
        with open(os.path.join(where, "__init__.py"), "w") as f:
            f.write(_LOADER)
    return module, where


def by_value(js):
    """``js`` with every task given as a callable no worker can import rewritten to import
    ``fuxi_fn_<hash>:fn``, and the directories of those modules (for ``py_modules``)."""
    dirs: list[str] = []
    tasks = {}
    for name, task in js.tasks.items():
        if task.by_value is None:
            tasks[name] = task
            continue
        module, where = pickle_by_value(task.by_value)
        dirs.append(where)
        tasks[name] = task.model_copy(update={"fn": f"{module}:fn"})
    if not dirs:
        return js, []
    return js.model_copy(update={"tasks": tasks}), dirs


def prepare(js, base_dir: str, working_dir: str | None = None):
    """The spec with its runtime_env checked and made absolute, and its by-value functions
    pickled; ``working_dir`` (``fuxi submit --working-dir``) overrides the spec's."""
    js, fn_dirs = by_value(js)
    env = js.runtime_env or RuntimeEnvSpec()
    if working_dir is not None:
        env = env.model_copy(update={"working_dir": working_dir})
    if env.is_empty() and not fn_dirs:
        return js
    env = absolute(env, base_dir)
    mods = list(env.py_modules) + fn_dirs
    if len(mods) > len(env.py_modules):
        env = RuntimeEnvSpec.model_validate({**env.model_dump(), "py_modules": mods})
    return js.model_copy(update={"runtime_env": env})


def absolute(env: RuntimeEnvSpec, base_dir: str) -> RuntimeEnvSpec:
    def local(p: str) -> str:
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(p)))

    wd = env.working_dir
    if wd and "://" not in wd:
        wd = local(wd)
        measure(wd, tuple(env.excludes))
    mods = []
    for m in env.py_modules:
        if "://" not in m:
            m = local(m)
            if not os.path.exists(m):
                raise BadInput(f"runtime_env.py_modules: {m!r} does not exist, expected a module "
                               "directory or a .whl/.zip package")
            if os.path.isdir(m):
                measure(m, tuple(env.excludes))
        mods.append(m)
    return env.model_copy(update={"working_dir": wd, "py_modules": mods})


def ship(runtime_env: dict | None) -> dict | None:
    """The runtime_env with its local code uploaded (``gcs://`` URIs), in the normal form a
    launch record keeps; None stays None."""
    if not runtime_env:
        return runtime_env
    from base import actors

    local = dict(runtime_env)
    wd = local.get("working_dir")
    if (wd and "://" not in wd) or any("://" not in m for m in local.get("py_modules") or []):
        local["excludes"] = list(DEFAULT_EXCLUDES) + list(local.get("excludes") or [])
        local = actors.upload_code(local)
    local.pop("excludes", None)
    return RuntimeEnvSpec.model_validate(local).model_dump(exclude_defaults=True)


def prepare_working_dir(runtime_env: dict | None, directory: str) -> dict:
    """``runtime_env`` with ``directory`` as its working_dir, measured first (the default on a
    cluster that spans machines, where the submit directory is on no other disk)."""
    env = dict(runtime_env or {})
    try:
        measure(directory, tuple(env.get("excludes") or ()))
    except BadInput as e:
        raise BadInput(f"{e} (on a cluster spanning machines the submit directory is shipped "
                       "unless `--working-dir` or `runtime_env.working_dir` says otherwise)") from None
    env["working_dir"] = directory
    return env


def shipped_working_dir(runtime_env: dict | None) -> bool:
    return bool(runtime_env and runtime_env.get("working_dir"))


def cluster_machines() -> int:
    """How many distinct machines the connected cluster's alive nodes sit on."""
    from base import actors

    return len(machines({"alive": n.get("Alive"), "ip": n.get("NodeManagerAddress")}
                        for n in actors.nodes()))


def check_shared_outputs(plan, machine_count: int) -> None:
    """``SpecError`` when a task writes to a local path on a multi-machine cluster."""
    spec_tasks = (plan.spec or {}).get("tasks", {})
    outs = [(t.name, t.output, bool(spec_tasks.get(t.name, {}).get("output_shared")))
            for t in plan.tasks if t.output]
    problems = local_output_problems(outs, machine_count)
    if problems:
        raise SpecError(problems)


def code_holder(runtime_env: dict | None) -> dict:
    """Actor options giving a job's JobMaster (a detached actor) the job's code packages, so
    Ray keeps them in the GCS while the job lives: Ray counts a package's users by job and
    detached actor, and the JobMaster's workers are neither. Only the packages: pip and
    env_vars are for the workers, and the JobMaster never imports the job's code."""
    code = {k: v for k, v in (runtime_env or {}).items() if k in ("working_dir", "py_modules")}
    return {"runtime_env": code} if code else {}
