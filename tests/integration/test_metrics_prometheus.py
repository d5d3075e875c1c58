"""A real Prometheus server scrapes a `fuxi up` cluster's /metrics (issue 17 part 1).

The cluster is started by the `fuxi` command (own FUXI_HOME, 1 Nuwa replica, an ephemeral
metrics port); Prometheus (Debian's `prometheus`, installed by .ci/run) runs as a subprocess
on 127.0.0.1 with a temp config and storage and a 1 s scrape interval, scraping the
aggregate endpoint and the per-component targets of our file_sd file. The test asks
Prometheus's HTTP API: jobs succeeded goes up after a job, Nuwa and Pangu series are there,
every file_sd target is up, a killed FuxiMaster's restart is counted. It also sends garbage to the endpoint and pauses the Nuwa replica
(SIGSTOP): the scrape still answers in bounded time and counts the replica skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from base.cluster import session_pids
from tests.integration.clihelpers import fuxi

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
PROMETHEUS = shutil.which("prometheus")
WAIT_S = 40.0
HTTP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def query(prom: str, expr: str) -> list:
    code, body = http(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert code == 200, body[:500]
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def value(prom: str, expr: str) -> float | None:
    res = query(prom, expr)
    return float(res[0]["value"][1]) if res else None


def wait_for(what: str, fn, timeout_s: float = WAIT_S):
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout_s:g} s (last: {last!r})")


@pytest.mark.skipif(PROMETHEUS is None, reason="the `prometheus` binary is not installed "
                    "(Debian package `prometheus`; .ci/run installs it)")
def test_a_real_prometheus_scrapes_the_head(tmp_path):
    home = tmp_path / "home"
    fuxi(home, "up", "--cluster", "prom", "--nuwa-replicas", "1", "--metrics-port", "0")
    prom_proc = None
    try:
        info = json.loads(fuxi(home, "status", "--cluster", "prom", "--json").stdout)
        url = info["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        assert info["web"] == url[: -len("/metrics")]  # the console, on the same server
        hostport = url.split("/")[2]
        sd = home / "prom" / "prometheus_targets.json"
        targets = json.loads(sd.read_text())
        assert {t["labels"]["__param_component"] for t in targets} >= {"fuxi", "nuwa", "pangu"}
        assert all(t["targets"] == [hostport] for t in targets)

        # the exposition parses with prometheus_client
        code, body = http(url)
        assert code == 200
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        assert {"nuwa_commit_index", "pangu_capacity_bytes", "fuxi_node_cpus"} <= names, names

        # garbage gets clean 4xx, and the endpoint keeps serving
        assert http(url, "POST")[0] == 405
        assert http(url, "DELETE")[0] == 405
        assert http(url.replace("/metrics", "/" + "x" * 5000))[0] == 414
        assert http(url.replace("/metrics", "/nowhere"))[0] == 404
        assert http(url + "?component=../../etc")[0] == 400
        assert http(url)[0] == 200

        port = free_port()
        prom = f"http://127.0.0.1:{port}"
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [
                # honor_labels: our `instance` (the actor) and `component` are kept as sent
                {"job_name": "fuxi", "honor_labels": True,
                 "static_configs": [{"targets": [hostport]}]},
                {"job_name": "fuxi-components", "honor_labels": True,
                 "file_sd_configs": [{"files": [str(sd)], "refresh_interval": "5s"}]},
            ]}))
        log = open(tmp_path / "prometheus.log", "wb")
        prom_proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for("Prometheus answering", lambda: _ready(prom))
        wait_for("the aggregate target up", lambda: value(prom, 'up{job="fuxi"}') == 1)
        wait_for("Nuwa's commit index scraped",
                 lambda: query(prom, 'nuwa_commit_index{component="nuwa",instance="nuwa-1"}'))
        wait_for("Pangu's capacity scraped",
                 lambda: (value(prom, 'sum(pangu_capacity_bytes{component="pangu"})') or 0) > 0)
        assert query(prom, "fuxi_no_such_metric_total") == []  # negative control: absent is []

        succeeded = 'sum(fuxi_jobs_ended_total{job="fuxi",state="succeeded"}) or vector(0)'
        before = value(prom, succeeded)
        out = tmp_path / "wc"
        fuxi(home, "submit", "jobs/wordcount.yaml", "--cluster", "prom", "--set", f"output={out}")
        wait_for("jobs succeeded going up", lambda: value(prom, succeeded) > before)
        wait_for("instances succeeded counted",
                 lambda: (value(prom, 'sum(fuxi_instances_succeeded_total{job="fuxi"})') or 0) >= 6)

        # every per-component target of the file_sd file is scraped and up
        def components_up():
            res = query(prom, 'up{job="fuxi-components"}')
            return len(res) == len(targets) and all(r["value"][1] == "1" for r in res)
        wait_for("every file_sd target up", components_up)

        # a service's calls are counted per replica; a killed replica is counted and replaced
        fuxi(home, "service", "register", "jobs/services/echo.yaml", "--set", "replicas=1",
             "--cluster", "prom")
        wait_for("the echo replica ready", lambda: json.loads(fuxi(
            home, "service", "status", "echo", "--json", "--cluster", "prom").stdout)["ready"] >= 1)
        for _ in range(5):
            assert fuxi(home, "call", "nuwa://prom/echo", "version").stdout == "v1\n"
        served = 'sum(fuxi_service_requests_total{job="fuxi",service="echo"}) or vector(0)'
        wait_for("echo's calls counted", lambda: value(prom, served) >= 5)
        wait_for("echo's ready replica in fuxi_service_replicas", lambda: value(
            prom, 'fuxi_service_replicas{job="fuxi",service="echo",state="ready"}') == 1)
        deaths = 'sum(fuxi_service_replica_deaths_total{job="fuxi",service="echo"}) or vector(0)'
        assert value(prom, deaths) == 0
        rec = json.loads((home / "prom" / "cluster.json").read_text())
        replica_pids = [p for p in session_pids(rec["head_pid"])
                        if _cmdline(p).startswith("ray::ServiceReplica")]
        assert len(replica_pids) == 1, replica_pids
        os.kill(replica_pids[0], signal.SIGKILL)
        wait_for("the killed replica counted", lambda: value(prom, deaths) == 1)
        wait_for("a replacement ready", lambda: value(
            prom, 'fuxi_service_replicas{job="fuxi",service="echo",state="ready"}') == 1)

        # the leading FuxiMaster killed: a candidate leads (the standby, or the killed one
        # restarted by Ray) and the restart is counted
        restarts = 'sum(fuxi_actor_restarts_total{job="fuxi",instance=~"FuxiMaster.*"}) or vector(0)'
        assert value(prom, restarts) == 0
        fuxi(home, "debug", "kill", "master", "--yes", "--cluster", "prom")
        wait_for("the restart in fuxi_actor_restarts_total", lambda: value(prom, restarts) == 1)
        wait_for("the serving FuxiMaster scraped again",
                 lambda: query(prom, 'fuxi_node_cpus{job="fuxi",instance=~"FuxiMaster.*"}'))

        # a component that does not answer is skipped and counted; the scrape still answers
        rec = json.loads((home / "prom" / "cluster.json").read_text())
        nuwa_pids = [p for p in session_pids(rec["head_pid"]) if _cmdline(p).startswith("ray::NuwaReplica")]
        assert len(nuwa_pids) == 1, nuwa_pids
        skipped = 'fuxi_scrape_skipped_total{target="nuwa"}'
        os.kill(nuwa_pids[0], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            code, body = http(url)
            took = time.monotonic() - t0
        finally:
            os.kill(nuwa_pids[0], signal.SIGCONT)
        assert code == 200 and took < 8.0, took
        text = body.decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert not fams["nuwa_commit_index"].samples, took  # left out while it did not answer
        assert any(s.labels.get("target") == "nuwa" and s.value >= 1
                   for s in fams["fuxi_scrape_skipped"].samples), skipped
        wait_for("Nuwa back after SIGCONT",
                 lambda: "nuwa_commit_index{" in http(url)[1].decode())
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            try:
                prom_proc.wait(20)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
        fuxi(home, "down", "--cluster", "prom", check=False)
    assert not sd.exists(), "fuxi down leaves the file_sd file behind"


def _ready(prom: str) -> bool:
    try:
        return http(f"{prom}/-/ready")[0] == 200
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
