"""What shipping a job's code costs: time from submit to the first instance running, for a
job whose module sits in the submit directory (found through sys_path, nothing shipped)
against the same job with that directory shipped as ``working_dir`` (~1 MB: the module and
filler files), fresh content each time (packaged, uploaded, downloaded, unpacked) and the
same content again (Ray finds the package by its hash: no upload, the node's cache).

    python -m bench.bench_codeship [--rounds 3] [--mb 1]

The instance records ``time.time()`` when it starts; the client's clock is the same (one
machine). Rounds are alternated so a busy neighbour hits every variant alike; best and median
are reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from bench.common import machine, report, start_ray

MODULE = '''
import time

def stamp(ctx):
    return {"t": [time.time()], "i": [ctx.instance]}
'''


def fill(code: str, mb: float, salt: str) -> None:
    """``mb`` MiB of incompressible filler in 50 KiB files, unique to ``salt``."""
    with open(os.path.join(code, "shipmod.py"), "w") as f:
        f.write(MODULE)
    data = os.path.join(code, "assets")
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    chunk = 50 * 1024
    for i in range(max(1, int(mb * 1024 * 1024 / chunk))):
        with open(os.path.join(data, f"f{i}.bin"), "wb") as f:
            f.write(salt.encode() + os.urandom(chunk - len(salt)))


def first_instance_s(client, code: str, out: str, working_dir: str | None) -> tuple[float, float]:
    """(seconds from submit to the first instance's start, seconds spent in load+submit)."""
    import pyarrow.parquet as pq

    from fuxi.client import load

    doc = {"name": "ship", "speculation": {"enabled": False},
           "tasks": {"t": {"fn": "shipmod:stamp", "instances": 2, "output": out}}}
    t0 = time.time()
    plan = load(doc, base_dir=code, working_dir=working_dir, overwrite=True)
    job_id = client.submit(plan)
    submitted = time.time() - t0
    st = client.wait(job_id, timeout_s=300)
    assert st["state"] == "succeeded", st.get("report")
    first = min(pq.read_table(out).column("t").to_pylist())
    return first - t0, submitted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mb", type=float, default=1.0)
    args = ap.parse_args()
    start_ray(2)
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    code = tempfile.mkdtemp(prefix="fuxi-bench-code-")
    out = os.path.join(tempfile.mkdtemp(prefix="fuxi-bench-out-"), "o")
    os.chdir(code)  # the submit directory (sys_path when nothing is shipped)
    got: dict[str, list] = {"none": [], "fresh": [], "cached": []}
    try:
        with connect("bench") as conn:
            client = FuxiClient(conn.master)
            fill(code, args.mb, "warm")
            first_instance_s(client, code, out, None)  # warm FuxiMaster and Ray's pool
            for r in range(args.rounds):
                got["none"].append(first_instance_s(client, code, out, None))
                fill(code, args.mb, f"round{r}")  # new content: a new package
                got["fresh"].append(first_instance_s(client, code, out, code))
                got["cached"].append(first_instance_s(client, code, out, code))
    finally:
        os.chdir("/")
        shutil.rmtree(code, ignore_errors=True)
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    print(f"{machine()}: submit to first instance, {args.rounds} rounds, working_dir "
          f"{args.mb:g} MiB")
    fields = {}
    for name, runs in got.items():
        firsts = [a for a, _ in runs]
        subs = [b for _, b in runs]
        print(f"  {name:7s} first instance best {min(firsts):6.2f}s median "
              f"{statistics.median(firsts):6.2f}s; load+submit median {statistics.median(subs):5.2f}s")
        fields[f"{name}_first_best_s"] = round(min(firsts), 3)
        fields[f"{name}_first_median_s"] = round(statistics.median(firsts), 3)
        fields[f"{name}_submit_median_s"] = round(statistics.median(subs), 3)
    report("codeship", mb=args.mb, rounds=args.rounds, **fields)


if __name__ == "__main__":
    main()
