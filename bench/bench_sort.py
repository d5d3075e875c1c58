"""The sort benchmark (issue 19): 100-byte records (10-byte key) sorted by our
``jobs/sort/sort.yaml`` job, by Ray Data and by one pyarrow process, on the same data, for one
or more sizes in the same run.

    python -m bench.bench_sort [--sizes 1GiB,4GiB --storage pangu --sort-memory 256MiB
                                --map-memory 128MiB --files 16 --maps 16 --reducers 16 --cpus 2
                                --plot docs/sort_throughput.png]

Setup: ``pip install -e '.[bench]'`` (``ray[data]`` and matplotlib; the benchmark says so and
stops if Ray Data is missing).

Per size:

1. Input (not timed): ``jobs/sort/gen.yaml`` writes the records as ``--files`` raw record
   files, on Pangu (``--storage pangu``: ``pangu:///bench-sort/...``, the replication factor
   Pangu gave the files is reported) or local disk; the same records are written as Parquet
   on local disk (``key`` and ``payload`` binary columns, one file per part) for the peers.
2. Ours: ``sort.yaml`` submitted and waited for (submit to end; records in and out of
   ``--storage``; a ``sort`` instance holding more than ``--sort-memory`` spills sorted runs
   to local disk and merges them; a ``partition`` instance holds at most ``--map-memory`` of
   partitioned records and spills the rest to local disk), then ``validate.yaml`` checks it
   (not timed). The profile: the ``phases`` lines the job's attempts logged, summed per task.
3. Ray Data: ``read_parquet(dir).sort("key").write_parquet(out)`` on the same Ray, local disk.
4. pyarrow (sizes up to ``--pyarrow-max``): one process, ``pq.read_table(dir)``,
   ``sort_by("key")``, ``pq.write_table``.

Memory: while ours and Ray Data run, every process under this driver is sampled every
``MEMORY_SAMPLE_S``; reported are the largest resident set of one Fuxi worker process
(``ray::WorkerActor``; ``VmHWM``, which counts the object store's shared pages it touched,
and the largest sampled ``RssAnon``, its private memory), and for both systems the largest
sum of ``RssAnon`` over all processes. Prints one line per system and size, a JSON line
(``bench.common.report``), and with ``--plot`` a PNG of throughput against size.
"""


from __future__ import annotations

import argparse
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

    import fsspec

    os.makedirs(dst, exist_ok=True)
    fs, base = fsspec.core.url_to_fs(src)
    for i, p in enumerate(sorted(fs.glob(f"{base.rstrip('/')}/part-*.records"))):
        with fs.open(p, "rb") as f:
            rows = rows_of_bytes(f.read())
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


MEMORY_SAMPLE_S = 0.2
VALSORT_MAX_BYTES = 2**30  # sizes up to this are also checked by fuxi.io.valsort in the driver
PANGU_BASE = "/bench-sort"


class MemorySampler:
    """Samples /proc for every process under this one (the Ray cluster the driver started)."""

    def __init__(self):
        import threading

        self.me = os.getpid()
        self.worker_hwm = 0  # bytes, largest VmHWM of one Fuxi worker process
        self.worker_anon = 0  # bytes, largest sampled RssAnon of one Fuxi worker process
        self.total_anon = 0  # bytes, largest sampled sum of RssAnon over all processes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree(self) -> list[int]:
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        mine, frontier = [], [self.me]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parent.items() if pp == p]
            mine += kids
            frontier += kids
        return mine

    @staticmethod
    def _status(pid: int) -> tuple[str, dict]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return "", {}
        kb = {k: int(v.split()[0]) * 1024 for k, v in fields.items()
              if k in ("VmHWM", "RssAnon")}
        return cmd, kb

    def _loop(self) -> None:
        tree, n = [], 0
        while not self._stop.is_set():
            if n % 10 == 0:
                tree = self._tree()
            n += 1
            total = 0
            for pid in tree:
                cmd, kb = self._status(pid)
                total += kb.get("RssAnon", 0)
                if cmd.startswith("ray::WorkerActor"):
                    self.worker_hwm = max(self.worker_hwm, kb.get("VmHWM", 0))
                    self.worker_anon = max(self.worker_anon, kb.get("RssAnon", 0))
            self.total_anon = max(self.total_anon, total)
            self._stop.wait(MEMORY_SAMPLE_S)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _replication(url: str) -> int | None:
    from pangu.client import client

    c = client()
    path = url[len("pangu://"):].partition("/")[2]
    parts = [e for e in c.ls("/" + path, detail=True) if e["path"].endswith(".records")]
    return min((e.get("replication") or 0) for e in parts) if parts else None


