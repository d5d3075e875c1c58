"""Online services on the two-node cluster: FuxiMaster's service manager starts replica actors,
they become Kuafu endpoints when ready, and calls go on through scaling, rolling upgrades,
rollbacks and crashes."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.integration.servicehelpers import remove_service

pytestmark = pytest.mark.ray

CLUSTER = "test"


def _spec(name: str, version: str = "1", replicas: int = 2, **kw) -> dict:
    from fuxi.core.service_spec import service_spec_from_dict

    doc = {"name": name, "class": "jobs.services.echo:Echo", "version": version,
           "replicas": replicas, "resources": {"cpu": 0},
           "config": {"tag": f"v{version}"}, "drain_grace_s": 5.0,
           "health_check": {"period_s": 0.5, "timeout_s": 2.0, "failure_threshold": 2}}
    doc.update(kw)
    return service_spec_from_dict(doc).to_doc()


@pytest.fixture(scope="module")
def master(client, kuafu_net):
    return client.master


def _wait(master, name: str, pred, timeout_s: float = 90.0) -> dict:
    import ray

    deadline = time.time() + timeout_s
    while True:
        st = ray.get(master.service_status.remote(name), timeout=30)
        if pred(st):
            return st
        if time.time() > deadline:
            raise AssertionError(f"service {name} did not get there in {timeout_s:g}s: "
                                 f"{ {k: st[k] for k in ('ready', 'starting', 'draining', 'failed', 'version', 'rollout')} } "
                                 f"events: {st['events'][-8:]}")
        time.sleep(0.2)


def _ready(n: int, version: str | None = None):
    return lambda st: (st["ready"] == n and st["starting"] == 0 and st["draining"] == 0
                       and (version is None or all(r["version"] == version
                                                   for r in st["replicas"])))


class Load:
    """Threads calling a service without pause; counts failures and who answered."""

    def __init__(self, name: str, method: str = "version", threads: int = 4):
        self.name, self.method = name, method
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.answers: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        import kuafu

        with kuafu.connect(f"nuwa://{CLUSTER}/{self.name}") as c:
            while not self.stop.is_set():
                try:
                    out = c.call(self.method, b"", timeout_s=20)
                    self.ok += 1
                    self.answers[out] = self.answers.get(out, 0) + 1
                except Exception as e:  # noqa: BLE001 - counted
                    self.failures.append(repr(e))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


_remove = remove_service


def test_register_call_status_scale_and_remove(master, kuafu_net):
    import ray

    import kuafu
    from fuxi.errors import BadInput

    st = ray.get(master.service_register.remote(_spec("svc-basic")), timeout=30)
    try:
        assert st["desired"] == 2
        st = _wait(master, "svc-basic", _ready(2))
        assert {r["node"] for r in st["replicas"]} == {kuafu_net.here, kuafu_net.other}, \
            st["events"]  # spread
        assert all(r["health"] == "ok" and r["version"] == "1" for r in st["replicas"])
        with kuafu.connect(f"nuwa://{CLUSTER}/svc-basic") as c:
            assert c.call("echo", b"hi") == b"hi"
            # The driver's proxy learns the other node's endpoint from its Nuwa watch.
            deadline = time.time() + 10
            while len(json.loads(c.call("resolve", {"service": "svc-basic"},
                                        service="kuafu"))) < 2:
                assert time.time() < deadline
                time.sleep(0.05)
            pids = {c.call("pid", b"") for _ in range(60)}
            assert len(pids) == 2  # both replicas answer
        with pytest.raises(BadInput, match="already registered"):
            ray.get(master.service_register.remote(_spec("svc-basic")), timeout=30)
        with Load("svc-basic") as load:
            ray.get(master.service_scale.remote("svc-basic", 4), timeout=30)
            _wait(master, "svc-basic", _ready(4))
            ray.get(master.service_scale.remote("svc-basic", 1), timeout=30)
            _wait(master, "svc-basic", _ready(1))
            time.sleep(1.0)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 100
        st = ray.get(master.service_status.remote("svc-basic"), timeout=30)
        assert st["requests"] > 0 and st["replicas"][0]["p50_ms"] is not None
        assert any(s["name"] == "svc-basic" for s in ray.get(master.service_list.remote()))
    finally:
        _remove(master, "svc-basic")
    with kuafu.connect(f"nuwa://{CLUSTER}/svc-basic") as c:
        with pytest.raises(kuafu.Unavailable):
            c.call("echo", b"", timeout_s=5)


def test_rolling_upgrade_under_load_fails_no_request(master):
    import ray

    ray.get(master.service_register.remote(_spec("svc-roll", replicas=2)), timeout=30)
    try:
        _wait(master, "svc-roll", _ready(2))
        with Load("svc-roll") as load:
            time.sleep(1.0)
            ray.get(master.service_upgrade.remote(_spec("svc-roll", "2", replicas=2)),
                    timeout=30)
            st = _wait(master, "svc-roll", _ready(2, "2"))
            assert st["rollout"] == "done"
            time.sleep(1.0)
        assert load.failures == [], load.failures[:5]
        assert set(load.answers) == {"v1", "v2"}, load.answers  # only old or new answered
    finally:
        _remove(master, "svc-roll")


def test_an_upgrade_that_fails_health_checks_rolls_back(master):
    import ray

    ray.get(master.service_register.remote(_spec("svc-back", replicas=2)), timeout=30)
    try:
        _wait(master, "svc-back", _ready(2))
        with Load("svc-back") as load:
            bad = _spec("svc-back", "2", replicas=2, config={"tag": "v2", "healthy": False})
            ray.get(master.service_upgrade.remote(bad), timeout=30)
            st = _wait(master, "svc-back", lambda s: s["rollout"] == "rolled_back"
                       and _ready(2, "1")(s))
            time.sleep(0.5)
        assert st["version"] == "1" and "version 2" in st["rollout_detail"]["reason"]
        assert load.failures == [], load.failures[:5]
        assert set(load.answers) == {"v1"}  # the bad version never served
    finally:
        _remove(master, "svc-back")


def test_a_killed_replica_is_replaced_under_load(master):
    import ray

    ray.get(master.service_register.remote(_spec("svc-kill", replicas=2)), timeout=30)
    try:
        st = _wait(master, "svc-kill", _ready(2))
        victim = st["replicas"][0]["replica"]
        with Load("svc-kill", method="echo") as load:
            time.sleep(1.0)
            h = ray.get_actor(f"fuxi-svc-{victim}", namespace="fuxi-test")
            pid = ray.get(h.info.remote(), timeout=10)["pid"]
            os.kill(pid, 9)
            st = _wait(master, "svc-kill", lambda s: _ready(2)(s) and victim not in
                       [r["replica"] for r in s["replicas"]])
            time.sleep(1.0)
        total = load.ok + len(load.failures)
        assert len(load.failures) <= total * 0.001, (len(load.failures), total,
                                                      load.failures[:3])
        assert any(f"{victim}" in e and "died" in e for e in st["events"]), st["events"]
        # `fuxi explain service` (issue 17): the victim's story from the cluster's event log
        from fuxi.core.story import service_story

        got = ray.get(master.events_since.remote(0, None, None, 10_000, 0.0,
                                                 {"service": "svc-kill"}), timeout=30)["events"]
        kinds = [e["kind"] for e in service_story("svc-kill", victim, got)["events"]]
        assert kinds[0] == "replica_placed" and "replica_ready" in kinds, kinds
        assert "replica_died" in kinds, kinds
    finally:
        _remove(master, "svc-kill")


def test_bad_specs_are_refused_before_anything_runs():
    from fuxi.errors import SpecError
    from fuxi.core.service_spec import service_spec_from_dict

    with pytest.raises(SpecError) as ei:
        service_spec_from_dict({"name": "x", "class": "jobs.services.echo:Nope", "replicas": -1,
                                "rollout": {"max_surge": 0}, "colour": 1})
    text = str(ei.value)
    for part in ("replicas: got -1", "max_unavailable and max_surge are both 0",
                 "colour: unknown field"):
        assert part in text, text


def test_a_service_needing_room_preempts_batch_and_the_job_still_succeeds(master, client,
                                                                          tmp_path):
    """The cluster's 4 CPUs are full of a batch job's workers. A service whose replicas need
    a CPU each takes two of them back: the job's attempts there are stopped and retried
    elsewhere, not failed, and the job succeeds with every instance's output once."""
    import glob

    import ray

    from tests.integration.jobhelpers import read_output

    marks = tmp_path / "marks"
    spec = {"name": "hog", "params": {"dir": str(marks), "sleep_s": 2.0},
            "speculation": {"enabled": False},
            "tasks": {"t": {"fn": "tests.integration.taskfns:sleepy", "instances": 12,
                            "resources": {"cpu": 1}, "output": str(tmp_path / "out")}}}
    job_id = client.submit(spec)
    deadline = time.time() + 60
    while len(glob.glob(str(marks / "run-*"))) < 4:  # every CPU busy with the job
        assert time.time() < deadline, "the job did not fill the cluster"
        time.sleep(0.2)
    ray.get(master.service_register.remote(
        _spec("svc-pre", replicas=2, resources={"cpu": 1})), timeout=30)
    try:
        st = _wait(master, "svc-pre", _ready(2), timeout_s=90)
        done = client.wait(job_id, timeout_s=180)
        assert done["state"] == "succeeded", repr(done)
        assert done["preempted_attempts"] >= 1, done
        out = read_output(str(tmp_path / "out"))
        assert sorted(set(out.column("instance").to_pylist())) == list(range(12))
        assert out.num_rows == 12 * 3  # each instance's rows exactly once
        assert st["ready"] == 2
    finally:
        _remove(master, "svc-pre")


