"""What access control costs: Zhongkui on and off at Nuwa and Kuafu, and its token check
against PyJWT's, same run.

    python -m bench.bench_zhongkui [--calls 3000] [--flight 64] [--entries 100]

* Tokens: verifying a Zhongkui token (HMAC-SHA256 over its JSON payload, constant-time
  compare, expiry) against PyJWT verifying an HS256 JWT with the same claims (the peer a user
  would otherwise pick).
* Nuwa: one replica in its own process; a client in this process reads one node, one at a
  time (p50/p99) and ``--flight`` at a time (reads/s). With access control on, every request
  carries a token, is verified (once per connection and token) and decided on its path
  against ``--entries`` ACL entries.
* Kuafu: a proxy and an echo server in their own process, the client in this one over the
  proxy's Unix socket. On: every call carries a token, verified per connection and token,
  and decided as ``service:echo call`` against ``--entries`` entries.

Each system runs ``--rounds`` off/on pairs, alternated; the medians are compared.

Goals (ours; issue 7 sets none): verifying costs no more than PyJWT; access control adds at
most 10% to Nuwa's and Kuafu's p50 and takes at most 10% of their throughput.

Setup: ``pip install -e . pyjwt`` (pyjwt is needed by this benchmark only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_TIMEOUT_S = 60.0
THROUGHPUT_CALLS_MIN = 20_000  # calls in one throughput window (shorter ones are noise here)


def _pcts(lat: list[float]) -> dict:
    lat = sorted(lat)
    return {"p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99)] * 1e3}


def _entries(n: int) -> list[dict]:
    """``n`` ACL entries, of which the ones the benchmark's calls need come last."""
    out = [{"kind": "nuwa", "resource": f"/apps/team{i}", "principal": f"user:u{i}",
            "perms": ["read", "write"]} for i in range(max(0, n - 2))]
    out.append({"kind": "nuwa", "resource": "/bench", "principal": "user:bob",
                "perms": ["read", "write", "create"]})
    out.append({"kind": "service", "resource": "echo", "principal": "user:bob",
                "perms": ["call"]})
    return out


# ---------------------------------------------------------------- servers (subprocesses)
def serve(kind: str, auth_path: str, entries: int) -> None:
    from zhongkui.guard import Guard

    with open(auth_path) as f:
        auth = json.load(f)
    guard = Guard(auth, name=f"bench-{kind}")
    guard.set_acl({"version": 1, "entries": _entries(entries), "restricted": []})

    if kind == "nuwa":
        from nuwa.io.server import ReplicaServer, ServerConfig

        async def main():
            d = tempfile.mkdtemp(prefix="zk-bench-nuwa-")
            s = ReplicaServer(1, [1], d, ServerConfig())
            s.guard = guard  # no FuxiMaster here: entries are set above
            port = await s.start("127.0.0.1")
            print(json.dumps({"port": port}), flush=True)
            await asyncio.Event().wait()
        asyncio.run(main())
    else:
        import kuafu
        from kuafu.io.loops import LoopThread
        from kuafu.io.proxy import ProxyCore

        sock = os.path.join(tempfile.mkdtemp(prefix="zkb-", dir="/tmp"), "p.sock")
        lt = LoopThread("bench-proxy")
        core = ProxyCore("bench", uds=sock, port=None, guard=guard)
        lt.run(core.start(), 10)

        class Echo:
            async def echo(self, msg):
                return msg

        server = kuafu.Server({"echo": Echo()})
        server.credentials = guard.platform_token() or None
        lt2 = LoopThread("bench-server")
        lt2.run(server.attach(f"unix://{sock}"), 10)
        print(json.dumps({"uds": f"unix://{sock}"}), flush=True)
        while True:
            time.sleep(3600)


@contextlib.contextmanager
def _server(kind: str, auth: dict, entries: int):
    """The ``kind`` server in its own process, for the duration: yields its address info."""
    proc, info = _start(kind, auth, entries)
    try:
        yield info
    finally:
        proc.kill()
        proc.wait()


def _start(kind: str, auth: dict, entries: int):
    fd, path = tempfile.mkstemp(prefix="zk-bench-auth-")
    with os.fdopen(fd, "w") as f:
        json.dump(auth, f)
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_zhongkui", "--serve", kind,
                             "--auth-file", path, "--entries", str(entries)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    deadline = time.time() + READY_TIMEOUT_S
    line = proc.stdout.readline()
    if not line or time.time() > deadline:
        proc.kill()
        raise RuntimeError(f"the {kind} server did not start")
    os.unlink(path)
    return proc, json.loads(line)