def _phases(job_id: str) -> dict:
    """The ``phases {...}`` lines the sort job's attempts logged (jobs/sort/sort.py), summed
    per task over instances (seconds are CPU-thread seconds of the instances, so they add up
    to more than the job's wall time when instances run side by side); plus counts, the
    largest map held bytes and the spilled runs per sort instance."""
    import glob
    import json

    from base.cluster import fuxi_home

    out: dict = {}
    for path in glob.glob(os.path.join(fuxi_home(), "*", "logs", "tasks", job_id, "*", "*",
                                       "*")):
        try:
            with open(path, errors="replace") as f:
                lines = [ln for ln in f if "phases {" in ln]
        except OSError:
            continue
        for ln in lines:
            try:
                ph = json.loads(ln[ln.index("phases {") + len("phases "):].strip())
            except ValueError:
                continue
            task = out.setdefault(ph.pop("task", "?"), {"attempts": 0})
            task["attempts"] += 1
            for k, v in ph.items():
                if k in ("held_bytes_peak", "held_bytes_max", "sort_memory"):
                    task[k] = max(task.get(k, 0), v)
                elif k == "runs":
                    task.setdefault("runs_per_instance", []).append(v)
                elif isinstance(v, (int, float)):
                    task[k] = round(task.get(k, 0) + v, 3)
    return out


def _sort_one(client, size: int, args, base: str, storage: str) -> dict:
    """Generate, sort (ours), validate, then the peers, for one size."""
    label = _label(size)
    src, out, val = (f"{storage}/{label}/{d}" for d in ("in", "sorted", "val"))
    local = f"{base}/{label}"
    os.makedirs(local, exist_ok=True)
    res: dict = {"size_bytes": size, "load_1m_start": round(os.getloadavg()[0], 2)}

    def run(path, **params):
        t0 = time.perf_counter()
        job_id = client.submit(path, [f"params.{k}={v}" for k, v in params.items()])
        st = client.wait(job_id, timeout_s=JOB_TIMEOUT_S)
        assert st["state"] == "succeeded", st.get("report")
        st["job_id"] = job_id
        return time.perf_counter() - t0, st

    res["gen_s"], _ = run("jobs/sort/gen.yaml", size=size, files=args.files, seed=1, output=src)
    with MemorySampler() as mem:
        ours_s, st = run("jobs/sort/sort.yaml", input=src, output=out, maps=args.maps,
                         reducers=args.reducers, sort_memory=args.sort_memory,
                         map_memory=args.map_memory, spill_dir=f"{local}/spill")
    res["phases"] = _phases(st["job_id"])
    res.update(ours_s=ours_s, ours_running_s=st["finished_at"] - st["started_at"],
               ours_worker_hwm_bytes=mem.worker_hwm, ours_worker_anon_bytes=mem.worker_anon,
               ours_total_anon_bytes=mem.total_anon)
    print(f"  ({label}: generate {res['gen_s']:.2f}s, ours {ours_s:.2f}s)", flush=True)
    res["validate_s"], _ = run("jobs/sort/validate.yaml", input=out, expect=src, output=val,
                               checkers=args.maps)
    if size <= VALSORT_MAX_BYTES:  # `fuxi validate`'s check, in this process, on the same files
        from fuxi.io.valsort import validate

        t0 = time.perf_counter()
        try:
            check = validate(out, src)
        except Exception as e:  # noqa: BLE001 - reported, and the peers still run
            check = {"ok": False, "problems": [f"{type(e).__name__}: {e}"]}
        if check["ok"]:
            res["valsort_s"] = time.perf_counter() - t0
        else:
            res["valsort_problems"] = check["problems"]
            print(f"  fuxi validate's check FAILED: {check['problems']}", flush=True)
    if storage.startswith("pangu://"):
        res["replication_in"], res["replication_out"] = _replication(src), _replication(out)
        _parquet_copy(src, f"{local}/pq")
        from pangu.client import client as pangu_client

        pangu_client().rm(f"{PANGU_BASE}/{label}", recursive=True)
    else:
        _parquet_copy(src, f"{local}/pq")
        shutil.rmtree(f"{local}/in", ignore_errors=True)
        shutil.rmtree(f"{local}/sorted", ignore_errors=True)
    if not args.no_raydata:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        with MemorySampler() as mem:
            t0 = time.perf_counter()
            ray.data.read_parquet(f"{local}/pq").sort("key").write_parquet(f"{local}/raydata")
            res["raydata_s"] = time.perf_counter() - t0
        res["raydata_total_anon_bytes"] = mem.total_anon
        shutil.rmtree(f"{local}/raydata", ignore_errors=True)
    if size <= args.pyarrow_max:
        res["pyarrow_s"] = _pyarrow_sort(f"{local}/pq", f"{local}/pyarrow.parquet")
    shutil.rmtree(local, ignore_errors=True)
    res["load_1m_end"] = round(os.getloadavg()[0], 2)  # the machine is shared: say how busy
    return res


