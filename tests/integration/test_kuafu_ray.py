"""Kuafu on a real (simulated two-node) Ray cluster: proxies as actors, Nuwa resolution,
servers in actors, clients in the driver, in actors and outside Ray."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.ray

CLUSTER = "test"            # the Ray namespace of the test session is fuxi-test
NS = "fuxi-test"


def _pin(node: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node, soft=False)


@pytest.fixture(scope="module")
def kf(kuafu_net):
    return kuafu_net


def _server(node: str, service: str, tag: str, **kw):
    import ray

    from tests.integration.kuafu_services import ServerActor

    a = ServerActor.options(scheduling_strategy=_pin(node)).remote(CLUSTER, service, tag, **kw)
    info = ray.get(a.info.remote(), timeout=60)
    return a, info


def _stop(actor, grace_s: float = 5.0) -> None:
    import ray

    try:
        ray.get(actor.stop.remote(grace_s), timeout=grace_s + 30)
    finally:
        ray.kill(actor)


def _wait_resolvable(client, service: str, n: int, timeout_s: float = 20.0) -> list:
    """Wait until the proxy behind ``client`` knows ``n`` endpoints of ``service``."""
    deadline = time.time() + timeout_s
    while True:
        eps = json.loads(client.call("resolve", {"service": service}, service="kuafu"))
        if len(eps) == n:
            return eps
        if time.time() > deadline:
            raise AssertionError(f"{service}: {len(eps)} endpoints resolvable, expected {n}")
        time.sleep(0.1)


def test_local_call_over_unix_socket(kf):
    import ray

    import kuafu
    from tests.integration.kuafu_services import CallerActor

    srv, info = _server(kf.other, "local-echo", "a")
    try:
        caller = CallerActor.options(scheduling_strategy=_pin(kf.other)).remote()
        out, address = ray.get(caller.call_and_address.remote(
            f"nuwa://{CLUSTER}/local-echo", "echo", b"hello"), timeout=60)
        assert out == b"hello"
        assert address.startswith("unix://")  # the caller reached its node's proxy locally
        with kuafu.connect(f"nuwa://{CLUSTER}/local-echo") as c:
            for msg in (b"", b"\x00\xff" * 10, "text é", {"k": "v", "": ""}):
                assert c.call("echo", msg) == msg
    finally:
        _stop(srv)


def test_remote_call_across_proxies(kf):
    import kuafu

    srv, info = _server(kf.other, "far-echo", "far")
    try:
        with kuafu.connect(f"nuwa://{CLUSTER}/far-echo") as c:
            _wait_resolvable(c, "far-echo", 1)
            assert c.stats()["address"].startswith("unix://")
            assert c.call("who", b"") == "far"
            hs = [c.call_async("echo", f"m{i}") for i in range(200)]
            assert [h.result(30) for h in hs] == [f"m{i}" for i in range(200)]
            stats = json.loads(c.call("stats", b"", service="kuafu"))
            assert stats["connections"]["peer"] >= 1  # pooled connection to the other proxy
    finally:
        _stop(srv)


def test_outside_client_over_tcp(kf):
    """A process without Ray: by the proxy's TCP address, and by nuwa:// through Nuwa."""
    srv, info = _server(kf.other, "outside-echo", "out")
    try:
        tcp = kf.infos[kf.here]["tcp"]
        code = (
            "import sys, json, kuafu\n"
            "c = kuafu.connect(sys.argv[1] + '/outside-echo')\n"
            "assert c.call('echo', b'x' * 1000) == b'x' * 1000\n"
            "n = kuafu.connect('nuwa://test/outside-echo', nuwa=json.loads(sys.argv[2]))\n"
            "print(n.call('who', ''))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        out = subprocess.run([sys.executable, "-c", code, tcp, json.dumps(kf.nuwa)],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "out"
    finally:
        _stop(srv)


def test_large_arrow_table_round_trip(kf):
    import pyarrow as pa

    import kuafu

    srv, info = _server(kf.other, "arrow-echo", "t")
    try:
        n = 1_500_000
        table = pa.table({"i": pa.array(range(n), pa.int64()),
                          "s": pa.array([f"w{i % 1000}" for i in range(n)])})
        assert table.nbytes > 3 * 4 * 1024 * 1024  # travels in several pieces
        with kuafu.connect(f"nuwa://{CLUSTER}/arrow-echo") as c:
            _wait_resolvable(c, "arrow-echo", 1)
            back = c.call("echo", table, timeout_s=60)
            assert back.equals(table)
            big = os.urandom(9 * 1024 * 1024 + 17)
            assert c.call("echo", big, timeout_s=60) == big
    finally:
        _stop(srv)


def test_endpoints_come_and_go_without_failed_calls(kf):
    """Calls go on while endpoints join and leave gracefully: none fails, and the replies
    come from every endpoint that was up."""
    import kuafu

    a, _ = _server(kf.here, "churn", "a")
    b, _ = _server(kf.other, "churn", "b")
    stop = threading.Event()
    seen: dict[str, int] = {}
    failures: list = []

    def load():
        with kuafu.connect(f"nuwa://{CLUSTER}/churn") as c:
            while not stop.is_set():
                try:
                    tag = c.call("who", b"", timeout_s=10)
                    seen[tag] = seen.get(tag, 0) + 1
                except Exception as e:  # noqa: BLE001 - counted and reported
                    failures.append(repr(e))

    try:
        with kuafu.connect(f"nuwa://{CLUSTER}/churn") as c:
            _wait_resolvable(c, "churn", 2)
            threads = [threading.Thread(target=load) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            c2, _ = _server(kf.other, "churn", "c")
            time.sleep(1.0)
            _stop(a, grace_s=5)  # unregister, drain, exit
            time.sleep(1.0)
            d, _ = _server(kf.here, "churn", "d")
            time.sleep(1.0)
            _stop(b, grace_s=5)
            time.sleep(1.5)
            stop.set()
            for t in threads:
                t.join(30)
            _stop(c2)
            _stop(d)
    finally:
        stop.set()
    assert failures == [], failures[:5]
    assert set(seen) == {"a", "b", "c", "d"}, seen


def test_server_killed_mid_call(kf):
    """A server process dies with calls in flight: a typed error at once (not at the
    deadline), an idempotent call moves to another endpoint, and the proxy stays healthy."""
    import ray

    import kuafu

    a, ainfo = _server(kf.other, "fragile", "a")
    b, binfo = _server(kf.here, "fragile", "b")
    try:
        with kuafu.connect(f"nuwa://{CLUSTER}/fragile") as c:
            _wait_resolvable(c, "fragile", 2)
            # Find calls that land on a: send several slow calls, then kill a.
            plain = [c.call_async("sleep", "3", timeout_s=20) for _ in range(6)]
            idem = [c.call_async("who_idem", "3", timeout_s=20) for _ in range(6)]
            time.sleep(0.5)
            os.kill(ainfo["pid"], 9)
            t0 = time.time()
            outcomes = []
            for h in plain:
                try:
                    outcomes.append(h.result(30))
                except kuafu.Unavailable as e:
                    assert e.maybe_executed, e
                    outcomes.append("unavailable")
            assert "unavailable" in outcomes and "b" in outcomes, outcomes
            assert time.time() - t0 < 10  # failed fast, not at the 20 s deadline
            assert [h.result(30) for h in idem] == ["b"] * 6  # retried on b
            assert c.call("ping", b"", service="kuafu") == "pong"
            _wait_resolvable(c, "fragile", 1)
            assert c.call("who", b"") == "b"
    finally:
        ray.kill(a)
        _stop(b)


def test_slow_server_fast_sender_memory_bounded(kf):
    """A sender far faster than its server: the proxy's held bytes and queues stay within
    their bounds, the excess is refused as Overloaded (never lost silently), and the proxy
    keeps serving."""
    import kuafu
    from kuafu.io.forward import SERVICE_QUEUE_MAX, SOURCE_QUEUED_BYTES_MAX

    srv, _ = _server(kf.other, "slowpoke", "s", max_concurrency=2, queue_max=8)
    try:
        payload = b"p" * (256 * 1024)
        with kuafu.connect(f"nuwa://{CLUSTER}/slowpoke", requests_max=4096,
                           bytes_max=4 << 30) as c:
            _wait_resolvable(c, "slowpoke", 1)
            hs = [c.call_async("slow", payload, timeout_s=60, wait=False) for _ in range(1500)]
            ok = over = 0
            for h in hs:
                try:
                    assert h.result(90) == b"ok"
                    ok += 1
                except kuafu.Overloaded:
                    over += 1
            assert ok + over == 1500 and ok > 0 and over > 0
            for info in kf.infos.values():
                with kuafu.connect(info["tcp"] + "/kuafu") as sc:
                    st = json.loads(sc.call("stats", b""))
                held_max = st["counters"]["held_bytes_max"]
                assert held_max <= SOURCE_QUEUED_BYTES_MAX + 2 * len(payload) + (8 << 20), st
                assert st["queued"] <= SERVICE_QUEUE_MAX
            assert c.call("echo", b"still here", timeout_s=10) == b"still here"
    finally:
        _stop(srv)


def test_deadline_propagates_into_nested_calls(kf):
    import kuafu

    srv, _ = _server(kf.other, "nest", "n")
    try:
        with kuafu.connect(f"nuwa://{CLUSTER}/nest") as c:
            _wait_resolvable(c, "nest", 1)
            left = float(c.call("remaining", b"", timeout_s=2.0))
            assert 0 < left <= 2.0
            # A method that calls another with a long sleep: bounded by the outer deadline.
            t0 = time.time()
            with pytest.raises(kuafu.KuafuError) as ei:
                c.call("nested", {"uri": f"nuwa://{CLUSTER}/nest", "arg": "30"}, timeout_s=1.5)
            assert isinstance(ei.value, (kuafu.TimedOut, kuafu.RemoteError)), ei.value
            assert time.time() - t0 < 10
    finally:
        _stop(srv)


def test_bad_input_to_a_live_proxy(kf):
    """Garbage, a huge claimed size, an unknown version, a half frame, silence: each
    connection gets an error frame or is closed, and the proxy keeps serving."""
    from kuafu import frame as F
    import kuafu

    host, port = kf.infos[kf.here]["tcp"][len("tcp://"):].rsplit(":", 1)

    def exchange(data: bytes, wait_s: float = 6.0) -> bytes:
        with socket.create_connection((host, int(port)), timeout=wait_s) as s:
            if data:
                s.sendall(data)
            got = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return got  # closed by the proxy
                    got += chunk
            except socket.timeout:
                raise AssertionError(f"the proxy neither answered nor closed for {data[:20]!r}")

    def error_of(got: bytes) -> dict:
        frames = F.FrameDecoder().feed(got)
        assert frames and frames[0].kind == F.ERROR
        return frames[0].header

    assert error_of(exchange(os.urandom(64) + b"x"))["code"] in ("FrameError", "TooLarge")
    assert "not a Kuafu frame" in error_of(exchange(b"GET / HTTP/1.1\r\n\r\n"))["msg"]
    huge = F.PREFIX.pack(F.MAGIC, F.FRAME_VERSION, F.REQUEST, 10, 2**31)
    assert error_of(exchange(huge))["code"] == "TooLarge"
    v9 = F.PREFIX.pack(F.MAGIC, 9, F.REQUEST, 0, 0)
    assert "version 9" in error_of(exchange(v9))["msg"]
    half = b"".join(F.encode(F.REQUEST, {"id": 1, "svc": "x", "m": "y"}, b"z" * 100))[:-40]
    assert exchange(half) == b""  # a stalled frame: closed after partial_timeout_s
    assert exchange(b"") == b""   # silence: closed after hello_timeout_s
    # A request for a missing service is an error frame, the connection stays usable.
    with kuafu.connect(kf.infos[kf.here]["tcp"] + "/nothing-here") as c:
        with pytest.raises(kuafu.Unavailable, match="no endpoint"):
            c.call("x", b"")
        assert c.call("ping", b"", service="kuafu") == "pong"


def test_ten_thousand_idle_connections(kf):
    import resource

    import kuafu

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 10_000 + 200
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want + 100), hard))
    host, port = kf.infos[kf.here]["tcp"][len("tcp://"):].rsplit(":", 1)
    socks = []
    try:
        with kuafu.connect(kf.infos[kf.here]["tcp"] + "/kuafu") as c:
            before = json.loads(c.call("stats", b"", timeout_s=30))["counters"]
            for _ in range(10_000):
                s = socket.socket()
                s.setblocking(True)
                s.connect((host, int(port)))
                socks.append(s)
            assert c.call("ping", b"", timeout_s=30) == "pong"
            deadline = time.time() + 60
            while True:  # the last ones may still wait in the listen backlog
                st = json.loads(c.call("stats", b"", timeout_s=30))
                if st["counters"]["accepted"] - before["accepted"] >= 10_000:
                    break
                assert time.time() < deadline, st["counters"]
                time.sleep(0.5)
            assert st["counters"]["refused_connections"] == before["refused_connections"]
            # The idle ones are closed after hello_timeout_s; ours keeps working.
            deadline = time.time() + 60
            while st["connections"].get("client", 0) > 100 and time.time() < deadline:
                time.sleep(1.0)
                st = json.loads(c.call("stats", b"", timeout_s=30))
            assert st["connections"].get("client", 0) <= 100, st["connections"]
            assert c.call("ping", b"") == "pong"
    finally:
        for s in socks:
            s.close()
