"""Alerts (issue 17 part 3): rules written in YAML, evaluated continuously over the cluster's
metrics and its event log; each alert is pending, firing or resolved.

Two kinds of rule::

    - name: NodeLost                     # an event kind, undone by another
      event: node_lost
      resolve_event: node_joined         # active while more were lost than joined since
      severity: critical
      summary: "a node was lost ({node})"
    - name: UnderReplicatedChunks        # a threshold over a metric, held for a duration
      metric: pangu_chunks
      labels: {state: under_replicated}  # equality matchers on the series' labels
      op: ">"
      value: 0
      for_s: 30
      severity: warning
      summary: "{value:g} chunks under-replicated"

A metric rule is evaluated per series (an alert per label set, e.g. per service), or over
all matching series at once with ``aggregate`` (sum, min, max, count: one alert for the
rule). ``absent: fire`` makes a missing series (or no series at all, with ``aggregate``) count
as the condition holding — "no Nuwa replica answers" is then an alert, not silence.

An event rule fires on each event of its kind whose fields match ``match``; ``group_by``
fields split it into one alert per value (one per job, say). It resolves on a
``resolve_event`` (counting: active while fires outnumber resolutions in its group) or
``resolve_after_s`` after the last firing event — a rule needs one of the two.

Pure: samples, events and the time come in as values. Everything is bounded: rules
(``ALERT_RULES_MAX``), alerts active at once (``ALERTS_ACTIVE_MAX``; beyond it new ones are
counted in ``dropped``), resolved ones kept (``ALERTS_RESOLVED_KEPT_MAX``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fuxi.errors import BadInput

ALERT_RULES_MAX = 200
ALERTS_ACTIVE_MAX = 1000  # alerts pending or firing at once
ALERTS_RESOLVED_KEPT_MAX = 500
ALERT_FOR_S_MAX = 7 * 86400.0
ALERT_RULES_BYTES_MAX = 256 * 1024  # one rules file
ALERT_TEXT_CHARS_MAX = 512  # a summary, after its fields are filled in
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
METRIC_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$")
OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
       "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
AGGREGATES = {"sum": sum, "min": min, "max": max, "count": len}


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=NAME_RE.pattern)
    severity: Literal["info", "warning", "critical"] = "warning"
    summary: str = Field(default="", max_length=ALERT_TEXT_CHARS_MAX)
    # a metric rule
    metric: Optional[str] = Field(default=None, pattern=METRIC_RE.pattern)
    labels: dict[str, str] = Field(default_factory=dict, max_length=16)
    op: Literal[">", ">=", "<", "<=", "==", "!="] = ">"
    value: float = 0.0
    aggregate: Optional[Literal["sum", "min", "max", "count"]] = None
    absent: Literal["ignore", "fire"] = "ignore"
    for_s: float = Field(default=0.0, ge=0.0, le=ALERT_FOR_S_MAX)
    # an event rule
    event: Optional[str] = Field(default=None, pattern=NAME_RE.pattern)
    match: dict[str, str] = Field(default_factory=dict, max_length=16)
    group_by: list[str] = Field(default_factory=list, max_length=4)
    resolve_event: Optional[str] = Field(default=None, pattern=NAME_RE.pattern)
    resolve_after_s: Optional[float] = Field(default=None, gt=0.0, le=ALERT_FOR_S_MAX)

    @model_validator(mode="after")
    def _one_kind(self) -> "Rule":
        if (self.metric is None) == (self.event is None):
            raise ValueError("expected exactly one of metric: (a threshold) or event: "
                             "(an event kind)")
        if not math.isfinite(self.value):
            raise ValueError(f"value {self.value}: expected a finite number")
        if self.event is not None and self.resolve_event is None and \
                self.resolve_after_s is None:
            raise ValueError("an event rule needs resolve_event: or resolve_after_s: (else "
                             "it would never resolve)")
        if self.metric is not None and (self.resolve_event or self.resolve_after_s
                                        or self.match or self.group_by):
            raise ValueError("match, group_by, resolve_event and resolve_after_s are for "
                             "event rules")
        return self


def parse_rules(text: str, source: str = "rules") -> list[Rule]:
    """The rules of a YAML document (a list of rules, or ``{rules: [...]}``), checked; every
    problem is one line of the ``BadInput`` raised, naming the rule and the field."""
    if len(text.encode("utf-8", "replace")) > ALERT_RULES_BYTES_MAX:
        raise BadInput(f"{source}: larger than ALERT_RULES_BYTES_MAX={ALERT_RULES_BYTES_MAX}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"{source}: not YAML ({str(e).splitlines()[0]})") from None
    if isinstance(doc, Mapping) and set(doc) == {"rules"}:
        doc = doc["rules"]
    if not isinstance(doc, list):
        raise BadInput(f"{source}: expected a list of rules (or rules: [...]), got "
                       f"{type(doc).__name__}")
    return check_rules(doc, source)


def check_rules(docs: list, source: str = "rules") -> list[Rule]:
    if len(docs) > ALERT_RULES_MAX:
        raise BadInput(f"{source}: {len(docs)} rules; expected at most "
                       f"ALERT_RULES_MAX={ALERT_RULES_MAX}")
    problems, rules, seen = [], [], set()
    for i, d in enumerate(docs):
        where = f"{source}: rule {i + 1}" + (f" ({d.get('name')!s:.40})"
                                              if isinstance(d, Mapping) and d.get("name") else "")
        if not isinstance(d, Mapping):
            problems.append(f"{where}: expected a mapping (name:, metric: or event:, ...)")
            continue
        try:
            r = Rule.model_validate(dict(d))
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(x) for x in err["loc"]) or "rule"
                problems.append(f"{where}: {loc}: {err['msg']}")
            continue
        if r.name in seen:
            problems.append(f"{where}: name {r.name!r} is used twice; expected unique names")
        seen.add(r.name)
        rules.append(r)
    if problems:
        raise BadInput("\n".join(problems))
    return rules


DEFAULT_RULES_YAML = """
# The default rule set (issue 17 part 3). An operator's file (fuxi up --alert-rules) replaces it.
- name: NodeLost
  event: node_lost
  resolve_event: node_joined
  severity: critical
  summary: "a node left the cluster ({node}); resolves when a node joins"
