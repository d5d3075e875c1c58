"""fuxi.io.inputs: pattern expansion (local, file://, memory://) and byte-balanced splits."""

from __future__ import annotations

import uuid

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.io import inputs
from fuxi.errors import BadInput, LimitExceeded
from fuxi.io.inputs import FileInfo, expand_inputs, split_files


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    for name, size in [("a.txt", 10), ("b.txt", 30), ("c.csv", 5), ("sub/d.txt", 7), ("_SUCCESS", 1)]:
        (d / name).write_bytes(b"x" * size)
    return tmp_path


def test_relative_globs_resolve_against_base_dir(data_dir):
    got = expand_inputs("data/*.txt", str(data_dir))
    assert got == [
        FileInfo(str(data_dir / "data" / "a.txt"), 10),
        FileInfo(str(data_dir / "data" / "b.txt"), 30),
    ]


def test_patterns_are_merged_sorted_and_deduplicated(data_dir):
    base = str(data_dir)
    got = expand_inputs(["data/b.txt", "data/*.txt", str(data_dir / "data" / "c.csv")], base)
    assert [f.path for f in got] == [
        str(data_dir / "data" / n) for n in ("a.txt", "b.txt", "c.csv")
    ]


def test_recursive_glob_and_file_urls_give_plain_paths(data_dir):
    got = expand_inputs(f"file://{data_dir}/data/**/*.txt", "/elsewhere")
    assert [f.path for f in got] == [
        str(data_dir / "data" / "a.txt"),
        str(data_dir / "data" / "b.txt"),
        str(data_dir / "data" / "sub" / "d.txt"),
    ]


def test_a_directory_means_its_data_files(data_dir):
    got = expand_inputs("data", str(data_dir))
    names = [f.path.rsplit("/", 1)[1] for f in got]
    assert names == ["a.txt", "b.txt", "c.csv", "d.txt"]  # _SUCCESS is bookkeeping


def test_memory_urls_keep_their_protocol():
    root = f"/inputs-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        fs.pipe({f"{root}/x1.txt": b"12345", f"{root}/x2.txt": b"1"})
        got = expand_inputs(f"memory://{root}/*.txt", "/unused")
        assert got == [FileInfo(f"memory://{root}/x1.txt", 5), FileInfo(f"memory://{root}/x2.txt", 1)]
        with fsspec.open(got[0].path, "rb") as f:
            assert f.read() == b"12345"
    finally:
        fs.rm(root, recursive=True)


def test_a_pattern_matching_nothing_names_itself_and_the_base_dir(data_dir):
    with pytest.raises(BadInput, match=r"'data/\*\.parquet' \(relative to '.*'\) matched no files"):
        expand_inputs(["data/*.txt", "data/*.parquet"], str(data_dir))
    with pytest.raises(BadInput, match="matched no files"):
        expand_inputs("data/missing.txt", str(data_dir))
    with pytest.raises(BadInput, match="non-empty string"):
        expand_inputs([""], str(data_dir))


def test_input_files_max_is_enforced(data_dir, monkeypatch):
    monkeypatch.setattr(inputs, "input_files_max", 1)
    with pytest.raises(LimitExceeded, match="input_files_max is 1"):
        expand_inputs("data/*.txt", str(data_dir))


def test_split_balances_bytes_largest_first():
    files = [FileInfo(p, s) for p, s in [("a", 100), ("b", 60), ("c", 50), ("d", 10), ("e", 10)]]
    # 100 -> 0; 60 -> 1; 50 -> 1 (110); 10 -> 0 (110); 10 -> 0 (tie 110/110: lowest index)
    assert split_files(files, 2) == [["a", "d", "e"], ["b", "c"]]


def test_more_instances_than_files_leaves_some_empty():
    files = [FileInfo("b", 1), FileInfo("a", 1)]
    assert split_files(files, 4) == [["a"], ["b"], [], []]
    assert split_files([], 2) == [[], []]


def test_split_refuses_bad_arguments():
    with pytest.raises(BadInput, match="num_instances must be an int >= 1; got 0"):
        split_files([FileInfo("a", 1)], 0)
    with pytest.raises(BadInput, match="takes FileInfo items; got str"):
        split_files(["a"], 1)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 10_000), max_size=40),
    n=st.integers(1, 8),
    seed=st.randoms(use_true_random=False),
)
def test_split_is_a_deterministic_balanced_partition(sizes, n, seed):
    files = [FileInfo(f"f{i:03d}", s) for i, s in enumerate(sizes)]
    shuffled = list(files)
    seed.shuffle(shuffled)
    split = split_files(files, n)
    assert split == split_files(shuffled, n), "input order must not matter"
    assert len(split) == n
    assert sorted(p for part in split for p in part) == sorted(f.path for f in files)
    assert all(part == sorted(part) for part in split)
    size_of = {f.path: f.size_bytes for f in files}
    loads = [sum(size_of[p] for p in part) for part in split]
    # Greedy LPT bound: no instance exceeds the lightest by more than the largest file.
    assert max(loads) - min(loads) <= max(sizes, default=0)
