"""Dispatch throughput: N no-op instances through Fuxi vs N no-op raw Ray tasks, same run.

    python -m bench.bench_dispatch [--n 10000]

Fuxi's figure is measured from the job's first running worker to its end (``started_at`` to
``finished_at``), and separately end to end from submit (which includes starting workers).
Fuxi runs four times, alternated: with checkpoint records (the default) and with
``checkpoint: false``; the best run of each is reported.
"""

from __future__ import annotations

import argparse
import time

from bench.common import machine, report, run_noop, start_ray


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    ray = start_ray(args.cpus)

    @ray.remote
    def noop():
        return None

    ray.get([noop.remote() for _ in range(200)])  # warm Ray's worker pool
    t0 = time.perf_counter()
    ray.get([noop.remote() for _ in range(args.n)], timeout=600)
    raw_s = time.perf_counter() - t0

    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    def fuxi_run(client, checkpoint: bool) -> tuple[float, float]:
        return run_noop(client, args.n, 600, checkpoint=checkpoint)

    with connect("bench") as conn:
        client = FuxiClient(conn.master)
        # Checkpoint records (issue 16 part 4, the default) on and off, alternated twice:
        # the best of each, so warm-up and a busy neighbour do not pass for their cost.
        on, off = [], []
        for _ in range(2):
            on.append(fuxi_run(client, checkpoint=True))
            off.append(fuxi_run(client, checkpoint=False))
        (fuxi_s, e2e_s), (off_s, off_e2e_s) = min(on), min(off)
    raw_tps, fuxi_tps = args.n / raw_s, args.n / fuxi_s
    print(f"{machine()}: {args.n} no-op instances")
    print(f"  raw Ray tasks      {raw_s:7.2f}s  {raw_tps:8.0f}/s")
    print(f"  Fuxi (running)     {fuxi_s:7.2f}s  {fuxi_tps:8.0f}/s   ratio {fuxi_tps / raw_tps:.2f}x")
    print(f"  Fuxi (from submit) {e2e_s:7.2f}s  {args.n / e2e_s:8.0f}/s   ratio {raw_s / e2e_s:.2f}x")
    print(f"  Fuxi, checkpoint off (running) {off_s:7.2f}s  {args.n / off_s:8.0f}/s; from submit "
          f"{off_e2e_s:.2f}s")
    report("dispatch", n=args.n, raw_s=round(raw_s, 3), fuxi_running_s=round(fuxi_s, 3),
           fuxi_e2e_s=round(e2e_s, 3), ratio=round(fuxi_tps / raw_tps, 2),
           ratio_e2e=round(raw_s / e2e_s, 2), ckpt_off_running_s=round(off_s, 3),
           ckpt_off_e2e_s=round(off_e2e_s, 3))
    ray.shutdown()


if __name__ == "__main__":
    main()
