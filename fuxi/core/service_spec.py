"""The service spec: Fuxi's public contract for a long-running online service.

A spec arrives as a YAML/JSON file (``fuxi.io.specfile.load_service_spec`` reads it), a dict
(``service_spec_from_dict``) or Python objects (``ServiceSpec(...)``). Errors come back as one
``SpecError`` with a line per problem, like job specs. This module never imports ``ray`` and
reads no files.

    name: wordfreq
    class: jobs.services.wordfreq:WordFreq    # module:Class, constructed with **config
    version: "1"
    replicas: 2
    resources: {cpu: 0.5}                      # per replica
    config: {counts: out/wordcount}
    max_concurrency: 16                        # requests one replica runs at once
    health_check: {method: check_health, period_s: 2, timeout_s: 2, failure_threshold: 3}
    rollout: {max_unavailable: 0, max_surge: 1}
    placement: {spread: true}
    autoscaling:                               # optional: replicas follow the load
      target_in_flight: 4                      # calls in flight per replica (or target_latency_ms)
      min_replicas: 1
      max_replicas: 8
      scale_up_delay_s: 5
      scale_down_delay_s: 30
      max_change_per_step: 2
      # min_replicas: 0 scales to zero after scale_to_zero_after_s with no call; a call
      # then waits at the Kuafu proxy for a replica (fuxi.core.autoscale, kuafu.core.coldhold)
      scale_to_zero_after_s: 300
"""

from __future__ import annotations

import copy
import posixpath
import re
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fuxi.errors import SpecError
from fuxi.core.codeenv import RuntimeEnvSpec
from fuxi.core.spec import FIELD_EXPECTATIONS, FN_REF_RE, ResourceSpec, check_named_json, missing_dependency, resolve_fn
from fuxi.core.specparse import apply_overrides, humane_errors

REPLICAS_MAX = 256
MAX_CONCURRENCY_MAX = 10_000
QUEUE_MAX_MAX = 100_000
HEALTH_PERIOD_S_MAX = 3600.0
HEALTH_TIMEOUT_S_MAX = 600.0
FAILURE_THRESHOLD_MAX = 100
DRAIN_GRACE_S_MAX = 3600.0
START_TIMEOUT_S_MAX = 3600.0
TARGET_IN_FLIGHT_MAX = float(MAX_CONCURRENCY_MAX + QUEUE_MAX_MAX)
TARGET_LATENCY_MS_MAX = 3_600_000.0
SCALE_DELAY_S_MAX = 3600.0
SCALE_TO_ZERO_AFTER_S_MIN = 1.0          # shorter would stop a replica between two calls
SCALE_TO_ZERO_AFTER_S_MAX = 7 * 86400.0
SCALE_TO_ZERO_AFTER_S_DEFAULT = 300.0
SERVICE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class HealthCheckSpec(BaseModel):
    """``method``: the replica's method to call (no argument; it raises or returns False when
    unhealthy). Default: ``check_health`` if the class has one, else only liveness (the
    replica answers). A replica is replaced after ``failure_threshold`` failures in a row,
    each a raise, a False, or no answer within ``timeout_s``; checks run every ``period_s``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    period_s: float = Field(default=2.0, gt=0.0, le=HEALTH_PERIOD_S_MAX, strict=True)
    timeout_s: float = Field(default=2.0, gt=0.0, le=HEALTH_TIMEOUT_S_MAX, strict=True)
    failure_threshold: int = Field(default=3, ge=1, le=FAILURE_THRESHOLD_MAX, strict=True)


class RolloutSpec(BaseModel):
    """During an upgrade (or a replacement), at most ``max_unavailable`` of the desired
    replicas may be missing and at most ``max_surge`` extra may run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_unavailable: int = Field(default=0, ge=0, le=REPLICAS_MAX, strict=True)
    max_surge: int = Field(default=1, ge=0, le=REPLICAS_MAX, strict=True)

    @model_validator(mode="after")
    def _progress(self) -> "RolloutSpec":
        if self.max_unavailable == 0 and self.max_surge == 0:
            raise ValueError("max_unavailable and max_surge are both 0: an upgrade could never "
                             "start; allow at least one")
        return self


class PlacementSpec(BaseModel):
    """``spread``: put replicas on different nodes while there are nodes with room."""

    model_config = ConfigDict(extra="forbid")

    spread: bool = Field(default=True, strict=True)


