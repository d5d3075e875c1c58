"""Nuwa vs etcd, same machine, same run, same Python load generator.

Setup (once): ``apt-get install -y etcd-server`` (Debian's etcd 3.4; default fsync).

    python -m bench.bench_nuwa [--ops 2000 --clients 32 --seconds 5]

Both systems run as 3 members on 127.0.0.1, each member its own process with its own data
directory: etcd processes started here, Nuwa replicas as Ray actors on a private local Ray.
The load generator is one asyncio program with a thin adapter per system. etcd is reached
through its v3 JSON gateway on persistent HTTP/1.1 connections, Nuwa through its own client.
Measured: put p50/p99 (one client, 256-byte values), put throughput (N concurrent clients),
linearizable get throughput, watch notification p50, and the time from killing the leader to
the next successful write.

Leader loss is checked, not assumed (issue 14): just before the kill every member is asked
its role and term, and the victim must be the one leader of the highest term; the kill is a
SIGKILL of its process, and the clock starts before it; afterwards a survivor must lead a
*newer* term. The report gives the recovery time and the elections it took (terms elapsed).
A run where any check fails raises instead of printing a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from bench.common import machine, report

VALUE = b"v" * 256


# ---------------------------------------------------------------- a minimal HTTP/1.1 client


class Http:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.r = self.w = None

    async def post(self, path: str, body: dict, timeout_s: float = 5.0) -> dict:
        return await asyncio.wait_for(self._post(path, body), timeout_s)

    async def _post(self, path: str, body: dict) -> dict:
        if self.w is None or self.w.is_closing():
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode()
        self.w.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        status = await self.r.readline()
        headers = {}
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            payload = await self.r.readexactly(int(headers["content-length"]))
        else:  # chunked
            payload = b""
            while True:
                n = int((await self.r.readline()).strip(), 16)
                if n == 0:
                    await self.r.readline()
                    break
                payload += await self.r.readexactly(n)
                await self.r.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            self.w.close()
            self.w = None
            raise RuntimeError(f"etcd {path}: {status!r} {payload[:200]!r}")
        return json.loads(payload)

    def close(self):
        if self.w is not None:
            self.w.close()


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# ---------------------------------------------------------------- etcd

class Etcd:
    name = "etcd"

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen] = {}
        self.members = {i: (2379 + 10 * i, 2380 + 10 * i) for i in range(3)}

    def start(self) -> None:
        cluster = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, (_, p) in self.members.items())
        for i, (cport, pport) in self.members.items():
            self.procs[i] = subprocess.Popen([
                "etcd", "--name", f"m{i}", "--data-dir", os.path.join(self.tmp, f"etcd{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{cport}",
                "--advertise-client-urls", f"http://127.0.0.1:{cport}",
                "--listen-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "fuxi-bench", "--log-level", "error",
            ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)

    def client(self, member: int | None = None, exclude: int | None = None,
               attempt_timeout_s: float = 5.0):
        alive = [i for i, p in self.procs.items() if p.poll() is None and i != exclude]
        return EtcdClient(self, alive if member is None else [member], attempt_timeout_s)

    async def leader(self) -> int:
        for i in self.procs:
            if self.procs[i].poll() is None:
                h = Http("127.0.0.1", self.members[i][0])
                try:
                    st = await h.post("/v3/maintenance/status", {})
                finally:
                    h.close()
                lead = int(st["leader"])
                for j in self.procs:
                    if self.procs[j].poll() is None:
                        h = Http("127.0.0.1", self.members[j][0])
                        try:
                            if int((await h.post("/v3/maintenance/status", {}))["header"]["member_id"]) == lead:
                                return j
                        finally:
                            h.close()
        raise RuntimeError("no etcd leader")

    async def roles(self, exclude: int | None = None) -> dict[int, tuple[bool, int]]:
        """member -> (leads, raft term), asked of every live member."""
        out = {}
        for i, p in self.procs.items():
            if p.poll() is not None or i == exclude:
                continue
            h = Http("127.0.0.1", self.members[i][0])
            try:
                st = await h.post("/v3/maintenance/status", {})
            except Exception:
                continue
            finally:
                h.close()
            out[i] = (st["leader"] == st["header"]["member_id"], int(st["raftTerm"]))
        return out

    def kill(self, member: int) -> None:
        self.procs[member].send_signal(signal.SIGKILL)
        self.procs[member].wait(timeout=10)
        self.killed = member


class EtcdClient:
    def __init__(self, etcd: Etcd, members: list[int], attempt_timeout_s: float = 5.0):
        self.etcd, self.members = etcd, members
        self.attempt_timeout_s = attempt_timeout_s
        self.i = 0
        self.h = Http("127.0.0.1", etcd.members[members[0]][0])

    def _next(self):
        self.h.close()
        alive = [m for m in self.members if self.etcd.procs[m].poll() is None] or self.members
        self.i = (self.i + 1) % len(alive)
        self.h = Http("127.0.0.1", self.etcd.members[alive[self.i]][0])

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self.h.post("/v3/kv/put", {"key": b64(key.encode()), "value": b64(value)},
                              timeout_s=self.attempt_timeout_s)
        except Exception:
            self._next()
            raise

    async def get(self, key: str) -> bytes:
        res = await self.h.post("/v3/kv/range", {"key": b64(key.encode())})
        return base64.b64decode(res["kvs"][0]["value"]) if res.get("kvs") else b""

    async def watch_one(self, key: str, started: asyncio.Event, out: asyncio.Queue) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", self.etcd.members[self.members[0]][0])
        body = json.dumps({"create_request": {"key": b64(key.encode())}}).encode()
        w.write(f"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        while (await r.readline()) not in (b"\r\n", b""):
            pass
        started_seen = False
        try:
            while True:
                n = int((await r.readline()).strip(), 16)
                chunk = await r.readexactly(n)
                await r.readline()
                msg = json.loads(chunk)
                if not started_seen:
                    started_seen = True
                    started.set()
                for _ in msg.get("result", {}).get("events", []):
                    out.put_nowait(time.perf_counter())
        finally:
            w.close()

    async def close(self):
        self.h.close()


# ---------------------------------------------------------------- nuwa

class NuwaSystem:
    name = "nuwa"

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.group = None
        self.pids: dict[int, int] = {}
        self.killed: list = []

    def start(self) -> None:
        import ray

        from nuwa.group import start_group

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 namespace="nuwa-bench", _temp_dir=f"/tmp/fuxi-bench-{os.getuid()}")
        self.group = start_group(3, self.tmp, "nuwa-bench")

    def stop(self) -> None:
        import ray

        for h in self.killed:
            ray.kill(h, no_restart=True)
        self.group.stop()
        ray.shutdown()

    def client(self, member=None, exclude: int | None = None, attempt_timeout_s: float = 5.0):
        addrs = [a for rid, a in sorted(self.group.addresses.items()) if rid != exclude]
        return NuwaClient(addrs, attempt_timeout_s)

    async def leader(self) -> int:
        """The current leader: of those that say LEADER, the one with the highest term (a
        deposed leader may not have noticed yet)."""
        best = None
        for rid, h in self.group.handles.items():
            st = await h.status.remote()
            if st["role"] == "LEADER" and (best is None or st["term"] > best[1]):
                best = (rid, st["term"])
        if best is None:
            raise RuntimeError("no nuwa leader")
        return best[0]

    async def term(self) -> int:
        return max([(await h.status.remote())["term"] for h in self.group.handles.values()])

    async def roles(self, exclude: int | None = None) -> dict[int, tuple[bool, int]]:
        """replica -> (leads, term), asked of every replica (its pid is kept for the kill)."""
        out = {}
        for rid, h in self.group.handles.items():
            if rid == exclude:
                continue
            try:
                st = await asyncio.wait_for(h.status.remote(), 5)
            except Exception:
                continue
            self.pids[rid] = st["pid"]
            out[rid] = (st["role"] == "LEADER", st["term"])
        return out

    def kill(self, rid: int) -> None:
        """An instant crash: SIGKILL the replica's process (``ray.kill`` returns before the
        process is dead, and the old code started the clock only once it was, so a new leader
        could already be in office at t0)."""
        os.kill(self.pids[rid], signal.SIGKILL)
        self.killed.append(self.group.handles.pop(rid))  # ray.kill'ed in stop(), off the clock


class NuwaClient:
    def __init__(self, addresses, attempt_timeout_s: float = 5.0):
        from nuwa.client import AsyncNuwa

        self.c = AsyncNuwa(addresses, timeout_s=attempt_timeout_s)
        self.created: set[str] = set()

    async def put(self, key: str, value: bytes) -> None:
        from nuwa.errors import NoNode

        path = "/" + key
        if path in self.created:
            await self.c.set(path, value)
            return
        try:
            await self.c.set(path, value)
        except NoNode:
            await self.c.create(path, value)
        self.created.add(path)

    async def get(self, key: str) -> bytes:
        return (await self.c.get("/" + key))[0]

    async def watch_one(self, key: str, started: asyncio.Event, out: asyncio.Queue) -> None:
        w = await self.c.watch("/" + key)
        started.set()
        async for _ in w:
            out.put_nowait(time.perf_counter())

    async def close(self):
        await self.c.close()


# ---------------------------------------------------------------- pysyncobj

class PySyncObj:
    name = "pysyncobj"

    def __init__(self, tmp: str):
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen] = {}
        self.ports = {i: (4321 + 10 * i, 4322 + 10 * i) for i in range(3)}  # (raft, client)

    def start(self) -> None:
        import sys

        for i, (rport, cport) in self.ports.items():
            peers = [str(r) for j, (r, _) in self.ports.items() if j != i]
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "bench.pysyncobj_node", str(rport), str(cport), *peers,
                 os.path.join(self.tmp, f"node{i}")],
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)

    def client(self, member=None, exclude: int | None = None, attempt_timeout_s: float = 5.0):
        alive = [i for i, p in self.procs.items() if p.poll() is None and i != exclude]
        return LineClient([self.ports[i][1] for i in alive], attempt_timeout_s)

    async def leader(self) -> int:
        c = self.client()
        try:
            st = await c.call({"op": "status"})
        finally:
            await c.close()
        for i, (rport, _) in self.ports.items():
            if st["leader"].endswith(f":{rport}"):
                return i
        raise RuntimeError(f"no pysyncobj leader: {st}")

    def kill(self, member: int) -> None:
        self.procs[member].send_signal(signal.SIGKILL)
        self.procs[member].wait(timeout=10)


class LineClient:
    def __init__(self, ports: list[int], attempt_timeout_s: float):
        self.ports, self.timeout_s = ports, attempt_timeout_s
        self.i = 0
        self.r = self.w = None

    async def call(self, req: dict):
        if self.w is None:
            self.r, self.w = await asyncio.open_connection("127.0.0.1", self.ports[self.i])
        try:
            self.w.write((json.dumps(req) + "\n").encode())
            line = await asyncio.wait_for(self.r.readline(), self.timeout_s)
        except Exception:
            self.w.close()
            self.w = None
            self.i = (self.i + 1) % len(self.ports)
            raise
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(msg["error"])
        return msg["ok"]

    async def put(self, key: str, value: bytes) -> None:
        await self.call({"op": "put", "k": key, "v": value.decode()})

    async def get(self, key: str) -> bytes:
        return ((await self.call({"op": "get", "k": key})) or "").encode()

    async def close(self):
        if self.w is not None:
            self.w.close()


# ---------------------------------------------------------------- the load generator

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def measure(system, ops: int, clients: int, seconds: float) -> dict:
    out: dict = {}
    if hasattr(system, "term"):
        out["_term0"] = await system.term()
    c = system.client()
    for _ in range(50):  # warm-up, and the key exists for gets
        await c.put("k0", VALUE)
    lat = []
    for i in range(ops):
        t0 = time.perf_counter()
        await c.put(f"k{i % 100}", VALUE)
        lat.append(time.perf_counter() - t0)
    out["put_p50_ms"] = round(1000 * pct(lat, 0.5), 3)
    out["put_p99_ms"] = round(1000 * pct(lat, 0.99), 3)

    async def loop(fn, cl, stop_at, counter):
        while time.perf_counter() < stop_at:
            await fn(cl)
            counter[0] += 1

    for what, fn in (("put", lambda cl: cl.put(f"t{id(cl) % 1000}", VALUE)),
                     ("get", lambda cl: cl.get("k0"))):
        cls = [system.client() for _ in range(clients)]
        for cl in cls:
            await cl.put(f"t{id(cl) % 1000}", VALUE)
        counter = [0]
        stop_at = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(fn, cl, stop_at, counter) for cl in cls))
        out[f"{what}_per_s"] = round(counter[0] / (time.perf_counter() - t0))
        for cl in cls:
            await cl.close()

    # watch notification: time from issuing the put to the watcher receiving the event
    if not hasattr(system.client(), "watch_one"):
        out["watch_notify_p50_ms"] = None  # no watches in this system
        return await _recovery(system, c, out)
    watcher = system.client()
    started, q = asyncio.Event(), asyncio.Queue()
    task = asyncio.create_task(watcher.watch_one("wk", started, q))
    await asyncio.wait_for(started.wait(), 10)
    notify = []
    for _ in range(200):
        t0 = time.perf_counter()
        await c.put("wk", VALUE)
        got = await asyncio.wait_for(q.get(), 5)
        notify.append(max(0.0, got - t0))
    task.cancel()
    out["watch_notify_p50_ms"] = round(1000 * pct(notify, 0.5), 3)
    return await _recovery(system, c, out)


def _sole_leader(roles: dict[int, tuple[bool, int]]) -> tuple[int, int] | None:
    """(leader, term) if exactly one member leads the highest term any member reports."""
    if not roles:
        return None
    top = max(term for _, term in roles.values())
    leaders = [m for m, (leads, term) in roles.items() if leads and term == top]
    return (leaders[0], top) if len(leaders) == 1 else None


async def _recovery(system, c, out: dict) -> dict:
    # Leader recovery: kill the leader, then time the next successful write. The client talks
    # only to the survivors (a write the dying leader still answered would prove nothing), and
    # each try has a short timeout so the figure is the cluster's, not a client timeout's.
    # Kill a leader that has held office for a while: one elected a moment ago (or about to
    # be replaced) would make the figure meaningless.
    leader = await system.leader()
    for _ in range(20):
        await asyncio.sleep(0.3)
        again = await system.leader()
        if again == leader:
            break
        leader = again
    if hasattr(system, "term"):
        out["elections_during_load"] = await system.term() - out.pop("_term0")
    await c.close()
    checked = hasattr(system, "roles")
    if checked:
        # Confirm, just before the kill, that the victim is the one leader of the newest term.
        for _ in range(20):
            sole = _sole_leader(await system.roles())
            if sole is not None:
                break
            await asyncio.sleep(0.1)
        if sole is None:
            raise RuntimeError(f"{system.name}: no single leader of the newest term to kill")
        leader, led_term = sole
    t0 = time.perf_counter()
    system.kill(leader)
    c2 = system.client(exclude=leader, attempt_timeout_s=0.2)
    while True:
        try:
            await c2.put("after", VALUE)
            break
        except Exception:
            await asyncio.sleep(0.01)
        if time.perf_counter() - t0 > 30:
            raise RuntimeError("no write within 30 s of killing the leader")
    out["leader_recovery_s"] = round(time.perf_counter() - t0, 3)
    await c2.close()
    if checked:
        # A survivor must now lead a newer term: otherwise the victim was not the leader.
        after = None
        for _ in range(50):
            after = _sole_leader(await system.roles(exclude=leader))
            if after is not None:
                break
            await asyncio.sleep(0.1)
        if after is None or after[1] <= led_term:
            raise RuntimeError(f"{system.name}: after killing member {leader} (leader of term "
                               f"{led_term}) no survivor leads a newer term ({after}); the "
                               f"figure would not be a leader loss")
        out["leader_recovery_elections"] = after[1] - led_term
        out["leader_loss"] = (f"killed {leader}, leader of term {led_term}; {after[0]} leads "
                              f"term {after[1]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    if shutil.which("etcd") is None:
        raise SystemExit("etcd is not installed: apt-get install -y etcd-server")
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        raise SystemExit("pysyncobj is not installed: pip install pysyncobj") from None
    results = {}
    for cls in (Etcd, NuwaSystem, PySyncObj):
        tmp = tempfile.mkdtemp(prefix=f"fuxi-bench-{cls.name}-")
        system = cls(tmp)
        system.start()
        try:
            time.sleep(2.0)  # let the group elect a leader
            results[cls.name] = asyncio.run(measure(system, args.ops, args.clients, args.seconds))
        finally:
            system.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    e, n, p = results["etcd"], results["nuwa"], results["pysyncobj"]
    print(f"{machine()}: 3 members on 127.0.0.1, {args.clients} clients for throughput")
    print(f"  {'':24} {'etcd':>9} {'nuwa':>9} {'pysyncobj':>10}   nuwa/etcd")
    for k in ("put_p50_ms", "put_p99_ms", "put_per_s", "get_per_s", "watch_notify_p50_ms",
              "leader_recovery_s"):
        ratio = f"{n[k] / e[k]:.2f}x" if e[k] else ""
        print(f"  {k:24} {e[k]!s:>9} {n[k]!s:>9} {p[k]!s:>10}   {ratio}")
    print("  (pysyncobj: gets read a node's local copy — not linearizable; no watches)")
    print(f"  nuwa elections during the load phases: {n.get('elections_during_load')}")
    for name, r in (("etcd", e), ("nuwa", n)):
        print(f"  {name} leader loss: {r['leader_loss']}; {r['leader_recovery_elections']} "
              f"election(s), next write after {r['leader_recovery_s']} s")
    report("nuwa", etcd=e, nuwa=n, pysyncobj=p)


if __name__ == "__main__":
    main()
