"""A Nuwa replica reports to the process's base.events and base.metrics: the leader's role
change and term, as an operator would read them."""

from __future__ import annotations

import asyncio

import pytest

from base import events, metrics
from nuwa.io import server
from nuwa.core.raft import Role
from tests.nuwa.test_group_local import LocalGroup

pytestmark = pytest.mark.timeout(120)


def test_a_leader_change_is_an_event_and_a_metric(tmp_path):
    seq = events.LOG.last_seq()

    async def main():
        g = LocalGroup(tmp_path)
        try:
            await g.start_all()
            first = await g.leader()
            # The node's role changes before its server drains the Ready that reports it;
            # stopping the leader in between would leave its leadership unreported.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10.0
            while g.servers[first]._reported_role is not Role.LEADER and loop.time() < deadline:
                await asyncio.sleep(0.02)
            await g.stop(first)
            second = await g.leader()
            return first, second
        finally:
            await g.close()

    first, second = asyncio.run(asyncio.wait_for(main(), 100))
    assert first != second
    led = [e for e in events.LOG.since(seq)
           if e.source == "nuwa" and e.kind == "role_changed" and e.fields["role"] == "leader"]
    assert {e.fields["replica"] for e in led} >= {first, second}
    terms = [e.fields["term"] for e in led]
    assert terms == sorted(terms) and terms[-1] > terms[0]  # the new leader leads a later term
    assert server.LEADERSHIPS.value(replica=str(second)) >= 1
    text = metrics.REGISTRY.render()
    assert f'nuwa_leaderships_total{{replica="{second}"}}' in text
    assert server.TERM.value(replica=str(second)) == terms[-1]


def test_counts_dicts_are_read_by_their_counter():
    import gc

    r = metrics.Registry()
    c = r.counter("proxy_events_total", "x", labels=("kind",))
    d = metrics.CountsDict(c, {"accepted": 0})
    d["accepted"] += 2
    d["denied"] += 1
    other = metrics.CountsDict(c)
    other["accepted"] += 3
    assert dict(d) == {"accepted": 2, "denied": 1}
    assert c.value(kind="accepted") == 5 and c.value(kind="denied") == 1
    assert 'proxy_events_total{kind="accepted"} 5' in r.render()
    del other
    gc.collect()
    assert c.value(kind="accepted") == 2  # a proxy that is gone no longer counts
    with pytest.raises(ValueError, match="expected"):
        metrics.CountsDict(r.counter("y_total", "y"))
