"""Cold start: `fuxi submit jobs/wordcount.yaml` end to end on the embedded default (a fresh
process that starts Ray and the platform, runs the job, shuts down), against the same
wordcount written as plain Ray tasks in a fresh process. Same machine, same run.

    python -m bench.bench_coldstart [--runs 3] [--before DIR]

``--before DIR``: also time ``fuxi submit`` from another checkout of the code (an A/B: e.g.
``git archive main | tar -x -C DIR``), interleaved with the other two in every round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import machine, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 300


def timed(cmd: list[str], env: dict, cwd: str = REPO) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S)
    return time.perf_counter() - t0


def submit_cmd(out: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "submit", "jobs/wordcount.yaml",
            "--set", f"output={out}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", default=None,
                    help="a checkout of the code before a change, timed in the same rounds")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error(f"--runs {args.runs}: expected at least 1")
    before = os.path.abspath(args.before) if args.before else None
    if before is not None and not os.path.isfile(os.path.join(before, "cli", "main.py")):
        ap.error(f"--before {args.before}: expected a checkout of this project (no cli/main.py)")
    tmp = tempfile.mkdtemp(prefix="fuxi-cold-")
    env = dict(os.environ, FUXI_HOME=os.path.join(tmp, "home"))
    env.pop("RAY_ADDRESS", None)
    env_before = dict(env, PYTHONPATH=before or "")
    env["PYTHONPATH"] = REPO  # this checkout's code, whatever is installed
    fuxi_s, raw_s, before_s = [], [], []
    try:
        for i in range(args.runs):
            if before is not None:
                before_s.append(timed(submit_cmd(os.path.join(tmp, f"before-{i}")), env_before,
                                      cwd=before))
            fuxi_s.append(timed(submit_cmd(os.path.join(tmp, f"fuxi-{i}")), env))
            raw_s.append(timed([sys.executable, "-m", "bench.raw_wordcount",
                                os.path.join(tmp, f"raw-{i}")], env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    f, r = statistics.median(fuxi_s), statistics.median(raw_s)
    print(f"{machine()}: wordcount (4 x 1 MB) from a fresh process, median of {args.runs}")
    if before is not None:
        b = statistics.median(before_s)
        print(f"  fuxi submit, before     {b:5.2f}s   runs {[round(x, 2) for x in before_s]}"
              f"   ratio before/raw {b / r:.2f}x")
    print(f"  fuxi submit (embedded)  {f:5.2f}s   runs {[round(x, 2) for x in fuxi_s]}")
    print(f"  plain Ray script        {r:5.2f}s   runs {[round(x, 2) for x in raw_s]}")
    print(f"  ratio fuxi/raw {f / r:.2f}x   per round "
          f"{[round(a / c, 2) for a, c in zip(fuxi_s, raw_s)]}   goal: fuxi <= raw")
    extra = {"before_runs": [round(x, 2) for x in before_s]} if before is not None else {}
    report("coldstart", fuxi_s=round(f, 2), raw_s=round(r, 2), ratio=round(f / r, 2),
           fuxi_runs=[round(x, 2) for x in fuxi_s], raw_runs=[round(x, 2) for x in raw_s],
           **extra)


if __name__ == "__main__":
    main()
