"""The leader keeps the FuxiMaster candidates at their number (issue 16 part 3: "two or more
FuxiMaster actors on different nodes"), on the shared cluster with a Nuwa of its own.

Two detached candidates (as `fuxi up` starts them) are pinned to the head and to a node added
for this test; that node is removed. Its candidate is dead for good (hard affinity: Ray frees
the name at once), so the cluster is down to one. The serving leader -- the head's candidate,
or, if the removed one led, the head's after its take-over -- creates the missing one again on
the node that holds none (the shared cluster's second node): two candidates on two live nodes,
one serving and one standing by. Then the leader's process is SIGKILLed and a leader of a newer
term serves: the respawned standby is a working one. Negative control (in the unit tests of
``respawn_places``): nothing is created while every candidate lives."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

BASE = "FuxiMaster-kp"
RESPAWN_WAIT_S = 90.0


def _info(name: str, timeout_s: float = 5.0) -> dict | None:
    try:
        return ray.get(ray.get_actor(name).leader_info.remote(), timeout=timeout_s)
    except (ValueError, ray.exceptions.RayError):
        return None


def _serving(names: list[str]) -> tuple[str, dict] | None:
    for n in names:
        i = _info(n)
        if i and i["serving"]:
            return n, i
    return None


@pytest.fixture(scope="module")
def keeper(ray_cluster, tmp_path_factory):
    from types import SimpleNamespace

    from fuxi.runtime import _start_master, master_candidates
    from nuwa.group import start_group

    head = ray.get_runtime_context().get_node_id()
    # Nuwa first, so its replica is not on the node this test removes.
    g = start_group(1, str(tmp_path_factory.mktemp("keeper-nuwa")),
                    namespace=f"nuwa-keeper-{time.time_ns()}")
    extra = ray_cluster.add_node(num_cpus=1, resources={"keeper_extra": 1})
    ray_cluster.wait_for_nodes(timeout=60)
    names = master_candidates([1], BASE)
    try:
        nuwa = [list(a) for a in g.client_addresses()]
        _start_master("test", None, detached=True, nuwa=nuwa, agents=False, name=BASE,
                      candidate_nodes=[head, extra.node_id])
        yield SimpleNamespace(names=names, head=head, extra=extra, cluster=ray_cluster)
    finally:
        for n in names:
            try:
                ray.kill(ray.get_actor(n), no_restart=True)
            except (ValueError, ray.exceptions.RayError):
                pass
        if extra in ray_cluster.worker_nodes:
            ray_cluster.remove_node(extra)
        g.stop()


def test_a_candidate_gone_with_its_node_is_created_again_on_a_live_node(keeper):
    names, extra_id = keeper.names, keeper.extra.node_id
    infos = {n: _info(n, 30.0) for n in names}
    assert all(infos.values()), infos
    assert {i["node_id"] for i in infos.values()} == {keeper.head, extra_id}
    gone = next(n for n, i in infos.items() if i["node_id"] == extra_id)
    keeper.cluster.remove_node(keeper.extra)
    deadline = time.time() + RESPAWN_WAIT_S
    seen = None
    while time.time() < deadline:
        lead = _serving(names)
        if lead is not None:
            name, info = lead
            h = ray.get_actor(name)
            try:
                ray.get(h.cluster_info.remote(), timeout=10)  # a node refresh: the keeper looks
            except ray.exceptions.RayError:
                pass
            seen = {n: _info(n) for n in names}
            alive = [i for i in seen.values() if i]
            if len(alive) == 2 and len({i["node_id"] for i in alive}) == 2 \
                    and extra_id not in {i["node_id"] for i in alive}:
                break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the candidate {gone} was not created again within "
                             f"{RESPAWN_WAIT_S}s: {seen}")
    name, info = _serving(names)
    other = next(n for n in names if n != name)
    assert any(r.startswith(f"{other} on ") for r in _info(name)["respawned"]) or \
        any(r.startswith(f"{other} on ") for r in (seen[name] or {}).get("respawned", [])), seen
    # The respawned or surviving standby is one: it refuses work, naming the leader.
    from fuxi.errors import NotLeader

    deadline = time.time() + 30
    while True:
        try:
            ray.get(ray.get_actor(other).list_jobs.remote(), timeout=30)
            raise AssertionError(f"{other} served a call while {name} leads")
        except NotLeader as e:
            if e.leader == name:
                break
            assert time.time() < deadline, f"the standby does not name the leader: {e}"
        time.sleep(0.2)
    old_term = info["term"]
    os.kill(info["pid"], signal.SIGKILL)  # the leader's process (same machine)
    deadline = time.time() + 60
    while True:
        lead = _serving(names)
        if lead is not None and lead[1]["term"] > old_term:
            break
        assert time.time() < deadline, f"no new leader after {name} was killed: " \
                                       f"{[_info(n) for n in names]}"
        time.sleep(0.1)

