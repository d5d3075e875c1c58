"""base.metrics and base.events: what they record, that what they render is valid Prometheus
text, and that strangers' label values and floods of events cannot grow memory without bound."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from base import events, metrics


def parse(text: str) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_gauges_histograms_render_as_prometheus_text():
    r = metrics.Registry()
    jobs = r.counter("fuxi_jobs_total", "Jobs by end state.", labels=("state",))
    jobs.inc(state="succeeded")
    jobs.inc(2, state="failed")
    free = r.gauge("fuxi_free_slots", "Free slots.")
    free.set(7)
    free.inc(-2)
    lat = r.histogram("nuwa_commit_seconds", "Commit latency.", buckets=(0.01, 0.1, 1.0))
    for v in (0.005, 0.05, 0.5, 5.0):
        lat.observe(v)
    got = parse(r.render())
    assert got[("fuxi_jobs_total", (("state", "succeeded"),))] == 1
    assert got[("fuxi_jobs_total", (("state", "failed"),))] == 2
    assert got[("fuxi_free_slots", ())] == 5
    assert got[("nuwa_commit_seconds_bucket", (("le", "0.1"),))] == 2
    assert got[("nuwa_commit_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("nuwa_commit_seconds_count", ())] == 4
    assert math.isclose(got[("nuwa_commit_seconds_sum", ())], 5.555)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=50))
def test_any_label_value_renders_parseably_and_series_stay_bounded(values):
    r = metrics.Registry()
    c = r.counter("calls_total", "Calls by user.", labels=("user",), series_max=10)
    for v in values:
        c.inc(user=v)
    got = parse(r.render())
    series = [k for k in got if k[0] == "calls_total"]
    assert len(series) <= 10 + 1  # the kept ones and the overflow series
    assert sum(got[k] for k in series) == len(values)  # nothing lost: overflow counts it
    distinct = len({metrics.label_value(v) for v in values})
    dropped = got.get(("fuxi_metrics_series_dropped_total", ()), 0)
    assert (dropped > 0) == (distinct > 10)


@pytest.mark.parametrize("bad", [
    lambda r: r.counter("1bad", "x"),
    lambda r: r.counter("ok_total", "x", labels=("le-x",)),
    lambda r: r.counter("ok_total", "x", labels=("a", "a")),
    lambda r: r.counter("c_total", "x").inc(-1),
    lambda r: r.counter("c_total", "x").inc(float("nan")),
    lambda r: r.counter("c_total", "x", labels=("a",)).inc(b="1"),
    lambda r: r.histogram("h", "x", buckets=(1, 0.5)),
    lambda r: r.histogram("h", "x").observe(float("inf")),
    lambda r: (r.counter("same", "x"), r.gauge("same", "x")),
])
def test_bad_input_is_refused_with_what_was_expected(bad):
    with pytest.raises(ValueError, match="expected|exists"):
        bad(metrics.Registry())


def test_the_registry_holds_a_bounded_number_of_metrics():
    r = metrics.Registry(metrics_max=3)
    r.counter("a_total", "x")
    r.counter("b_total", "x")
    with pytest.raises(ValueError, match="METRICS_MAX"):
        r.counter("c_total", "x")
    assert r.counter("a_total", "x") is r.counter("a_total", "x")  # declared twice: one metric


def test_events_are_kept_in_order_bounded_and_their_loss_is_counted():
    clock = iter(range(100, 1000)).__next__
    log = events.EventLog(events_max=3, clock=clock)
    for i in range(5):
        log.emit("nuwa", "leader_changed", f"term {i}", term=i)
    kept = log.since(0)
    assert [e.fields["term"] for e in kept] == [2, 3, 4]
    assert [e.seq for e in kept] == [3, 4, 5] and log.dropped == 2
    assert [e.seq for e in log.since(4)] == [5]
    assert kept[0].to_dict()["severity"] == "info" and kept[0].at == 102


def test_event_fields_and_messages_are_bounded():
    log = events.EventLog(events_max=10)
    e = log.emit("pangu", "repair", "x" * 5000, severity="warning", path="/" + "p" * 5000)
    assert len(e.message.encode()) <= events.EVENT_MESSAGE_BYTES_MAX
    assert len(e.fields["path"]) <= events.EVENT_FIELD_BYTES_MAX and e.severity is events.Severity.WARNING
    with pytest.raises(ValueError, match="EVENT_FIELDS_MAX"):
        log.emit("a", "b", "c", **{f"f{i}": i for i in range(events.EVENT_FIELDS_MAX + 1)})
    with pytest.raises(ValueError):
        log.emit("a", "b", "c", severity="catastrophic")


def test_a_metric_travels_as_its_declaration_not_its_samples():
    """Ray pickles an actor class with the globals its methods use (cloudpickle, by value):
    a metric must pickle, and arrive as the receiving process's metric of that name."""
    import pickle

    from ray import cloudpickle

    c = metrics.counter("fuxi_test_travel_total", "x", labels=("k",))
    c.inc(k="a")
    h = metrics.histogram("fuxi_test_travel_seconds", "x", buckets=(1.0, 2.0))
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert pickle.loads(dumps(c)) is c  # same process: the very same metric
        assert pickle.loads(dumps(h)).buckets == (1.0, 2.0)

    def method():  # a function using the global, as an actor method would
        return c

    assert cloudpickle.loads(cloudpickle.dumps(method))() is c
