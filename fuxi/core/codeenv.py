"""How a job's or a service's code reaches the processes that run it (issue 18 parts 1 and 6).

The spec's ``runtime_env:`` names what Ray ships to every worker or replica::

    runtime_env:
      working_dir: .            # packaged once at submit, unpacked on each node that runs it
      excludes: ["data/", "*.parquet"]
      py_modules: [../libs/mylib]
      pip: ["pyyaml==6.0.1"]
      env_vars: {MODE: fast}

``RuntimeEnvSpec`` is the checked form (pydantic, bounded: entries, names, lengths); the
directory's bytes are measured by ``fuxi.io.codeship`` before Ray packages it. Functions that
no worker could import by name (defined in ``__main__``, a notebook, lambdas, closures) are
shipped by value: ``pickled_module`` names the module that carries one (its bytes made by
cloudpickle on the client, unpickled only by the worker that imports it).

``machines`` and ``local_output_problems`` are the rule of part 6: a local-path output on a
cluster whose nodes sit on more than one machine would land on each worker's own disk, so it
is refused unless the spec declares the path shared. Pure: no Ray, files or clocks.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ENV_VAR_COUNT_MAX",
    "PICKLED_FN_BYTES_MAX",
    "RuntimeEnvSpec",
    "is_local_path",
    "is_pickled_ref",
    "local_output_problems",
    "machines",
    "pickled_module",
]

# ---- limits (unit last) ----
WORKING_DIR_BYTES_MAX = 64 * 1024 * 1024  # bytes packaged from working_dir (after excludes)
WORKING_DIR_FILES_MAX = 20_000  # files walked in working_dir or one py_modules entry
PY_MODULES_MAX = 16  # entries in py_modules
EXCLUDES_MAX = 64  # entries in excludes
PIP_PACKAGES_MAX = 64  # requirements in pip
ENV_VAR_COUNT_MAX = 64  # entries in env_vars
ENV_VALUE_CHARS_MAX = 4096  # one env_vars value
ENV_PATH_CHARS_MAX = 1024  # a working_dir, py_modules entry, exclude or requirement
PICKLED_FN_BYTES_MAX = 1024 * 1024  # one function shipped by value, as cloudpickle bytes

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# A requirement as pip reads one line: a name, extras, version pins, markers -- never an
# option (``-e``, ``--index-url``: an attacker's index), a path or a URL.
PIP_REQ_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\[[A-Za-z0-9_,.-]{1,100}\])?"
                        r"([<>=!~]=?[A-Za-z0-9.*+!_-]{1,64}(,[<>=!~]=?[A-Za-z0-9.*+!_-]{1,64}){0,7})?$")
# Variables the platform sets itself: a job may not change who it runs as or where Ray is.
RESERVED_ENV_PREFIXES = ("RAY_", "FUXI_", "PYTHONPATH")
URI_RE = re.compile(r"^(gcs|s3|gs|https?)://[^\s]{1,1000}$")
PICKLED_PREFIX = "fuxi_fn_"  # the module a function shipped by value is imported from


def is_local_path(value: str) -> bool:
    """A bare path or a file:// URL (what lands on one machine's disk), not a shared URL."""
    return value.startswith("file://") or "://" not in value


def _bounded_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > ENV_PATH_CHARS_MAX:
        raise ValueError(f"got {value!r:.80}, expected a non-empty {what} of at most "
                         f"{ENV_PATH_CHARS_MAX} characters (ENV_PATH_CHARS_MAX)")
    if "\x00" in value or "\n" in value:
        raise ValueError(f"got {value!r:.80}, expected a {what} without NUL or newline")
    return value


def _location(value: Any, what: str) -> str:
    value = _bounded_text(value, what)
    if "://" in value and not value.startswith("file://") and not URI_RE.match(value):
        raise ValueError(f"got {value!r:.80}, expected a local directory or a gcs://, s3://, "
                         "gs:// or https:// package URL")
    if "://" in value and not value.startswith("file://") and not value.endswith(".zip") \
            and not value.endswith(".whl"):
        raise ValueError(f"got {value!r:.80}, expected a remote package ending in .zip or .whl")
    return value[len("file://"):] if value.startswith("file://") else value


