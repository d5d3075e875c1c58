"""Kuafu's proxy on the raw wire (issue 14, defect 7): its TCP port and Unix socket fed
floods of lookups, oversized, truncated and garbage frames, connections that never
authenticate, and forged, expired, malformed and other users' tokens -- while a real service
keeps answering real calls. A proxy with access control on over a real Nuwa, no Ray."""

from __future__ import annotations

import os
import socket
import struct
import time
import uuid

import msgpack
import pytest

import kuafu
import kuafu.core.routing as routing
import kuafu.io.forward as forward
from kuafu import frame as F
from tests.kuafu.authed import AuthedCluster
from zhongkui.keys import Keyring

pytestmark = pytest.mark.timeout(180)
HELLO_S = 1.0  # the proxy's hello timeout here
READ_S = 10.0  # any socket read here


@pytest.fixture(scope="module")
def zc():
    c = AuthedCluster(hello_timeout_s=HELLO_S, partial_timeout_s=HELLO_S, idle_timeout_s=30.0,
                      preauth_conn_max=32)
    try:
        c.bob = c.token("bob")
        c.attach("echo", c.bob, tag="real")
        yield c
    finally:
        c.close()


def still_serving(zc) -> None:
    assert zc.call("echo", zc.bob, "echo", b"ping") == b"ping"
    assert zc.call("echo", zc.bob, "echo", b"ping", address=zc.tcp) == b"ping"


def raw(zc, where: str) -> socket.socket:
    if where == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(zc.core.uds)
    else:
        host, port = zc.tcp[len("tcp://"):].rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    s.settimeout(READ_S)
    return s


def frame(kind: int, header: dict, body: bytes = b"") -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return F.PREFIX.pack(F.MAGIC, F.FRAME_VERSION, kind, len(head), len(body)) + head + body


def read_frames(s: socket.socket) -> tuple[list[F.Frame], bool]:
    """Every frame the proxy sends until it closes (True) or goes quiet for a while (False)."""
    dec, out = F.FrameDecoder(), []
    s.settimeout(2.0)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return out, True
            out.extend(dec.feed(data))
    except socket.timeout:
        return out, False
    except ConnectionResetError:
        return out, True
    finally:
        s.settimeout(READ_S)


def request(rid: int, svc: str, method: str, cred=None, **extra) -> dict:
    h = {"id": rid, "svc": svc, "m": method, "dl": 5000, "type": "bytes", **extra}
    if cred is not None:
        h["cred"] = cred
    return h


WHERE = ["unix", "tcp"]


def test_a_flood_of_lookups_keeps_the_miss_cache_bounded(zc, monkeypatch):
    monkeypatch.setattr(routing, "MISSES_KEPT_MAX", 64)
    s = raw(zc, "tcp")
    try:
        n = 400
        names = [f"nope-{uuid.uuid4().hex[:12]}" for _ in range(n)]
        s.sendall(b"".join(frame(F.REQUEST, request(i + 1, name, "x", zc.bob))
                           for i, name in enumerate(names)))
        got, seen = {}, F.FrameDecoder()
        deadline = time.time() + 60
        while len(got) < n and time.time() < deadline:
            for f in seen.feed(s.recv(65536)):
                got[f.request_id] = f
        assert len(got) == n
        assert {f.header["code"] for f in got.values()} <= {"Unavailable", "Overloaded"}
        sizes = zc.loop.call(lambda: (len(zc.core.watcher.misses), len(zc.core.watcher.lookups)), 10)
        assert sizes[0] <= 64 and sizes[1] == 0, sizes
        assert zc.core.counters["misses_evicted"] > 0
    finally:
        s.close()
    still_serving(zc)


