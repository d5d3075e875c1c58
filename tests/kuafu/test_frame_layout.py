"""The pure frame layout (kuafu.core.frame): the prefix checks a receiver makes before it
buffers anything, how a message is cut into pieces, and what the header's deadline means."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kuafu.core import frame as L
from kuafu.errors import FrameError, TooLarge


def prefix(magic=L.MAGIC, version=L.FRAME_VERSION, kind=L.REQUEST, hlen=10, blen=20) -> bytes:
    return L.PREFIX.pack(magic, version, kind, hlen, blen)


@pytest.mark.parametrize("raw,preauth,error", [
    (prefix(), None, None),
    (prefix(magic=b"GE"), None, "not a Kuafu frame"),
    (prefix(version=2), None, "frame version 2"),
    (prefix(kind=0), None, "frame kind 0"),
    (prefix(kind=8), None, "frame kind 8"),
    (prefix(hlen=L.HEADER_BYTES_MAX + 1), None, "HEADER_BYTES_MAX"),
    (prefix(blen=L.BODY_BYTES_MAX + 1), None, "BODY_BYTES_MAX"),
    (prefix(hlen=L.HEADER_BYTES_MAX, blen=L.BODY_BYTES_MAX), None, None),
    (prefix(hlen=200), 100, "before the connection authenticated"),
    (prefix(hlen=100), 100, None),
])
def test_prefix_checks(raw, preauth, error):
    if error is None:
        kind, hlen, blen = L.parse_prefix(raw, 0, preauth)
        assert kind == L.REQUEST and (hlen, blen) == L.PREFIX.unpack(raw)[3:]
    else:
        with pytest.raises(FrameError, match=error):
            L.parse_prefix(raw, 0, preauth)


def test_sizes_over_a_limit_are_too_large():
    with pytest.raises(TooLarge):
        L.parse_prefix(prefix(blen=L.BODY_BYTES_MAX + 1))
    with pytest.raises(TooLarge):
        L.check_sizes(L.HEADER_BYTES_MAX + 1, 0)
    with pytest.raises(TooLarge):
        L.check_sizes(0, L.BODY_BYTES_MAX + 1)
    L.check_sizes(L.HEADER_BYTES_MAX, L.BODY_BYTES_MAX)


@pytest.mark.parametrize("start,bad", [(b"", False), (b"K", False), (b"KF", False),
                                       (b"X", True), (b"KX", True)])
def test_the_magic_of_a_frame_still_arriving(start, bad):
    if bad:
        with pytest.raises(FrameError, match="not a Kuafu frame"):
            L.check_magic(start)
    else:
        L.check_magic(start)


@given(st.integers(0, 50_000), st.integers(1, 5_000))
def test_pieces_cover_the_message_in_order(n, piece):
    ranges = L.piece_ranges(n, piece)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(0 < e - s <= piece for s, e in ranges) or ranges == [(0, 0)]
    assert len(ranges) == (1 if n <= piece else math.ceil(n / piece))


def test_a_message_over_its_limit_is_refused():
    with pytest.raises(TooLarge, match="MESSAGE_BYTES_MAX"):
        L.piece_ranges(L.MESSAGE_BYTES_MAX + 1)


@pytest.mark.parametrize("size,first,ok", [
    (100, 10, True), (10, 10, True), (9, 10, False), (True, 0, False), ("100", 0, False),
    (None, 0, False), (L.MESSAGE_BYTES_MAX, 0, True), (L.MESSAGE_BYTES_MAX + 1, 0, False),
])
def test_announced_sizes(size, first, ok):
    assert L.check_announced_size(size, first) is ok


@pytest.mark.parametrize("dl,expected", [
    (1500, 1.5), (0, 0.0), (-5, -0.005), (None, L.DEADLINE_MAX_S), ("10", L.DEADLINE_MAX_S),
    (True, L.DEADLINE_MAX_S), (float("nan"), L.DEADLINE_MAX_S), (float("inf"), L.DEADLINE_MAX_S),
    (10**12, L.DEADLINE_MAX_S),
])
def test_deadlines_from_the_header(dl, expected):
    assert L.timeout_from_header(dl) == expected
