"""The operators' metrics without Ray: every metric the platform declares follows the
Prometheus naming conventions, status answers become bounded families, the scraper merges
components, labels them and skips (and counts) one that does not answer, and the web server
answers garbage with clean 4xx."""

from __future__ import annotations

import asyncio
import importlib
import re
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from base import metrics
from fuxi.shells import observe, scrape
from fuxi.shells.web import REQUEST_TARGET_BYTES_MAX, WebServer

# Every module that declares metrics (a new one belongs here: the walk below checks it).
DECLARING = ("base.logfile", "fuxi.shells.master", "fuxi.shells.mastermetrics",
             "fuxi.shells.admission", "fuxi.shells.scrape", "nuwa.io.server", "nuwa.replica",
             "pangu.eventlog", "pangu.observe", "kuafu.io.proxy", "zhongkui.audit")
PREFIXES = ("fuxi_", "nuwa_", "pangu_", "kuafu_", "zhongkui_")
UNIT_WORDS = ("seconds", "bytes")
NOT_BASE_UNITS = re.compile(r"_(ms|millis|milliseconds|us|micros|minutes|hours|kb|mb|gb|kib|mib|"
                            r"gib|percent)(_|$)")


def naming_problems(name: str, kind: str) -> list[str]:
    """What is wrong with a metric's name by Prometheus conventions (empty: nothing)."""
    out = []
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        out.append("not snake_case")
    if not name.startswith(PREFIXES):
        out.append(f"no component prefix {PREFIXES}")
    if kind == "counter" and not name.endswith("_total"):
        out.append("a counter not ending in _total")
    if kind != "counter" and name.endswith("_total"):
        out.append(f"a {kind} ending in _total")
    if NOT_BASE_UNITS.search(name):
        out.append("not in base units (seconds, bytes)")
    stem = name[:-len("_total")] if name.endswith("_total") else name
    for unit in UNIT_WORDS:
        if f"_{unit}_" in stem + "_" and not stem.endswith(unit) and kind != "counter":
            out.append(f"unit {unit} not last")
    return out


def test_the_naming_check_catches_bad_names():  # negative control for the walk below
    assert naming_problems("fuxi_latency_ms", "gauge")
    assert naming_problems("fuxi_requests", "counter")
    assert naming_problems("fuxi_free_total", "gauge")
    assert naming_problems("Fuxi_Jobs", "gauge")
    assert naming_problems("jobs_total", "counter")
    assert naming_problems("fuxi_bytes_used", "gauge")
    assert not naming_problems("fuxi_jobs_ended_total", "counter")
    assert not naming_problems("pangu_rereplication_bytes_total", "counter")


def sample_answers() -> dict:
    return {
        "jobmaster": {"job_id": "j1", "workers": 2, "workers_started": 3,
                      "tasks": {"map": {"instances": 4, "running": 1, "succeeded": 3,
                                        "failed": 0, "attempts": 5, "retries": 1,
                                        "backups_launched": 1, "backups_won": 1}}},
        "kuafu": {"counters": {"requests": 10, "errors": 1, "held_bytes_max": 99},
                  "connections": {"peer": 2}, "routes": 1, "inbound": 0, "queued": 0,
                  "preauth_connections": 0, "held_bytes": 5, "uptime_s": 3.5,
                  "local_services": {"echo": 2}, "remote_services": {"echo": 1}},
        "service": {"stats": {"served": 7, "failed": 1, "running": 0, "queued": 0,
                              "p50_ms": 1.5, "p99_ms": 9.0},
                    "info": {"rid": "echo-3", "version": "2"}},
        "pangu_chunkserver": {"capacity_bytes": 100, "used_bytes": 10, "chunks": 2,
                              "scrubbed": 1},
        "agent": {"workers": 1, "seq": 40, "exits_dropped": 0},
    }


def test_every_declared_metric_follows_the_naming_conventions():
    for mod in DECLARING:
        importlib.import_module(mod)
    names = metrics.REGISTRY.names()
    assert len(names) > 40, names  # the walk sees the platform's metrics, not an empty registry
    bad = {n: naming_problems(n, k) for n, k in names.items() if naming_problems(n, k)}
    assert not bad, bad
    for component, answer in sample_answers().items():
        for fam in observe.families(component, answer):
            kind = fam.type
            name = fam.name + "_total" if kind == "counter" else fam.name
            assert not naming_problems(name, kind), (component, name)
    for fam in observe.restarts_family([({"component": "c", "node": "n", "instance": "i"}, 2)]):
        assert not naming_problems(fam.name + "_total", fam.type)


