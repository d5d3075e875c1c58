"""The metrics registry every component reports to: counters, gauges and histograms with
bounded label sets, rendered in the Prometheus text format (version 0.0.4).

    from base import metrics
    SUBMITTED = metrics.counter("fuxi_jobs_submitted_total", "Jobs admitted by FuxiMaster.",
                                labels=("priority",))
    SUBMITTED.inc(priority="5")
    text = metrics.REGISTRY.render()

Each process (each Ray actor) holds its own registry; a component exposes it through its own
status call. Label values often come from strangers (user names, paths), so every metric keeps
at most ``series_max`` label combinations: beyond it the sample goes to one overflow series
(every label ``"_other"``) and ``fuxi_metrics_series_dropped_total`` counts it — memory stays
bounded, and the loss is visible.
"""

from __future__ import annotations

import math
import re
import threading
import weakref
from typing import Iterable

NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SERIES_MAX = 1000  # label combinations kept per metric; more go to the overflow series
LABEL_VALUE_BYTES_MAX = 128  # a longer label value is cut (and marked with "...")
METRICS_MAX = 1000  # metrics in one registry
HELP_BYTES_MAX = 512
OVERFLOW = "_other"
DEFAULT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


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


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    return repr(float(x)) if not float(x).is_integer() else str(int(x)) if abs(x) < 1e15 else repr(x)


class _Metric:
    kind = "untyped"

    def __init__(self, registry: "Registry", name: str, help: str, labels: Iterable[str],
                 series_max: int):
        self.registry = registry
        self.name = _check_name(name, "metric name", NAME_RE)
        self.help = str(help)[:HELP_BYTES_MAX]
        self.labels = tuple(_check_name(lb, "label name", LABEL_RE) for lb in labels)
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"metric {name}: label names {self.labels} repeat; expected distinct names")
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
        if set(labels) != set(self.labels):
            raise ValueError(f"metric {self.name}: labels {sorted(labels)} given, expected "
                             f"exactly {list(self.labels)}")
        key = tuple(label_value(labels[lb]) for lb in self.labels)
        if key not in self._series and len(self._series) >= self.series_max:
            self.registry.dropped.inc_unlabelled()
            key = (OVERFLOW,) * len(self.labels)
        return key

    def _label_text(self, key: tuple[str, ...], extra: str = "") -> str:
        parts = [f'{lb}="{_escape(v)}"' for lb, v in zip(self.labels, key)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            items = sorted(self._series.items())
        for key, value in items:
            out.extend(self._render_series(key, value))
        return out

    def _render_series(self, key, value) -> list[str]:
        return [f"{self.name}{self._label_text(key)} {_fmt(value)}"]


class Counter(_Metric):
    """Only goes up (a restart starts it again from 0, as Prometheus expects)."""

    kind = "counter"

    def add_source(self, counts: dict) -> None:
        """Read ``counts`` ({kind: n}, a ``CountsDict``) into this metric whenever it is read,
        for as long as ``counts`` lives."""
        with self._lock:
            if not hasattr(self, "_sources"):
                self._sources = weakref.WeakValueDictionary()  # by id: dicts do not hash
            self._sources[id(counts)] = counts

    def _merged(self) -> dict:
        out = dict(self._series)
        for counts in list(getattr(self, "_sources", {}).values()):
            for kind, n in list(counts.items()):
                if isinstance(n, (int, float)):
                    key = (label_value(kind),)
                    out[key] = out.get(key, 0.0) + n
        return out

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {_escape(self.help)}", f"# TYPE {self.name} {self.kind}"]
        with self._lock:
            items = sorted(self._merged().items())
        for key, value in items:
            out.extend(self._render_series(key, value))
        return out

    def inc(self, amount: float = 1.0, **labels) -> None:
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
        with self._lock:
            self._series[self._key(labels)] = float(value)

    def inc(self, amount: float = 1.0, **labels) -> None:
        with self._lock:
            key = self._key(labels)
            self._series[key] = self._series.get(key, 0.0) + amount

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
        with self._lock:
            key = self._key(labels)
            counts, total = self._series.get(key, ([0] * len(self.buckets), [0, 0.0]))
            for i, ub in enumerate(self.buckets):
                if value <= ub:
                    counts[i] += 1
            total[0] += 1
            total[1] += value
            self._series[key] = (counts, total)

    def _render_series(self, key, value) -> list[str]:
        counts, (n, s) = value
        out = [f"{self.name}_bucket{self._label_text(key, _le(_fmt(ub)))} {c}"
               for ub, c in zip(self.buckets, counts)]
        out.append(f"{self.name}_bucket{self._label_text(key, _le('+Inf'))} {n}")
        out.append(f"{self.name}_sum{self._label_text(key)} {_fmt(s)}")
        out.append(f"{self.name}_count{self._label_text(key)} {n}")
        return out


def _declared(kind, name, help, labels, series_max, buckets):
    """The metric ``name`` of this process's registry, declared as given (see __reduce__)."""
    if name == REGISTRY.dropped.name:
        return REGISTRY.dropped
    if kind == "histogram":
        return REGISTRY.histogram(name, help, labels, series_max, buckets=buckets)
    return {"counter": REGISTRY.counter, "gauge": REGISTRY.gauge}[kind](name, help, labels,
                                                                         series_max)


def _le(bound: str) -> str:
    return 'le="' + bound + '"'


class Registry:
    """The metrics of one process. Asking again for a metric of the same name and kind returns
    the one registered first (modules can declare theirs at import time)."""

    def __init__(self, metrics_max: int = METRICS_MAX):
        self.metrics_max = metrics_max
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}
        self.dropped = Counter(self, "fuxi_metrics_series_dropped_total",
                               "Samples sent to a metric's overflow series (SERIES_MAX).", (),
                               1)
        self._metrics[self.dropped.name] = self.dropped

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
            self._metrics[name] = m
            return m

    def counter(self, name, help, labels=(), series_max=SERIES_MAX) -> Counter:
        return self._get(Counter, name, help, tuple(labels), series_max)

    def gauge(self, name, help, labels=(), series_max=SERIES_MAX) -> Gauge:
        return self._get(Gauge, name, help, tuple(labels), series_max)

    def histogram(self, name, help, labels=(), series_max=SERIES_MAX,
                  buckets=DEFAULT_BUCKETS) -> Histogram:
        return self._get(Histogram, name, help, tuple(labels), series_max, buckets=buckets)

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format."""
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        return "\n".join(line for m in metrics for line in m.render()) + "\n"


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
