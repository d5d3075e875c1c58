"""Scale to zero on the two-node cluster (issue 20 part 1): an autoscaled service with
``min_replicas: 0`` goes to zero replicas after ``scale_to_zero_after_s`` without a call; then
concurrent calls -- Kuafu handles and curl at the HTTP front door, all of a never-idempotent
method -- wait at the proxies for the one replica a single wake starts, and each is counted
exactly once. Hostile: more calls than HELD_CALLS_MAX get a typed Unavailable before any
replica is up; a caller whose deadline is shorter than the wake gets TimedOut, not sent."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import subprocess
import time

import pytest

from tests.integration.servicehelpers import remove_service, service_status, wait_service

pytestmark = pytest.mark.ray

CLUSTER = "test"
NS = "fuxi-test"
NAME = "svc-zero"
IDLE_S = 2.0              # scale_to_zero_after_s
FOLLOW_TIMEOUT_S = 120.0  # generous: replicas start on a shared 2-core machine
CURL = shutil.which("curl") or "curl"


@pytest.fixture(scope="module")
def net(ray_cluster, tmp_path_factory):
    """A 1-replica Nuwa and a Kuafu proxy with an HTTP front door on every node."""
    from types import SimpleNamespace

    import ray

    from kuafu import deploy
    from nuwa.group import start_group

    g = start_group(1, str(tmp_path_factory.mktemp("zero-nuwa")),
                    namespace=f"nuwa-zero-{time.time_ns()}")
    try:
        nuwa = [list(a) for a in g.client_addresses()]
        infos = deploy.start(NS, nuwa, settings={deploy.HTTP_PORT_SETTING: 0})
        here = ray.get_runtime_context().get_node_id()
        yield SimpleNamespace(http={i["node"]: i["http"] for i in infos}[here])
    finally:
        try:
            deploy.stop(NS)
        finally:
            g.stop()


def _spec(ledger: str) -> dict:
    from fuxi.core.service_spec import service_spec_from_dict

    return service_spec_from_dict({
        "name": NAME, "class": "jobs.services.echo:Echo", "replicas": 1,
        "resources": {"cpu": 0}, "drain_grace_s": 2.0, "config": {"ledger": ledger},
        "health_check": {"period_s": 1.0, "timeout_s": 5.0, "failure_threshold": 3},
        "autoscaling": {"target_in_flight": 64, "min_replicas": 0, "max_replicas": 2,
                        "scale_up_delay_s": 30, "scale_down_delay_s": 30,
                        "scale_to_zero_after_s": IDLE_S}}).to_doc()


def _status(master) -> dict:
    return service_status(master, NAME)


def _until(master, pred, what: str) -> dict:
    return wait_service(master, NAME, pred, what, FOLLOW_TIMEOUT_S, poll_s=0.2)


def _asleep(st: dict) -> bool:
    return st["desired"] == 0 and not st["replicas"] and st["autoscaling"]["scaled_to_zero"]


def _ready(st: dict) -> bool:
    return st["ready"] >= 1


def _wakes(st: dict) -> int:
    return sum(1 for e in st["events"] if re.match(r"^\S+ autoscaled 0 -> 1 replicas: woken "
                                                   r"from zero", e))


def _ledger(path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _curl(url: str, body: str) -> tuple[int, str]:
    out = subprocess.run([CURL, "-s", "-S", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
                          "-H", "Content-Type: application/json", "--data", body,
                          "--max-time", "90", url], capture_output=True, text=True, timeout=120)
    text, _, status = out.stdout.rpartition("\n")
    return int(status or 0), text


def _kuafu_call(i: int):
    import kuafu

    with kuafu.connect(f"nuwa://{CLUSTER}/{NAME}") as c:
        return c.call("record", f"k{i}".encode(), timeout_s=90)


def test_scaled_to_zero_then_concurrent_cold_calls_each_run_exactly_once(client, net, tmp_path,
                                                                         capsys):
    import ray

    import kuafu
    from cli.service import _show

    master = client.master
    ledger = tmp_path / "ledger"
    ray.get(master.service_register.remote(_spec(str(ledger))), timeout=30)
    try:
        _until(master, _ready, "the first replica")
        with kuafu.connect(f"nuwa://{CLUSTER}/{NAME}") as c:
            assert c.call("record", b"warm", timeout_s=30) == b"recorded"
        st = _until(master, _asleep, "scaled to zero after the idle delay")
        assert any("autoscaled 1 -> 0 replicas: scaled to zero: no call for" in e
                   for e in st["events"]), st["events"][-5:]
        _show(st)
        assert "(scaled to zero)" in capsys.readouterr().out
        assert _wakes(st) == 0

        url = f"{net.http}/v1/services/{NAME}/record"
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            ks = [pool.submit(_kuafu_call, i) for i in range(8)]
            hs = [pool.submit(_curl, url, json.dumps(f"h{i}")) for i in range(4)]
            assert [f.result(120) for f in ks] == [b"recorded"] * 8
            for f in hs:
                status, body = f.result(120)
                assert status == 200 and body == "recorded", (status, body)  # bytes: raw
        want = ["warm"] + [f"k{i}" for i in range(8)] + [f"h{i}" for i in range(4)]
        assert sorted(_ledger(ledger)) == sorted(want)  # every call exactly once
        st = _status(master)
        assert _wakes(st) == 1, st["events"][-8:]      # one wake for all twelve
        assert st["desired"] == 1
    finally:
        _remove(master)


def test_a_flood_past_held_calls_max_and_a_short_deadline_get_typed_errors(client, net,
                                                                           tmp_path):
    import ray

    import kuafu
    from kuafu.core.coldhold import HELD_CALLS_MAX

    master = client.master
    ledger = tmp_path / "ledger"
    spec = _spec(str(ledger))
    spec["replicas"] = 0  # registered asleep
    ray.get(master.service_register.remote(spec), timeout=30)
    try:
        _until(master, _asleep, "registered at zero")
        time.sleep(0.5)  # the proxies have heard it sleeps (COLD_POLL_S)
        with kuafu.connect(f"nuwa://{CLUSTER}/{NAME}") as c:
            t0 = time.time()
            with pytest.raises(kuafu.TimedOut, match="held at the proxy.; not sent"):
                c.call("record", b"late", timeout_s=0.4)
            assert time.time() - t0 < 3
        _until(master, _ready, "woken by the held call")
        assert "late" not in _ledger(ledger)  # given up before a replica: never run
        _until(master, _asleep, "back to zero")
        time.sleep(0.5)

        n = HELD_CALLS_MAX + 100
        with kuafu.connect(f"nuwa://{CLUSTER}/{NAME}", requests_max=n + 10) as c:
            t0 = time.time()
            calls = [c.call_async("record", f"f{i}".encode(), timeout_s=90) for i in range(n)]
            done_at: dict[int, float] = {}
            deadline = time.time() + FOLLOW_TIMEOUT_S
            while len(done_at) < n and time.time() < deadline:
                for i, h in enumerate(calls):
                    if i not in done_at and h.done():
                        done_at[i] = time.time() - t0
                time.sleep(0.01)
            refused, ok = [], []
            for i, h in enumerate(calls):
                try:
                    assert h.result(5) == b"recorded"
                    ok.append(i)
                except kuafu.Unavailable as e:
                    assert "HELD_CALLS_MAX" in str(e) and not e.maybe_executed, e
                    refused.append(i)
        assert len(refused) == n - HELD_CALLS_MAX and len(ok) == HELD_CALLS_MAX
        # promptly: every refusal came back before the first held call was answered
        assert max(done_at[i] for i in refused) < min(done_at[i] for i in ok)
        got = [x for x in _ledger(ledger) if x.startswith("f")]
        assert sorted(got) == sorted(f"f{i}" for i in ok)  # each held call exactly once
    finally:
        _remove(master)


def _remove(master) -> None:
    remove_service(master, NAME)