class RuntimeEnvSpec(BaseModel):
    """What Ray installs for every worker or replica of one job or service."""

    model_config = ConfigDict(extra="forbid")

    working_dir: str | None = None
    py_modules: list[str] = Field(default_factory=list)
    excludes: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("working_dir", mode="before")
    @classmethod
    def _check_working_dir(cls, value: Any) -> Any:
        return None if value is None else _location(value, "directory path or package URL")

    @field_validator("py_modules", "excludes", "pip", mode="before")
    @classmethod
    def _check_lists(cls, value: Any, info) -> Any:
        limit = {"py_modules": PY_MODULES_MAX, "excludes": EXCLUDES_MAX,
                 "pip": PIP_PACKAGES_MAX}[info.field_name]
        name = {"py_modules": "PY_MODULES_MAX", "excludes": "EXCLUDES_MAX",
                "pip": "PIP_PACKAGES_MAX"}[info.field_name]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"got {value!r:.80}, expected a list")
        if len(value) > limit:
            raise ValueError(f"got {len(value)} entries, expected at most {limit} ({name})")
        if info.field_name == "py_modules":
            return [_location(v, "module directory or package URL") for v in value]
        if info.field_name == "excludes":
            return [_bounded_text(v, "exclude pattern") for v in value]
        out = []
        for v in value:
            v = _bounded_text(v, "requirement")
            if not PIP_REQ_RE.match(v.replace(" ", "")):
                raise ValueError(f"got {v!r:.80}, expected a requirement like 'name==1.2' "
                                 "(no pip options, paths or URLs)")
            out.append(v.replace(" ", ""))
        return out

    @field_validator("env_vars", mode="before")
    @classmethod
    def _check_env(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(f"got {value!r:.80}, expected a mapping of NAME: value")
        if len(value) > ENV_VAR_COUNT_MAX:
            raise ValueError(f"got {len(value)} variables, expected at most {ENV_VAR_COUNT_MAX} "
                             "(ENV_VAR_COUNT_MAX)")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not ENV_NAME_RE.match(k):
                raise ValueError(f"got variable name {k!r:.80}, expected a name matching "
                                 f"{ENV_NAME_RE.pattern}")
            if k.upper().startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"got variable {k}, expected none starting with "
                                 f"{', '.join(RESERVED_ENV_PREFIXES)} (the platform sets those)")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise ValueError(f"got {k}={v!r:.80}, expected a string value")
            v = str(v)
            if len(v) > ENV_VALUE_CHARS_MAX or "\x00" in v:
                raise ValueError(f"got {k} of {len(v)} characters, expected at most "
                                 f"{ENV_VALUE_CHARS_MAX} (ENV_VALUE_CHARS_MAX) and no NUL")
            out[k] = v
        return out

    def is_empty(self) -> bool:
        return not (self.working_dir or self.py_modules or self.pip or self.env_vars)


def pickled_module(payload: bytes) -> str:
    """The module name a function shipped by value is imported from (named by its bytes)."""
    if len(payload) > PICKLED_FN_BYTES_MAX:
        raise ValueError(f"the function pickles to {len(payload)} bytes, expected at most "
                         f"{PICKLED_FN_BYTES_MAX} (PICKLED_FN_BYTES_MAX); a closure over big "
                         "data should read it from a file or Pangu instead")
    return PICKLED_PREFIX + hashlib.sha256(payload).hexdigest()[:32]


def is_pickled_ref(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(PICKLED_PREFIX)


def machines(nodes: Iterable[dict]) -> set[str]:
    """The distinct machines behind Ray's alive nodes (``{"alive": bool, "ip": str}``): nodes
    of ``ray.cluster_utils.Cluster`` and a second raylet on one host share one address."""
    return {n["ip"] for n in nodes if n.get("alive") and n.get("ip")}


def local_output_problems(outputs: Iterable[tuple[str, str, bool]], machine_count: int) -> list[str]:
    """One line per task whose output (``(task, location, shared)``) is a local path on a
    cluster of more than one machine and not declared shared."""
    if machine_count <= 1:
        return []
    return [f"tasks.{task}.output: got local path {loc!r} on a cluster of {machine_count} "
            "machines, where each worker would write to its own disk; expected a shared URL "
            "(pangu://... or any shared fsspec URL), or `output: {path: ..., shared: true}` if "
            "the path is a shared mount on every node"
            for task, loc, shared in outputs if loc and is_local_path(loc) and not shared]
