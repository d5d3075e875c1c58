"""Alert rules and their state machine (pure): thresholds held for a duration, per series or
aggregated, absent series; event kinds undone by another or by time; bad rule files refused
one line per problem; everything bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core import alerts as al
from fuxi.errors import BadInput


def book(yaml_text: str) -> al.AlertBook:
    return al.AlertBook(al.parse_rules(yaml_text))


def test_the_default_rules_parse_and_cover_the_issues_set():
    names = {r.name for r in al.default_rules()}
    assert {"NodeLost", "NuwaNoQuorum", "UnderReplicatedChunks", "ServiceNotReady",
            "JobFailed"} <= names


def test_a_threshold_must_hold_for_its_duration_then_fires_and_resolves():
    b = book("""
- name: Under
  metric: pangu_chunks
  labels: {state: under_replicated}
  op: ">"
  value: 0
  for_s: 30
  summary: "{value:g} chunks under-replicated"
""")
    s = [("pangu_chunks", {"state": "under_replicated"}, 3.0),
         ("pangu_chunks", {"state": "healthy"}, 90.0)]
    assert b.evaluate(s, 0.0) == []
    assert b.view()["active"][0]["state"] == "pending"
    assert b.evaluate(s, 29.0) == []
    (t,) = b.evaluate(s, 30.0)
    assert t.to == "firing" and t.alert["summary"] == "3 chunks under-replicated"
    assert b.evaluate(s, 31.0) == []  # fires once
    (t,) = b.evaluate([("pangu_chunks", {"state": "under_replicated"}, 0.0)], 40.0)
    assert t.to == "resolved"
    v = b.view()
    assert v["active"] == [] and v["resolved"][0]["resolved_at"] == 40.0


def test_a_condition_that_stops_before_its_duration_never_fires():
    b = book("- {name: X, metric: m, op: '>', value: 1, for_s: 10}")
    b.evaluate([("m", {}, 5.0)], 0.0)
    assert b.evaluate([("m", {}, 0.0)], 5.0) == []  # pending dropped: no "resolved"
    assert b.view() == {"active": [], "resolved": [], "dropped": 0, "rules": ["X"]}


def test_one_alert_per_series_unless_aggregated():
    b = book("""
- {name: NotReady, metric: ready, op: "<", value: 1, summary: "service {service} has none"}
- {name: Total, metric: ready, aggregate: sum, op: "<", value: 3}
""")
    s = [("ready", {"service": "a"}, 0.0), ("ready", {"service": "b"}, 0.0),
         ("ready", {"service": "c"}, 2.0)]
    got = b.evaluate(s, 0.0)
    fired = sorted((t.alert["rule"], t.alert["labels"].get("service", "")) for t in got)
    assert fired == [("NotReady", "a"), ("NotReady", "b"), ("Total", "")]
    assert {t.alert["summary"] for t in got if t.alert["rule"] == "NotReady"} == {
        "service a has none", "service b has none"}
    got = b.evaluate([("ready", {"service": "a"}, 1.0), ("ready", {"service": "b"}, 0.0),
                      ("ready", {"service": "c"}, 2.0)], 1.0)
    assert sorted((t.alert["labels"].get("service", ""), t.to) for t in got) == [
        ("", "resolved"), ("a", "resolved")]


def test_absent_series_fire_only_when_asked():
    b = book("""
- {name: NoLeader, metric: nuwa_is_leader, aggregate: sum, op: "<", value: 1, absent: fire}
- {name: Quiet, metric: nuwa_is_leader, aggregate: sum, op: "<", value: 1}
""")
    (t,) = b.evaluate([], 0.0)
    assert t.alert["rule"] == "NoLeader" and t.to == "firing"
    (t,) = b.evaluate([("nuwa_is_leader", {"replica": "1"}, 1.0)], 1.0)
    assert t.to == "resolved"


def test_a_lost_node_resolves_when_as_many_joined():
    b = book("""
- name: NodeLost
  event: node_lost
  resolve_event: node_joined
  summary: "lost {node}"
""")
    joined = [{"kind": "node_joined", "at": 0.0, "node": f"n{i}"} for i in range(3)]
    assert b.observe_events(joined, 0.0) == []  # the cluster's start: nothing open
    (t,) = b.observe_events([{"kind": "node_lost", "at": 5.0, "node": "n1"}], 5.0)
    assert t.to == "firing" and t.alert["summary"] == "lost n1"
    assert b.observe_events([{"kind": "node_lost", "at": 6.0, "fields": {"node": "n2"}}],
                            6.0) == []  # still the same alert, two lost now
    assert b.observe_events([{"kind": "node_joined", "at": 7.0, "node": "n3"}], 7.0) == []
    (t,) = b.observe_events([{"kind": "node_joined", "at": 8.0, "node": "n4"}], 8.0)
    assert t.to == "resolved" and b.view()["active"] == []


def test_grouped_event_alerts_resolve_after_their_time():
    b = book("""
- {name: JobFailed, event: job_failed, group_by: [job], resolve_after_s: 60,
   match: {severity: error}, summary: "job {job} failed"}
