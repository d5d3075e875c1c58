"""The metrics registry every component reports to: counters, gauges and histograms with
bounded label sets, exposed through the standard ``prometheus_client`` library.

    from base import metrics
    SUBMITTED = metrics.counter("fuxi_jobs_submitted_total", "Jobs admitted by FuxiMaster.",
                                labels=("priority",))
    SUBMITTED.inc(priority="5")
    text = metrics.REGISTRY.render()

Each process (each Ray actor) holds its own registry: a ``prometheus_client.CollectorRegistry``
into which every metric here is registered as a collector, rendered by
``prometheus_client.generate_latest`` (text format 0.0.4) and parsed back by
``prometheus_client.parser``. A component exposes its registry through its ``metrics`` call;
the head's ``/metrics`` endpoint (``fuxi.shells.web``) gathers them all.

Why the samples are kept here and not in ``prometheus_client.Counter``: label values often
come from strangers (user names, paths), and ``Counter.labels(...)`` makes a child for every
new value, without bound. Every metric here keeps at most ``series_max`` label combinations:
beyond it the sample goes to one overflow series (every label ``"_other"``) and
``fuxi_metrics_series_dropped_total`` counts it -- memory stays bounded, and the loss is
visible. ``CountsDict`` lets hot paths count in a plain dict that is read only at scrape time.

``FUXI_METRICS=0`` in a process's environment turns recording off there (every ``inc``,
``set`` and ``observe`` returns at once): the switch the observability benchmark measures.
"""

from __future__ import annotations

import math
import os
import re
import threading
import weakref
from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERIES_MAX = 1000  # label combinations kept per metric; more go to the overflow series
LABEL_VALUE_BYTES_MAX = 128  # a longer label value is cut (and marked with "...")
METRICS_MAX = 1000  # metrics in one registry
HELP_BYTES_MAX = 512
OVERFLOW = "_other"
_FAST_CHARS_MAX = LABEL_VALUE_BYTES_MAX // 4  # UTF-8 is at most 4 bytes a character
DEFAULT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def enabled() -> bool:
    """Whether this process records metrics (``FUXI_METRICS=0`` turns it off)."""
    return os.environ.get("FUXI_METRICS", "1").strip().lower() not in ("0", "off", "false", "no")


ENABLED = enabled()


def _check_name(name: str, what: str, rx: re.Pattern) -> str:
    if not isinstance(name, str) or not rx.match(name):
        raise ValueError(f"{what} {name!r}: expected letters, digits and _ (Prometheus naming), "
                         f"not starting with a digit")
    return name


def label_value(v) -> str:
    s = str(v)
    b = s.encode("utf-8", "replace")
    if len(b) > LABEL_VALUE_BYTES_MAX:
        s = b[:LABEL_VALUE_BYTES_MAX - 3].decode("utf-8", "ignore") + "..."
    return s


class _Metric:
    """A collector of one metric family for a ``prometheus_client.CollectorRegistry``."""

    kind = "untyped"

    def __init__(self, registry: "Registry", name: str, help: str, labels: Iterable[str],
                 series_max: int):
        self.registry = registry
        self.name = _check_name(name, "metric name", NAME_RE)
        self.help = str(help)[:HELP_BYTES_MAX]
        self.labels = tuple(_check_name(lb, "label name", LABEL_RE) for lb in labels)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"metric {name}: label names {self.labels} repeat; expected distinct names")
        if "le" in self.labels or any(lb.startswith("__") for lb in self.labels):
            raise ValueError(f"metric {name}: label names {list(self.labels)}; expected none "
                             f"named 'le' or starting with '__' (reserved by Prometheus)")
        if not (isinstance(series_max, int) and 1 <= series_max <= 100_000):
            raise ValueError(f"series_max={series_max!r}: expected an int in [1, 100000]")
        self.series_max = series_max
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], object] = {}

    def __reduce__(self):
        # A metric travels (Ray pickles an actor class with the globals its methods use) as
        # its declaration, and arrives as the metric of that name in the receiving process's
        # registry: each process counts for itself, and no lock is ever pickled.
        return (_declared, (self.kind, self.name, self.help, self.labels, self.series_max,
                            getattr(self, "buckets", None)))

    def _key(self, labels: dict) -> tuple[str, ...]:
        try:
            if len(labels) != len(self.labels):
                raise KeyError
            # a short str needs no encoding to be within LABEL_VALUE_BYTES_MAX (the hot path)
            key = tuple([v if type(v) is str and len(v) <= _FAST_CHARS_MAX else label_value(v)
                         for v in map(labels.__getitem__, self.labels)])
        except KeyError:
            raise ValueError(f"metric {self.name}: labels {sorted(labels)} given, expected "
                             f"exactly {list(self.labels)}") from None
        if key not in self._series and len(self._series) >= self.series_max:
            self.registry.dropped.inc_unlabelled()
            key = (OVERFLOW,) * len(self.labels)
        return key

    def describe(self):
        return []  # collected lazily: CollectorRegistry then does not call collect() at register

    def _items(self) -> list:
        with self._lock:
            return sorted(self._series.items())


