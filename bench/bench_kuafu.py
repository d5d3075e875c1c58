"""Kuafu against gRPC (asyncio API), a raw asyncio TCP echo and a Ray actor, same run.

    python -m bench.bench_kuafu [--calls 3000] [--flight 64] [--big-mib 16] [--big-calls 20]

Every system echoes: 100-byte messages one at a time (round-trip p50/p99), 100-byte messages
with ``--flight`` in flight (calls/s), and ``--big-mib`` MiB messages one at a time (MiB/s of
payload echoed). Everything runs on 127.0.0.1 and is started by this script:

* Kuafu: client -> local proxy (a KuafuProxy actor on a local Ray node) -> service (an async
  method of a Server attached to that proxy in a Ray actor); the client is a separate process
  using the asyncio API over the proxy's Unix socket, like a program on that node.
* gRPC: a grpc.aio server with a generic handler on bytes, in its own process; a grpc.aio
  client in the client process.
* raw TCP: an asyncio-streams server echoing length-prefixed messages, in its own process; the
  client calls one at a time in the caller, or pipelines on one connection with --flight in
  flight (the Python limit for this kind of exchange). ``tcpuv`` is the same code on uvloop,
  which Kuafu's proxy and servers use, for reference.
* Ray: an async actor's echo method called from the driver.

Goals (issue 5): p50 <= 0.5x gRPC, throughput >= 3x gRPC, 16 MiB >= 0.8x raw TCP.

Setup: ``pip install -e . grpcio`` (grpcio is needed by this benchmark only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

MiB = 1024 * 1024
SMALL = b"x" * 100


def _pcts(lat: list[float]) -> dict:
    lat = sorted(lat)
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


async def _measure(call, calls: int, flight: int, big: bytes, big_calls: int) -> dict:
    """call(msg) -> awaitable echo. Warm up, then the three measurements (a count of 0 skips
    one)."""
    out = {}
    if calls:
        for _ in range(200):
            await call(SMALL)
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await call(SMALL)
            lat.append(time.perf_counter() - t0)
        out.update(_pcts(lat))
    if flight > 1:
        sem = asyncio.Semaphore(flight)

        async def one():
            async with sem:
                await call(SMALL)
        n = max(calls, 3000) * 5
        t0 = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(n)])
        out["calls_per_s"] = n / (time.perf_counter() - t0)
    if big_calls:
        back = await call(big)
        assert len(back) == len(big)
        t0 = time.perf_counter()
        for _ in range(big_calls):
            await call(big)
        out["big_mib_per_s"] = len(big) * big_calls / MiB / (time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------ servers (own processes)

def _grpc_server(port_file: str) -> None:
    import grpc

    async def main():
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * MiB),
                                          ("grpc.max_send_message_length", 64 * MiB)])

        async def echo(request, context):
            return request
        handler = grpc.method_handlers_generic_handler("bench.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        with open(port_file, "w") as f:
            f.write(str(port))
        await server.wait_for_termination()
    asyncio.run(main())


def _tcp_server(port_file: str, uv: bool = False) -> None:
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readexactly(4)
                (n,) = struct.unpack("<I", head)
                body = await reader.readexactly(n)
                writer.write(head + body if n < 65536 else head)
                if n >= 65536:
                    writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0, limit=64 * MiB)
        with open(port_file, "w") as f:
            f.write(str(srv.sockets[0].getsockname()[1]))
        await srv.serve_forever()
    _run(main(), uv)


def _run(coro, uv: bool):
    if uv:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# ------------------------------------------------------------------ clients

async def _grpc_client(port: int, a) -> dict:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 64 * MiB),
            ("grpc.max_send_message_length", 64 * MiB)]) as ch:
        stub = ch.unary_unary("/bench.Echo/Echo")
        return await _measure(lambda m: stub(m), a.calls, a.flight, os.urandom(a.big_mib * MiB),
                              a.big_calls)


async def _tcp_client(port: int, a) -> dict:
    """Sequential calls write and read in the caller (no task hop); with many in flight a
    reader task hands replies back in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=64 * MiB)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    waiting: asyncio.Queue = asyncio.Queue()
    state = {"pipelined": False}

    async def read_loop():
        while True:
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            body = await reader.readexactly(n)
            waiting.get_nowait().set_result(body)
    rl = None

    async def call(m):
        writer.write(struct.pack("<I", len(m)))
        writer.write(m)
        if not state["pipelined"]:
            await writer.drain()
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            return await reader.readexactly(n)
        fut = asyncio.get_running_loop().create_future()
        waiting.put_nowait(fut)  # replies come back in order on one connection
        await writer.drain()
        return await fut

    async def measure():
        nonlocal rl
        out = await _measure(call, a.calls, 1, SMALL, 1)  # warm-up and latency
        state["pipelined"] = True
        rl = asyncio.create_task(read_loop())
        out.update({k: v for k, v in (await _measure(call, 0, a.flight, SMALL, 0)).items()
                    if k == "calls_per_s"})
        return out
    try:
        res = await measure()
        rl.cancel()
        state["pipelined"] = False
        big = os.urandom(a.big_mib * MiB)
        await call(big)
        t0 = time.perf_counter()
        for _ in range(a.big_calls):
            await call(big)
        res["big_mib_per_s"] = len(big) * a.big_calls / MiB / (time.perf_counter() - t0)
        return res
    finally:
        if rl is not None:
            rl.cancel()
        writer.close()


