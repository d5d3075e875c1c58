"""Pangu against the local-disk limit, measured in the same run on this machine.

    python -m bench.bench_pangu [--gib 1] [--random-reads 2000]

1. Local-disk limit: three processes each write ``--gib`` GiB in 8 MiB blocks with an
   fdatasync after every block (what a Pangu replica does per write) -- MiB/s per copy; then a
   read of one of those files from the page cache.
2. Pangu on one Ray node with three chunkservers (replication 3, 64 MiB chunks): a sequential
   write of ``--gib`` GiB (acknowledged = on disk at all three replicas), a sequential read,
   and 4 KiB random reads (compared with 4 KiB preads of a page-cached local file).
3. Re-replication: a fourth chunkserver joins, one holding replicas is killed, and the time
   until fsck is healthy again (detection after ``dead_after_s`` plus copying) is reported.

Goals (issue 4): write >= 0.8x the per-copy limit, read >= 1 GiB/s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import statistics
import tempfile
import time

MiB = 1024 * 1024
BLOCK = 8 * MiB


def _disk_writer(path: str, total: int, q) -> None:
    data = os.urandom(BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    done = 0
    while done < total:
        os.write(fd, data)
        os.fdatasync(fd)
        done += BLOCK
    os.close(fd)
    q.put(total / (time.perf_counter() - t0) / MiB)


def disk_limit(root: str, total: int) -> dict:
    q = mp.Queue()
    procs = [mp.Process(target=_disk_writer, args=(os.path.join(root, f"d{i}"), total, q))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rates = [q.get() for _ in procs]
    path = os.path.join(root, "d0")
    with open(path, "rb") as f:  # warm the page cache
        while f.read(BLOCK):
            pass
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        while f.readinto(buf):
            pass
    read = total / (time.perf_counter() - t0) / MiB
    return {"write_per_copy_mib_s": min(rates), "write_rates": rates, "read_mib_s": read,
            "path": path}


def local_random_reads(path: str, size: int, n: int, rng: random.Random) -> list[float]:
    lat = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(n):
            off = rng.randrange(0, size - 4096)
            t0 = time.perf_counter()
            os.pread(fd, 4096, off)
            lat.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--random-reads", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="disk-limit and Pangu writes alternate this many times (the disk's "
                         "speed drifts; each round's ratio compares neighbours)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    total = int(args.gib * 1024) * MiB
    root = tempfile.mkdtemp(prefix="bench-pangu-", dir=args.dir)
    rng = random.Random(1)
    try:
        run_pangu(root, total, args.random_reads, rng, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_pangu(root: str, total: int, n_random: int, rng: random.Random, rounds: int) -> None:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", include_dashboard=False, namespace="fuxi-bench",
             _temp_dir=os.path.join(tempfile.gettempdir(), f"bench-pangu-ray-{os.getpid()}"),
             log_to_driver=False, object_store_memory=4 * 1024 * MiB)
    from pangu import deploy
    from pangu.chunkserver import ChunkServer
    from pangu.client import Client

    try:
        deploy.start("bench", os.path.join(root, "data"), per_node=3,
                     settings={"allow_same_node": True, "dead_after_s": 3.0,
                               "maintain_s": 0.5, "repair_bytes_per_s": 512 * MiB,
                               "rebalance": False})
        c = Client("bench")
        c.mkdir("/bench", parents=True)
        src = os.urandom(64 * MiB)
        ratios, disks, writes = [], [], []
        for r in range(rounds):
            disk = disk_limit(root, total)
            local_lat = local_random_reads(disk["path"], total, n_random, rng)
            for i in range(3):
                os.remove(os.path.join(root, f"d{i}"))
            t0 = time.perf_counter()
            with c.open("/bench/big", "wb", replication=3) as f:
                done = 0
                while done < total:
                    f.write(memoryview(src)[(done % (64 * MiB)):(done % (64 * MiB)) + BLOCK])
                    done += BLOCK
            write = total / (time.perf_counter() - t0) / MiB
            ratios.append(write / disk["write_per_copy_mib_s"])
            disks.append(disk["write_per_copy_mib_s"])
            writes.append(write)
            print(f"round {r + 1}: local-disk limit {disk['write_per_copy_mib_s']:.0f} MiB/s per "
                  f"copy (3 writers x {total // MiB} MiB, fdatasync per 8 MiB; page-cache read "
                  f"{disk['read_mib_s']:.0f} MiB/s); pangu sequential write rf3 {write:.0f} "
                  f"MiB/s = {ratios[-1]:.2f}x", flush=True)
        print(f"pangu sequential write rf3: median {statistics.median(writes):.0f} MiB/s, "
              f"disk limit median {statistics.median(disks):.0f} MiB/s per copy; ratio median "
              f"{statistics.median(ratios):.2f}x (rounds {', '.join(f'{x:.2f}' for x in ratios)}"
              f"; goal >= 0.8x)", flush=True)
        buf = bytearray(BLOCK)
        reads = []
        for _ in range(2):
            t0 = time.perf_counter()
            with c.open("/bench/big", "rb") as f:
                while f.readinto(buf):
                    pass
            reads.append(total / (time.perf_counter() - t0) / MiB)
        read = max(reads)
        print(f"pangu sequential read: {read:.0f} MiB/s (runs {', '.join(f'{r:.0f}' for r in reads)})"
              f" = {read / disk['read_mib_s']:.2f}x the page-cache read; goal >= 1024 MiB/s",
              flush=True)
        import pangu.client as pc

        pc.SHORT_CIRCUIT = False
        t0 = time.perf_counter()
        with c.open("/bench/big", "rb") as f:
            while f.readinto(buf):
                pass
        rpc_read = total / (time.perf_counter() - t0) / MiB
        pc.SHORT_CIRCUIT = True
        print(f"pangu sequential read through the chunkserver (short-circuit off): "
              f"{rpc_read:.0f} MiB/s", flush=True)
        lat = []
        with c.open("/bench/big", "rb") as f:
            for _ in range(n_random):
                off = rng.randrange(0, total - 4096)
                t0 = time.perf_counter()
                f.seek(off)
                f.read(4096)
                lat.append(time.perf_counter() - t0)
        p50, lp50 = statistics.median(lat), statistics.median(local_lat)
        p99 = sorted(lat)[int(len(lat) * 0.99)]
        print(f"pangu 4 KiB random reads: {1 / statistics.mean(lat):.0f}/s, p50 {p50 * 1e3:.2f} ms,"
              f" p99 {p99 * 1e3:.2f} ms; local pread p50 {lp50 * 1e6:.1f} us "
              f"({1 / statistics.mean(local_lat):.0f}/s) -> pangu/local latency "
              f"{p50 / lp50:.0f}x", flush=True)

        # Re-replication of the whole file after a chunkserver dies.
        extra = ChunkServer.options(name="pangu-cs-extra", namespace="fuxi-bench",
                                    scheduling_strategy="DEFAULT").remote(
            "bench", os.path.join(root, "data"), "fuxi-bench", None, 1.0, 2.0, "pangu-cs-extra")
        ray.get(extra.start.remote(["pangu-master-1"]), timeout=60)
        deploy.wait_ready("bench", 4)
        assert c.fsck()["healthy"]
        info = c.call("locate", "/bench/big")
        victim = info["chunks"][0]["replicas"][0]["name"]
        st = c.status()
        held = next(s["used_bytes"] for s in st["servers"] if s["name"] == victim)
        t0 = time.perf_counter()
        ray.kill(ray.get_actor(victim, namespace="fuxi-bench"), no_restart=True)
        detected = None
        while True:
            st = c.status()
            if detected is None and any(s["name"] == victim and s["dead"] for s in st["servers"]):
                detected = time.perf_counter() - t0
            rep = c.fsck()
            if detected is not None and rep["healthy"]:
                break
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"replication not restored after 600 s: {rep}")
            time.sleep(0.1)
        healed = time.perf_counter() - t0
        print(f"re-replication: {held / MiB:.0f} MiB lost with one chunkserver; declared dead "
              f"after {detected:.1f} s (dead_after_s=3), replication factor restored after "
              f"{healed:.1f} s total = {held / MiB / max(healed - detected, 1e-9):.0f} MiB/s of "
              f"copying (cap 512 MiB/s)", flush=True)
        deploy.stop("bench")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