def test_status_answers_become_families_and_garbage_is_left_out():
    fams = {f.name: f for f in observe.families("jobmaster", sample_answers()["jobmaster"])}
    runs = {tuple(sorted(s.labels.items())): s.value for s in fams["fuxi_jobmaster_instances"].samples}
    assert runs[(("job_id", "j1"), ("state", "succeeded"), ("task", "map"))] == 3
    fams = {f.name: f for f in observe.families("service", sample_answers()["service"])}
    lat = {s.labels["quantile"]: s.value for s in fams["fuxi_service_latency_seconds"].samples}
    assert lat == {"0.5": 0.0015, "0.99": 0.009}
    assert fams["fuxi_service_requests"].samples[0].labels["service"] == "echo"
    # fields of the wrong type, NaN, booleans and nested garbage are skipped, never raised on
    junk = {"job_id": ["x"], "workers": float("nan"), "workers_started": True,
            "tasks": {"t": "nope", "u": {"running": "many", "attempts": 1e400}}}
    assert all(not f.samples for f in observe.families("jobmaster", junk))
    with pytest.raises(ValueError, match="expected a dict"):
        observe.families("agent", ["not", "a", "dict"])


def test_a_gauge_snapshot_keeps_its_series_bounded():
    r = metrics.Registry()
    g = r.gauge("fuxi_test_nodes", "x", labels=("node",), series_max=5)
    g.replace({(f"n{i}",): 1 for i in range(1000)})
    got = [s for f in text_string_to_metric_families(r.render()) for s in f.samples
           if s.name == "fuxi_test_nodes"]
    assert len(got) == 6  # five kept and the overflow series, which sums the rest
    assert sum(s.value for s in got) == 1000
    assert r.dropped.value() == 995
    g.replace({("a",): 1})
    assert g.value(node="a") == 1 and g.value(node="n0") == 0  # a node that left is gone


class _Method:
    def __init__(self, answer, delay_s=0.0):
        self.answer, self.delay_s = answer, delay_s

    def remote(self):
        async def run():
            await asyncio.sleep(self.delay_s)
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer
        return run()


class _Handle:
    def __init__(self, **methods):
        for k, v in methods.items():
            setattr(self, k, v)


def _target(name, handle, node="abcdef0123456789", restarts=0):
    component, method = scrape.component_of(name)
    return {"name": name, "component": component, "method": method, "handle": handle,
            "node": node, "restarts": restarts}


def test_the_scraper_merges_labels_and_skips_what_does_not_answer():
    r = metrics.Registry()
    r.counter("nuwa_ops_applied_total", "x", labels=("replica",)).inc(3, replica="1")
    answers = sample_answers()
    targets = [
        _target("nuwa-1", _Handle(metrics=_Method(r.render()))),
        _target("jobmaster-j1", _Handle(status=_Method(answers["jobmaster"]))),
        _target("fuxi-agent-n1", _Handle(info=_Method(answers["agent"])), restarts=2),
        _target("pangu-cs-n1-0", _Handle(info=_Method({}, delay_s=30))),  # stuck
        _target("kuafu-proxy-n1", _Handle(stats=_Method(RuntimeError("gone")))),
        _target("pangu-master-1", _Handle(metrics=_Method("this is { not prometheus"))),
    ]
    s = scrape.Scraper("ns", call_timeout_s=0.5)
    s.node = ""

    async def fixed():
        return targets
    s.targets = fixed
    before = {c: scrape.SKIPPED.value(target=c) for c in ("pangu_chunkserver", "kuafu", "pangu")}
    text = asyncio.run(asyncio.wait_for(s.scrape(), 10))  # the stuck one does not hold it
    assert sorted(s.last_skipped) == ["kuafu-proxy-n1", "pangu-cs-n1-0", "pangu-master-1"]
    for c, n in before.items():
        assert scrape.SKIPPED.value(target=c) == n + 1
    samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
               for f in text_string_to_metric_families(text) for x in f.samples}
    assert samples[("nuwa_ops_applied_total", (("component", "nuwa"), ("instance", "nuwa-1"),
                                               ("node", "abcdef012345"), ("replica", "1")))] == 3
    assert samples[("fuxi_actor_restarts_total", (("component", "agent"),
                                                  ("instance", "fuxi-agent-n1"),
                                                  ("node", "abcdef012345")))] == 2
    assert any(k[0] == "fuxi_jobmaster_instances" and ("job_id", "j1") in k[1] for k in samples)
    # only some components
    text = asyncio.run(s.scrape({"agent"}))
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "fuxi_agent_workers" in names and "fuxi_jobmaster_instances" not in names


