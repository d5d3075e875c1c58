"""The web console's page load with 1,000 jobs recorded (issue 17's benchmark).

    python -m bench.bench_console [--jobs 1000] [--real 5] [--loads 20]

A FuxiMaster with a data directory (a file store, as on a `fuxi up` cluster without Nuwa) runs
``--real`` small real jobs (wordcount-sized, with a straggler so the timeline has a backup);
their stored records are then copied under new ids until ``--jobs`` are recorded — records the
platform itself wrote, so the pages read what a busy cluster's store holds. FuxiWeb serves
the console; each page is fetched ``--loads`` times over HTTP (server time + transfer; median
and p95) and once in headless Chromium, where the browser's own navigation timing
(``loadEventEnd - startTime``) is read, when chromium and chromedriver are installed.

No peer: Ray's dashboard is not part of this install (``--include-dashboard=false`` everywhere,
and `ray[default]`'s dashboard needs packages the platform does not ship); the figure is
absolute, measured here with the other figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
import uuid

from bench.common import machine, report, start_ray

HTTP_TIMEOUT_S = 60.0


def fetch(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as r:
        n = len(r.read())
    return time.perf_counter() - t0, n


def browser_ms(urls: list[str]) -> dict[str, float] | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    out = {}
    try:
        for u in urls:
            drv.get(u)  # once to warm the connection and the page's own caches
            drv.get(u)
            out[u] = drv.execute_script(
                "const e = performance.getEntriesByType('navigation')[0];"
                "return e.loadEventEnd - e.startTime;")
    finally:
        drv.quit()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--real", type=int, default=5)
    ap.add_argument("--loads", type=int, default=20)
    args = ap.parse_args()
    ray = start_ray(2)
    from fuxi.client import FuxiClient
    from fuxi.io.store import FileStore
    from fuxi.shells.master import FuxiMaster
    from fuxi.shells.webactor import start_web

    data = tempfile.mkdtemp(prefix="bench-console-")
    ns = ray.get_runtime_context().namespace
    master = FuxiMaster.options(name="FuxiMaster", namespace=ns).remote("bench", data)
    try:
        client = FuxiClient(master)
        real = []
        for i in range(args.real):
            spec = {"name": f"strag-{i}", "params": {"work_s": 0.05, "slowdown": 40,
                                                     "slow_count": 1, "output": f"{data}/o{i}"},
                    "speculation": {"enabled": True, "min_done_fraction": 0.1, "slowdown": 2.0,
                                    "min_runtime_s": 0.2, "max_backup_fraction": 0.2},
                    "tasks": {"work": {"fn": "jobs.stragglers:work", "instances": 20,
                                       "output": "${params.output}"}}}
            st = client.wait(client.submit(spec), timeout_s=300)
            assert st["state"] == "succeeded", st
            real.append(st["job_id"])
        store = FileStore(os.path.join(data, "state"))  # FuxiMaster's own (master.py)
        records = [(jid, store.get(f"/jobs/{jid}/status")) for jid in real]
        t0 = time.time() - 86400
        for k in range(args.jobs - len(real)):
            jid, st = records[k % len(records)]
            new = f"job-{uuid.uuid4().hex[:20]}"
            doc = json.loads(json.dumps(st))
            doc.update(job_id=new, submitted_at=t0 + k, name=f"{doc.get('name')}-copy{k}")
            store.put(f"/jobs/{new}/status", doc)
        info = start_web("bench", ns, data, "127.0.0.1", 0, None, 60.0)
        web = info["web"]
        pages = {"/": web + "/", "/jobs": web + "/jobs", "/jobs/<id>": f"{web}/jobs/{real[0]}"}
        listed = len(client.list())
        results = {}
        for name, url in pages.items():
            fetch(url)  # warm
            times, size = [], 0
            for _ in range(args.loads):
                dt, size = fetch(url)
                times.append(dt)
            times.sort()
            results[name] = {"median_ms": round(statistics.median(times) * 1e3, 1),
                             "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1e3, 1),
                             "bytes": size}
        br = browser_ms(list(pages.values()))
        print(f"{machine()}: {listed} jobs recorded ({len(real)} real, the rest copies of "
              f"their records), {args.loads} loads per page")
        for name, r in results.items():
            b = br.get(pages[name]) if br else None
            print(f"  {name:<12} HTTP median {r['median_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms"
                  f"  {r['bytes'] / 1024:7.1f} KiB"
                  + (f"  browser load {b:7.1f} ms" if b is not None else "  (no chromium)"))
        report("console", jobs=listed, pages=results,
               browser_ms={k: br.get(v) for k, v in pages.items()} if br else None)
    finally:
        try:
            ray.kill(master, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
