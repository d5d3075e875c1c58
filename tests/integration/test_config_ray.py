"""`fuxi up --config` in subprocesses, as an operator would (issue 18 part 4): a fixed port
that is taken is refused naming the component before anything starts; fixed ports for the Ray
head, the raylet, FuxiWeb, the Nuwa replica and the Kuafu proxy are exactly the ports
listening; `fuxi config show` gives each value's source (file, env, flag, default) read from
Nuwa, also while FuxiMaster is down; `fuxi config set` of an online setting is picked up by
the running FuxiMaster without a restart, of a restart-only one refused with the reason."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from base.cluster import port_open
from tests.integration.clihelpers import CMD_TIMEOUT_S, REPO

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
PICKUP_WAIT_S = 60.0  # the alert loop reads the stored configuration every round (5 s default)


def fuxi(home, *args, check=True, env=None):
    full = dict(os.environ, FUXI_HOME=str(home), **(env or {}))
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "FUXI_CLUSTER"):
        full.pop(k, None)
    full.pop("FUXI_WEB_PORT", None)  # the file's web.port is what this test checks
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=full,
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check:
        assert res.returncode == 0, f"fuxi {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening_ports() -> set[int]:
    """Ports in LISTEN state on this machine (/proc/net/tcp and tcp6)."""
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        out.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return out


def test_fuxi_up_with_a_config_file(tmp_path):
    home = tmp_path / "home"
    gcs, raylet, web, nuwa, kuafu = free_ports(5)
    cfg = tmp_path / "cluster.yaml"
    data = tmp_path / "data"
    cfg.write_text(f"""
