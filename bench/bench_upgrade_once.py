"""Rolling upgrades under NON-idempotent calls: Fuxi services (Kuafu) against Ray Serve, same
run, same machine (issue 20, part 5).

    pip install "ray[serve]==2.60.0"      # Serve and its HTTP stack, for this benchmark only
    python -m bench.bench_upgrade_once [--threads 8] [--upgrades 2]

Each system serves a counter with 2 replicas: every call carries a fresh request id, and the
replica appends the id to a file of its own before it answers (5 ms of work first). Threads
call it without pause while the service is upgraded ``--upgrades`` times (version 1 -> 2 ->
3 ...), each a rolling upgrade that drains the old replicas. Then the files are read:

* failed: calls the caller saw fail;
* duplicated: ids some replica ran more than once (a resend of a call that had run);
* lost: answered ids no replica wrote down (should be impossible).

* Fuxi: ``tests.integration.counting:Counter`` (``count`` is declared
  ``@kuafu.method(idempotent=False)``), registered with FuxiMaster, called through the node's
  Kuafu proxy; upgraded with ``service_upgrade``.
* Ray Serve: the same counter as a deployment (2 replicas), called over HTTP on 127.0.0.1;
  upgraded by ``serve.run`` with new constructor arguments (Serve redeploys it, rolling).

Goal: 0 failed and 0 duplicated for Fuxi.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request

from bench.common import start_ray
from tests.integration.counting import counted

CALL_TIMEOUT_S = 30.0


class _Stream:
    def __init__(self, call, threads: int):
        self.call, self.stop = call, threading.Event()
        self.ok: list[str] = []
        self.failed: list[str] = []
        self.ts = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, t: int):
        i = 0
        while not self.stop.is_set():
            rid = f"{t}-{i}"
            i += 1
            try:
                self.call(rid)
                self.ok.append(rid)
            except Exception as e:  # noqa: BLE001 - counted
                self.failed.append(f"{rid}: {e!r}"[:300])

    def __enter__(self):
        for t in self.ts:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.ts:
            t.join(60)


def _tally(stream: _Stream, log_dir: str, seconds: float) -> dict:
    runs = counted(log_dir)
    return {"calls": len(stream.ok) + len(stream.failed), "failed": len(stream.failed),
            "duplicated": sum(1 for v in runs.values() if v > 1),
            "lost": len(set(stream.ok) - set(runs)), "seconds": round(seconds, 1),
            "first_failures": stream.failed[:3]}


def _fuxi_side(a, tmp: str) -> dict:
    import ray

    import kuafu
    from fuxi.core.service_spec import service_spec_from_dict
    from fuxi.runtime import connect
    from kuafu import deploy

    log_dir = os.path.join(tmp, "fuxi-counts")
    start_ray(namespace="fuxi-oncebench", temp_dir=os.path.join(tmp, "ray-fuxi"))
    try:
        uds = deploy.start("fuxi-oncebench", None)[0]["uds"]

        def spec(v: int) -> dict:
            return service_spec_from_dict({
                "name": "counter", "class": "tests.integration.counting:Counter",
                "version": str(v), "replicas": 2, "resources": {"cpu": 0},
                "config": {"log_dir": log_dir, "tag": f"v{v}"}, "workdir": os.getcwd(),
                "health_check": {"period_s": 0.5}}).to_doc()

        def wait(master, v: int) -> None:
            deadline = time.time() + 120
            while True:
                st = ray.get(master.service_status.remote("counter"), timeout=30)
                if (st["ready"] == 2 and not st["starting"] and not st["draining"]
                        and all(r["version"] == str(v) for r in st["replicas"])):
                    return
                if time.time() > deadline:
                    raise RuntimeError(f"counter v{v} not ready: {st['events'][-5:]}")
                time.sleep(0.2)

        with connect("oncebench") as conn:
            master = conn.master
            ray.get(master.service_register.remote(spec(1)), timeout=30)
            wait(master, 1)
            local = threading.local()

            def call(rid: str):
                if not hasattr(local, "c"):
                    local.c = kuafu.connect(uds, service="counter", timeout_s=CALL_TIMEOUT_S)
                local.c.call("count", rid.encode())

            t0 = time.time()
            with _Stream(call, a.threads) as s:
                time.sleep(1.0)
                for v in range(2, 2 + a.upgrades):
                    ray.get(master.service_upgrade.remote(spec(v)), timeout=30)
                    wait(master, v)
                time.sleep(1.0)
            out = _tally(s, log_dir, time.time() - t0)
            ray.get(master.service_remove.remote("counter"), timeout=30)
        return out
    finally:
        ray.shutdown()


def _serve_side(a, tmp: str) -> dict:
    import ray
    from ray import serve

    log_dir = os.path.join(tmp, "serve-counts")
    start_ray(namespace="serve-oncebench", temp_dir=os.path.join(tmp, "ray-serve"))
    try:
        from bench._serve_counter import ServeCounter

        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        dep = serve.deployment(ServeCounter, num_replicas=2, ray_actor_options={"num_cpus": 0})
        serve.run(dep.bind(log_dir, "v1"), route_prefix="/c")
        url = f"http://127.0.0.1:{port}/c"

        def call(rid: str):
            req = urllib.request.Request(url, data=rid.encode(), method="POST")
            with urllib.request.urlopen(req, timeout=CALL_TIMEOUT_S) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
                r.read()

        t0 = time.time()
        with _Stream(call, a.threads) as s:
            time.sleep(1.0)
            for v in range(2, 2 + a.upgrades):
                serve.run(dep.bind(log_dir, f"v{v}"), route_prefix="/c")
                time.sleep(1.0)
            time.sleep(1.0)
        return _tally(s, log_dir, time.time() - t0)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--upgrades", type=int, default=2)
    a = p.parse_args()
    if not 1 <= a.threads <= 256 or not 1 <= a.upgrades <= 20:
        p.error("--threads 1..256 and --upgrades 1..20 expected")
    with tempfile.TemporaryDirectory(prefix="onceb-", dir="/tmp") as tmp:
        fx = _fuxi_side(a, tmp)
        sv = _serve_side(a, tmp)
    print(f"{'system':8} {'calls':>7} {'failed':>7} {'duplicated':>10} {'lost':>5} {'calls/s':>8}")
    for name, r in (("fuxi", fx), ("serve", sv)):
        print(f"{name:8} {r['calls']:7d} {r['failed']:7d} {r['duplicated']:10d} {r['lost']:5d} "
              f"{r['calls'] / r['seconds']:8.0f}")
    print(f"calls/s during upgrades: {fx['calls'] / fx['seconds'] / (sv['calls'] / sv['seconds']):.1f}x "
          f"Serve; goal: fuxi 0 failed and 0 duplicated")
    print(json.dumps({"fuxi": fx, "serve": sv}))


if __name__ == "__main__":
    main()