class Counter(_Metric):
    """Only goes up (a restart starts it again from 0, as Prometheus expects). Its name ends
    in ``_total``."""

    kind = "counter"

    def __init__(self, registry, name, help, labels, series_max):
        if not (isinstance(name, str) and name.endswith("_total")):
            raise ValueError(f"counter {name!r}: expected a name ending in _total "
                             f"(Prometheus convention)")
        super().__init__(registry, name, help, labels, series_max)

    def add_source(self, counts: dict) -> None:
        """Read ``counts`` ({kind: n}, a ``CountsDict``) into this metric whenever it is read,
        for as long as ``counts`` lives."""
        with self._lock:
            if not hasattr(self, "_sources"):
                self._sources = weakref.WeakValueDictionary()  # by id: dicts do not hash
            self._sources[id(counts)] = counts

    def _merged(self) -> dict:
        out = dict(self._series)
        kinds = 0
        for counts in list(getattr(self, "_sources", {}).values()):
            for kind, n in list(counts.items()):
                if isinstance(n, (int, float)) and math.isfinite(n):
                    key = (label_value(kind),)
                    if key not in out:
                        kinds += 1
                        if kinds > self.series_max:
                            key = (OVERFLOW,)
                    out[key] = out.get(key, 0.0) + n
        return out

    def collect(self):
        fam = CounterMetricFamily(self.name, self.help, labels=self.labels)
        with self._lock:
            items = sorted(self._merged().items())
        for key, value in items:
            fam.add_metric(list(key), value)
        yield fam

    def inc(self, amount: float = 1.0, **labels) -> None:
        if not ENABLED:
            return
        if not (isinstance(amount, (int, float)) and amount >= 0 and math.isfinite(amount)):
            raise ValueError(f"counter {self.name}: inc({amount!r}); expected a finite number >= 0")
        with self._lock:
            key = self._key(labels)
            self._series[key] = self._series.get(key, 0.0) + amount

    def inc_unlabelled(self) -> None:
        with self._lock:
            self._series[()] = self._series.get((), 0.0) + 1

    def value(self, **labels) -> float:
        with self._lock:
            return self._merged().get(tuple(label_value(labels[lb]) for lb in self.labels), 0.0)


class Gauge(_Metric):
    """A value that goes up and down (queue lengths, free slots, the current term)."""

    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        if not isinstance(value, (int, float)):
            raise ValueError(f"gauge {self.name}: set({value!r}); expected a number")
        if not ENABLED:
            return
        with self._lock:
            self._series[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels) -> None:
        if not ENABLED:
            return
        with self._lock:
            key = self._key(labels)
            self._series[key] = self._series.get(key, 0.0) + amount

    def replace(self, samples: dict) -> None:
        """Set every series at once ({label values tuple: value}); series not named go away
        (a snapshot of state: nodes that left, jobs that ended)."""
        if not ENABLED:
            return
        fresh: dict = {}
        for key, value in samples.items():
            key = tuple(label_value(v) for v in (key if isinstance(key, tuple) else (key,)))
            if len(key) != len(self.labels):
                raise ValueError(f"gauge {self.name}: {len(key)} label values given, expected "
                                 f"{len(self.labels)} ({list(self.labels)})")
            if key not in fresh and len(fresh) >= self.series_max:
                self.registry.dropped.inc_unlabelled()
                key = (OVERFLOW,) * len(self.labels)
                fresh[key] = fresh.get(key, 0.0) + float(value)
                continue
            fresh[key] = float(value)
        with self._lock:
            self._series = fresh

    def collect(self):
        fam = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for key, value in self._items():
            fam.add_metric(list(key), value)
        yield fam

    def value(self, **labels) -> float:
        with self._lock:
            return self._series.get(tuple(label_value(labels[lb]) for lb in self.labels), 0.0)