@pytest.mark.parametrize("where", WHERE)
def test_a_large_frame_before_authenticating_is_refused_before_its_body(zc, where):
    s = raw(zc, where)
    try:
        # 1 MiB announced, no token: refused on the prefix and header alone.
        s.sendall(frame(F.REQUEST, request(1, "echo", "echo"), b"")[:0]
                  + F.PREFIX.pack(F.MAGIC, F.FRAME_VERSION, F.REQUEST,
                                  len(msgpack.packb(request(1, "echo", "echo"))), 1 << 20)
                  + msgpack.packb(request(1, "echo", "echo")))
        frames, closed = read_frames(s)
        assert closed and frames[-1].kind == F.ERROR and frames[-1].header["code"] == "TooLarge"
        assert "PREAUTH_FRAME_BYTES_MAX" in frames[-1].header["msg"]
    finally:
        s.close()
    s = raw(zc, where)
    try:  # the same with a forged token
        h = request(1, "echo", "echo", Keyring.new().sign("bob", now=time.time()))
        s.sendall(frame(F.REQUEST, h, os.urandom(100_000)))
        frames, closed = read_frames(s)
        assert closed and frames and frames[-1].header["code"] == "TooLarge"
    finally:
        s.close()
    s = raw(zc, where)
    try:  # a header over the pre-auth limit, whatever it holds
        s.sendall(frame(F.REQUEST, request(1, "echo", "echo", pad="x" * 40_000)))
        frames, closed = read_frames(s)
        assert closed and frames[-1].header["code"] == "TooLarge"
    finally:
        s.close()
    s = raw(zc, where)
    try:  # a large first frame carrying a valid token is let in and answered
        body = os.urandom(200_000)
        s.sendall(frame(F.REQUEST, request(7, "echo", "echo", zc.bob), body))
        dec, reply = F.FrameDecoder(), []
        while not reply:
            reply = dec.feed(s.recv(1 << 20))
        assert reply[0].kind == F.RESPONSE and bytes(reply[0].body) == body
    finally:
        s.close()
    still_serving(zc)


@pytest.mark.parametrize("where", WHERE)
def test_garbage_and_truncated_frames(zc, where):
    for junk in (b"GET / HTTP/1.1\r\n\r\n", os.urandom(64),
                 struct.pack("<2sBBII", b"KF", 9, 1, 0, 0),        # unknown version
                 struct.pack("<2sBBII", b"KF", 1, 99, 0, 0),       # unknown kind
                 struct.pack("<2sBBII", b"KF", 1, 1, 1 << 30, 0),  # huge header
                 struct.pack("<2sBBII", b"KF", 1, 1, 3, 0) + b"\xc1\xc1\xc1",  # not msgpack
                 struct.pack("<2sBBII", b"KF", 1, 1, 1, 0) + b"\x01"):  # header not a map
        s = raw(zc, where)
        try:
            s.sendall(junk)
            frames, closed = read_frames(s)
            assert closed, junk
            assert frames and frames[-1].kind == F.ERROR, junk
        finally:
            s.close()
    # Truncated: a prefix and half a header, then the sender vanishes.
    s = raw(zc, where)
    whole = frame(F.REQUEST, request(1, "echo", "echo", zc.bob), b"abc")
    s.sendall(whole[:20])
    s.close()
    # Truncated and stalled: closed after the partial-frame timeout.
    s = raw(zc, where)
    try:
        s.sendall(whole[:20])
        t0 = time.monotonic()
        frames, closed = read_frames(s)
        while not closed and time.monotonic() - t0 < READ_S:
            more, closed = read_frames(s)
            frames += more
        assert closed
    finally:
        s.close()
    still_serving(zc)


