"""A word-frequency lookup service over the wordcount job's output.

    fuxi submit jobs/wordcount.yaml --set output=pangu:///wc   # or a local directory
    fuxi service register jobs/services/wordfreq.yaml --set config.counts=pangu:///wc
    fuxi call nuwa://default/wordfreq lookup word=the
    fuxi call nuwa://default/wordfreq top n=5

The counts (Parquet parts with columns word, count) are read once per replica, from a local
path or any fsspec URL (``pangu://`` included), and held in memory.
"""

from __future__ import annotations

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

import kuafu

TOP_N_MAX = 1000
WORDS_PER_LOOKUP_MAX = 1000


class WordFreq:
    def __init__(self, counts: str, version: str = "1"):
        fs, _, paths = fsspec.get_fs_token_paths(counts.rstrip("/") + "/part-*.parquet")
        if not paths:
            raise FileNotFoundError(f"no part-*.parquet under {counts!r}: run the wordcount "
                                    f"job with output={counts} first")
        tables = []
        for p in sorted(paths):
            with fs.open(p, "rb") as f:
                tables.append(pq.read_table(f, columns=["word", "count"]))
        table = pa.concat_tables(tables)
        words, counts_ = table.column("word").to_pylist(), table.column("count").to_pylist()
        self.counts = dict(zip(words, counts_))
        self.ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self.version = version

    @kuafu.method(idempotent=True)
    def lookup(self, msg: dict) -> dict:
        """{"word": "the"} or {"words": "the,a,of"} -> {word: count} (0 when unseen)."""
        if not isinstance(msg, dict) or not ("word" in msg or "words" in msg):
            raise ValueError("lookup takes a map with 'word' or 'words' (comma-separated)")
        words = [msg["word"]] if "word" in msg else msg["words"].split(",")
        if len(words) > WORDS_PER_LOOKUP_MAX:
            raise ValueError(f"{len(words)} words; at most {WORDS_PER_LOOKUP_MAX} per lookup")
        return {w: str(self.counts.get(w.lower(), 0)) for w in words}

    @kuafu.method(idempotent=True)
    def top(self, msg: dict) -> pa.Table:
        """{"n": "10"} -> an Arrow table of the n most frequent words."""
        n = int((msg or {}).get("n", "10")) if isinstance(msg, dict) else 10
        if not 1 <= n <= TOP_N_MAX:
            raise ValueError(f"n={n}: expected 1..{TOP_N_MAX}")
        best = self.ranked[:n]
        return pa.table({"word": [w for w, _ in best], "count": [c for _, c in best]})

    @kuafu.method(idempotent=True)
    def info(self, msg) -> dict:
        return {"words": str(len(self.counts)), "version": self.version}

    def check_health(self) -> bool:
        return bool(self.counts)
