"""Job slowdown under injected attempt failures: Fuxi against the same DAG on raw Ray tasks.

    python -m bench.bench_faults [--gen 60 --agg 8 --work-s 0.1 --rates 0,0.05,0.10 --seed 7
                                  --repeat 3]

A three-stage job (``gen`` instances of ``work_s`` each producing rows, a hash shuffle into
``agg`` sums, one final total) runs with 0 %, 5 % and 10 % of its attempts failing on purpose
(the spec's ``faults:``, decided by ``fuxi.core.attempt_faults`` from the seed). Fuxi's figure
is the job's makespan from its first running worker to its end; the peer is the same three
stages as plain Ray tasks whose failed attempts the driver resubmits at once, with the very
same attempts failing (the same decision function and seed), timed from the first submit to
the last result. Both report the slowdown against their own fault-free run, and the attempts
spent (and, for Fuxi, the workers started: a blacklisted worker is replaced). Each figure is
the median of ``--repeat`` runs (the same faults each time: the seed decides them). Fuxi's
published goal: at most +16 % at 5 % faults and +20 % at 10 %.
"""

from __future__ import annotations

import argparse
import time

from bench.common import machine, report, start_ray
from fuxi.core import attempt_faults as af


def fuxi_run(client, args, rate: float) -> tuple[float, int, int, int]:
    spec = {
        "name": "faulty-dag",
        "params": {"work_s": args.work_s, "rows": 200},
        "retry_backoff_s": 0.0,
        "tasks": {
            "gen": {"fn": "bench.fns:work_rows", "instances": args.gen, "max_retries": 20},
            "agg": {"fn": "bench.fns:work_sum", "instances": args.agg, "depends_on": ["gen"],
                    "partition_by": ["key"], "max_retries": 20},
            "total": {"fn": "bench.fns:work_total", "instances": 1, "depends_on": ["agg"],
                      "max_retries": 20},
        },
    }
    if rate:
        spec["faults"] = {"attempt_fail_fraction": rate, "seed": args.seed}
    st = client.wait(client.submit(spec), timeout_s=600)
    assert st["state"] == "succeeded", st
    attempts = sum(t["attempts"] for t in st["tasks"].values())
    instances = sum(t["instances"] for t in st["tasks"].values())
    return st["finished_at"] - st["started_at"], attempts, instances, st.get("workers_started", -1)


def median_run(run, repeat: int) -> tuple:
    """The run with the median time of ``repeat`` (its other figures with it)."""
    runs = sorted((run() for _ in range(repeat)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def ray_run(ray, tasks, args, rate: float) -> tuple[float, int]:
    """The same DAG on raw Ray: a failed attempt is resubmitted by the driver as attempt n+1."""
    policy = af.FaultPolicy(attempt_fail_fraction=rate, seed=args.seed) if rate else None
    gen, agg, total = tasks
    spent = 0

    def run_stage(fn, name: str, count: int, inputs) -> list:
        nonlocal spent
        attempt = dict.fromkeys(range(count), 0)
        pending = {fn.remote(name, i, 0, policy, *inputs(i)): i for i in range(count)}
        out: list = [None] * count
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=600)
            for ref in ready:
                i = pending.pop(ref)
                spent += 1
                try:
                    out[i] = ray.get(ref)
                except Exception:
                    attempt[i] += 1
                    pending[fn.remote(name, i, attempt[i], policy, *inputs(i))] = i
        return out

    t0 = time.perf_counter()
    parts = run_stage(gen, "gen", args.gen, lambda i: ())  # each: a list of agg partitions
    sums = run_stage(agg, "agg", args.agg, lambda i: [p[i] for p in parts])
    result = run_stage(total, "total", 1, lambda i: sums)
    assert result[0] is not None
    return time.perf_counter() - t0, spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gen", type=int, default=60)
    ap.add_argument("--agg", type=int, default=8)
    ap.add_argument("--work-s", type=float, default=0.1)
    ap.add_argument("--rates", default="0,0.05,0.10")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per rate; the median is shown")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    ray = start_ray(args.cpus)
    work_s, nagg = args.work_s, args.agg

    def check(policy, name, i, attempt):
        if af.decide(policy, name, i, attempt) is not None:
            raise af.InjectedFault(f"injected attempt failure ({name}[{i}] attempt {attempt})")

    @ray.remote
    def gen(name, i, attempt, policy):
        check(policy, name, i, attempt)
        time.sleep(work_s)
        rows = 200
        lo = i * rows
        parts = [[] for _ in range(nagg)]
        for v in range(lo, lo + rows):
            parts[hash(v % 101) % nagg].append((v % 101, v))
        return parts

    @ray.remote
    def agg(name, i, attempt, policy, *pieces):
        check(policy, name, i, attempt)
        time.sleep(work_s)
        sums: dict = {}
        for piece in pieces:
            for k, v in piece:
                sums[k] = sums.get(k, 0) + v
        return sums

    @ray.remote
    def total(name, i, attempt, policy, *sums):
        check(policy, name, i, attempt)
        time.sleep(work_s)
        return sum(sum(s.values()) for s in sums), sum(len(s) for s in sums)

    ray.get([gen.remote("warm", i, 0, None) for i in range(4)])
    raw = {r: median_run(lambda: ray_run(ray, (gen, agg, total), args, r), args.repeat)
           for r in rates}

    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    with connect("bench") as conn:
        client = FuxiClient(conn.master)
        fuxi_run(client, args, 0.0)  # warm-up: imports, worker processes
        fx = {r: median_run(lambda: fuxi_run(client, args, r), args.repeat) for r in rates}
    base_f, base_r = fx[rates[0]][0], raw[rates[0]][0]
    print(f"{machine()}: {args.gen} -> {args.agg} -> 1 instances of {args.work_s * 1000:.0f} ms, "
          f"seed {args.seed}, {args.cpus} CPUs, median of {args.repeat}")
    print(f"  {'faults':>7} {'fuxi s':>8} {'slowdown':>9} {'attempts':>9} {'workers':>8} "
          f"{'ray s':>8} {'slowdown':>9} {'attempts':>9}")
    out = {}
    for r in rates:
        fs, fa, n, fw = fx[r]
        rs, ra = raw[r]
        print(f"  {r:7.0%} {fs:8.2f} {fs / base_f - 1:+9.1%} {fa:9d} {fw:8d} {rs:8.2f} "
              f"{rs / base_r - 1:+9.1%} {ra:9d}")
        out[f"{r:g}"] = {"fuxi_s": round(fs, 3), "fuxi_slowdown": round(fs / base_f - 1, 3),
                         "fuxi_attempts": fa, "instances": n, "fuxi_workers_started": fw,
                         "ray_s": round(rs, 3),
                         "ray_slowdown": round(rs / base_r - 1, 3), "ray_attempts": ra}
    print("  goal (Fuxi's paper): at most +16 % at 5 % faults, +20 % at 10 %")
    report("faults", seed=args.seed, runs=out)
    ray.shutdown()


if __name__ == "__main__":
    main()
