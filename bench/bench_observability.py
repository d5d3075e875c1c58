"""The cost of observability: dispatch throughput with the head's /metrics scraped vs not,
in the same run and the same cluster, alternated.

    python -m bench.bench_observability [--n 50000] [--rounds 3] [--scrape-interval-s 1]

"On": FuxiWeb serves /metrics and a scraper thread GETs it every ``--scrape-interval-s``
(1 s: fifteen times Prometheus's default rate), each scrape asking FuxiMaster, the running
JobMaster, the workers' agents... everything ``fuxi.shells.scrape`` asks. "Off": nobody
scrapes. Each round runs one job of ``--n`` no-op instances off, then on; the best of each is
reported, so warm-up and a busy neighbour do not pass for the cost. Recording itself (a
counter's ``inc``) is timed in-process with ``FUXI_METRICS`` on and off: in a real process
it is switched off only by starting with ``FUXI_METRICS=0``.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import timeit
import urllib.request

from bench.common import machine, report, run_noop, start_ray

SCRAPE_HTTP_TIMEOUT_S = 30.0


def recording_ns() -> tuple[float, float]:
    from base import metrics

    r = metrics.Registry()
    c = r.counter("fuxi_bench_total", "x", labels=("kind",))
    n = 200_000
    on = timeit.timeit(lambda: c.inc(kind="a"), number=n) / n * 1e9
    metrics.ENABLED = False
    try:
        off = timeit.timeit(lambda: c.inc(kind="a"), number=n) / n * 1e9
    finally:
        metrics.ENABLED = True
    return on, off


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by ``root`` and each process below it (the
    local Ray this driver started: GCS, raylet, workers, actors), by pid."""
    from base.cluster import proc_stats

    parent, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid, fields in proc_stats():
        parent[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
    out = {}
    for pid in cpu:
        p = pid
        while p and p != root and p in parent:
            p = parent[p]
        if p == root:
            out[pid] = cpu[pid]
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two ``tree_cpu`` readings (a process that ended meanwhile
    is not counted: the idle cluster keeps its processes)."""
    return sum(max(0.0, c - before.get(pid, 0.0)) for pid, c in after.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scrape-interval-s", type=float, default=1.0)
    ap.add_argument("--idle-s", type=float, default=10.0)
    args = ap.parse_args()
    ray = start_ray(args.cpus)

    from fuxi.client import FuxiClient
    from fuxi.runtime import connect
    from fuxi.shells.webactor import start_web

    scrapes: list[float] = []
    scraping = threading.Event()
    stop = threading.Event()

    def scraper(url: str) -> None:
        while not stop.is_set():
            if scraping.is_set():
                t0 = time.perf_counter()
                with urllib.request.urlopen(url, timeout=SCRAPE_HTTP_TIMEOUT_S) as r:
                    r.read()
                scrapes.append(time.perf_counter() - t0)
            stop.wait(args.scrape_interval_s)

    def run(client) -> tuple[float, float]:
        return run_noop(client, args.n, 900)

    with connect("bench") as conn:
        client = FuxiClient(conn.master)
        info = start_web("bench", ray.get_runtime_context().namespace, None, "127.0.0.1", 0,
                         None, 60.0)
        t = threading.Thread(target=scraper, args=(info["metrics"],), daemon=True)
        t.start()
        run(client)  # warm-up: workers' pool, imports
        # CPU per scrape, on the idle cluster: the whole process tree, scraped vs not.
        time.sleep(args.idle_s)  # the warm-up job's workers end first
        idle = {}
        for mode in ("off", "on", "off2", "on2"):
            scraping.set() if mode.startswith("on") else scraping.clear()
            n0, c0 = len(scrapes), tree_cpu(os.getpid())
            time.sleep(args.idle_s)
            idle[mode] = (cpu_used(c0, tree_cpu(os.getpid())), len(scrapes) - n0)
        scraping.clear()
        off, on = [], []
        for _ in range(args.rounds):
            scraping.clear()
            off.append(run(client))
            scraping.set()
            on.append(run(client))
        scraping.clear()
        stop.set()
    (off_s, off_e2e), (on_s, on_e2e) = min(off), min(on)
    rec_on, rec_off = recording_ns()
    cost = 1 - (args.n / on_s) / (args.n / off_s)
    scrapes.sort()
    print(f"{machine()}: {args.n} no-op instances, best of {args.rounds} each, alternated")
    print(f"  /metrics not scraped   {off_s:7.2f}s  {args.n / off_s:8.0f}/s   "
          f"(from submit {off_e2e:.2f}s)")
    print(f"  scraped every {args.scrape_interval_s:g}s     {on_s:7.2f}s  {args.n / on_s:8.0f}/s   "
          f"(from submit {on_e2e:.2f}s)   cost {cost * 100:+.1f} %")
    if scrapes:
        print(f"  scrapes: {len(scrapes)}, p50 {scrapes[len(scrapes) // 2] * 1e3:.0f} ms, "
              f"max {scrapes[-1] * 1e3:.0f} ms")
    cpu_off = (idle["off"][0] + idle["off2"][0]) / 2
    cpu_on = (idle["on"][0] + idle["on2"][0]) / 2
    n_idle = max(1, (idle["on"][1] + idle["on2"][1]) / 2)
    per_scrape_ms = (cpu_on - cpu_off) / n_idle * 1e3
    print(f"  idle cluster, {args.idle_s:g}s: {cpu_off:.2f} CPU-s not scraped, {cpu_on:.2f} CPU-s "
          f"scraped ({n_idle:.0f} scrapes): {per_scrape_ms:.0f} CPU-ms per scrape = "
          f"{per_scrape_ms / 1e3 / args.cpus * 100:.1f} % of the machine at 1 scrape/s, "
          f"{per_scrape_ms / 1e3 / 15 / args.cpus * 100:.2f} % at Prometheus's default 15 s")
    print(f"  counter inc: {rec_on:.0f} ns recording, {rec_off:.0f} ns with FUXI_METRICS=0")
    print(f"  all runs (running s): off {[round(x[0], 2) for x in off]}, "
          f"on {[round(x[0], 2) for x in on]}")
    report("observability", n=args.n, off_s=off_s, on_s=on_s, cost=cost,
           scrapes=len(scrapes), inc_ns=rec_on, inc_off_ns=rec_off,
           cpu_ms_per_scrape=per_scrape_ms)


if __name__ == "__main__":
    main()