""")
    got = b.observe_events([
        {"kind": "job_failed", "at": 0.0, "job": "j1", "severity": "error"},
        {"kind": "job_failed", "at": 1.0, "job": "j2", "severity": "error"},
        {"kind": "job_failed", "at": 1.0, "job": "j3", "severity": "info"},  # not matched
        {"kind": "job_succeeded", "at": 2.0, "job": "j1"}], 2.0)
    assert sorted(t.alert["labels"]["job"] for t in got) == ["j1", "j2"]
    assert b.observe_events([], 59.0) == []
    (t,) = b.observe_events([], 60.5)
    assert t.to == "resolved" and t.alert["labels"] == {"job": "j1"}


@pytest.mark.parametrize("text, problem", [
    ("- {name: a}", "exactly one of metric"),
    ("- {name: a, metric: m, event: e, resolve_after_s: 1}", "exactly one of metric"),
    ("- {name: a, event: e}", "resolve_event: or resolve_after_s"),
    ("- {name: a, metric: m, op: '=~'}", "op"),
    ("- {name: a, metric: 'bad name'}", "metric"),
    ("- {name: a, metric: m, for_s: -1}", "for_s"),
    ("- {name: a, metric: m, value: .nan}", "finite"),
    ("- {name: a, metric: m, severity: loud}", "severity"),
    ("- {name: a, metric: m, typo: 1}", "typo"),
    ("- {name: a, metric: m}\n- {name: a, metric: m}", "used twice"),
    ("- {name: a, metric: m, resolve_after_s: 5}", "for event rules"),
    ("- 7", "expected a mapping"),
    ("{}", "expected a list of rules"),
    ("- [unclosed", "not YAML"),
])
def test_bad_rules_are_refused_naming_the_rule_and_field(text, problem):
    with pytest.raises(BadInput, match=problem) as e:
        al.parse_rules(text, "rules.yaml")
    assert str(e.value).startswith("rules.yaml")


def test_limits_on_rules_and_file_size():
    many = "\n".join(f"- {{name: r{i}, metric: m}}" for i in range(al.ALERT_RULES_MAX + 1))
    with pytest.raises(BadInput, match="ALERT_RULES_MAX"):
        al.parse_rules(many)
    with pytest.raises(BadInput, match="ALERT_RULES_BYTES_MAX"):
        al.parse_rules("#" * (al.ALERT_RULES_BYTES_MAX + 1))


def test_active_alerts_are_bounded_and_the_overflow_counted():
    b = book("- {name: X, metric: m, op: '>', value: 0}")
    s = [("m", {"i": str(i)}, 1.0) for i in range(al.ALERTS_ACTIVE_MAX + 5)]
    b.evaluate(s, 0.0)
    assert len(b.view()["active"]) == al.ALERTS_ACTIVE_MAX and b.dropped == 5


def test_a_hostile_summary_template_does_not_raise():
    b = book("- {name: X, metric: m, op: '>', value: 0, summary: '{value.__class__} {0} {x!r:>99999999}'}")
    (t,) = b.evaluate([("m", {}, 1.0)], 0.0)
    assert len(t.alert["summary"]) <= al.ALERT_TEXT_CHARS_MAX


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5, allow_nan=False), st.floats(0, 3)), max_size=40))
def test_a_metric_alert_fires_exactly_when_the_condition_held_for_its_duration(steps):
    """Against a direct reading of the rule: firing at time t iff value > 0 at every
    evaluation since some t0 with t - t0 >= for_s."""
    b = book("- {name: X, metric: m, op: '>', value: 0, for_s: 2}")
    now, since = 0.0, None
    for value, dt in steps:
        now += dt
        b.evaluate([("m", {}, value)], now)
        since = (since if since is not None else now) if value > 0 else None
        want = since is not None and now - since >= 2
        active = b.view()["active"]
        assert (bool(active) and active[0]["state"] == "firing") == want



def test_the_shell_reads_samples_from_an_exposition_and_rules_from_the_data_dir(tmp_path):
    from fuxi.shells import alerting

    text = ('# TYPE nuwa_is_leader gauge\nnuwa_is_leader{replica="1",component="nuwa"} 1\n'
            '# TYPE fuxi_jobs_ended_total counter\nfuxi_jobs_ended_total{state="failed"} 3\n')
    got = alerting.samples_of(text)
    assert ("nuwa_is_leader", {"replica": "1", "component": "nuwa"}, 1.0) in got
    assert ("fuxi_jobs_ended_total", {"state": "failed"}, 3.0) in got
    rules, source = alerting.load_rules(str(tmp_path), has_nuwa=False)
    assert source == "default rules" and "NuwaNoQuorum" not in {r.name for r in rules}
    (tmp_path / alerting.RULES_FILE).write_text("- {name: Mine, metric: m, op: '>', value: 1}")
    rules, source = alerting.load_rules(str(tmp_path), has_nuwa=True)
    assert [r.name for r in rules] == ["Mine"] and source.endswith(alerting.RULES_FILE)
    (tmp_path / alerting.RULES_FILE).write_text("- {name: Bad}")
    with pytest.raises(BadInput, match="exactly one of metric"):
        alerting.load_rules(str(tmp_path), has_nuwa=True)


def test_fuxi_up_refuses_a_bad_rules_file_before_anything_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli.main import app

    monkeypatch.setenv("FUXI_HOME", str(tmp_path / "home"))
    bad = tmp_path / "rules.yaml"
    bad.write_text("- {name: a, metric: m, op: '=~'}\n- {name: b, event: e}\n")
    r = CliRunner().invoke(app, ["up", "--alert-rules", str(bad)])
    assert r.exit_code == 2, r.output
    assert "rule 1 (a): op" in r.output and "rule 2 (b)" in r.output
    r = CliRunner().invoke(app, ["up", "--alert-rules", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "cannot read it" in r.output
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("cluster.json"))
