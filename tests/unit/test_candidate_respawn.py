"""Where a FuxiMaster candidate that is gone for good is created again (issue 16 part 3: two
or more candidates on different nodes, also after a node died)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from fuxi.core.leadership import respawn_places

NAMES = ["FuxiMaster", "FuxiMaster-2", "FuxiMaster-3"]


def test_a_candidate_whose_node_died_goes_to_a_node_without_one():
    live = {"FuxiMaster": "a", "FuxiMaster-2": None}
    assert respawn_places(NAMES[:2], "FuxiMaster", live, ["a", "c", "b"]) == {"FuxiMaster-2": "b"}


def test_nothing_gone_means_nothing_to_do():
    live = {"FuxiMaster": "a", "FuxiMaster-2": "b"}
    assert respawn_places(NAMES[:2], "FuxiMaster", live, ["a", "b", "c"]) == {}
    assert respawn_places(NAMES[:2], "FuxiMaster", {"FuxiMaster": "a", "FuxiMaster-2": None},
                          []) == {}


def test_the_leader_is_never_respawned_even_if_the_table_lost_it():
    live = {"FuxiMaster": None, "FuxiMaster-2": "b"}
    assert respawn_places(NAMES[:2], "FuxiMaster", live, ["a", "b"]) == {}


def test_two_gone_go_to_two_different_nodes_and_a_full_cluster_avoids_the_leaders_node():
    live = {"FuxiMaster": "a", "FuxiMaster-2": None, "FuxiMaster-3": None}
    assert respawn_places(NAMES, "FuxiMaster", live, ["a", "b", "c"]) == {
        "FuxiMaster-2": "b", "FuxiMaster-3": "c"}
    # Only two nodes: the second one hosts both standbys rather than the leader's node.
    assert respawn_places(NAMES, "FuxiMaster", live, ["a", "b"]) == {
        "FuxiMaster-2": "b", "FuxiMaster-3": "b"}


def test_a_one_node_cluster_puts_the_standby_next_to_the_leader():
    live = {"FuxiMaster": "a", "FuxiMaster-2": None}
    assert respawn_places(NAMES[:2], "FuxiMaster", live, ["a"]) == {"FuxiMaster-2": "a"}


@given(n=st.integers(1, 3), nodes=st.lists(st.sampled_from("abcdef"), max_size=6),
       placed=st.lists(st.one_of(st.none(), st.sampled_from("abcdefxyz")), min_size=3, max_size=3),
       me=st.integers(0, 2))
def test_every_gone_candidate_gets_an_alive_node_and_no_node_twice_while_some_are_free(
        n, nodes, placed, me):
    names = NAMES[:n]
    me_name = names[me % n]
    live = dict(zip(names, placed))
    live[me_name] = live[me_name] or "a"
    got = respawn_places(names, me_name, live, nodes)
    gone = [c for c in names if c != me_name and live[c] is None]
    if not nodes:
        assert got == {}
        return
    assert sorted(got) == sorted(gone) and all(v in nodes for v in got.values())
    free = set(nodes) - {v for v in live.values() if v} - {live[me_name]}
    if len(free) >= len(gone):  # enough empty nodes: each one gets its own
        assert len(set(got.values())) == len(got) and set(got.values()) <= free
