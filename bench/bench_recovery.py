"""JobMaster recovery (issue 16 part 4): resume time, re-run instances and the job's slowdown
when its JobMaster is killed, against the same job unkilled, in the same run; and what
checkpointing costs the job when nothing dies (checkpoint on vs off).

    python -m bench.bench_recovery [--gens 8] [--rows 200000] [--work-s 1.0] [--repeat 3]

The job: gen (``--gens`` instances of ``--rows`` rows) --hash--> pass (4 instances, each waits
``--work-s`` and passes its rows on) --one_to_one--> sum (4 instances, per-key sums, output).
The killed run kills the JobMaster once every gen instance is checkpointed (stored in
FuxiMaster) and a pass instance runs. Reported: kill -> FuxiMaster noticed and started a new
JobMaster (``restarted_s``: the job's record says so), kill -> it running an instance again (``running_s``: dispatched to a worker it
started), instances recovered and re-run, end-to-end times (unkilled: medians of ``--repeat``
runs each way, alternated).
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tempfile
import time

import pyarrow.parquet as pq

from bench.common import machine, report, start_ray

POLL_S = 0.02
RUN_TIMEOUT_S = 600.0


def spec(args, out: str, checkpoint: bool) -> dict:
    return {"name": "recovery", "checkpoint": checkpoint, "speculation": {"enabled": False},
            "params": {"rows": args.rows, "work_s": args.work_s},
            "tasks": {
                "gen": {"fn": "bench.fns:rows_gen", "instances": args.gens},
                "pass": {"fn": "bench.fns:rows_pass", "instances": 4, "depends_on": ["gen"],
                         "partition_by": ["key"]},
                "sum": {"fn": "bench.fns:work_sum", "instances": 4, "depends_on": ["pass"],
                        "shuffle": "one_to_one", "output": out}}}


def total(out: str) -> int:
    return sum(sum(pq.read_table(p).column("v_sum").to_pylist())
               for p in glob.glob(f"{out}/part-*.parquet"))


def times(runs: list[dict]) -> str:
    return ", ".join(f"{r['e2e_s']:.2f}" for r in runs)


def run(client, args, checkpoint: bool, kill: bool) -> dict:
    import ray

    out = tempfile.mkdtemp(prefix="fuxi-bench-recovery-") + "/out"
    t0 = time.perf_counter()
    job_id = client.submit(spec(args, out, checkpoint))
    res: dict = {}
    if kill:
        while True:
            st = client.status(job_id)
            assert st["state"] not in ("succeeded", "failed", "cancelled"), st
            if st["checkpoint"]["stored"] >= args.gens and st["tasks"]["pass"]["running"]:
                break
            time.sleep(POLL_S)
        ray.kill(ray.get_actor(f"jobmaster-{job_id}"), no_restart=True)
        k = time.perf_counter()
        while "restarted_s" not in res or "running_s" not in res:
            try:
                st = client.status(job_id)
            except Exception:  # noqa: BLE001 - between JobMasters
                st = {}
            if st.get("jobmaster_restarts") == 1 and "tasks" in st and "restarted_s" not in res:
                res["restarted_s"] = time.perf_counter() - k
            if st.get("jobmaster_restarts") == 1 and any(t["running"] for t in st.get("tasks", {}).values()):
                res["running_s"] = time.perf_counter() - k  # an instance dispatched again
            assert time.perf_counter() - k < RUN_TIMEOUT_S, st
            time.sleep(POLL_S)
    st = client.wait(job_id, timeout_s=RUN_TIMEOUT_S)
    res["e2e_s"] = time.perf_counter() - t0
    assert st["state"] == "succeeded", st.get("report")
    rows = args.gens * args.rows
    assert total(out) == rows * (rows - 1) // 2, "wrong output"
    res["recovered"] = sum(t.get("recovered", 0) for t in st["tasks"].values())
    res["rerun"] = sum(t.get("rerun", 0) for t in st["tasks"].values())
    res["attempts"] = sum(t["attempts"] for t in st["tasks"].values())
    res["restarts"] = st.get("jobmaster_restarts", 0)
    res["stored"] = st.get("checkpoint", {}).get("stored", 0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--work-s", type=float, default=1.0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="unkilled runs each way (medians)")
    args = ap.parse_args()
    start_ray(args.cpus)
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    with connect("bench") as conn:
        client = FuxiClient(conn.master)
        run(client, args, checkpoint=False, kill=False)  # warm: workers' imports, caches
        offs, ons = [], []
        for _ in range(args.repeat):  # alternated: a busy neighbour slows both alike
            offs.append(run(client, args, checkpoint=False, kill=False))
            ons.append(run(client, args, checkpoint=True, kill=False))
        killed = run(client, args, checkpoint=True, kill=True)
    off = {"e2e_s": statistics.median(r["e2e_s"] for r in offs)}
    on = {"e2e_s": statistics.median(r["e2e_s"] for r in ons)}
    mb = args.gens * args.rows * 16 / 1e6
    print(f"{machine()}: gen {args.gens} x {args.rows} rows ({mb:.0f} MB) -> pass 4 -> sum 4")
    print(f"  unkilled, checkpoint off  {off['e2e_s']:7.2f}s   (median of {args.repeat}: "
          f"{times(offs)})")
    print(f"  unkilled, checkpoint on   {on['e2e_s']:7.2f}s   ({on['e2e_s'] / off['e2e_s'] - 1:+.1%}; "
          f"{times(ons)})")
    print(f"  JobMaster killed          {killed['e2e_s']:7.2f}s   "
          f"({killed['e2e_s'] / on['e2e_s'] - 1:+.1%} vs unkilled, checkpoint on)")
    print(f"    kill -> FuxiMaster started a new JobMaster {killed['restarted_s']:.2f}s, which "
          f"dispatched an instance "
          f"{killed['running_s']:.2f}s; {killed['recovered']} instances recovered, "
          f"{killed['rerun']} run by the new JobMaster")
    report("recovery", gens=args.gens, rows=args.rows, work_s=args.work_s, repeat=args.repeat,
           off_e2e_s=round(off["e2e_s"], 3), on_e2e_s=round(on["e2e_s"], 3),
           killed_e2e_s=round(killed["e2e_s"], 3), restarted_s=round(killed["restarted_s"], 3),
           running_s=round(killed["running_s"], 3), recovered=killed["recovered"],
           rerun=killed["rerun"], restarts=killed["restarts"])
    import ray

    ray.shutdown()


if __name__ == "__main__":
    main()