async def _kuafu_client(address: str, a) -> dict:
    import kuafu

    c = kuafu.aconnect(address, service="echo")
    try:
        return await _measure(lambda m: c.acall("echo", m), a.calls, a.flight,
                              os.urandom(a.big_mib * MiB), a.big_calls)
    finally:
        await c.close()


def _client_main(a) -> None:
    kind, where = a.client.split("=", 1)
    fn = {"grpc": _grpc_client, "tcp": _tcp_client, "tcpuv": _tcp_client,
          "kuafu": _kuafu_client}[kind]
    arg = int(where) if kind in ("grpc", "tcp", "tcpuv") else where
    print(json.dumps(_run(fn(arg, a), kind == "tcpuv")))


def _run_client(kind: str, where, a) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_kuafu", "--client", f"{kind}={where}",
           "--calls", str(a.calls), "--flight", str(a.flight), "--big-mib", str(a.big_mib),
           "--big-calls", str(a.big_calls)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} client failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _start_server(role: str, tmp: str):
    port_file = os.path.join(tmp, f"{role}.port")
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_kuafu", "--serve", role,
                             "--port-file", port_file])
    deadline = time.time() + 60
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"the {role} server did not start")
        time.sleep(0.05)
    return proc, int(open(port_file).read())


# ------------------------------------------------------------------ Kuafu and Ray in Ray

def _ray_side(a, tmp: str) -> tuple[dict, dict]:
    import ray

    import kuafu
    from kuafu import deploy

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", include_dashboard=False, num_cpus=2, namespace="kuafu-bench",
             _temp_dir=os.path.join(tmp, "ray"), log_to_driver=False)
    try:
        infos = deploy.start("kuafu-bench", None)
        uds = infos[0]["uds"]

        @ray.remote(num_cpus=0)
        class EchoServer:
            def __init__(self, address: str):
                class Echo:
                    async def echo(self, m):
                        return m
                # kuafu.attach serves on an event loop of its own thread (uvloop)
                self.handle = kuafu.attach({"echo": Echo()}, address, max_concurrency=256)

            def ready(self):
                return True

        @ray.remote(num_cpus=0)
        class RayEcho:
            async def echo(self, m):
                return m

        srv = EchoServer.remote(uds)
        ray.get(srv.ready.remote(), timeout=60)
        kf = _run_client("kuafu", uds, a)

        actor = RayEcho.remote()

        async def ray_call(m):
            return await actor.echo.remote(m)

        async def ray_measure():
            return await _measure(ray_call, a.calls, a.flight, os.urandom(a.big_mib * MiB),
                                  a.big_calls)
        ray.get(actor.echo.remote(b""), timeout=60)
        rr = asyncio.run(ray_measure())
        return kf, rr
    finally:
        ray.shutdown()


