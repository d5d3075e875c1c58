"""Kuafu clients, servers and a live proxy over real sockets, without Ray."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kuafu
from kuafu import frame as F
from kuafu.io.loops import LoopThread
from kuafu.io.proxy import ProxyCore
from tests.kuafu.services import Svc


@pytest.fixture(scope="module")
def standalone():
    h = kuafu.serve({"svc": Svc("standalone")})
    try:
        yield h
    finally:
        h.stop(1)


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="kft-", dir="/tmp")  # Unix socket paths must stay short
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def proxy(sockdir):
    lt = LoopThread("test-proxy")
    core = ProxyCore("tp", uds=os.path.join(sockdir, "p.sock"), hello_timeout_s=2.0,
                     partial_timeout_s=2.0, idle_timeout_s=5.0)
    lt.run(core.start(), 10)
    try:
        yield core, lt
    finally:
        lt.run(core.stop(), 10)
        lt.stop()


def test_every_message_type_round_trips(standalone):
    with kuafu.connect(standalone.address + "/svc") as c:
        table = pa.table({"a": [1, 2, 3], "b": ["x", "y", None]})
        for msg in (b"", b"\x00" * 100, "ünïcode", {"k": "v", "e": ""}, table,
                    os.urandom(3 * F.PIECE_BYTES + 5)):
            back = c.call("echo", msg)
            assert back.equals(msg) if isinstance(msg, pa.Table) else back == msg
        batch = pa.record_batch({"a": [1]})
        assert c.call("echo", batch).equals(pa.Table.from_batches([batch]))


def test_typed_errors(standalone):
    with kuafu.connect(standalone.address + "/svc") as c:
        with pytest.raises(kuafu.RemoteError) as ei:
            c.call("boom", "thing")
        assert ei.value.remote_type == "builtins.KeyError"
        assert "no thing" in str(ei.value) and "raise KeyError" in ei.value.remote_traceback
        with pytest.raises(kuafu.RemoteError, match="cannot be sent"):
            c.call("bad_result", b"")
        with pytest.raises(kuafu.BadRequest, match="no method '_private'"):
            c.call("_private", b"")
        with pytest.raises(kuafu.BadRequest, match="no service 'nope'"):
            c.call("echo", b"", service="nope")
        with pytest.raises(kuafu.FrameError, match="str to str"):
            c.call("echo", {"k": 1})
        with pytest.raises(kuafu.FrameError, match="a message is bytes"):
            c.call("echo", 3.5)
        with pytest.raises(kuafu.TimedOut, match="may have run"):
            c.call("sleep", "5", timeout_s=0.2)
        with pytest.raises(kuafu.TimedOut, match="already passed"):
            c.call("echo", b"", timeout_s=0)
        assert c.call("echo", b"fine") == b"fine"  # the connection survived all of that
    with pytest.raises(kuafu.BadRequest, match="unknown scheme"):
        kuafu.connect("http://x")
    with pytest.raises(kuafu.Unavailable, match="cannot connect"):
        kuafu.connect("tcp://127.0.0.1:1/x").call("echo", b"", timeout_s=2)


def test_handles_and_asyncio(standalone):
    with kuafu.connect(standalone.address + "/svc") as c:
        hs = [c.call_async("echo", str(i)) for i in range(300)]
        assert [h.result(10) for h in hs] == [str(i) for i in range(300)]
        h = c.call_async("sleep", "0.5")
        assert not h.done()
        with pytest.raises(kuafu.TimedOut, match="result"):
            h.result(0.05)
        assert h.result(5) == "standalone"

    async def run():
        async with kuafu.aconnect(standalone.address + "/svc") as ac:
            got = await asyncio.gather(*[ac.acall("echo", f"a{i}") for i in range(100)])
            assert got == [f"a{i}" for i in range(100)]
            return await ac.acall("blocking", "0.01")
    assert asyncio.run(run()) == "slept"


def test_cancel_reaches_the_server():
    svc = Svc()
    h = kuafu.serve({"svc": svc})
    try:
        with kuafu.connect(h.address + "/svc") as c:
            call = c.call_async("sleep", "30")
            time.sleep(0.3)
            assert call.cancel()
            assert svc.cancelled.wait(5)
    finally:
        h.stop(1)


def test_windows_and_queues(standalone):
    # A client window of 2 requests: wait=False refuses the third at once.
    with kuafu.connect(standalone.address + "/svc", requests_max=2) as c:
        a, b = c.call_async("sleep", "0.5"), c.call_async("sleep", "0.5")
        time.sleep(0.1)
        with pytest.raises(kuafu.Overloaded, match="window full"):
            c.call("echo", b"", wait=False)
        t0 = time.time()
        assert c.call("echo", b"waited") == b"waited"  # waits for room, in order
        assert time.time() - t0 > 0.2
        assert a.result(5) == b.result(5) == "standalone"
    # A server queue bound: the service refuses past max_concurrency + queue_max.
    h = kuafu.serve({"svc": Svc()}, max_concurrency=1, queue_max=1)
    try:
        with kuafu.connect(h.address + "/svc") as c:
            hs = [c.call_async("sleep", "0.5") for _ in range(4)]
            outcomes = []
            for x in hs:
                try:
                    outcomes.append(x.result(10))
                except kuafu.Overloaded:
                    outcomes.append("overloaded")
            assert outcomes.count("overloaded") == 2, outcomes
    finally:
        h.stop(1)


def test_deadline_is_visible_and_inherited(standalone):
    with kuafu.connect(standalone.address + "/svc") as c:
        assert 0 < float(c.call("remaining", b"", timeout_s=3)) <= 3
        t0 = time.time()
        with pytest.raises((kuafu.TimedOut, kuafu.RemoteError)):
            # The inner call asks for 60 s but inherits the outer 0.5 s.
            c.call("nested", {"uri": standalone.address + "/svc", "arg": "10"}, timeout_s=0.5)
        assert time.time() - t0 < 5


def _attach(proxy_uds: str, tag: str, **kw):
    return kuafu.attach({"svc": Svc(tag)}, proxy_uds, **kw)


def test_proxy_balances_and_retries_idempotent_calls(proxy):
    core, lt = proxy
    uds = f"unix://{core.uds}"
    a, b = _attach(uds, "a"), _attach(uds, "b")
    try:
        with kuafu.connect(uds, service="svc") as c:
            tags = [c.call("who", b"") for _ in range(200)]
            assert {"a", "b"} == set(tags)
            # Kill b's connection while calls are in flight on it.
            plain = [c.call_async("sleep", "1") for _ in range(10)]
            idem = [c.call_async("who_idem", "1") for _ in range(10)]
            time.sleep(0.3)
            b.loop.call_soon_threadsafe(b.server.proxy.abort)
            results = []
            for x in plain:
                try:
                    results.append(x.result(10))
                except kuafu.Unavailable as e:
                    assert e.maybe_executed
                    results.append("lost")
            assert "lost" in results and "a" in results
            assert all(x.result(10) in ("a", "b") for x in idem)
            assert lt.call(lambda: (len(core.forwarder.routes), len(core.forwarder.inbound), core.forwarder.held_bytes), 5) \
                == (0, 0, 0)
    finally:
        a.stop(1)
        b.stop(1)


def test_backup_requests_beat_a_straggler(proxy):
    """Half the calls land on a replica that takes 2 s. With a backup after 50 ms (or after
    the service's p90, once the proxy has seen enough replies) every call returns from the
    fast replica well before that, and the slow copies are cancelled."""
    core, lt = proxy
    uds = f"unix://{core.uds}"
    slow, fast = _attach(uds, "slow"), _attach(uds, "fast")
    try:
        with kuafu.connect(uds, service="svc") as c:
            t0 = time.time()
            outs = [h.result(10) for h in [c.call_async("lag", "2", backup=50) for _ in range(20)]]
            assert outs == ["fast"] * 20 and time.time() - t0 < 1.5
            for _ in range(30):  # replies for the percentile (fast ones)
                c.call("lag", "0", backup=50)
            outs = [c.call("lag", "2", backup="p90") for _ in range(6)]
            assert outs == ["fast"] * 6
            stats = lt.call(lambda: dict(core.counters), 5)
            assert stats["backups_sent"] >= 10 and stats["backups_won"] >= 10
            # Without a backup, a call that lands on the straggler waits for it.
            tags = {c.call("lag", "0.3") for _ in range(12)}
            assert tags == {"slow", "fast"}
            with pytest.raises(kuafu.BadRequest, match="percentile"):
                c.call("lag", "0", backup="fast please")
        assert lt.call(lambda: (len(core.forwarder.routes), len(core.forwarder.inbound)), 5) == (0, 0)
    finally:
        slow.stop(1)
        fast.stop(1)


def test_graceful_leave_and_no_endpoint(proxy):
    core, _ = proxy
    uds = f"unix://{core.uds}"
    a = _attach(uds, "a")
    with kuafu.connect(uds, service="svc") as c:
        slow = c.call_async("sleep", "0.5")
        time.sleep(0.1)
        a.stop(grace_s=5)  # unregisters, then finishes what it had
        assert slow.result(5) == "a"
        with pytest.raises(kuafu.Unavailable, match="no endpoint") as ei:
            c.call("who", b"")
        assert not ei.value.maybe_executed


def test_server_reattaches_after_the_proxy_restarts(sockdir):
    path = os.path.join(sockdir, "r.sock")
    lt = LoopThread("restart-proxy")
    core = ProxyCore("r1", uds=path, port=None)
    lt.run(core.start(), 10)
    srv = _attach(f"unix://{path}", "x")
    try:
        lt.run(core.stop(), 10)
        core = ProxyCore("r2", uds=path, port=None)
        lt.run(core.start(), 10)
        with kuafu.connect(f"unix://{path}", service="svc") as c:
            deadline = time.time() + 10
            while True:
                try:
                    assert c.call("who", b"", timeout_s=2) == "x"
                    break
                except kuafu.Unavailable:
                    assert time.time() < deadline
                    time.sleep(0.1)
        assert srv.server.reattached >= 1
    finally:
        srv.stop(1)
        lt.run(core.stop(), 10)
        lt.stop()


def _exchange(address: str, data: bytes, timeout_s: float = 5.0) -> bytes:
    host, port = address[len("tcp://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # end of our bytes: the proxy answers or closes
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def _valid_frames() -> st.SearchStrategy:
    headers = st.fixed_dictionaries({"id": st.integers(0, 2**40), "svc": st.text(max_size=8),
                                     "m": st.text(max_size=8)},
                                    optional={"more": st.booleans(),
                                              "size": st.one_of(st.integers(-5, 2**33),
                                                                st.text(max_size=3),
                                                                st.booleans()),
                                              "seq": st.integers(-1, 5),
                                              "dl": st.one_of(st.integers(-5, 10**9), st.text(),
                                                              st.floats(), st.booleans()),
                                              "type": st.sampled_from(list(F.BODY_TYPES) + ["x"]),
                                              "ep": st.text(max_size=5)})
    kinds = st.sampled_from(sorted(F.KINDS))
    return st.builds(lambda k, h, b: b"".join(bytes(p) for p in F.encode(k, h, b)),
                     kinds, headers, st.binary(max_size=300))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(st.binary(max_size=200), _valid_frames()), min_size=1, max_size=4),
       st.integers(0, 50))
def test_fuzz_a_live_proxy(fuzz_proxy, parts, cut):
    """Malformed and odd frames at a live proxy: it answers with frames or closes, never
    hangs, keeps no state for the connection, and keeps serving."""
    core, lt, address = fuzz_proxy
    data = b"".join(parts)
    data = data[:len(data) - cut] if cut < len(data) else data
    got = _exchange(address, data)
    F.FrameDecoder().feed(got)  # whatever it sent back is well-formed frames
    deadline = time.time() + 5
    while lt.call(lambda: (len(core.forwarder.inbound), len(core.forwarder.routes), core.forwarder.held_bytes), 5) != (0, 0, 0):
        assert time.time() < deadline, "the proxy kept state for a closed connection"
        time.sleep(0.01)
    with kuafu.connect(address, service="kuafu") as c:
        assert c.call("ping", b"", timeout_s=5) == "pong"


@pytest.fixture(scope="module")
def fuzz_proxy():
    d = tempfile.mkdtemp(prefix="kff-", dir="/tmp")
    lt = LoopThread("fuzz-proxy")
    core = ProxyCore("fz", uds=os.path.join(d, "f.sock"))
    lt.run(core.start(), 10)
    srv = kuafu.attach({"svc": Svc()}, f"unix://{core.uds}")
    try:
        yield core, lt, core.tcp_address
    finally:
        srv.stop(1)
        lt.run(core.stop(), 10)
        lt.stop()
        shutil.rmtree(d, ignore_errors=True)
