"""Issue 20 parts 5 and 6 on the two-node cluster: rolling upgrades and scale-downs under a
steady stream of NON-idempotent calls (each run exactly once: the service counts them by the
request id it receives), and canary traffic splitting with promote and rollback."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.integration.counting import counted
from tests.integration.test_services_ray import CLUSTER, _ready, _remove, _spec, _wait

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def master(client, kuafu_net):
    return client.master


class Stream:
    """Threads calling the non-idempotent ``count`` without pause, each with a fresh id."""

    def __init__(self, name: str, threads: int = 4):
        self.name = name
        self.stop = threading.Event()
        self.ok: list[str] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, t: int):
        import kuafu

        i = 0
        with kuafu.connect(f"nuwa://{CLUSTER}/{self.name}") as c:
            while not self.stop.is_set():
                rid = f"{t}-{i}"
                i += 1
                try:
                    c.call("count", rid.encode(), timeout_s=20)
                    self.ok.append(rid)
                except Exception as e:  # noqa: BLE001 - counted
                    self.failures.append(f"{rid}: {e!r}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _counter_spec(name, version, replicas, log_dir, **kw):
    return _spec(name, version, replicas, **{"class": "tests.integration.counting:Counter",
                                             "config": {"log_dir": str(log_dir),
                                                        "tag": f"v{version}"}, **kw})


def test_upgrade_and_scale_down_run_every_non_idempotent_call_exactly_once(master, tmp_path):
    import ray

    name = "svc-once"
    ray.get(master.service_register.remote(_counter_spec(name, "1", 2, tmp_path)), timeout=30)
    try:
        _wait(master, name, _ready(2))
        with Stream(name) as s:
            time.sleep(1.0)
            ray.get(master.service_upgrade.remote(_counter_spec(name, "2", 2, tmp_path)),
                    timeout=30)
            st = _wait(master, name, _ready(2, "2"))
            assert st["rollout"] == "done"
            ray.get(master.service_scale.remote(name, 1), timeout=30)
            _wait(master, name, _ready(1, "2"))
            time.sleep(1.0)
        assert s.failures == [], s.failures[:5]
        assert len(s.ok) > 200, len(s.ok)
        runs = counted(str(tmp_path))
        twice = {k: v for k, v in runs.items() if v > 1}
        assert twice == {}, list(twice.items())[:5]           # never run twice
        assert set(runs) == set(s.ok)                          # every answered call ran once
        assert sum(runs.values()) == len(s.ok)
        events = " ".join(st["events"])
        assert "replaced by version 2" in events
    finally:
        _remove(master, name)


def _endpoints(service: str) -> list[dict]:
    import kuafu

    with kuafu.connect(f"nuwa://{CLUSTER}/{service}") as c:
        return json.loads(c.call("resolve", {"service": service}, service="kuafu"))


def _wait_endpoints(service: str, pred, timeout_s: float = 20.0) -> list[dict]:
    deadline = time.time() + timeout_s
    while True:
        eps = _endpoints(service)
        if pred(eps):
            return eps
        assert time.time() < deadline, eps
        time.sleep(0.1)


def _versions(service: str, n: int) -> dict[str, int]:
    import kuafu

    out: dict[str, int] = {}
    with kuafu.connect(f"nuwa://{CLUSTER}/{service}") as c:
        for _ in range(n):
            v = c.call("version", b"", timeout_s=20)
            out[v] = out.get(v, 0) + 1
    return out


def test_a_canary_at_10_percent_gets_10_percent_then_promote_and_rollback(master):
    import ray

    from fuxi.errors import BadInput

    name = "svc-canary"
    ray.get(master.service_register.remote(_spec(name, "1", 3)), timeout=30)
    try:
        _wait(master, name, _ready(3))
        st = ray.get(master.service_upgrade.remote(_spec(name, "2", 3), {"canary": 10}),
                     timeout=30)
        assert st["canary"] == {"version": "2", "percent": 10.0, "replicas": 1}
        _wait(master, name, lambda st: sum(r["state"] == "ready" and r["share"] == 10.0
                                           for r in st["replicas"]) == 1
              and st["ready"] == 4)
        # The driver's proxy knows all four endpoints, the canary's with its share.
        _wait_endpoints(name, lambda eps: len(eps) == 4 and sorted(
            e["share"] for e in eps if e["share"] is not None) == [10.0])
        got = _versions(name, 2000)
        assert set(got) == {"v1", "v2"}, got
        assert 140 <= got["v2"] <= 260, got                    # 10 % +- 3 % of 2000
        # Garbage is refused with what was expected, and nothing changes.
        for bad in ({"canary": 0}, {"canary": "ten"}, {"canary": 10, "x": 1}, {"promote": 1,
                                                                                 "rollback": 1}):
            with pytest.raises(BadInput, match="expected"):
                ray.get(master.service_upgrade.remote(_spec(name, "3", 3), bad), timeout=30)
        with pytest.raises(BadInput, match="runs a canary"):
            ray.get(master.service_upgrade.remote(_spec(name, "3", 3)), timeout=30)
        # Promote: every replica rolls to version 2; every call answers v2.
        ray.get(master.service_upgrade.remote(name, {"promote": True}), timeout=30)
        st = _wait(master, name, lambda st: _ready(3, "2")(st) and st["rollout"] == "done")
        assert st["canary"] is None and all(r["share"] is None for r in st["replicas"])
        _wait_endpoints(name, lambda eps: len(eps) == 3)
        assert _versions(name, 200) == {"v2": 200}
        # A canary rolled back: its replica drains, every call stays on version 2.
        ray.get(master.service_upgrade.remote(_spec(name, "3", 3), {"canary": 50}), timeout=30)
        _wait(master, name, lambda st: st["ready"] == 5)  # 3 + ceil(3 * 50 %) canaries
        _wait_endpoints(name, lambda eps: len(eps) == 5)
        assert set(_versions(name, 200)) == {"v2", "v3"}
        ray.get(master.service_upgrade.remote(name, {"rollback": True}), timeout=30)
        st = _wait(master, name, _ready(3, "2"))
        assert st["canary"] is None and st["version"] == "2"
        _wait_endpoints(name, lambda eps: len(eps) == 3)
        assert _versions(name, 200) == {"v2": 200}
        with pytest.raises(BadInput, match="no canary"):
            ray.get(master.service_upgrade.remote(name, {"rollback": True}), timeout=30)
    finally:
        _remove(master, name)