def _metrics_ab(a) -> None:
    """Kuafu's calls/s and p50 with metrics recording on vs off, alternated, best of each."""
    got: dict[str, list[dict]] = {"on": [], "off": []}
    try:
        for _ in range(a.metrics_ab):
            for mode, flag in (("on", "1"), ("off", "0")):
                os.environ["FUXI_METRICS"] = flag  # the local Ray and the client inherit it
                with tempfile.TemporaryDirectory(prefix="kfb-", dir="/tmp") as tmp:
                    got[mode].append(_ray_side(a, tmp)[0])
    finally:
        os.environ.pop("FUXI_METRICS", None)
    best = {m: max(v, key=lambda r: r["calls_per_s"]) for m, v in got.items()}
    for m, r in best.items():
        print(f"kuafu metrics {m:3}: {r['calls_per_s']:9.0f} calls/s ({a.flight} in flight), "
              f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms  "
              f"(all rounds: {[round(x['calls_per_s']) for x in got[m]]})")
    cost = 1 - best["on"]["calls_per_s"] / best["off"]["calls_per_s"]
    print(f"cost of metrics on Kuafu throughput: {cost * 100:+.1f} % (goal <= 3 %)")
    print(json.dumps({"bench": "kuafu_metrics_ab", "on": best["on"], "off": best["off"],
                      "cost": cost, "rounds": a.metrics_ab}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--flight", type=int, default=64)
    p.add_argument("--big-mib", type=int, default=16)
    p.add_argument("--big-calls", type=int, default=20)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--only", default="kuafu,grpc,tcp,tcpuv,ray")
    p.add_argument("--metrics-ab", type=int, default=0,
                   help="Rounds of Kuafu alone with metrics recording on, then off "
                        "(FUXI_METRICS=0 in every process), alternated: the cost of metrics.")
    a = p.parse_args()
    if a.serve:
        if a.serve == "tcpuv":
            _tcp_server(a.port_file, uv=True)
        else:
            {"grpc": _grpc_server, "tcp": _tcp_server}[a.serve](a.port_file)
        return
    if a.client:
        _client_main(a)
        return
    if a.metrics_ab:
        _metrics_ab(a)
        return
    only = set(a.only.split(","))
    res = {}
    with tempfile.TemporaryDirectory(prefix="kfb-", dir="/tmp") as tmp:
        for role in ("grpc", "tcp", "tcpuv"):
            if role in only:
                proc, port = _start_server(role, tmp)
                try:
                    res[role] = _run_client(role, port, a)
                finally:
                    proc.kill()
                    proc.wait()
        if only & {"kuafu", "ray"}:
            res["kuafu"], res["ray"] = _ray_side(a, tmp)
    print(f"{'system':8} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} {'MiB/s':>8}   "
          f"({a.big_mib} MiB echoes)")
    for k, v in res.items():
        print(f"{k:8} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f} {v['calls_per_s']:9.0f} "
              f"{v['big_mib_per_s']:8.0f}")
    if "kuafu" in res and "grpc" in res:
        k, g = res["kuafu"], res["grpc"]
        print(f"kuafu/grpc p50 {k['p50_ms'] / g['p50_ms']:.2f}x (goal <= 0.5), "
              f"throughput {k['calls_per_s'] / g['calls_per_s']:.2f}x (goal >= 3)")
    if "kuafu" in res and "tcp" in res:
        print(f"kuafu/raw-tcp {res['kuafu']['big_mib_per_s'] / res['tcp']['big_mib_per_s']:.2f}x "
              f"for {a.big_mib} MiB (goal >= 0.8)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