def test_the_wordfreq_example_serves_the_wordcount_output(master, job, tmp_path):
    """The README's walk-through: wordcount's output served by the example service."""
    import ray

    import kuafu
    from fuxi.io.specfile import load_service_spec
    from jobs.wordcount import plain_count

    out = tmp_path / "wc"
    st = job({"name": "wc-for-svc", "params": {"input": "jobs/data/part-0.txt",
                                               "output": str(out)},
              "tasks": {"map": {"fn": "jobs.wordcount:map_words", "input": "${params.input}"},
                        "reduce": {"fn": "jobs.wordcount:sum_counts", "instances": 2,
                                   "depends_on": ["map"], "partition_by": ["word"],
                                   "output": "${params.output}"}}})
    assert st["state"] == "succeeded", st.get("report")
    spec = load_service_spec("jobs/services/wordfreq.yaml",
                             [f"config.counts={out}", "replicas=1"]).to_doc()
    spec["workdir"] = os.getcwd()
    ray.get(master.service_register.remote(spec), timeout=30)
    try:
        _wait(master, "wordfreq", _ready(1))
        truth = plain_count(["jobs/data/part-0.txt"])
        with kuafu.connect(f"nuwa://{CLUSTER}/wordfreq") as c:
            got = c.call("lookup", {"words": "the,of,zzzunseen"})
            assert got == {"the": str(truth["the"]), "of": str(truth["of"]), "zzzunseen": "0"}
            top = c.call("top", {"n": "3"})
            best = sorted(truth.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
            assert list(zip(top.column("word").to_pylist(),
                            top.column("count").to_pylist())) == best
            with pytest.raises(kuafu.RemoteError, match="expected 1..1000"):
                c.call("top", {"n": "0"})
    finally:
        _remove(master, "wordfreq")


def test_replicas_on_a_lost_node_come_back_elsewhere(master, ray_cluster, kuafu_net):
    import ray

    extra = ray_cluster.add_node(num_cpus=1, resources={"svc-extra": 1})
    ray_cluster.wait_for_nodes(timeout=60)
    gone = extra.node_id
    try:
        ray.get(master.service_register.remote(_spec("svc-node", replicas=3)), timeout=30)
        st = _wait(master, "svc-node", _ready(3))
        assert gone in {r["node"] for r in st["replicas"]}, st["replicas"]  # one per node
        with Load("svc-node", method="echo") as load:
            time.sleep(1.0)
            ray_cluster.remove_node(extra, allow_graceful=False)
            extra = None
            st = _wait(master, "svc-node", lambda s: _ready(3)(s) and gone not in
                       {r["node"] for r in s["replicas"]}, timeout_s=120)
            time.sleep(1.0)
        assert load.ok > 100
        assert len(load.failures) <= 0.01 * (load.ok + len(load.failures)), load.failures[:3]
        assert any("died" in e for e in st["events"]), st["events"]
    finally:
        _remove(master, "svc-node")
        if extra is not None:
            ray_cluster.remove_node(extra)
