"""The Kuafu frame format: round trips under any split of the byte stream, messages in
pieces, and every kind of malformed input refused with a FrameError (never another
exception, never unbounded buffering)."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kuafu import frame as F
from kuafu.errors import FrameError, TooLarge


def wire(frames) -> bytes:
    return b"".join(bytes(memoryview(b).cast("B")) for f in frames for b in f)


def feed_in_parts(data: bytes, cuts: list[int]) -> list[F.Frame]:
    dec = F.FrameDecoder()
    out, pos = [], 0
    for c in sorted(set(min(c, len(data)) for c in cuts)) + [len(data)]:
        out += dec.feed(data[pos:c])
        pos = c
    assert dec.buffered == 0
    return out


messages = st.one_of(
    st.binary(max_size=3000),
    st.text(max_size=500),
    st.dictionaries(st.text(max_size=20), st.text(max_size=50), max_size=20),
)


@given(msg=messages, rid=st.integers(0, 2**62), cuts=st.lists(st.integers(0, 4000), max_size=8),
       kind=st.sampled_from([F.REQUEST, F.RESPONSE, F.ERROR]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_message_round_trips_whatever_the_stream_splits(msg, rid, cuts, kind):
    header = {"id": rid, "service": "echo", "method": "m", "deadline": 1.5, "cred": None}
    frames = F.encode_message(kind, header, msg)
    got = feed_in_parts(wire(frames), cuts)
    assert len(got) == 1 and got[0].kind == kind and got[0].request_id == rid
    assert F.unpack_body(got[0].header["type"], got[0].body) == msg
    assert got[0].header["service"] == "echo" and got[0].header["deadline"] == 1.5


def test_arrow_tables_and_batches_round_trip():
    t = pa.table({"a": list(range(1000)), "s": [f"x{i}" for i in range(1000)]})
    for msg in (t, t.to_batches()[0]):
        frames = F.encode_message(F.REQUEST, {"id": 1}, msg)
        (f,) = feed_in_parts(wire(frames), [7, 100])
        assert f.header["type"] == "arrow"
        assert F.unpack_body("arrow", f.body).equals(pa.table(msg) if isinstance(
            msg, pa.RecordBatch) else msg)


def test_a_message_over_the_frame_limit_goes_in_pieces_and_comes_back_whole(monkeypatch):
    monkeypatch.setattr(F, "PIECE_BYTES", 1000)
    data = bytes(range(256)) * 20  # 5120 bytes -> 6 frames
    frames = F.encode_message(F.REQUEST, {"id": 9}, data)
    assert len(frames) == 6
    asm = F.Assembler()
    done = [m for f in feed_in_parts(wire(frames), [3, 1500, 4000]) if (m := asm.add(f))]
    assert len(done) == 1 and done[0].body == data and asm.buffered == 0
    assert "more" not in done[0].header


def test_pieces_out_of_order_or_beyond_the_announced_size_are_refused(monkeypatch):
    monkeypatch.setattr(F, "PIECE_BYTES", 10)
    frames = feed_in_parts(wire(F.encode_message(F.REQUEST, {"id": 3}, b"x" * 35)), [])
    asm = F.Assembler()
    asm.add(frames[0])
    with pytest.raises(FrameError, match="expected piece 1"):
        asm.add(frames[2])
    stray = F.Frame(F.PIECE, {"id": 77, "seq": 1}, b"a")
    with pytest.raises(FrameError, match="no first frame"):
        asm.add(stray)
    big = F.Frame(F.REQUEST, {"id": 5, "more": True, "size": 10**12}, b"")
    with pytest.raises(TooLarge, match="at most"):
        asm.add(big)


def test_bad_prefixes_are_refused_at_once():
    good = wire([F.encode(F.PING, {"id": 1})])
    cases = [
        (b"GET / HTTP/1.1\r\n", "not a Kuafu frame"),
        (b"K", None),  # could still become a frame: wait
        (b"X", "not a Kuafu frame"),
        (struct.pack("<2sBBII", b"KF", 9, 1, 0, 0), "version 9"),
        (struct.pack("<2sBBII", b"KF", 1, 99, 0, 0), "kind 99"),
        (struct.pack("<2sBBII", b"KF", 1, 1, 10**6, 0), "HEADER_BYTES_MAX"),
        (struct.pack("<2sBBII", b"KF", 1, 1, 0, 2**32 - 1), "BODY_BYTES_MAX"),
        (struct.pack("<2sBBII", b"KF", 1, 1, 1, 0) + b"\xc1", "not msgpack"),
        (struct.pack("<2sBBII", b"KF", 1, 1, 1, 0) + b"\x05", "map"),
    ]
    for data, msg in cases:
        dec = F.FrameDecoder()
        if msg is None:
            assert dec.feed(data) == []
        else:
            with pytest.raises(FrameError, match=msg):
                dec.feed(data)
    assert F.FrameDecoder().feed(good)[0].kind == F.PING


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_random_bytes_never_raise_anything_but_frame_errors_nor_buffer_much(data):
    dec = F.FrameDecoder()
    try:
        frames = dec.feed(data)
    except FrameError:
        return
    for f in frames:
        assert f.kind in F.KINDS and isinstance(f.header, dict)
    # What is kept waiting is at most one frame's worth, bounded by the limits.
    assert dec.buffered <= F.PREFIX.size + F.HEADER_BYTES_MAX + F.BODY_BYTES_MAX


@given(st.binary(max_size=100), st.sampled_from(["bytes", "str", "map", "arrow", "nope"]))
@settings(max_examples=300)
def test_garbage_bodies_are_frame_errors(body, btype):
    try:
        F.unpack_body(btype, body)
    except FrameError:
        pass


def test_bad_messages_are_refused_with_what_was_expected():
    with pytest.raises(FrameError, match="str to str"):
        F.pack_body({"a": 1})
    with pytest.raises(FrameError, match="bytes, str, dict"):
        F.pack_body(3.5)
    with pytest.raises(TooLarge, match="BODY_BYTES_MAX"):
        F.encode(F.REQUEST, {}, b"x" * (F.BODY_BYTES_MAX + 1))
    with pytest.raises(FrameError, match="kind"):
        F.encode(42, {})