# ---------------------------------------------------------------- measurements
async def _measure(call, calls: int, flight: int) -> dict:
    for _ in range(200):
        await call()
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t0)
    out = _pcts(lat)
    total = max(calls * 4, THROUGHPUT_CALLS_MIN)
    sem = asyncio.Semaphore(flight)

    async def one():
        async with sem:
            await call()
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    out["per_s"] = total / (time.perf_counter() - t0)
    return out


def bench_nuwa(auth: dict, token: str, calls: int, flight: int, entries: int) -> dict:
    from nuwa.client import AsyncNuwa

    with _server("nuwa", auth, entries) as info:
        async def run():
            c = AsyncNuwa([("127.0.0.1", info["port"])], token=token or "")
            deadline = time.time() + READY_TIMEOUT_S
            while True:
                try:
                    await c.create("/bench/", b"", parents=True)
                    break
                except Exception:  # noqa: BLE001 - electing itself
                    if time.time() > deadline:
                        raise
                    await asyncio.sleep(0.1)
            await c.create("/bench/k", b"v" * 100)
            try:
                return await _measure(lambda: c.get("/bench/k"), calls, flight)
            finally:
                await c.close()
        return asyncio.run(run())


def bench_kuafu(auth: dict, token: str, calls: int, flight: int, entries: int) -> dict:
    import kuafu

    with _server("kuafu", auth, entries) as info:
        async def run():
            c = kuafu.aconnect(info["uds"], service="echo", credentials=token or "")
            try:
                return await _measure(lambda: c.acall("echo", b"x" * 100), calls, flight)
            finally:
                await c.close()
        return asyncio.run(run())


def bench_tokens(n: int) -> dict:
    import jwt

    from zhongkui.keys import Keyring

    ring = Keyring.new()
    now = time.time()
    ours = ring.sign("bob", ["dev", "analysts"], now=now, ttl_s=3600)
    key = ring.keys[ring.current]
    peer = jwt.encode({"sub": "bob", "grp": ["dev", "analysts"], "iat": int(now),
                       "exp": int(now) + 3600, "kid": ring.current, "jti": "x" * 16},
                      key, algorithm="HS256")
    for _ in range(1000):
        ring.verify(ours, now)
        jwt.decode(peer, key, algorithms=["HS256"])
    t0 = time.perf_counter()
    for _ in range(n):
        ring.verify(ours, now)
    t_ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        jwt.decode(peer, key, algorithms=["HS256"])
    t_peer = (time.perf_counter() - t0) / n
    return {"zhongkui_us": t_ours * 1e6, "pyjwt_us": t_peer * 1e6,
            "ratio": t_ours / t_peer, "token_bytes": len(ours), "jwt_bytes": len(peer)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--flight", type=int, default=64)
    ap.add_argument("--entries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3,
                    help="off/on pairs per system, alternated; medians are reported")
    ap.add_argument("--serve", choices=("nuwa", "kuafu"))
    ap.add_argument("--auth-file")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.auth_file, a.entries)
        return
    from zhongkui.guard import auth_doc
    from zhongkui.keys import Keyring

    ring = Keyring.new()
    bob = ring.sign("bob", ["dev"], now=time.time(), ttl_s=3600)
    out = {"tokens": bench_tokens(20_000)}
    for name, fn in (("nuwa", bench_nuwa), ("kuafu", bench_kuafu)):
        runs = {"off": [], "on": []}
        for _ in range(a.rounds):  # alternated, so drifts of this VM hit both alike
            runs["off"].append(fn(auth_doc(False, None), "", a.calls, a.flight, a.entries))
            runs["on"].append(fn(auth_doc(True, ring), bob, a.calls, a.flight, a.entries))
        off, on = ({k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]}
                   for m in ("off", "on"))
        out[name] = {"off": off, "on": on, "p50_ratio": on["p50_ms"] / off["p50_ms"],
                     "throughput_ratio": on["per_s"] / off["per_s"], "runs": runs}
    t = out["tokens"]
    print(f"token verify: zhongkui {t['zhongkui_us']:.1f} us ({t['token_bytes']} B), PyJWT "
          f"{t['pyjwt_us']:.1f} us ({t['jwt_bytes']} B): {t['ratio']:.2f}x (goal <= 1)")
    for name in ("nuwa", "kuafu"):
        r = out[name]
        print(f"{name}: p50 off {r['off']['p50_ms']:.3f} ms, on {r['on']['p50_ms']:.3f} ms "
              f"({r['p50_ratio']:.2f}x, goal <= 1.10); p99 off {r['off']['p99_ms']:.3f} ms, "
              f"on {r['on']['p99_ms']:.3f} ms; {a.flight} in flight off "
              f"{r['off']['per_s']:.0f}/s, on {r['on']['per_s']:.0f}/s "
              f"({r['throughput_ratio']:.2f}x, goal >= 0.90)")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
