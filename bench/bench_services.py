"""Fuxi services (Kuafu) against Ray Serve: an echo service with 2 replicas, 32 concurrent
clients, same run, same machine.

    pip install "ray[serve]==2.60.0"      # Serve and its HTTP stack, for this benchmark only
    python -m bench.bench_services [--seconds 10] [--clients 32]

* Fuxi: ``jobs.services.echo:Echo`` registered with FuxiMaster (2 replicas, no CPU reserved),
  called through the node's Kuafu proxy (Unix socket) by a client process using the asyncio
  API, ``--clients`` calls in flight.
* Ray Serve: the same echo as a deployment (2 replicas, ``max_ongoing_requests`` raised to
  1000 so Serve does not throttle), called over HTTP on 127.0.0.1 by aiohttp with
  ``--clients`` connections.

Then, for Fuxi: requests failed during a rolling upgrade (version 1 -> 2) and during the kill
of a replica's process, under the same load.

Goal (issue 6): >= 10x Serve's QPS, and p99 <= Serve's p50.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

MSG = b"x" * 100


def _pcts(lat: list[float]) -> dict:
    lat = sorted(lat)
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


async def _load(call, seconds: float, clients: int) -> dict:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def one():
        nonlocal errors
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                await call()
                lat.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - counted
                errors += 1
    for _ in range(50):
        await call()  # warm up
    t0 = time.perf_counter()
    await asyncio.gather(*[one() for _ in range(clients)])
    out = {"qps": len(lat) / (time.perf_counter() - t0), "errors": errors, "calls": len(lat)}
    out.update(_pcts(lat))
    return out


async def _fuxi_client(address: str, a) -> dict:
    import kuafu

    c = kuafu.aconnect(address, service="echo", timeout_s=30)
    try:
        return await _load(lambda: c.acall("echo", MSG), a.seconds, a.clients)
    finally:
        await c.close()


async def _serve_client(url: str, a) -> dict:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=a.clients)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def call():
            async with s.post(url, data=MSG) as r:
                body = await r.read()
                if r.status != 200 or body != MSG:
                    raise RuntimeError(f"HTTP {r.status}")
        return await _load(call, a.seconds, a.clients)


def _run_client(kind: str, where: str, a) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_services", "--client", f"{kind}={where}",
           "--seconds", str(a.seconds), "--clients", str(a.clients)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} client failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(master, n: int, version: str, timeout_s: float = 120) -> dict:
    import ray

    deadline = time.time() + timeout_s
    while True:
        st = ray.get(master.service_status.remote("echo"), timeout=30)
        if (st["ready"] == n and not st["starting"] and not st["draining"]
                and all(r["version"] == version for r in st["replicas"])):
            return st
        if time.time() > deadline:
            raise RuntimeError(f"echo not ready: {st['events'][-5:]}")
        time.sleep(0.2)


class _Sync:
    """A steady blocking load from threads, counting failures (for upgrade and kill)."""

    def __init__(self, address: str, threads: int = 8):
        import kuafu

        self.c = kuafu.connect(address, service="echo", timeout_s=30)
        self.stop = threading.Event()
        self.ok = self.failed = 0
        self.ts = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        while not self.stop.is_set():
            try:
                self.c.call("version", b"")
                self.ok += 1
            except Exception:  # noqa: BLE001 - counted
                self.failed += 1

    def __enter__(self):
        for t in self.ts:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.ts:
            t.join(60)
        self.c.close()


def _fuxi_side(a, tmp: str) -> dict:
    import ray

    from fuxi.runtime import connect
    from fuxi.io.specfile import load_service_spec
    from kuafu import deploy

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", include_dashboard=False, num_cpus=2, namespace="fuxi-svcbench",
             _temp_dir=os.path.join(tmp, "ray-fuxi"), log_to_driver=False)
    try:
        uds = deploy.start("fuxi-svcbench", None)[0]["uds"]
        with connect("svcbench") as conn:
            master = conn.master
            spec = load_service_spec("jobs/services/echo.yaml").to_doc()
            spec["workdir"] = os.getcwd()
            ray.get(master.service_register.remote(spec), timeout=30)
            _wait_ready(master, 2, "1")
            res = _run_client("fuxi", uds, a)
            # Requests failed during a rolling upgrade, then during a replica kill.
            with _Sync(uds) as load:
                time.sleep(1.0)
                v2 = dict(spec, version="2", config={"tag": "v2"})
                ray.get(master.service_upgrade.remote(v2), timeout=30)
                _wait_ready(master, 2, "2")
                time.sleep(1.0)
            res["upgrade"] = {"ok": load.ok, "failed": load.failed}
            st = ray.get(master.service_status.remote("echo"), timeout=30)
            victim = st["replicas"][0]["replica"]
            with _Sync(uds) as load:
                time.sleep(1.0)
                h = ray.get_actor(f"fuxi-svc-{victim}", namespace="fuxi-svcbench")
                os.kill(ray.get(h.info.remote(), timeout=10)["pid"], 9)
                deadline = time.time() + 60
                while True:
                    st = ray.get(master.service_status.remote("echo"), timeout=30)
                    if st["ready"] == 2 and victim not in [r["replica"] for r in st["replicas"]]:
                        break
                    if time.time() > deadline:
                        raise RuntimeError("the killed replica was not replaced in 60 s")
                    time.sleep(0.2)
                time.sleep(1.0)
            res["kill"] = {"ok": load.ok, "failed": load.failed}
            ray.get(master.service_remove.remote("echo"), timeout=30)
        return res
    finally:
        ray.shutdown()


def _serve_side(a, tmp: str) -> dict:
    import ray
    from ray import serve
    from starlette.responses import Response

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", include_dashboard=False, num_cpus=2, namespace="serve-bench",
             _temp_dir=os.path.join(tmp, "ray-serve"), log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        @serve.deployment(num_replicas=2, max_ongoing_requests=1000,
                          ray_actor_options={"num_cpus": 0})
        class Echo:
            async def __call__(self, request):
                return Response(await request.body())

        serve.run(Echo.bind(), route_prefix="/echo")
        return _run_client("serve", f"http://127.0.0.1:{port}/echo", a)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--client", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.client:
        kind, where = a.client.split("=", 1)
        fn = _fuxi_client if kind == "fuxi" else _serve_client
        print(json.dumps(asyncio.run(fn(where, a))))
        return
    with tempfile.TemporaryDirectory(prefix="svb-", dir="/tmp") as tmp:
        fx = _fuxi_side(a, tmp)
        sv = _serve_side(a, tmp)
    print(f"{'system':10} {'QPS':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in (("fuxi", fx), ("serve", sv)):
        print(f"{name:10} {r['qps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d}")
    print(f"QPS {fx['qps'] / sv['qps']:.1f}x Serve (goal >= 10); fuxi p99 {fx['p99_ms']:.2f} ms "
          f"vs Serve p50 {sv['p50_ms']:.2f} ms (goal p99 <= Serve's p50)")
    print(f"rolling upgrade: {fx['upgrade']['failed']} failed of "
          f"{fx['upgrade']['ok'] + fx['upgrade']['failed']}; replica kill: "
          f"{fx['kill']['failed']} failed of {fx['kill']['ok'] + fx['kill']['failed']}")
    print(json.dumps({"fuxi": fx, "serve": sv}))


if __name__ == "__main__":
    main()