cluster: cfgtest
data_dir: {data}
ray: {{port: {gcs}, node_manager_port: {raylet}}}
web: {{port: {web}}}
nuwa: {{replicas: 1, ports: [{nuwa}]}}
kuafu: {{port: {kuafu}}}
pangu: {{replication: 2}}
""")
    env = {"FUXI_ALERTS__EVAL_S": "4"}

    # A taken fixed port: refused before anything starts, naming the component and the port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", kuafu))
        s.listen()
        res = fuxi(home, "up", "--config", str(cfg), "--num-cpus", "2", check=False, env=env)
        assert res.returncode == 2, res.stderr
        assert f"kuafu.port={kuafu} (the Kuafu proxy): port {kuafu} on 127.0.0.1 is taken" \
            in res.stderr
        assert not (home / "cfgtest" / "cluster.json").exists()
    # Garbage: exit 2, one line per problem, nothing started.
    bad = tmp_path / "bad.yaml"
    bad.write_text("nuwa: {replicas: 2}\nray: {prot: 1}\n")
    res = fuxi(home, "up", "--config", str(bad), check=False)
    assert res.returncode == 2
    assert "nuwa.replicas: got 2" in res.stderr and "did you mean 'ray.port'" in res.stderr

    fuxi(home, "up", "--config", str(cfg), "--num-cpus", "2", env=env)
    try:
        rec = json.loads((home / "cfgtest" / "cluster.json").read_text())
        assert rec["address"] == f"127.0.0.1:{gcs}"
        assert rec["nuwa"] == [["127.0.0.1", nuwa]]
        assert rec["web"].startswith(f"http://127.0.0.1:{web}")
        listening = listening_ports()
        for port in (gcs, raylet, web, nuwa, kuafu):
            assert port in listening and port_open(f"127.0.0.1:{port}"), (port, listening)

        # The data directory holds Nuwa's replica and Pangu's chunks; a file written without
        # asking for a replication factor gets the configured one.
        assert (data / "nuwa" / "replica-1").is_dir() and (data / "pangu").is_dir()
        assert not (home / "cfgtest" / "nuwa").exists()
        local = tmp_path / "hello.txt"
        local.write_text("hello\n")
        fuxi(home, "pangu", "put", str(local), "/hello.txt", "-c", "cfgtest")
        st = json.loads(fuxi(home, "pangu", "stat", "/hello.txt", "--json",
                             "-c", "cfgtest").stdout)
        assert st["replication"] == 2, st

        res = fuxi(home, "config", "show", "--json", "-c", "cfgtest")
        shown = json.loads(res.stdout)
        assert shown["read_from"] == "nuwa:/fuxi/config/cluster"
        s = shown["settings"]
        assert (s["ray.port"]["value"], s["ray.port"]["source"]) == (gcs, "file")
        assert (s["alerts.eval_s"]["value"], s["alerts.eval_s"]["source"]) == (4.0, "env")
        assert (s["ray.num_cpus"]["value"], s["ray.num_cpus"]["source"]) == (2, "flag")
        assert s["pangu.replication"] == {"value": 2, "source": "file", "online": False}
        assert s["events.pull_s"]["source"] == "default"

        # Online: picked up by the running FuxiMaster's alert loop, no restart.
        status = json.loads(fuxi(home, "status", "--json", "-c", "cfgtest").stdout)
        assert status["alerts"]["eval_s"] == 4.0  # the env value, read at the first round
        res = fuxi(home, "config", "set", "alerts.eval_s", "1.5", "-c", "cfgtest")
        assert "alerts.eval_s = 1.5" in res.stdout
        deadline = time.time() + PICKUP_WAIT_S
        while True:
            status = json.loads(fuxi(home, "status", "--json", "-c", "cfgtest").stdout)
            if status["alerts"]["eval_s"] == 1.5:
                break
            assert time.time() < deadline, status["alerts"]
            time.sleep(1.0)
        assert status["alerts"]["live_config"]["alerts.eval_s"] == 1.5
        # A scheduler setting: the cluster blacklist's threshold, applied by the same loop.
        fuxi(home, "config", "set", "blacklist.cluster_failure_jobs_min", "5", "-c", "cfgtest")
        while True:
            live = json.loads(fuxi(home, "status", "--json", "-c", "cfgtest").stdout)["alerts"]
            if live["live_config"].get("blacklist.cluster_failure_jobs_min") == 5:
                break
            assert time.time() < deadline + PICKUP_WAIT_S, live
            time.sleep(1.0)
        s = json.loads(fuxi(home, "config", "show", "--json", "-c", "cfgtest").stdout)["settings"]
        assert s["alerts.eval_s"]["source"] == "set"

        # Restart-only, unknown and out-of-range: refused, nothing changed.
        res = fuxi(home, "config", "set", "nuwa.replicas", "5", "-c", "cfgtest", check=False)
        assert res.returncode == 2 and "needs a restart" in res.stderr
        res = fuxi(home, "config", "set", "alerts.eval_s", "0", "-c", "cfgtest", check=False)
        assert res.returncode == 2 and "alerts.eval_s: got 0" in res.stderr
        res = fuxi(home, "config", "set", "alerts.evals", "2", "-c", "cfgtest", check=False)
        assert res.returncode == 2 and "did you mean 'alerts.eval_s'" in res.stderr
        s = json.loads(fuxi(home, "config", "show", "--json", "-c", "cfgtest").stdout)["settings"]
        assert s["alerts.eval_s"]["value"] == 1.5 and s["nuwa.replicas"]["value"] == 1

        # The leading FuxiMaster killed: the configuration is read from Nuwa all the same
        # (`config show` never asks FuxiMaster).
        fuxi(home, "debug", "kill", "master", "--no-restart", "--yes", "-c", "cfgtest")
        shown = json.loads(fuxi(home, "config", "show", "--json", "-c", "cfgtest").stdout)
        assert shown["read_from"] == "nuwa:/fuxi/config/cluster"
        assert shown["settings"]["kuafu.port"]["value"] == kuafu
    finally:
        fuxi(home, "down", "-c", "cfgtest", check=False)
