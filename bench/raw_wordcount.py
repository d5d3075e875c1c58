"""The peer for the cold-start benchmark: the same wordcount in plain Ray tasks, from a fresh
process (ray.init, 4 map tasks, 2 reduce tasks, Parquet out, ray.shutdown)."""

from __future__ import annotations

import glob
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(out_dir: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             _temp_dir=f"/tmp/fuxi-rawwc-{os.getuid()}")

    @ray.remote
    def map_words(path: str, n: int):
        from fuxi.io.shuffle import hash_partition_ids, split_by_ids
        from jobs.wordcount import tokenize

        counts: dict[str, int] = {}
        with open(path, encoding="utf-8") as f:
            for w in tokenize(f.read()):
                counts[w] = counts.get(w, 0) + 1
        t = pa.table({"word": list(counts), "count": list(counts.values())})
        return tuple(split_by_ids(t, hash_partition_ids(t, ["word"], n), n))

    @ray.remote
    def reduce_counts(i: int, *parts):
        t = pa.concat_tables(parts).group_by("word").aggregate([("count", "sum")])
        pq.write_table(t, f"{out_dir}/part-{i:05d}.parquet")
        return t.num_rows

    paths = sorted(glob.glob("jobs/data/*.txt"))
    maps = [map_words.options(num_returns=2).remote(p, 2) for p in paths]
    os.makedirs(out_dir, exist_ok=True)
    rows = ray.get([reduce_counts.remote(i, *[m[i] for m in maps]) for i in range(2)], timeout=300)
    ray.shutdown()
    print(sum(rows))


if __name__ == "__main__":
    main(sys.argv[1])
