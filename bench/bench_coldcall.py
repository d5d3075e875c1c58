"""Cold calls: the first call to a service scaled to zero, Fuxi against Ray Serve with
``min_replicas=0``, same run, same machine.

    pip install -e ".[bench]"        # ray[serve]
    python -m bench.bench_coldcall [--rounds 3] [--idle-s 2]

Both sides: an echo of 0..4 replicas scaled to zero after ``--idle-s`` seconds without a call
(Fuxi: ``autoscaling: {min_replicas: 0, scale_to_zero_after_s}``; Serve:
``autoscaling_config`` with ``min_replicas=0`` and ``downscale_delay_s`` /
``downscale_to_zero_delay_s`` = ``--idle-s``), replicas asking for no CPU. Each round waits
until the side runs no replica at all, then times one call from the caller (Fuxi: a Kuafu
client through the node's proxy, where the call is held while one replica starts; Serve: a
``DeploymentHandle`` call, queued by the handle until its controller starts a replica).
Reported: each round's cold-call latency, the median, a warm call's latency, and Fuxi's
median over Serve's (below 1: Fuxi's cold call is faster)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from bench.common import machine, report, start_ray

ZERO_WAIT_S = 180.0   # longest a side may take to reach zero replicas
COLD_CALL_S = 120.0   # a cold call's own deadline


def _rounds(a, call, replicas) -> dict:
    """``call()`` once warm, then ``--rounds`` times: wait for zero replicas, time a call."""
    t0 = time.perf_counter()
    assert call() is not None
    warm_ms = (time.perf_counter() - t0) * 1000
    cold, to_zero = [], []
    for _ in range(a.rounds):
        t_idle = time.time()
        deadline = t_idle + ZERO_WAIT_S
        while replicas() > 0:
            if time.time() > deadline:
                raise RuntimeError(f"not at zero replicas within {ZERO_WAIT_S:g}s")
            time.sleep(0.2)
        to_zero.append(time.time() - t_idle)
        time.sleep(0.5)  # settled at zero
        t0 = time.perf_counter()
        assert call() is not None
        cold.append(time.perf_counter() - t0)
    return {"cold_s": [round(x, 3) for x in cold], "median_cold_s": statistics.median(cold),
            "warm_ms": round(warm_ms, 2), "to_zero_s": [round(x, 1) for x in to_zero]}


def _fuxi_side(a, tmp: str) -> dict:
    import ray

    import kuafu
    from fuxi.core.service_spec import service_spec_from_dict
    from fuxi.runtime import connect
    from kuafu import deploy

    start_ray(namespace="fuxi-coldbench", temp_dir=os.path.join(tmp, "ray-fuxi"))
    try:
        uds = deploy.start("fuxi-coldbench", None)[0]["uds"]
        with connect("coldbench") as conn:
            master = conn.master
            spec = service_spec_from_dict({
                "name": "echo", "class": "jobs.services.echo:Echo", "replicas": 1,
                "resources": {"cpu": 0}, "workdir": os.getcwd(), "drain_grace_s": 1.0,
                "autoscaling": {"target_in_flight": 2, "min_replicas": 0, "max_replicas": 4,
                                "scale_to_zero_after_s": a.idle_s}}).to_doc()
            ray.get(master.service_register.remote(spec), timeout=30)
            deadline = time.time() + 120
            while ray.get(master.service_status.remote("echo"), timeout=30)["ready"] < 1:
                if time.time() > deadline:
                    raise RuntimeError("echo did not become ready in 120 s")
                time.sleep(0.2)
            c = kuafu.connect(uds, service="echo", timeout_s=COLD_CALL_S)
            try:
                def replicas() -> int:
                    st = ray.get(master.service_status.remote("echo"), timeout=30)
                    return len(st["replicas"])
                out = _rounds(a, lambda: c.call("echo", b"x"), replicas)
            finally:
                c.close()
            st = ray.get(master.service_status.remote("echo"), timeout=30)
            out["events"] = [e for e in st["events"] if "zero" in e][-6:]
            ray.get(master.service_remove.remote("echo"), timeout=30)
        return out
    finally:
        ray.shutdown()


def _serve_side(a, tmp: str) -> dict:
    import ray
    from ray import serve

    start_ray(namespace="serve-coldbench", temp_dir=os.path.join(tmp, "ray-serve"))
    try:
        serve.start()

        @serve.deployment(ray_actor_options={"num_cpus": 0}, autoscaling_config={
            "min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
            "target_ongoing_requests": 2, "upscale_delay_s": 0.0,
            "downscale_delay_s": a.idle_s, "downscale_to_zero_delay_s": a.idle_s})
        class Echo:
            async def __call__(self, msg):
                return msg

        handle = serve.run(Echo.bind(), name="cold", route_prefix=None)

        def replicas() -> int:
            dep = serve.status().applications["cold"].deployments["Echo"]
            return sum(int(n) for s, n in dep.replica_states.items() if s != "STOPPED")

        return _rounds(a, lambda: handle.remote(b"x").result(timeout_s=COLD_CALL_S), replicas)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-s", type=float, default=2.0)
    a = p.parse_args()
    if not 1 <= a.rounds <= 20:
        p.error(f"--rounds {a.rounds}: expected 1..20")
    if not 1.0 <= a.idle_s <= 120.0:
        p.error(f"--idle-s {a.idle_s:g}: expected 1..120 seconds")
    with tempfile.TemporaryDirectory(prefix="ccb-", dir="/tmp") as tmp:
        fx = _fuxi_side(a, tmp)
        sv = _serve_side(a, tmp)
    print(f"{'system':8} {'cold calls s':>28} {'median s':>9} {'warm ms':>8} {'to zero s':>20}")
    for name, r in (("fuxi", fx), ("serve", sv)):
        print(f"{name:8} {str(r['cold_s']):>28} {r['median_cold_s']:9.3f} {r['warm_ms']:8.2f} "
              f"{str(r['to_zero_s']):>20}")
    ratio = fx["median_cold_s"] / sv["median_cold_s"]
    print(f"cold call: Fuxi's median {ratio:.2f}x Serve's ({machine()})")
    report("coldcall", fuxi=fx, serve=sv, ratio=round(ratio, 3), rounds=a.rounds,
           idle_s=a.idle_s)
    print(json.dumps({"events": fx.get("events")}))


if __name__ == "__main__":
    main()