@pytest.mark.parametrize("where", WHERE)
def test_a_connection_that_never_authenticates_is_closed(zc, where):
    silent, pinger = raw(zc, where), raw(zc, where)
    try:
        t0 = time.monotonic()
        closed = {"silent": False, "pinger": False}
        while not all(closed.values()) and time.monotonic() - t0 < HELLO_S + READ_S:
            # PINGs (and unauthenticated control pings) keep no connection open past the
            # hello timeout: only a valid token does.
            if not closed["pinger"]:
                try:
                    pinger.sendall(frame(F.PING, {"id": 0})
                                   + frame(F.REQUEST, request(5, "kuafu", "ping")))
                except OSError:
                    closed["pinger"] = True
            for name, s in (("silent", silent), ("pinger", pinger)):
                if not closed[name]:
                    s.settimeout(0.2)
                    try:
                        while True:
                            data = s.recv(65536)
                            if not data:
                                closed[name] = True
                                break
                    except socket.timeout:
                        pass
                    except OSError:
                        closed[name] = True
        assert all(closed.values()), closed
    finally:
        silent.close()
        pinger.close()
    # An authenticated connection outlives the hello timeout.
    s = raw(zc, where)
    try:
        s.sendall(frame(F.REQUEST, request(1, "kuafu", "hello", zc.bob)))
        time.sleep(HELLO_S * 2.5)
        s.sendall(frame(F.REQUEST, request(2, "echo", "echo", zc.bob), b"still"))
        frames, closed = read_frames(s)
        assert not closed and [bytes(f.body) for f in frames if f.request_id == 2] == [b"still"]
    finally:
        s.close()
    still_serving(zc)


def test_strangers_waiting_to_authenticate_are_bounded(zc):
    socks = [raw(zc, "tcp") for _ in range(80)]
    try:
        deadline = time.time() + READ_S
        while zc.core.counters["evicted_preauth"] < 80 - 32 and time.time() < deadline:
            time.sleep(0.05)
        assert len(zc.core.admission.preauth) <= 32
        assert zc.core.counters["evicted_preauth"] >= 80 - 32
        still_serving(zc)  # a real client connecting now is not locked out
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("where", WHERE)
def test_every_bad_identity_is_refused_and_the_owner_served(zc, where):
    other_ring = Keyring.new()
    now = time.time()
    bad = {
        "none": None,
        "empty": "",
        "malformed": "not-a-token",
        "not a string": 12345,
        "forged signature": other_ring.sign("bob", now=now),
        "admin forged": other_ring.sign("root", ["admins"], now=now),
        "expired": zc.ring.sign("bob", now=now - 7200, ttl_s=60),
        # (A token our keys signed with a future issue time is not refused: a wall clock
        # stepped back must not log everyone out; its lifetime exp - iat is bounded. See
        # docs/zhongkui.md, "Clocks".)
        "padded": zc.bob + "=",
        "junk appended": zc.bob + "==x",
        "truncated": zc.bob[:-5],
        "oversized": "x" * 12_000,
    }
    address = zc.uds if where == "unix" else zc.tcp
    for label, tok in bad.items():
        with pytest.raises(kuafu.Unauthenticated):
            with kuafu.connect(address, service="echo", credentials=tok) as c:
                if tok is None:  # a client without a token sends none
                    c._async.credentials = None
                c.call("echo", b"x", timeout_s=5)
            pytest.fail(f"{label} was let in")
    with pytest.raises(kuafu.Denied):  # another user, validly signed, without a grant
        zc.call("echo", zc.token("mallory"), "echo", b"x", address=address)
    # The other user cannot take the name over either, nor register anything with a bad token.
    with pytest.raises(kuafu.Denied):
        zc.attach("echo", zc.token("mallory"), address=address)
    with pytest.raises(kuafu.Unauthenticated):
        zc.attach("mine", bad["forged signature"], address=address)
    assert zc.call("echo", zc.bob, "echo", b"x", address=address) == b"x"
    still_serving(zc)


def test_requests_in_flight_per_connection_are_bounded(zc, monkeypatch):
    monkeypatch.setattr(forward, "SOURCE_REQUESTS_IN_FLIGHT_MAX", 8)
    s = raw(zc, "unix")
    try:
        s.sendall(b"".join(frame(F.REQUEST, request(i, "echo", "sleep", zc.bob), b"1")
                           for i in range(1, 21)))
        dec, got = F.FrameDecoder(), {}
        deadline = time.time() + 30
        while len(got) < 20 and time.time() < deadline:
            for f in dec.feed(s.recv(65536)):
                got[f.request_id] = f
        codes = [got[i].header.get("code", "ok") for i in range(1, 21)]
        assert codes.count("Overloaded") == 12 and codes.count("ok") == 8, codes
    finally:
        s.close()
    still_serving(zc)
