"""pangu.core.leases: who writes which file and who is primary of which chunk until when (time
passed in; no clock, no chunkserver). Table-driven, with a Hypothesis property of the one
writer per file rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pangu.core.leases import LEASE_REUSE_MARGIN_S, FileLease, Leases, Takeover, choose_primary
from pangu.errors import Busy, NotFound

LEASE_S = 60.0


def held(path="/f", writer="a", now=0.0, fence=None) -> Leases:
    ls = Leases()
    ls.take_file(path, writer, now, LEASE_S, fence=fence, take=True)
    return ls


@pytest.mark.parametrize("who, now, fence, outcome", [
    ("a", 10.0, None, "renewed"),                   # the holder renews
    ("b", 10.0, None, Busy),                        # another writer while it lasts
    ("b", LEASE_S + 0.1, None, "taken"),            # after it lapsed
    ("b", 10.0, ("/lock", 8), "taken over"),        # a newer token of the holder's lock
    ("b", 10.0, ("/lock", 7), Busy),                # the same token is not newer
    ("b", 10.0, ("/lock", 6), Busy),                # an older one
    ("b", 10.0, ("/other", 99), Busy),              # a token of another lock
])
def test_one_writer_per_file(who, now, fence, outcome):
    ls = held(fence=("/lock", 7))
    ls.grant("c1", "s1", ["s1", "s2"], 3, "a", 30.0)
    if outcome is Busy:
        with pytest.raises(Busy, match="one writer per file"):
            ls.take_file("/f", who, now, LEASE_S, fence=fence, take=True)
        assert ls.files["/f"].writer == "a" and "c1" in ls.chunks
        return
    over = ls.take_file("/f", who, now, LEASE_S, fence=fence, take=True)
    kept = (fence or ("/lock", 7)) if who == "a" else fence  # a renewal keeps its token
    assert ls.files["/f"] == FileLease(who, now + LEASE_S, kept)
    if outcome == "taken over":
        assert over == Takeover("/f", "a", 7, 8, "/lock")
        assert "c1" not in ls.chunks  # the old writer's chunk leases end with it
    else:
        assert over is None


def test_a_writer_renewing_keeps_the_token_it_opened_with():
    ls = held(fence=("/lock", 3))
    ls.take_file("/f", "a", 5.0, LEASE_S)
    assert ls.files["/f"] == FileLease("a", 5.0 + LEASE_S, ("/lock", 3))


@pytest.mark.parametrize("take, exists, raises", [
    (False, False, NotFound),  # renewing a lease on a file deleted while open
    (False, True, None),
    (True, False, None),       # opening creates it
])
def test_renewing_needs_the_file(take, exists, raises):
    ls = Leases()
    if raises:
        with pytest.raises(raises, match="no longer exists"):
            ls.take_file("/f", "a", 0.0, LEASE_S, take=take, exists=exists)
        assert "/f" not in ls.files
    else:
        ls.take_file("/f", "a", 0.0, LEASE_S, take=take, exists=exists)
        assert ls.writer_of("/f") == "a"


@pytest.mark.parametrize("change, reusable", [
    ({}, True),
    ({"version": 4}, False),                      # the chunk moved on
    ({"writer": "b"}, False),                     # another writer
    ({"replicas": ["s1"]}, False),                # the replica set changed
    ({"replicas": ["s2", "s1"]}, True),           # the same set, in another order
    ({"now": 30.0 - LEASE_REUSE_MARGIN_S}, False),  # about to end
    ({"now": 30.0 - LEASE_REUSE_MARGIN_S - 0.01}, True),
])
def test_a_chunk_lease_is_handed_out_again_only_while_it_is_the_same_and_current(change,
                                                                                  reusable):
    ls = Leases()
    lease = ls.grant("c1", "s1", ["s1", "s2"], 3, "a", 30.0)
    ask = dict({"version": 3, "writer": "a", "replicas": ["s1", "s2"], "now": 10.0}, **change)
    got = ls.reusable("c1", ask["version"], ask["writer"], ask["replicas"], ask["now"])
    assert got == (lease if reusable else None)


def test_leases_end_with_their_server_file_chunk_and_writer():
    ls = Leases()
    for p in ("/d/x", "/d/y", "/e"):
        ls.take_file(p, "w" + p, 0.0, LEASE_S, take=True)
    ls.grant("c1", "s1", ["s1", "s2"], 1, "w/d/x", 10.0)
    ls.grant("c2", "s3", ["s3"], 1, "w/e", 10.0)
    ls.grant("c3", "s2", ["s2", "s3"], 1, "w/e", 5.0)
    assert ls.leased(6.0) == {"c1", "c2"}
    ls.drop_server("s2")
    assert set(ls.chunks) == {"c2"}
    ls.drop_under("/d")
    assert set(ls.files) == {"/e"}
    ls.close("/e", "someone else")
    assert set(ls.files) == {"/e"} and set(ls.chunks) == {"c2"}  # not theirs to close
    ls.close("/e", "w/e")
    assert not ls.files and not ls.chunks


def test_the_least_used_replica_leads():
    assert choose_primary(["s1", "s2", "s3"], {"s1": 5, "s2": 1, "s3": 1}) == "s2"


OPS = st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 30),
                         st.one_of(st.none(), st.tuples(st.sampled_from(["/l", "/m"]),
                                                        st.integers(0, 4)))),
               max_size=40)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_a_live_lease_passes_only_to_a_newer_token_of_its_lock(ops):
    """Whatever the sequence: a take by another writer while the lease lasts succeeds exactly
    when it carries a newer token of the lock the holder opened with, and then the holder's
    chunk leases are gone."""
    ls, now = Leases(), 0.0
    for writer, dt, fence in ops:
        now += dt
        before = ls.files.get("/f")
        ls.grant(f"c-{writer}", "s1", ["s1"], 1, writer, now + 100)
        live_other = before is not None and before.writer != writer and before.until > now
        newer = (live_other and fence is not None and before.fence is not None
                 and before.fence[0] == fence[0] and before.fence[1] < fence[1])
        try:
            over = ls.take_file("/f", writer, now, 10.0, fence=fence, take=True)
        except Busy:
            assert live_other and not newer
            assert ls.files["/f"] == before
            continue
        assert not live_other or newer
        assert (over is not None) == newer
        if newer:
            assert f"c-{before.writer}" not in ls.chunks
        assert ls.files["/f"].writer == writer and ls.files["/f"].until == now + 10.0
