"""What an adopted job's first sync may say it holds (``fuxi.shells.adoption.check_held``) and
how it rebuilds the ledger: garbage gets a clear error, slots on unknown nodes are left out."""

from __future__ import annotations

import pytest

from fuxi.core.slots import Ledger
from fuxi.errors import BadInput
from fuxi.shells.adoption import HELD_SHAPES_MAX, Adoption, check_held

NODES = {"n1": {"CPU": 2.0}, "n2": {"CPU": 2.0}}


def test_a_good_report_is_kept_and_gone_nodes_are_left_out():
    held = {"CPU=1": {"shape": {"CPU": 1}, "nodes": {"n1": 2, "gone": 1}}}
    assert check_held(held, NODES) == {"CPU=1": {"shape": {"CPU": 1.0}, "nodes": {"n1": 2}}}
    assert check_held(None, NODES) == {}


@pytest.mark.parametrize("held, words", [
    ([1, 2], "expected a dict"),
    ({f"s{i}": {"shape": {}, "nodes": {}} for i in range(HELD_SHAPES_MAX + 1)}, "at most"),
    ({1: {"shape": {}, "nodes": {}}}, "shape key"),
    ({"s": {"shape": [], "nodes": {}}}, "expected {'shape'"),
    ({"s": {"shape": {"CPU": float("nan")}, "nodes": {}}}, "finite amount"),
    ({"s": {"shape": {"CPU": -1}, "nodes": {}}}, "finite amount"),
    ({"s": {"shape": {"CPU": True}, "nodes": {}}}, "finite amount"),
    ({"s": {"shape": {"CPU": 1}, "nodes": {"n1": 0}}}, "slot count from 1"),
    ({"s": {"shape": {"CPU": 1}, "nodes": {"n1": 10**9}}}, "WORKERS_PER_NODE_MAX"),
    ({"s": {"shape": {"CPU": 1}, "nodes": {"n1": "2"}}}, "slot count"),
])
def test_garbage_is_refused_with_what_was_expected(held, words):
    with pytest.raises(BadInput, match=words):
        check_held(held, NODES)


class _Master:
    def __init__(self):
        self.nodes = NODES
        self.ledger = Ledger()
        self.submit_seq = {"j": 3}
        self._job_tokens: dict = {}
        self.job_owners: dict = {}


def test_only_the_first_sync_of_an_adopted_job_fills_the_ledger():
    m, a = _Master(), Adoption(True, set())
    held = {"CPU=1": {"shape": {"CPU": 1.0}, "nodes": {"n1": 2, "n2": 1}}}
    assert a.first_sync(m, "j", 50, held, "tok", "alice") is False  # not adopted: nothing
    a.unledgered.add("j")
    with pytest.raises(BadInput):
        a.first_sync(m, "j", 50, {"x": 1}, "tok", "alice")
    assert "j" in a.unledgered and m.ledger.held("j/CPU=1") == {}  # a bad report: not consumed
    assert a.first_sync(m, "j", 50, held, "tok", "alice") is True
    assert m.ledger.held("j/CPU=1") == {"n1": 2, "n2": 1}
    assert m._job_tokens == {"j": "tok"} and m.job_owners == {"j": "alice"}
    assert a.first_sync(m, "j", 50, held, "tok", "alice") is False  # once only
    assert m.ledger.held("j/CPU=1") == {"n1": 2, "n2": 1}