def _label(size: int) -> str:
    for unit, n in (("GiB", 2**30), ("MiB", 2**20)):
        if size % n == 0:
            return f"{size // n}{unit}"
    return f"{size}B"


def _print(res: dict, args, storage: str) -> None:
    size = res["size_bytes"]
    mib = size / 2**20
    gib = 2**30
    rep = (f", replication in {res.get('replication_in')} / out {res.get('replication_out')}"
           if "replication_in" in res else "")
    print(f"sort of {_label(size)} ({size // 100} records of 100 bytes), {args.files} files, "
          f"{args.maps} maps, {args.reducers} reducers, sort_memory {args.sort_memory}, ours on "
          f"{storage}{rep}; peers on local disk")
    print(f"  generate (ours, not timed below) {res['gen_s']:7.2f}s; validate.yaml "
          f"{res['validate_s']:.2f}s: ok" + (f"; fuxi validate's check {res['valsort_s']:.2f}s: ok"
                                            if "valsort_s" in res else ""))
    for name, key in (("Fuxi sort.yaml (submit to end)", "ours_s"),
                      ("Fuxi sort.yaml (running)", "ours_running_s"),
                      ("Ray Data read/sort/write_parquet", "raydata_s"),
                      ("one pyarrow process", "pyarrow_s")):
        if key in res:
            print(f"  {name:<34} {res[key]:7.2f}s  {mib / res[key]:7.1f} MiB/s")
    print(f"  memory, ours: largest worker VmHWM {res['ours_worker_hwm_bytes'] / gib:.2f} GiB "
          f"(RssAnon {res['ours_worker_anon_bytes'] / gib:.2f} GiB), all processes' RssAnon "
          f"{res['ours_total_anon_bytes'] / gib:.2f} GiB"
          + (f"; Ray Data all processes' RssAnon {res['raydata_total_anon_bytes'] / gib:.2f} GiB"
             if "raydata_total_anon_bytes" in res else ""))
    for task, ph in sorted(res.get("phases", {}).items()):
        print(f"  profile {task}: " + ", ".join(f"{k} {v}" for k, v in ph.items()))
    if "raydata_s" in res:
        print(f"  ours / Ray Data {res['ours_s'] / res['raydata_s']:.2f}x" +
              (f"; ours / pyarrow {res['ours_s'] / res['pyarrow_s']:.2f}x"
               if "pyarrow_s" in res else ""))


