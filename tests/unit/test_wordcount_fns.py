"""The wordcount example's task functions and corpus generator, without a cluster.

A tiny fake ctx plays the runtime: map instances get a byte-balanced split of the inputs,
their emitted tables are hash-partitioned by word to the reduce instances, and the reduce
results together must equal the plain-Python oracle.
"""

from __future__ import annotations

import filecmp
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from fuxi.errors import BadInput
from fuxi.io.inputs import expand_inputs, split_files
from fuxi.io.shuffle import concat_tables, partition_table
from jobs import gen_corpus, wordcount
from jobs.wordcount import map_words, plain_count, sum_counts, tokenize

REPO = Path(__file__).resolve().parents[2]


@dataclass
class FakeCtx:
    task: str
    instance: int
    num_instances: int
    input_paths: list[str] = field(default_factory=list)
    upstream: list[pa.Table] = field(default_factory=list)
    job_id: str = "job-test"
    attempt: int = 0
    params: dict = field(default_factory=dict)
    emitted: list[pa.Table] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("wordcount.test"))

    def emit(self, table: pa.Table) -> None:
        self.emitted.append(table)

    def read_upstream(self) -> pa.Table:
        return concat_tables(self.upstream)


def run_wordcount(paths: list[str], maps: int, reduces: int) -> tuple[list[pa.Table], list[str]]:
    """Run map -> hash shuffle by word -> reduce in-process; return reduce outputs and log lines."""
    files = expand_inputs(paths, "/")
    pieces: dict[int, list[pa.Table]] = {r: [] for r in range(reduces)}
    logs = []
    for m, split in enumerate(split_files(files, maps)):
        ctx = FakeCtx("map", m, maps, input_paths=split)
        ctx.log = _capturing_logger(logs)
        map_words(ctx)
        for table in ctx.emitted:
            for r, piece in partition_table(table, "hash", reduces, m, ["word"]).items():
                pieces[r].append(piece)
    outputs = [sum_counts(FakeCtx("reduce", r, reduces, upstream=pieces[r])) for r in range(reduces)]
    return outputs, logs


def _capturing_logger(lines: list[str]) -> logging.Logger:
    logger = logging.getLogger(f"wordcount.test.{uuid.uuid4().hex}")
    logger.propagate = False

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    return logger


def _as_dict(tables: list[pa.Table]) -> dict[str, int]:
    result: dict[str, int] = {}
    for t in tables:
        for word, count in zip(t.column("word").to_pylist(), t.column("count").to_pylist()):
            assert word not in result, f"{word!r} reduced by two instances"
            result[word] = count
    return result


def test_tokenisation_is_the_documented_regex():
    assert tokenize("Don't STOP-me now, café 2024!") == ["don't", "stop", "me", "now", "caf", "2024"]


def test_wordcount_matches_the_plain_python_oracle(tmp_path):
    paths = gen_corpus.generate(str(tmp_path / "corpus"), files=3, bytes_per_file=20_000, seed=11)
    outputs, logs = run_wordcount(paths, maps=2, reduces=3)
    assert _as_dict(outputs) == plain_count(paths)
    assert len(logs) == 2 and all(line.startswith("read ") and line.endswith(" words") for line in logs)
    total_bytes = sum(int(line.split()[1]) for line in logs)
    assert total_bytes == sum(Path(p).stat().st_size for p in paths)
    for t in outputs:
        assert t.schema == wordcount.SCHEMA
        rows = list(zip(t.column("count").to_pylist(), t.column("word").to_pylist()))
        assert rows == sorted(rows, key=lambda r: (-r[0], r[1])), "count desc, then word asc"


def test_blocks_cut_at_whitespace_do_not_split_words(tmp_path, monkeypatch):
    monkeypatch.setattr(wordcount, "read_block_bytes", 7)
    p = tmp_path / "t.txt"
    p.write_text("naïve naïve\nabcdefghijklmnop x's 'quoted' CAFÉ\n\nend", encoding="utf-8")
    ctx = FakeCtx("map", 0, 1, input_paths=[str(p)])
    map_words(ctx)
    got = dict(zip(*(ctx.emitted[0].column(c).to_pylist() for c in ("word", "count"))))
    assert got == plain_count([str(p)])
    assert got["abcdefghijklmnop"] == 1 and got["na"] == 2


def test_map_reads_urls_and_reports_non_utf8(tmp_path):
    url = f"memory://wc-{uuid.uuid4().hex}/in.txt"
    with fsspec.open(url, "wb") as f:
        f.write(b"b a b")
    ctx = FakeCtx("map", 0, 1, input_paths=[url])
    map_words(ctx)
    assert ctx.emitted[0].sort_by("word").to_pydict() == {"word": ["a", "b"], "count": [1, 2]}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe")
    with pytest.raises(BadInput, match=r"bad\.txt is not UTF-8 at byte 3"):
        map_words(FakeCtx("map", 0, 1, input_paths=[str(bad)]))


def test_reduce_of_nothing_is_an_empty_typed_table():
    out = sum_counts(FakeCtx("reduce", 0, 2, upstream=[]))
    assert out.num_rows == 0 and out.schema == wordcount.SCHEMA


def test_generator_is_byte_identical_across_runs(tmp_path):
    a = gen_corpus.generate(str(tmp_path / "a"), files=2, bytes_per_file=50_000, seed=3)
    b = gen_corpus.generate(str(tmp_path / "b"), files=2, bytes_per_file=50_000, seed=3)
    for x, y in zip(a, b):
        assert filecmp.cmp(x, y, shallow=False)
        assert 50_000 <= Path(x).stat().st_size < 50_000 + 300
    c = gen_corpus.generate(str(tmp_path / "c"), files=1, bytes_per_file=50_000, seed=4)
    assert Path(c[0]).read_bytes() != Path(a[0]).read_bytes()


def test_shipped_corpus_is_what_the_documented_command_generates(tmp_path):
    shipped = sorted((REPO / "jobs" / "data").glob("part-*.txt"))
    assert [p.name for p in shipped] == [f"part-{i}.txt" for i in range(4)]
    assert gen_corpus.main(["--out", str(tmp_path), "--files", "4", "--bytes-per-file", "1000000", "--seed", "7"]) == 0
    for p in shipped:
        assert filecmp.cmp(p, tmp_path / p.name, shallow=False), f"{p} differs from the generator"
