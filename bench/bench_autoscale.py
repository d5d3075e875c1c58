"""Fuxi's autoscaler against Ray Serve's: the same load ramp, same run, same machine.

    pip install -e ".[bench]"        # ray[serve] and matplotlib
    python -m bench.bench_autoscale [--low-s 10] [--high-s 30] [--fall-s 40] [--high 8]
                                    [--plot docs/bench_autoscale.png]

The ramp: closed-loop callers, each keeping one call in flight; every call sleeps
``--call-s`` (0.1 s) at the replica. ``--low-s`` with 1 caller, ``--high-s`` with ``--high``
callers, then ``--fall-s`` with 1 caller again. Both autoscalers get the same policy: a target
of 2 calls in flight per replica, 1..4 replicas, 2 s before scaling up, 6 s before scaling down:

* Fuxi: ``jobs.services.echo:Echo`` registered with FuxiMaster with an ``autoscaling:`` block
  (``max_change_per_step: 4``, so no cap, like Serve), called through the node's Kuafu proxy
  (``kuafu.connect``, one connection per caller thread).
* Ray Serve: the same sleep as a deployment with ``autoscaling_config`` (target_ongoing_requests
  2, upscale_delay_s 2, downscale_delay_s 6, the rest Serve's defaults), called through a
  ``DeploymentHandle`` from the caller threads.

Every 0.5 s each side's replicas are counted (Fuxi: READY replicas; Serve: RUNNING ones). The
report: calls made and failed, seconds after the rise until the maximum was reached and after
the fall until the minimum, replica-seconds used, and a PNG of replicas over time for both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import threading
import time

from bench.common import start_ray

POLICY = {"target_in_flight": 2, "min_replicas": 1, "max_replicas": 4,
          "scale_up_delay_s": 2.0, "scale_down_delay_s": 6.0}
SAMPLE_S = 0.5


class Ramp:
    """Closed-loop caller threads around ``call()``; counts calls and failures."""

    def __init__(self, make_call):
        self.make_call = make_call
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.workers: list[tuple[threading.Thread, threading.Event]] = []

    def _run(self, stop: threading.Event) -> None:
        call, close = self.make_call()
        try:
            while not stop.is_set():
                try:
                    call()
                    with self.lock:
                        self.ok += 1
                except Exception as e:  # noqa: BLE001 - counted
                    with self.lock:
                        self.failures.append(repr(e)[:300])
        finally:
            close()

    def set(self, n: int) -> None:
        while len(self.workers) < n:
            stop = threading.Event()
            t = threading.Thread(target=self._run, args=(stop,), daemon=True)
            t.start()
            self.workers.append((t, stop))
        while len(self.workers) > n:
            t, stop = self.workers.pop()
            stop.set()
            t.join(60)


def _drive(make_call, count, a) -> dict:
    """Run the ramp, sampling ``count()`` (replicas) every SAMPLE_S."""
    ramp = Ramp(make_call)
    samples: list[tuple[float, int, int]] = []  # (s since start, callers, replicas)
    callers = 0
    done = threading.Event()
    t0 = time.time()

    def sample():
        while not done.is_set():
            try:
                samples.append((time.time() - t0, callers, count()))
            except Exception:  # noqa: BLE001 - a missed sample
                pass
            done.wait(SAMPLE_S)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        for n, secs in ((1, a.low_s), (a.high, a.high_s), (1, a.fall_s)):
            callers = n
            ramp.set(n)
            time.sleep(secs)
    finally:
        ramp.set(0)
        done.set()
        th.join(10)
    rise, fall = a.low_s, a.low_s + a.high_s
    top = min(math.ceil(a.high / POLICY["target_in_flight"]), POLICY["max_replicas"])
    reached = next((t - rise for t, _, r in samples if t >= rise and r >= top), None)
    lowered = next((t - fall for t, _, r in samples if t >= fall and r <= POLICY["min_replicas"]),
                   None)
    rep_s = sum(r * SAMPLE_S for _, _, r in samples)
    return {"calls": ramp.ok, "failed": len(ramp.failures), "failures": ramp.failures[:5],
            "to_max_s": reached, "to_min_s": lowered, "replica_s": rep_s,
            "samples": samples}


def _fuxi_side(a, tmp: str) -> dict:
    import ray

    import kuafu
    from fuxi.core.service_spec import service_spec_from_dict
    from fuxi.runtime import connect
    from kuafu import deploy

    start_ray(namespace="fuxi-autobench", temp_dir=os.path.join(tmp, "ray-fuxi"))
    try:
        uds = deploy.start("fuxi-autobench", None)[0]["uds"]
        with connect("autobench") as conn:
            master = conn.master
            spec = service_spec_from_dict({
                "name": "echo", "class": "jobs.services.echo:Echo", "replicas": 1,
                "resources": {"cpu": 0}, "workdir": os.getcwd(), "drain_grace_s": 5.0,
                "autoscaling": dict(POLICY, max_change_per_step=4)}).to_doc()
            ray.get(master.service_register.remote(spec), timeout=30)
            deadline = time.time() + 120
            while ray.get(master.service_status.remote("echo"), timeout=30)["ready"] < 1:
                if time.time() > deadline:
                    raise RuntimeError("echo did not become ready in 120 s")
                time.sleep(0.2)
            msg = str(a.call_s).encode()

            def make_call():
                c = kuafu.connect(uds, service="echo", timeout_s=30)
                return (lambda: c.call("sleep", msg)), c.close

            def count() -> int:
                return ray.get(master.service_status.remote("echo"), timeout=30)["ready"]

            out = _drive(make_call, count, a)
            st = ray.get(master.service_status.remote("echo"), timeout=30)
            out["decisions"] = [e for e in st["events"] if " autoscaled " in e]
            ray.get(master.service_remove.remote("echo"), timeout=30)
        return out
    finally:
        ray.shutdown()


def _serve_side(a, tmp: str) -> dict:
    import asyncio

    import ray
    from ray import serve

    start_ray(namespace="serve-autobench", temp_dir=os.path.join(tmp, "ray-serve"))
    try:
        serve.start()
        call_s = a.call_s

        @serve.deployment(ray_actor_options={"num_cpus": 0}, autoscaling_config={
            "min_replicas": POLICY["min_replicas"], "max_replicas": POLICY["max_replicas"],
            "initial_replicas": 1, "target_ongoing_requests": POLICY["target_in_flight"],
            "upscale_delay_s": POLICY["scale_up_delay_s"],
            "downscale_delay_s": POLICY["scale_down_delay_s"]})
        class Sleeper:
            async def __call__(self, _msg):
                await asyncio.sleep(call_s)
                return b"slept"

        handle = serve.run(Sleeper.bind(), name="auto", route_prefix=None)

        def make_call():
            return (lambda: handle.remote(b"").result(timeout_s=30)), (lambda: None)

        def count() -> int:
            dep = serve.status().applications["auto"].deployments["Sleeper"]
            return int(dep.replica_states.get("RUNNING", 0))

        return _drive(make_call, count, a)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _plot(fx: dict, sv: dict, a, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    ideal = [(t, min(max(math.ceil(c / POLICY["target_in_flight"]), POLICY["min_replicas"]),
                     POLICY["max_replicas"])) for t, c, _ in fx["samples"]]
    ax.step([t for t, _ in ideal], [n for _, n in ideal], where="post", color="0.6",
            linestyle=":", label="load / target (ideal)")
    for name, r, style in (("Fuxi", fx, "-"), ("Ray Serve", sv, "--")):
        ax.step([t for t, _, _ in r["samples"]], [n for _, _, n in r["samples"]], where="post",
                linestyle=style, label=f"{name} replicas ({r['failed']} failed of "
                                       f"{r['calls'] + r['failed']} calls)")
    ax.axvline(a.low_s, color="0.8")
    ax.axvline(a.low_s + a.high_s, color="0.8")
    ax.set_xlabel(f"seconds (1 caller, {a.high} callers from {a.low_s:g} s, 1 caller from "
                  f"{a.low_s + a.high_s:g} s)")
    ax.set_ylabel("ready replicas")
    ax.set_title("Autoscaling: the same load ramp (target 2 in flight per replica, 1..4, "
                 "up 2 s, down 6 s)", fontsize=9)
    ax.set_ylim(0, POLICY["max_replicas"] + 1)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--low-s", type=float, default=10.0)
    p.add_argument("--high-s", type=float, default=30.0)
    p.add_argument("--fall-s", type=float, default=40.0)
    p.add_argument("--high", type=int, default=8, help="callers at the top of the ramp")
    p.add_argument("--call-s", type=float, default=0.1)
    p.add_argument("--plot", default="docs/bench_autoscale.png")
    a = p.parse_args()
    for what, v in (("--low-s", a.low_s), ("--high-s", a.high_s), ("--fall-s", a.fall_s)):
        if not 1.0 <= v <= 600.0:
            p.error(f"{what} {v:g}: expected 1..600 seconds")
    if not 1 <= a.high <= 64:
        p.error(f"--high {a.high}: expected 1..64 callers")
    if not 0.0 < a.call_s <= 10.0:
        p.error(f"--call-s {a.call_s:g}: expected more than 0 and at most 10 seconds")
    with tempfile.TemporaryDirectory(prefix="asb-", dir="/tmp") as tmp:
        fx = _fuxi_side(a, tmp)
        sv = _serve_side(a, tmp)
    _plot(fx, sv, a, a.plot)

    def s(v):
        return "never" if v is None else f"{v:.1f}"
    print(f"{'system':10} {'calls':>7} {'failed':>7} {'to max s':>9} {'to min s':>9} "
          f"{'replica-s':>10}")
    for name, r in (("fuxi", fx), ("serve", sv)):
        print(f"{name:10} {r['calls']:7d} {r['failed']:7d} {s(r['to_max_s']):>9} "
              f"{s(r['to_min_s']):>9} {r['replica_s']:10.1f}")
    if fx["to_max_s"] and sv["to_max_s"]:
        print(f"scale-up time {fx['to_max_s'] / sv['to_max_s']:.2f}x Serve's; ", end="")
    if fx["to_min_s"] and sv["to_min_s"]:
        print(f"scale-down time {fx['to_min_s'] / sv['to_min_s']:.2f}x Serve's; ", end="")
    print(f"calls {fx['calls'] / max(sv['calls'], 1):.2f}x Serve's; plot: {a.plot}")
    print(json.dumps({"fuxi": {k: v for k, v in fx.items() if k != "samples"},
                      "serve": {k: v for k, v in sv.items() if k != "samples"}}))


if __name__ == "__main__":
    main()