class AutoscalingSpec(BaseModel):
    """Replicas follow the load (``fuxi.core.autoscale``). The target is per replica: either
    ``target_in_flight`` (calls running or queued at one replica, averaged over the stats
    period) or ``target_latency_ms`` of the ``latency_percentile`` (p50 or p99) of the
    slowest replica. The count stays within ``min_replicas``..``max_replicas``; it rises only
    once more replicas were wanted for ``scale_up_delay_s`` without a break (falls: fewer, for
    ``scale_down_delay_s``), by at most ``max_change_per_step`` at a time. With
    ``min_replicas: 0`` the load alone never takes the last replica away: the service goes to
    zero only after ``scale_to_zero_after_s`` without any call, and the first call after that
    waits at the Kuafu proxy while one replica starts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    target_in_flight: float | None = Field(default=None, gt=0.0, le=TARGET_IN_FLIGHT_MAX)
    target_latency_ms: float | None = Field(default=None, gt=0.0, le=TARGET_LATENCY_MS_MAX)
    latency_percentile: str = Field(default="p99", pattern=r"^p(50|99)$")
    min_replicas: int = Field(default=1, ge=0, le=REPLICAS_MAX, strict=True)
    max_replicas: int = Field(default=4, ge=1, le=REPLICAS_MAX, strict=True)
    scale_up_delay_s: float = Field(default=5.0, ge=0.0, le=SCALE_DELAY_S_MAX)
    scale_down_delay_s: float = Field(default=30.0, ge=0.0, le=SCALE_DELAY_S_MAX)
    max_change_per_step: int = Field(default=2, ge=1, le=REPLICAS_MAX, strict=True)
    scale_to_zero_after_s: float = Field(default=SCALE_TO_ZERO_AFTER_S_DEFAULT,
                                         ge=SCALE_TO_ZERO_AFTER_S_MIN,
                                         le=SCALE_TO_ZERO_AFTER_S_MAX)

    @field_validator("target_in_flight", "target_latency_ms", "scale_up_delay_s",
                     "scale_down_delay_s", "scale_to_zero_after_s", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
            raise ValueError(f"got {type(value).__name__} {value!r:.40}, expected a number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "AutoscalingSpec":
        if (self.target_in_flight is None) == (self.target_latency_ms is None):
            raise ValueError("give exactly one target: target_in_flight (calls in flight per "
                             "replica) or target_latency_ms (with latency_percentile p50|p99)")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas "
                             f"{self.max_replicas}: expected min_replicas <= max_replicas")
        if self.min_replicas > 0 and "scale_to_zero_after_s" in self.model_fields_set:
            raise ValueError(f"scale_to_zero_after_s applies only with min_replicas 0 (scale "
                             f"to zero); min_replicas is {self.min_replicas}")
        return self


class ServiceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    name: str = Field(pattern=SERVICE_NAME_RE.pattern)
    class_: str = Field(alias="class", pattern=FN_REF_RE.pattern)
    version: str = Field(default="1", pattern=VERSION_RE.pattern)
    replicas: int = Field(default=1, ge=0, le=REPLICAS_MAX, strict=True)
    resources: ResourceSpec = Field(default_factory=lambda: ResourceSpec(cpu=0.5))
    config: dict[str, Any] = Field(default_factory=dict)
    max_concurrency: int = Field(default=16, ge=1, le=MAX_CONCURRENCY_MAX, strict=True)
    queue_max: int = Field(default=1024, ge=0, le=QUEUE_MAX_MAX, strict=True)
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    drain_grace_s: float = Field(default=10.0, ge=0.0, le=DRAIN_GRACE_S_MAX, strict=True)
    start_timeout_s: float = Field(default=120.0, gt=0.0, le=START_TIMEOUT_S_MAX, strict=True)
    # Where replicas run: their working directory, first on their import path. `fuxi service
    # register` sets it to the directory it runs in, so relative paths in config and modules
    # next to the spec work as they do for jobs.
    workdir: str | None = Field(default=None)
    # What Ray ships to every replica (fuxi.core.codeenv): with a working_dir, replicas run
    # in their unpacked copy of it instead of ``workdir`` (`--working-dir` of register).
    runtime_env: RuntimeEnvSpec | None = None
    # Replicas that follow the load; ``replicas`` is then only the start (within min..max).
    autoscaling: AutoscalingSpec | None = None

    @model_validator(mode="after")
    def _start_within_bounds(self) -> "ServiceSpec":
        a = self.autoscaling
        if a is not None and not a.min_replicas <= self.replicas <= a.max_replicas:
            self.replicas = min(max(self.replicas, a.min_replicas), a.max_replicas)
        return self

    @field_validator("workdir")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        if value is not None and not posixpath.isabs(value):
            raise ValueError(f"workdir {value!r} must be an absolute path")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value  # pydantic reports it
        return str(value) if isinstance(value, (int, float)) else value

    @field_validator("config", mode="before")
    @classmethod
    def _check_config(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        check_named_json(value, str.isidentifier, "key", "a keyword-argument name")
        return value

    def to_doc(self) -> dict:
        """The spec as a JSON-able dict with its public field names (``class``)."""
        return self.model_dump(by_alias=True)


def check_service_class(spec: ServiceSpec, source: str | None = None) -> None:
    """Import ``class`` now, so a typo fails at register time rather than in every replica
    (unless it needs a module that only the replicas' ``runtime_env.pip`` provides)."""
    try:
        cls = resolve_fn(spec.class_)
    except Exception as exc:  # noqa: BLE001 - reported with the spec's name
        if spec.runtime_env is not None and spec.runtime_env.pip and \
                missing_dependency(spec.class_, exc.__cause__):
            return  # a dependency its pip requirements give the replicas: checked there
        raise SpecError([f"{source or spec.name}: class: {exc}"], source=source, kind="service") from None
    if not isinstance(cls, type):
        raise SpecError([f"{source or spec.name}: class: {spec.class_} is a "
                         f"{type(cls).__name__}, expected a class"], source=source, kind="service")
    hc = spec.health_check.method
    if hc is not None and not callable(getattr(cls, hc, None)):
        raise SpecError([f"{source or spec.name}: health_check.method: {spec.class_} has no "
                         f"method {hc!r}"], source=source, kind="service")


def service_spec_from_dict(doc: Any, overrides: Sequence[str] = (), source: str = "<dict>",
                           check_class: bool = True) -> ServiceSpec:
    if not isinstance(doc, dict):
        given = "an empty document" if doc is None else type(doc).__name__
        raise SpecError([f"{source}: got {given} at top level, expected a mapping "
                         "(name:, class:, replicas:, ...)"], source=source, kind="service")
    doc = copy.deepcopy(doc)
    apply_overrides(doc, overrides, bare_key_root=None)  # replicas=3, config.tag=v2
    try:
        spec = ServiceSpec.model_validate(doc)
    except ValidationError as exc:
        raise SpecError([f"{source}: {line}" for line in humane_errors(exc, ServiceSpec, FIELD_EXPECTATIONS)],
                        source=source, kind="service") from None
    if check_class:
        check_service_class(spec, source)
    return spec
