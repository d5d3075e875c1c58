"""The decoder's pre-authentication limit and the assembler's bound on announced bytes
(issue 14, defect 7), pure."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kuafu import frame as F
from kuafu.errors import TooLarge

LIMIT = 1024


def wire(kind, header, body=b"") -> bytes:
    parts = F.encode(kind, header, body)
    return bytes(parts[0]) + bytes(parts[1])


def test_small_frames_pass_and_the_buffer_stays_small():
    d = F.FrameDecoder(preauth_bytes_max=LIMIT)
    assert len(d.get_buffer()) <= F.PREFIX.size + LIMIT
    got = d.feed(wire(F.REQUEST, {"id": 1, "svc": "s", "m": "m"}, b"x" * 500) * 3)
    assert [bytes(f.body) for f in got] == [b"x" * 500] * 3


def test_a_large_frame_needs_the_gate():
    big = wire(F.REQUEST, {"id": 1, "cred": "bad"}, os.urandom(100_000))
    with pytest.raises(TooLarge, match="PREAUTH_FRAME_BYTES_MAX"):
        F.FrameDecoder(preauth_bytes_max=LIMIT).feed(big)
    seen = []
    gate = lambda kind, header, blen: seen.append((kind, header["cred"], blen)) or False  # noqa: E731
    with pytest.raises(TooLarge):
        F.FrameDecoder(preauth_bytes_max=LIMIT, gate=gate).feed(big[:F.PREFIX.size + 40])
    assert seen == [(F.REQUEST, "bad", 100_000)]  # decided on the header, before the body


def test_a_header_over_the_limit_is_refused_on_its_prefix():
    with pytest.raises(TooLarge, match="header"):
        F.FrameDecoder(preauth_bytes_max=LIMIT).feed(
            wire(F.REQUEST, {"id": 1, "pad": "p" * 2000})[:F.PREFIX.size])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 70_000), min_size=1, max_size=8), st.integers(0, 200_000))
def test_a_gated_large_frame_decodes_under_any_split(cuts, size):
    body = os.urandom(size)
    stream = (wire(F.PING, {"id": 0}) + wire(F.REQUEST, {"id": 7, "cred": "ok"}, body)
              + wire(F.REQUEST, {"id": 8}, b"after"))
    d = F.FrameDecoder(preauth_bytes_max=LIMIT, gate=lambda k, h, n: h.get("cred") == "ok")
    out, pos = [], 0
    for c in cuts + [len(stream)]:
        out += d.feed(stream[pos:pos + c])
        pos += c
        if pos >= len(stream):
            break
    assert [f.request_id for f in out] == [0, 7, 8]
    assert bytes(out[1].body) == body and bytes(out[2].body) == b"after"


def test_lifting_by_the_owner():
    d = F.FrameDecoder(preauth_bytes_max=LIMIT)
    d.feed(wire(F.REQUEST, {"id": 1}, b"hi")[:5])  # half a frame waits across the lift
    d.lift_preauth()
    rest = wire(F.REQUEST, {"id": 1}, b"hi")[5:] + wire(F.REQUEST, {"id": 2}, b"y" * 300_000)
    got = d.feed(rest)
    assert [f.request_id for f in got] == [1, 2] and len(got[1].body) == 300_000


def test_announced_bytes_are_bounded_per_connection():
    asm = F.Assembler(bytes_max=10_000)
    asm.add(F.Frame(F.REQUEST, {"id": 1, "more": True, "size": 6_000}, b""))
    with pytest.raises(TooLarge, match="still arriving"):
        asm.add(F.Frame(F.REQUEST, {"id": 2, "more": True, "size": 6_000}, b""))
    asm.drop(1)
    asm.add(F.Frame(F.REQUEST, {"id": 3, "more": True, "size": 6_000}, b""))
    assert asm.announced == 6_000