- name: NuwaNoQuorum
  metric: nuwa_is_leader
  aggregate: sum
  op: "<"
  value: 1
  absent: fire
  for_s: 10
  severity: critical
  summary: "no Nuwa replica leads: the coordination service has no quorum"
- name: UnderReplicatedChunks
  metric: pangu_chunks_under_replicated
  aggregate: max
  op: ">"
  value: 0
  for_s: 30
  severity: warning
  summary: "{value:g} Pangu chunks have fewer replicas than their factor"
- name: ServiceNotReady
  metric: fuxi_service_replicas
  labels: {state: ready}
  op: "<"
  value: 1
  for_s: 15
  severity: critical
  summary: "service {service} has no ready replica"
- name: JobFailed
  event: job_failed
  group_by: [job]
  resolve_after_s: 3600
  severity: warning
  summary: "job {job} failed"
"""


def default_rules() -> list[Rule]:
    return parse_rules(DEFAULT_RULES_YAML, "default rules")


Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Alert:
    rule: str
    labels: dict[str, str]
    severity: str
    state: str  # pending | firing | resolved
    since: float  # when the condition began
    fired_at: float | None = None
    resolved_at: float | None = None
    value: float | None = None
    summary: str = ""
    count: int = 0  # event rules: fires minus resolutions in this group
    last: float | None = None  # event rules: the last firing event

    def view(self) -> dict[str, Any]:
        return {"rule": self.rule, "labels": dict(self.labels), "severity": self.severity,
                "state": self.state, "since": self.since, "fired_at": self.fired_at,
                "resolved_at": self.resolved_at, "value": self.value, "summary": self.summary}


def _fill(template: str, fields: Mapping[str, Any]) -> str:
    class Safe(dict):
        def __missing__(self, k):
            return "?"

    try:
        text = template.format_map(Safe({k: v for k, v in fields.items()}))
    except (ValueError, TypeError, IndexError, AttributeError, KeyError):
        text = template
    return text[:ALERT_TEXT_CHARS_MAX]


@dataclass
class Transition:
    alert: dict[str, Any]
    to: str  # firing | resolved


@dataclass
class AlertBook:
    """Every rule's alerts. Feed it ``evaluate(samples, now)`` for metric rules and
    ``observe_events(events, now)`` for event rules; both return the transitions to firing
    and to resolved (the shell turns them into events)."""

    rules: list[Rule]
    active: dict[Key, Alert] = field(default_factory=dict)
    resolved: list[Alert] = field(default_factory=list)
    dropped: int = 0

    def _key(self, rule: Rule, labels: Mapping[str, str]) -> Key:
        return rule.name, tuple(sorted((str(k), str(v)) for k, v in labels.items()))

    def _open(self, rule: Rule, labels: dict, now: float, value, fields) -> Alert | None:
        key = self._key(rule, labels)
        a = self.active.get(key)
        if a is None:
            if len(self.active) >= ALERTS_ACTIVE_MAX:
                self.dropped += 1
                return None
            a = self.active[key] = Alert(rule.name, labels, rule.severity, "pending", now)
        a.value = value
        a.summary = _fill(rule.summary or rule.name, {**fields, "value": value
                                                      if value is not None else float("nan")})
        return a

    def _close(self, key: Key, now: float, out: list[Transition]) -> None:
        a = self.active.pop(key)
        if a.state == "firing":
            a.state, a.resolved_at = "resolved", now
            self.resolved.append(a)
            del self.resolved[:-ALERTS_RESOLVED_KEPT_MAX]
            out.append(Transition(a.view(), "resolved"))

    def _promote(self, a: Alert, rule: Rule, now: float, out: list[Transition]) -> None:
        if a.state == "pending" and now - a.since >= rule.for_s:
            a.state, a.fired_at = "firing", now
            out.append(Transition(a.view(), "firing"))

    # ------------------------------------------------------------ metric rules

    def evaluate(self, samples: Iterable[tuple[str, Mapping[str, str], float]],
                 now: float) -> list[Transition]:
        """``samples``: (metric name, labels, value) of one scrape of the whole cluster."""
        by_name: dict[str, list[tuple[Mapping[str, str], float]]] = {}
        for name, labels, value in samples:
            by_name.setdefault(name, []).append((labels, float(value)))
        out: list[Transition] = []
        for rule in self.rules:
            if rule.metric is None:
                continue
            series = [(lab, v) for lab, v in by_name.get(rule.metric, ())
                      if all(lab.get(k) == want for k, want in rule.labels.items())
                      and not math.isnan(v)]
            holding: dict[Key, tuple[dict, float | None]] = {}
            if rule.aggregate:
                if series:
                    v = float(AGGREGATES[rule.aggregate]([x for _, x in series]))
                    if OPS[rule.op](v, rule.value):
                        holding[self._key(rule, {})] = ({}, v)
                elif rule.absent == "fire":
                    holding[self._key(rule, {})] = ({}, None)
            else:
                for lab, v in series:
                    if OPS[rule.op](v, rule.value):
                        shown = {k: str(x) for k, x in lab.items()}
                        holding[self._key(rule, shown)] = (shown, v)
                if not series and rule.absent == "fire":
                    holding[self._key(rule, {})] = ({}, None)
            for key, (labels, v) in holding.items():
                a = self._open(rule, labels, now, v, labels)
                if a is not None:
                    self._promote(a, rule, now, out)
            for key in [k for k in self.active if k[0] == rule.name and k not in holding]:
                self._close(key, now, out)
        return out

    # ------------------------------------------------------------ event rules

    def observe_events(self, evs: Iterable[Mapping[str, Any]], now: float) -> list[Transition]:
        """``evs``: cluster events, oldest first (each with ``kind``, ``at`` and its fields,
        top level or under ``fields``)."""
        out: list[Transition] = []
        event_rules = [r for r in self.rules if r.event is not None]
        for ev in evs:
            kind = ev.get("kind")
            fields = {**(ev.get("fields") or {}), **{k: v for k, v in ev.items()
                                                      if isinstance(v, (str, int, float))}}
            at = ev.get("at")
            at = float(at) if isinstance(at, (int, float)) and math.isfinite(at) else now
            for rule in event_rules:
                if kind not in (rule.event, rule.resolve_event):
                    continue
                if any(str(fields.get(k)) != v for k, v in rule.match.items()):
                    continue
                labels = {g: str(fields.get(g, "")) for g in rule.group_by}
                key = self._key(rule, labels)
                if kind == rule.event:
                    a = self._open(rule, labels, at, None, fields)
                    if a is None:
                        continue
                    a.count += 1
                    a.last = at
                    self._promote(a, rule, at, out)
                elif key in self.active:  # a resolving event of that group
                    a = self.active[key]
                    a.count -= 1
                    if a.count <= 0:
                        self._close(key, at, out)
        for rule in event_rules:
            for key, a in list(self.active.items()):
                if key[0] != rule.name:
                    continue
                if rule.resolve_after_s is not None and \
                        now - (a.last if a.last is not None else a.since) >= rule.resolve_after_s:
                    self._close(key, now, out)
                else:
                    self._promote(a, rule, now, out)
        return out

    def view(self) -> dict[str, Any]:
        order = {"critical": 0, "warning": 1, "info": 2}
        act = sorted(self.active.values(), key=lambda a: (a.state != "firing",
                                                          order.get(a.severity, 3), a.since))
        return {"active": [a.view() for a in act],
                "resolved": [a.view() for a in reversed(self.resolved)],
                "dropped": self.dropped, "rules": [r.name for r in self.rules]}