class Histogram(_Metric):
    """Observations counted into fixed buckets (upper bounds, seconds for latencies)."""

    kind = "histogram"

    def __init__(self, registry, name, help, labels, series_max, buckets=DEFAULT_BUCKETS):
        super().__init__(registry, name, help, labels, series_max)
        b = tuple(float(x) for x in buckets)
        if not b or list(b) != sorted(set(b)) or not all(math.isfinite(x) for x in b):
            raise ValueError(f"histogram {name}: buckets {buckets!r}; expected increasing "
                             f"finite upper bounds")
        self.buckets = b

    def observe(self, value: float, **labels) -> None:
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"histogram {self.name}: observe({value!r}); expected a finite number")
        if not ENABLED:
            return
        with self._lock:
            key = self._key(labels)
            counts, total = self._series.get(key, ([0] * len(self.buckets), [0, 0.0]))
            for i, ub in enumerate(self.buckets):
                if value <= ub:
                    counts[i] += 1
            total[0] += 1
            total[1] += value
            self._series[key] = (counts, total)

    def collect(self):
        fam = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for key, (counts, (n, s)) in self._items():
            buckets = [(_bound(ub), c) for ub, c in zip(self.buckets, counts)]
            buckets.append(("+Inf", n))
            fam.add_metric(list(key), buckets, s)
        yield fam

    def count(self, **labels) -> int:
        with self._lock:
            got = self._series.get(tuple(label_value(labels[lb]) for lb in self.labels))
            return got[1][0] if got else 0


def _bound(ub: float) -> str:
    return str(int(ub)) + ".0" if float(ub).is_integer() else repr(float(ub))


def _declared(kind, name, help, labels, series_max, buckets):
    """The metric ``name`` of this process's registry, declared as given (see __reduce__)."""
    if name == REGISTRY.dropped.name:
        return REGISTRY.dropped
    if kind == "histogram":
        return REGISTRY.histogram(name, help, labels, series_max, buckets=buckets)
    return {"counter": REGISTRY.counter, "gauge": REGISTRY.gauge}[kind](name, help, labels,
                                                                         series_max)


class Registry:
    """The metrics of one process, in a ``prometheus_client.CollectorRegistry``. Asking again
    for a metric of the same name and kind returns the one registered first (modules can
    declare theirs at import time)."""

    def __init__(self, metrics_max: int = METRICS_MAX):
        self.metrics_max = metrics_max
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        self.collectors = CollectorRegistry(auto_describe=False)
        self.dropped = Counter(self, "fuxi_metrics_series_dropped_total",
                               "Samples sent to a metric's overflow series (SERIES_MAX).", (),
                               1)
        self._add(self.dropped)

    def _add(self, m: _Metric) -> None:
        self._metrics[m.name] = m
        self.collectors.register(m)

    def _get(self, cls, name, help, labels, series_max, **kw):
        with self._lock:
            m = self._metrics.get(name)
            if m is not None:
                if type(m) is not cls or m.labels != tuple(labels):
                    raise ValueError(f"metric {name} exists as a {m.kind} with labels "
                                     f"{list(m.labels)}; asked for a {cls.kind} with "
                                     f"{list(labels)}")
                return m
            if len(self._metrics) >= self.metrics_max:
                raise ValueError(f"{self.metrics_max} metrics registered (METRICS_MAX); "
                                 f"cannot add {name}")
            m = cls(self, name, help, labels, series_max, **kw)
            self._add(m)
            return m

    def counter(self, name, help, labels=(), series_max=SERIES_MAX) -> Counter:
        return self._get(Counter, name, help, tuple(labels), series_max)

    def gauge(self, name, help, labels=(), series_max=SERIES_MAX) -> Gauge:
        return self._get(Gauge, name, help, tuple(labels), series_max)

    def histogram(self, name, help, labels=(), series_max=SERIES_MAX,
                  buckets=DEFAULT_BUCKETS) -> Histogram:
        return self._get(Histogram, name, help, tuple(labels), series_max, buckets=buckets)

    def names(self) -> dict[str, str]:
        """{metric name: kind} of every metric registered here."""
        with self._lock:
            return {n: m.kind for n, m in self._metrics.items()}

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format (prometheus_client's)."""
        return generate_latest(self.collectors).decode("utf-8")


class CountsDict(dict):
    """A dict of counts (``counts[kind] += n``, a missing kind reads 0) that the labelled
    counter ``metric{kind=...}`` reads when it is rendered -- for components that already keep
    their counters in a dict and show it in their status. Counting costs nothing more than
    the dict (hot paths count per request); every live CountsDict of a metric is summed."""

    def __init__(self, metric: "Counter", initial: dict | None = None):
        super().__init__(initial or {})
        if metric.labels != ("kind",):
            raise ValueError(f"metric {metric.name}: labels {list(metric.labels)}; expected "
                             f"['kind']")
        metric.add_source(self)

    def __missing__(self, key):
        return 0


REGISTRY = Registry()
counter = REGISTRY.counter
gauge = REGISTRY.gauge
histogram = REGISTRY.histogram
