"""The HTTP front door against Ray Serve over HTTP, and Kuafu's Python handle against Serve's
``DeploymentHandle`` (issue 20): an echo with 2 replicas, 32 concurrent clients, 100-byte
messages, same run, same machine.

    pip install "ray[serve]==2.60.0"      # Serve and its HTTP stack, for this benchmark only
    python -m bench.bench_http [--seconds 10] [--clients 32]

* Fuxi HTTP: ``jobs/services/echo.yaml`` registered with FuxiMaster (2 replicas, no CPU
  reserved), called as ``POST /v1/services/echo/echo`` (``application/octet-stream``) at the
  node's Kuafu proxy's front door by aiohttp in a client process, ``--clients`` connections.
* Serve HTTP: the same echo as a deployment (2 replicas, ``max_ongoing_requests=1000``),
  ``POST /echo`` on Serve's proxy, by the same aiohttp client.
* Fuxi handle: ``kuafu.aconnect`` through the proxy's Unix socket, ``--clients`` calls in
  flight (a client process).
* Serve handle: ``DeploymentHandle.echo.remote`` from the driver, ``--clients`` in flight.

Goals (issue 20): HTTP >= 5x Serve's QPS with p99 <= Serve's p50; handle >= 10x calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile

from bench.common import start_ray
from bench.bench_services import MSG, _fuxi_client, _free_port, _load, _wait_ready


async def _http_client(url: str, a) -> dict:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=a.clients)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def call():
            async with s.post(url, data=MSG,
                              headers={"Content-Type": "application/octet-stream"}) as r:
                body = await r.read()
                if r.status != 200 or body != MSG:
                    raise RuntimeError(f"HTTP {r.status}")
        return await _load(call, a.seconds, a.clients)


def _run_client(kind: str, where: str, a) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_http", "--client", f"{kind}={where}",
           "--seconds", str(a.seconds), "--clients", str(a.clients)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} client failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fuxi_side(a, tmp: str) -> dict:
    import ray

    from fuxi.io.specfile import load_service_spec
    from fuxi.runtime import connect
    from kuafu import deploy

    start_ray(namespace="fuxi-httpbench", temp_dir=os.path.join(tmp, "ray-fuxi"))
    try:
        info = deploy.start("fuxi-httpbench", None,
                            settings={deploy.HTTP_PORT_SETTING: 0})[0]
        with connect("httpbench") as conn:
            master = conn.master
            spec = load_service_spec("jobs/services/echo.yaml").to_doc()
            spec["workdir"] = os.getcwd()
            ray.get(master.service_register.remote(spec), timeout=30)
            _wait_ready(master, 2, "1")
            out = {"http": _run_client("http", f"{info['http']}/v1/services/echo/echo", a),
                   "handle": _run_client("handle", info["uds"], a)}
            ray.get(master.service_remove.remote("echo"), timeout=30)
        return out
    finally:
        ray.shutdown()


def _serve_side(a, tmp: str) -> dict:
    import ray
    from ray import serve
    from starlette.responses import Response

    start_ray(namespace="serve-httpbench", temp_dir=os.path.join(tmp, "ray-serve"))
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})

        @serve.deployment(num_replicas=2, max_ongoing_requests=1000,
                          ray_actor_options={"num_cpus": 0})
        class Echo:
            async def __call__(self, request):
                return Response(await request.body())

            async def echo(self, msg: bytes) -> bytes:
                return msg

        handle = serve.run(Echo.bind(), route_prefix="/echo")
        out = {"http": _run_client("serve", f"http://127.0.0.1:{port}/echo", a)}

        async def call():
            if await handle.echo.remote(MSG) != MSG:
                raise RuntimeError("a wrong reply")
        out["handle"] = asyncio.run(_load(call, a.seconds, a.clients))
        return out
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
        if kind == "handle":
            print(json.dumps(asyncio.run(_fuxi_client(where, a))))
        else:
            print(json.dumps(asyncio.run(_http_client(where, a))))
        return
    with tempfile.TemporaryDirectory(prefix="hb-", dir="/tmp") as tmp:
        fx = _fuxi_side(a, tmp)
        sv = _serve_side(a, tmp)
    print(f"{'system':14} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in (("fuxi http", fx["http"]), ("serve http", sv["http"]),
                    ("fuxi handle", fx["handle"]), ("serve handle", sv["handle"])):
        print(f"{name:14} {r['qps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d}")
    h, sh = fx["http"], sv["http"]
    print(f"HTTP: {h['qps'] / sh['qps']:.1f}x Serve's QPS (goal >= 5); fuxi p99 "
          f"{h['p99_ms']:.2f} ms vs Serve p50 {sh['p50_ms']:.2f} ms (goal p99 <= Serve's p50)")
    print(f"handle: {fx['handle']['qps'] / sv['handle']['qps']:.1f}x Serve's DeploymentHandle "
          f"calls/s (goal >= 10)")
    print(json.dumps({"fuxi": fx, "serve": sv}))


if __name__ == "__main__":
    main()
