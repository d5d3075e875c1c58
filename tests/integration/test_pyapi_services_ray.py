"""The Python service API (issue 20 part 4) against one real `fuxi up` cluster: a script
defines its service class in ``__main__`` (so it is shipped by value), registers it, calls it
through Kuafu, scales, upgrades to a new class and deletes it -- in a fresh interpreter with
no Ray handle of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(800)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD_TIMEOUT_S = 300


def _env(home) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("FUXI_CLUSTER", "FUXI_TOKEN")}
    env.update(FUXI_HOME=str(home), PYTHONPATH=REPO, FUXI_WEB_PORT="0")
    return env


def _fuxi(home, *args):
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=_env(home),
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert res.returncode == 0, f"fuxi {' '.join(args)}: {res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("pyapi") / "home"
    _fuxi(h, "up", "--num-cpus", "4", "--web-port", "0")
    try:
        yield h
    finally:
        subprocess.run([sys.executable, "-m", "cli.main", "down"], cwd=REPO, env=_env(h),
                       capture_output=True, text=True, timeout=CMD_TIMEOUT_S)


SCRIPT = r'''
import os
import time

import fuxi
import kuafu


@fuxi.service(name="counter", replicas=1, resources={"cpu": 0.25}, idempotent=["tag"])
class Counter:                       # in __main__: no replica could import it by name
    def __init__(self, tag: str = "v1"):
        self.t, self.n = tag, 0

    def add(self, msg):
        self.n += 1
        return str(self.n)

    def tag(self, msg):
        return self.t

    def pid(self, msg):
        return str(os.getpid())

    def boom(self, msg):
        raise ValueError("asked to fail: " + str(msg))


def ready(c, name, n, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while True:
        st = c.services.status(name)
        if sum(r["state"] == "ready" for r in st["replicas"]) == n and st["ready"] == n:
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.5)


with fuxi.Client() as c:
    st = c.services.register(Counter, config={"tag": "v1"}, timeout_s=180)
    assert st["ready"] == 1 and st["version"] == "1", st
    assert st["spec"]["class"].startswith("fuxi_fn_"), st["spec"]["class"]
    assert "counter" in [s["name"] for s in c.services.list()]
    h = c.services.handle("counter")
    assert h.tag() == "v1"
    assert [h.add(b"") for _ in range(3)] == ["1", "2", "3"]
    assert h.call("add", b"") == "4"
    try:
        h.boom("x")
        raise SystemExit("a raising method did not raise")
    except kuafu.RemoteError as e:
        assert "asked to fail: x" in str(e), e
    try:
        c.services.register(Counter)
        raise SystemExit("registering a name in use did not fail")
    except fuxi.BadInput as e:
        assert "already registered" in str(e), e

    c.services.scale("counter", 2)
    ready(c, "counter", 2)
    pids = {h.pid() for _ in range(60)}
    assert len(pids) == 2, pids       # both replicas serve

    @fuxi.service(resources={"cpu": 0.25})
    class CounterV2(Counter):         # a new class; upgrade gives it the service's name
        def tag(self, msg):
            return "v2:" + self.t

    st = c.services.upgrade("counter", CounterV2, replicas=2, config={"tag": "x"},
                            timeout_s=180)
    assert st["version"].startswith("1+"), st["version"]
    assert all(r["version"] == st["version"] for r in st["replicas"]
               if r["state"] == "ready"), st["replicas"]
    assert {h.tag() for _ in range(10)} == {"v2:x"}

    same = c.services.upgrade("counter", CounterV2, replicas=2, config={"tag": "x"},
                              timeout_s=60)
    assert same["version"] == st["version"]  # nothing changed: no new version

    for bad, says in ((lambda: c.services.scale("counter", -1), "replicas from 0"),
                      (lambda: c.services.status("nope"), "no service 'nope'"),
                      (lambda: c.services.upgrade("other", CounterV2), "no service 'other'"),
                      (lambda: c.services.register(Counter, replicas=-2), "replicas")):
        try:
            bad()
            raise SystemExit("accepted bad input: " + says)
        except fuxi.BadInput as e:
            assert says in str(e), (says, e)

    c.services.delete("counter", wait=True, timeout_s=120)
    assert "counter" not in [s["name"] for s in c.services.list()]
print("pyapi ok")
'''


def test_service_class_from_main_register_call_scale_upgrade_delete(home, tmp_path):
    script = tmp_path / "deploy.py"  # outside the repository: only by value can it arrive
    script.write_text(SCRIPT)
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=_env(home),
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S * 2)
    assert res.returncode == 0 and "pyapi ok" in res.stdout, res.stdout + res.stderr
