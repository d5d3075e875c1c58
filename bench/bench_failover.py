"""FuxiMaster take-over: its process is killed while a job runs (issue 16 part 3).

    python -m bench.bench_failover [--runs 3 --gen 40 --work-s 0.5] [--standby]

Each run submits a three-stage job (``gen`` instances of ``work_s`` each, a shuffle into 8
sums, one total), kills FuxiMaster's process once a quarter of ``gen`` has finished (Ray
restarts it) and measures, from the kill:

- ``answer_s``: until the new FuxiMaster answers a call;
- ``takeover_s``: until it has adopted the job and rebuilt the job's slots in its ledger
  from the JobMaster's first sync (the job is scheduled again) -- Fuxi's goal: <= 5 s;
- the job's makespan against the same job with no kill, and the attempts beyond one per
  instance (work done twice; 0 expected, the workers never stop).

``--standby`` (hot standby, issue 16 part 3): a two-node ``ray.cluster_utils.Cluster`` (one CPU
each) with a one-replica Nuwa and two FuxiMaster candidates behind its election, as `fuxi up`
starts them; the *leader's process* is killed (SIGKILL by PID) and the standby takes over:

- ``serving_s``: until the standby serves (won the election, claimed a newer term, rebuilt
  the state from Nuwa, adopted the job);
- ``status_s``: until the client's ``status`` is answered (it finds the new leader itself);
- ``takeover_s``: until the new leader has rebuilt the job's slots from its first sync
  (granting again) -- the goal's figure.

The peer is Ray's own floor: the time until a bare actor with ``max_restarts`` answers again
after ``ray.kill(no_restart=False)`` -- what any Ray-hosted master pays before it can do
anything. The ratio ``takeover_s / ray_restart_s`` is what Fuxi adds on top.
"""

from __future__ import annotations

import argparse
import contextlib
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


def standby_kill(ray, client, job_id: str, names: list[str]) -> dict:
    """Kill the leading candidate's process; when the standby serves, answers, grants."""
    import os
    import signal

    def info(name):
        try:
            return ray.get(ray.get_actor(name).leader_info.remote(), timeout=5)
        except (ValueError, ray.exceptions.RayError):
            return None

    old = next(i for i in map(info, names) if i and i["serving"])
    t0 = time.time()
    os.kill(old["pid"], signal.SIGKILL)
    out: dict = {}
    while "takeover_s" not in out:
        if time.time() - t0 > 120:
            raise RuntimeError(f"no take-over within 120 s: {[info(n) for n in names]}")
        new = next((n for n in names if (i := info(n)) and i["serving"]
                    and i["term"] > old["term"]), None)
        if new is None:
            time.sleep(0.01)
            continue
        out.setdefault("serving_s", time.time() - t0)
        if "status_s" not in out:
            client.status(job_id)
            out["status_s"] = time.time() - t0
        rebuilt = ray.get(ray.get_actor(new).cluster_info.remote(),
                          timeout=30)["master"]["rebuilt_at"].get(job_id)
        if rebuilt is not None:
            out["takeover_s"] = rebuilt - t0
        else:
            time.sleep(0.01)
    return out


def fuxi_run(ray, client, args, kill: bool, names: list[str] | None = None) -> dict:
    job_id = client.submit(spec(args))
    out: dict = {}
    if kill and names:
        while client.status(job_id)["tasks"]["gen"]["succeeded"] < args.gen // 4:
            time.sleep(0.02)
        out.update(standby_kill(ray, client, job_id, names))
    elif kill:
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
    ap.add_argument("--standby", action="store_true",
                    help="two FuxiMaster candidates behind a Nuwa election; kill the leader")
    args = ap.parse_args()
    if args.standby:
        return standby_main(args)
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


def standby_main(args) -> None:
    import os
    import tempfile

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback cluster
    import ray
    from ray.cluster_utils import Cluster

    from fuxi.client import FuxiClient
    from fuxi.runtime import _start_master, master_candidates
    from nuwa.group import start_group

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1,
                                                            "include_dashboard": False})
    group = None
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, namespace="fuxi-bench", log_to_driver=False)
        group = start_group(1, tempfile.mkdtemp(prefix="bench-standby-nuwa-"), "nuwa-bench")
        nuwa = [list(a) for a in group.client_addresses()]
        names = master_candidates(nuwa)
        master = _start_master("bench", None, detached=False, nuwa=nuwa, agents=False)
        client = FuxiClient(master, candidates=names)
        fuxi_run(ray, client, args, kill=False)  # warm: imports, worker processes
        calm = [fuxi_run(ray, client, args, kill=False)["makespan_s"] for _ in range(args.runs)]
        killed = [fuxi_run(ray, client, args, kill=True, names=names) for _ in range(args.runs)]
        take = [k["takeover_s"] for k in killed]
        report("failover-standby", machine=machine(), runs=args.runs, gen=args.gen,
               work_s=args.work_s, nodes=2, candidates=len(names), nuwa_replicas=1,
               serving_s=[round(k["serving_s"], 3) for k in killed],
               status_s=[round(k["status_s"], 3) for k in killed],
               takeover_s=[round(t, 3) for t in take],
               takeover_median_s=round(statistics.median(take), 3),
               takeover_max_s=round(max(take), 3),
               makespan_calm_s=round(statistics.median(calm), 2),
               makespan_killed_s=round(statistics.median(k["makespan_s"] for k in killed), 2),
               extra_attempts=[k["extra_attempts"] for k in killed],
               goal_takeover_s=5.0)
    finally:
        if group is not None:
            with contextlib.suppress(Exception):
                group.stop()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