def _plot(results: list[dict], path: str, storage: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["size_bytes"] / 2**30 for r in results]
    for key, name in (("ours_s", f"Fuxi sort.yaml ({storage.split(':')[0]} in/out)"),
                      ("raydata_s", "Ray Data (local Parquet)"),
                      ("pyarrow_s", "one pyarrow process (in memory)")):
        pts = [(s, r["size_bytes"] / 2**20 / r[key]) for s, r in zip(sizes, results) if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xlabel("data size (GiB)")
    ax.set_ylabel("throughput (MiB/s, submit to end)")
    ax.set_title(f"Sort of 100-byte records, {machine().split(',')[0]}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def _replot(logs: list[str], path: str) -> None:
    import json

    by_size: dict = {}
    storage = "pangu"
    for log in logs:
        with open(log) as f:
            for line in f:
                if line.startswith('{"bench": "sort"'):
                    r = json.loads(line)
                    by_size[r["size_bytes"]] = r
                    storage = r.get("storage", storage)
    if not by_size:
        sys.exit(f"no sort results (JSON lines) in {logs}")
    _plot([by_size[k] for k in sorted(by_size)], path, f"{storage}:")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", "--size", default="1GiB", help="comma-separated, e.g. 1GiB,4GiB")
    ap.add_argument("--storage", choices=("pangu", "local"), default="pangu")
    ap.add_argument("--sort-memory", default="512MiB")
    ap.add_argument("--map-memory", default="128MiB",
                    help="partitioned records a map holds before spilling (params.map_memory)")
    ap.add_argument("--pyarrow-max", default="2GiB")
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--maps", type=int, default=8)
    ap.add_argument("--reducers", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--dir", default=f"/tmp/fuxi-bench-sort-{os.getuid()}")
    ap.add_argument("--plot", default=None, help="write a PNG of throughput against size")
    ap.add_argument("--no-raydata", action="store_true", help="skip Ray Data")
    ap.add_argument("--replot", default=None, metavar="LOG",
                    help="run nothing: plot (--plot) the sizes in the JSON lines of earlier "
                         "runs' output LOG(s), comma-separated; a later line of a size wins")
    args = ap.parse_args()
    if args.replot:
        if not args.plot:
            sys.exit("--replot needs --plot PATH (where to write the PNG)")
        _replot(args.replot.split(","), args.plot)
        return
    if not args.no_raydata:
        try:
            import ray.data  # noqa: F401
        except ImportError:
            sys.exit("Ray Data is missing: pip install 'ray[data]' (or pass --no-raydata)")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit("matplotlib is missing (for --plot): pip install matplotlib")
    from jobs.sort.records import parse_size

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    args.pyarrow_max = parse_size(args.pyarrow_max)
    base = args.dir
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    ray = start_ray(args.cpus)
    from fuxi.client import FuxiClient
    from fuxi.runtime import connect

    results = []
    print(machine(), flush=True)
    with connect("bench") as conn:
        client = FuxiClient(conn.master)
        storage = base
        if args.storage == "pangu":
            # Pangu as `fuxi up` lays it out on one machine: three chunkservers, replication 3.
            from pangu import deploy
            from fuxi.runtime import pangu_layout

            layout = pangu_layout(len(deploy.alive_nodes()))
            deploy.start(conn.cluster, f"{base}/pangu-data", per_node=layout["per_node"],
                         settings=layout["settings"])
            storage = f"pangu://{PANGU_BASE}"
        for size in sizes:
            res = _sort_one(client, size, args, base, storage)
            _print(res, args, storage)
            results.append(res)
            report("sort", storage=args.storage, files=args.files, maps=args.maps,
                   reducers=args.reducers, sort_memory=args.sort_memory,
                   map_memory=args.map_memory, **{k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})
        if args.storage == "pangu":
            deploy.stop(conn.cluster)
    ray.shutdown()
    if args.plot:
        _plot(results, args.plot, storage)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
