"""Stragglers: N instances of ``fast_s`` on 2 CPUs where S first attempts are ``factor``x slower.

    python -m bench.bench_stragglers [--n 100 --fast-s 0.05 --factor 20 --stragglers 5]

Prints the makespan with backups, without backups, of raw Ray tasks, and with no stragglers,
each from the job's first running worker to its end (raw Ray: from first submit to last
result), plus the extra attempts that backups cost.
"""

from __future__ import annotations

import argparse
import time

from bench.common import machine, report, start_ray


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--fast-s", type=float, default=0.05)
    ap.add_argument("--factor", type=float, default=20.0)
    ap.add_argument("--stragglers", type=int, default=5)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    ray = start_ray(args.cpus)
    step = args.n // args.stragglers
    slow = [step // 2 + i * step for i in range(args.stragglers)]  # spread over the run

    @ray.remote
    def task(i: int):
        time.sleep(args.fast_s * (args.factor if i in slow else 1.0))

    ray.get([task.remote(-1) for _ in range(4)])
    t0 = time.perf_counter()
    ray.get([task.remote(i) for i in range(args.n)], timeout=600)
    raw_s = time.perf_counter() - t0

    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    def run(client, slow_list, speculate: bool) -> dict:
        spec = {
            "name": "stragglers",
            "params": {"slow": slow_list, "fast_s": args.fast_s, "factor": args.factor},
            "speculation": {"enabled": speculate, "min_done_fraction": 0.05, "slowdown": 2.0,
                            "min_runtime_s": 0.1, "max_backup_fraction": 0.05},
            "tasks": {"t": {"fn": "bench.fns:straggle", "instances": args.n}},
        }
        st = client.wait(client.submit(spec), timeout_s=600)
        assert st["state"] == "succeeded", st
        return st

    with connect("bench") as conn:
        client = FuxiClient(conn.master)
        run(client, [], False)  # warm-up: imports, worker processes
        results = {
            "no_stragglers": run(client, [], False),
            "without_backups": run(client, slow, False),
            "with_backups": run(client, slow, True),
        }
    span = {k: v["finished_at"] - v["started_at"] for k, v in results.items()}
    t = results["with_backups"]["tasks"]["t"]
    extra = t["attempts"] - args.n
    base = span["no_stragglers"]
    print(f"{machine()}: {args.n} x {args.fast_s * 1000:.0f} ms, {args.stragglers} first attempts "
          f"{args.factor:g}x slower (instances {slow}), {args.cpus} CPUs")
    for k in ("no_stragglers", "without_backups", "with_backups"):
        print(f"  Fuxi {k:<16} {span[k]:6.2f}s  {span[k] / base:5.2f}x")
    print(f"  raw Ray tasks         {raw_s:6.2f}s  {raw_s / base:5.2f}x")
    print(f"  backups launched {t['backups_launched']}, won {t['backups_won']}, extra attempts "
          f"{extra} ({100 * extra / args.n:.0f}%)")
    report("stragglers", **{k: round(v, 3) for k, v in span.items()}, raw_s=round(raw_s, 3),
           ratio_with_backups=round(span["with_backups"] / base, 3),
           ratio_raw=round(raw_s / base, 3), extra_attempts=extra,
           backups_launched=t["backups_launched"], backups_won=t["backups_won"])
    ray.shutdown()


if __name__ == "__main__":
    main()