def test_component_names_map_to_targets():
    assert scrape.component_of("FuxiMaster") == ("fuxi", "metrics")
    assert scrape.component_of("FuxiMasterX") is None
    assert scrape.component_of("FuxiMaster-2") == ("fuxi", "metrics")  # a standby candidate
    assert scrape.component_of("FuxiMaster-x") is None
    assert scrape.component_of("jobmaster-abc") == ("jobmaster", "status")
    assert scrape.component_of("someone-else") is None


@pytest.fixture
def server():
    from aiohttp import web

    async def ok(request):
        return web.Response(text="ok\n")

    async def boom(request):
        raise RuntimeError("secret detail")

    async def echo(request):
        return web.Response(body=await request.read())

    srv = WebServer()
    srv.route("GET", "/ok", ok)
    srv.route("GET", "/boom", boom)
    srv.route("POST", "/echo", echo)
    srv.start_in_thread("127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.stop()


def raw(srv, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may answer and close before reading all of a huge request
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


GARBAGE = [
    (b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200),
    (b"DELETE /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    (b"BREW /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400),  # no such method
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    (b"GET /" + b"a" * (REQUEST_TARGET_BYTES_MAX + 10) + b" HTTP/1.1\r\nHost: x\r\n"
     b"Connection: close\r\n\r\n", 414),
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"\x00\xff\x13garbage\r\n\r\n", 400),
    (b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n"
     + b"z" * 200_000, 413),
    (b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 500),
]


@pytest.mark.parametrize("request_bytes, expected", GARBAGE,
                         ids=[f"{r[:12]!r}..{len(r)}B->{e}" for r, e in GARBAGE])
def test_the_web_server_answers_garbage_with_clean_errors(server, request_bytes, expected):
    reply = raw(server, request_bytes)
    assert status_of(reply) == expected, reply[:300]
    assert b"Traceback" not in reply and b"secret detail" not in reply
    assert status_of(raw(server, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_a_taken_port_is_a_clear_error(server):
    other = WebServer()
    with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{server.port}"):
        other.start_in_thread("127.0.0.1", server.port)
    with pytest.raises(ValueError, match="expected an int"):
        WebServer().start_in_thread("127.0.0.1", 70000)


@pytest.mark.parametrize("port, env, match", [
    (70000, None, "--web-port 70000: expected a port number"),
    (-1, None, "--web-port -1: expected a port number"),
    (True, None, "--web-port True: expected a port number"),
    (None, "nine", "FUXI_WEB_PORT='nine': expected a port number"),
    (None, "-3", "FUXI_WEB_PORT='-3': expected a port number"),
])
def test_a_bad_metrics_port_is_refused_before_anything_starts(port, env, match, monkeypatch,
                                                              tmp_path):
    from fuxi import runtime
    from fuxi.errors import BadInput

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    if env is None:
        monkeypatch.delenv("FUXI_WEB_PORT", raising=False)
    else:
        monkeypatch.setenv("FUXI_WEB_PORT", env)
    with pytest.raises(BadInput, match=re.escape(match)):
        runtime.up("nope", web_port=port)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_file_sd_document_names_every_component():
    from fuxi.shells.webactor import file_sd

    doc = file_sd("c1", "0.0.0.0", 9469)
    assert {t["labels"]["__param_component"] for t in doc} == set(scrape.COMPONENTS)
    assert all(t["targets"] == ["127.0.0.1:9469"] and t["labels"]["cluster"] == "c1" for t in doc)
