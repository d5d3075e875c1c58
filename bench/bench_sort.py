"""The sort benchmark (issue 19) on local disk: 100-byte records (10-byte key) sorted by our
``jobs/sort/sort.yaml`` job, by Ray Data and by one pyarrow process, on the same data.

    python -m bench.bench_sort [--size 1GiB --files 16 --maps 8 --reducers 8 --cpus 2]

Setup: ``pip install 'ray[data]'`` (the benchmark says so and stops if it is missing).

1. Input (not timed): ``jobs/sort/gen.yaml`` writes ``--size`` bytes as ``--files`` raw
   record files under ``--dir``; the same records are written as Parquet (``key`` and
   ``payload`` binary columns, one file per part) for the two peers.
2. Ours: ``sort.yaml`` submitted and waited for (submit to end, records in and out, local
   disk), then ``validate.yaml`` checks it (not timed).
3. Ray Data: ``read_parquet(dir).sort("key").write_parquet(out)`` on the same Ray.
4. pyarrow: one process, ``pq.read_table(dir)``, ``sort_by("key")``, ``pq.write_table``.

Prints one line per system and a JSON line (``bench.common.report``). Peak memory is not
measured here.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

from bench.common import machine, report, start_ray

JOB_TIMEOUT_S = 900.0


def _parquet_copy(src: str, dst: str) -> None:
    """The generator's record files as Parquet (key, payload), one file per part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.sort.records import SORT_KEY_BYTES, rows_of_bytes

    os.makedirs(dst, exist_ok=True)
    for i, p in enumerate(sorted(glob.glob(f"{src}/part-*.records"))):
        rows = rows_of_bytes(open(p, "rb").read())
        key = rows[:, :SORT_KEY_BYTES].tobytes()
        payload = rows[:, SORT_KEY_BYTES:].tobytes()
        n = rows.shape[0]
        k = pa.FixedSizeBinaryArray.from_buffers(pa.binary(SORT_KEY_BYTES), n,
                                                 [None, pa.py_buffer(key)])
        v = pa.FixedSizeBinaryArray.from_buffers(pa.binary(100 - SORT_KEY_BYTES), n,
                                                 [None, pa.py_buffer(payload)])
        # Plain binary: what a user's Parquet would hold, and what Ray Data sorts.
        t = pa.table({"key": k.cast(pa.binary()), "payload": v.cast(pa.binary())})
        pq.write_table(t, f"{dst}/part-{i:05d}.parquet")


def _pyarrow_sort(src: str, dst: str) -> float:
    code = ("import time,pyarrow.parquet as pq; t0=time.perf_counter(); "
            f"t=pq.read_table({src!r}); t=t.sort_by('key'); "
            f"pq.write_table(t, {dst!r}); print(time.perf_counter()-t0)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=JOB_TIMEOUT_S)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--maps", type=int, default=8)
    ap.add_argument("--reducers", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--dir", default=f"/tmp/fuxi-bench-sort-{os.getuid()}")
    ap.add_argument("--no-raydata", action="store_true", help="skip Ray Data")
    args = ap.parse_args()
    if not args.no_raydata:
        try:
            import ray.data  # noqa: F401
        except ImportError:
            sys.exit("Ray Data is missing: pip install 'ray[data]' (or pass --no-raydata)")
    from jobs.sort.records import parse_size

    size = parse_size(args.size)
    base = args.dir
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    src, out, val = f"{base}/in", f"{base}/sorted", f"{base}/val"
    ray = start_ray(args.cpus)
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    results = {}
    with connect("bench") as conn:
        client = FuxiClient(conn.master)

        def run(path, **params):
            t0 = time.perf_counter()
            st = client.wait(client.submit(path, [f"params.{k}={v}" for k, v in params.items()]),
                             timeout_s=JOB_TIMEOUT_S)
            assert st["state"] == "succeeded", st.get("report")
            return time.perf_counter() - t0, st

        gen_s, _ = run("jobs/sort/gen.yaml", size=size, files=args.files, seed=1, output=src)
        ours_s, st = run("jobs/sort/sort.yaml", input=src, output=out, maps=args.maps,
                         reducers=args.reducers)
        results["ours_s"] = ours_s
        results["ours_running_s"] = st["finished_at"] - st["started_at"]
        print(f"  (generate {gen_s:.2f}s, ours {ours_s:.2f}s)", flush=True)  # seen if cut short
        check_s, _ = run("jobs/sort/validate.yaml", input=out, expect=src, output=val,
                         checkers=args.maps)
    _parquet_copy(src, f"{base}/pq")
    if not args.no_raydata:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        ray.data.read_parquet(f"{base}/pq").sort("key").write_parquet(f"{base}/raydata")
        results["raydata_s"] = time.perf_counter() - t0
    ray.shutdown()
    results["pyarrow_s"] = _pyarrow_sort(f"{base}/pq", f"{base}/pyarrow.parquet")
    mib = size / 2**20
    print(f"{machine()}: sort of {args.size} ({size // 100} records of 100 bytes), "
          f"{args.files} files, {args.maps} maps, {args.reducers} reducers, {args.cpus} CPUs, "
          f"local disk {base}")
    print(f"  generate (ours, not timed below) {gen_s:7.2f}s; validate {check_s:.2f}s: ok")
    for name, key in (("Fuxi sort.yaml (submit to end)", "ours_s"),
                      ("Fuxi sort.yaml (running)", "ours_running_s"),
                      ("Ray Data read/sort/write_parquet", "raydata_s"),
                      ("one pyarrow process", "pyarrow_s")):
        if key in results:
            print(f"  {name:<34} {results[key]:7.2f}s  {mib / results[key]:7.1f} MiB/s")
    if "raydata_s" in results:
        print(f"  ours / Ray Data {results['ours_s'] / results['raydata_s']:.2f}x; ours / pyarrow "
              f"{results['ours_s'] / results['pyarrow_s']:.2f}x")
    report("sort", size_bytes=size, files=args.files, maps=args.maps, reducers=args.reducers,
           **{k: round(v, 3) for k, v in results.items()})
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
