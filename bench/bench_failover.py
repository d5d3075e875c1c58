"""FuxiMaster take-over: its process is killed while a job runs (issue 16 part 3).

    python -m bench.bench_failover [--runs 3 --gen 40 --work-s 0.5]

Each run submits a three-stage job (``gen`` instances of ``work_s`` each, a shuffle into 8
sums, one total), kills FuxiMaster's process once a quarter of ``gen`` has finished (Ray
restarts it) and measures, from the kill:

- ``answer_s``: until the new FuxiMaster answers a call;
- ``takeover_s``: until it has adopted the job and rebuilt the job's slots in its ledger
  from the JobMaster's first sync (the job is scheduled again) -- Fuxi's goal: <= 5 s;
- the job's makespan against the same job with no kill, and the attempts beyond one per
  instance (work done twice; 0 expected, the workers never stop).

The peer is Ray's own floor: the time until a bare actor with ``max_restarts`` answers again
after ``ray.kill(no_restart=False)`` -- what any Ray-hosted master pays before it can do
anything. The ratio ``takeover_s / ray_restart_s`` is what Fuxi adds on top.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import machine, report, start_ray


def spec(args) -> dict:
    return {
        "name": "failover-dag",
        "params": {"work_s": args.work_s, "rows": 200},
        "speculation": {"enabled": False},
        "tasks": {
            "gen": {"fn": "bench.fns:work_rows", "instances": args.gen},
            "agg": {"fn": "bench.fns:work_sum", "instances": 8, "depends_on": ["gen"],
                    "partition_by": ["key"]},
            "total": {"fn": "bench.fns:work_total", "instances": 1, "depends_on": ["agg"]},
        },
    }


def fuxi_run(ray, client, args, kill: bool) -> dict:
    job_id = client.submit(spec(args))
    out: dict = {}
    if kill:
        while client.status(job_id)["tasks"]["gen"]["succeeded"] < args.gen // 4:
            time.sleep(0.02)
        before = ray.get(client.master.cluster_info.remote(), timeout=30)["started_at"]
        t0 = time.time()
        ray.kill(client.master, no_restart=False)
        while True:
            try:
                info = ray.get(client.master.cluster_info.remote(), timeout=10)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                time.sleep(0.01)
                continue
            if info["started_at"] == before:
                time.sleep(0.01)
                continue
            out.setdefault("answer_s", time.time() - t0)
            rebuilt = info["master"]["rebuilt_at"].get(job_id)
            if rebuilt is not None:
                out["takeover_s"] = rebuilt - t0
                break
            if time.time() - t0 > 120:
                raise RuntimeError(f"job {job_id} was not adopted within 120 s: {info['master']}")
            time.sleep(0.01)
    st = client.wait(job_id, timeout_s=600)
    assert st["state"] == "succeeded", st
    out["makespan_s"] = st["finished_at"] - st["started_at"]
    out["extra_attempts"] = sum(t["attempts"] - t["instances"] for t in st["tasks"].values())
    return out


def ray_restart_s(ray) -> float:
    @ray.remote(num_cpus=0, max_restarts=1)
    class Bare:
        def ping(self):
            return 1

    a = Bare.remote()
    ray.get(a.ping.remote(), timeout=60)
    t0 = time.time()
    ray.kill(a, no_restart=False)
    while True:
        try:
            ray.get(a.ping.remote(), timeout=10)
            took = time.time() - t0
            break
        except ray.exceptions.RayActorError:
            time.sleep(0.01)
    ray.kill(a, no_restart=True)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gen", type=int, default=40)
    ap.add_argument("--work-s", type=float, default=0.5)
    args = ap.parse_args()
    ray = start_ray(num_cpus=2)
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    try:
        with connect("bench") as conn:
            client = FuxiClient(conn.master)
            fuxi_run(ray, client, args, kill=False)  # warm: imports, worker processes
            calm = [fuxi_run(ray, client, args, kill=False)["makespan_s"] for _ in range(args.runs)]
            killed = [fuxi_run(ray, client, args, kill=True) for _ in range(args.runs)]
            peer = [ray_restart_s(ray) for _ in range(args.runs)]
        take = [k["takeover_s"] for k in killed]
        report("failover", machine=machine(), runs=args.runs, gen=args.gen, work_s=args.work_s,
               answer_s=[round(k["answer_s"], 3) for k in killed],
               takeover_s=[round(t, 3) for t in take],
               takeover_median_s=round(statistics.median(take), 3),
               takeover_max_s=round(max(take), 3),
               ray_restart_s=[round(p, 3) for p in peer],
               ratio_takeover_to_ray_restart=round(statistics.median(take) / statistics.median(peer), 2),
               makespan_calm_s=round(statistics.median(calm), 2),
               makespan_killed_s=round(statistics.median(k["makespan_s"] for k in killed), 2),
               slowdown=round(statistics.median(k["makespan_s"] for k in killed)
                              / statistics.median(calm) - 1, 3),
               extra_attempts=[k["extra_attempts"] for k in killed],
               goal_takeover_s=5.0)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
