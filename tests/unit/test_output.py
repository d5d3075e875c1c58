"""fuxi.io.output: attempts, first-commit-wins, finalize, prepare, read back — locally and in memory://."""

from __future__ import annotations

import json
import os
import uuid

import fsspec
import pyarrow as pa
import pytest

from fuxi.errors import BadInput, LimitExceeded
from fuxi.io.output import OutputLocation


@pytest.fixture(params=["local", "file_url", "memory"])
def base(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    if request.param == "file_url":
        yield f"file://{tmp_path}/out"
        return
    url = f"memory://fuxi-test-{uuid.uuid4().hex}/out"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.split("://", 1)[1].split("/")[0]
    if fs.exists("/" + root):
        fs.rm("/" + root, recursive=True)


def _table(instance: int, attempt: int, rows: int = 3) -> pa.Table:
    return pa.table({"instance": [instance] * rows, "attempt": [attempt] * rows, "i": list(range(rows))})


def test_first_commit_wins_and_a_duplicate_commit_is_a_no_op(base):
    out = OutputLocation(base)
    out.prepare()
    fast = out.write_attempt("reduce", 0, 1, _table(0, 1))
    slow = out.write_attempt("reduce", 0, 0, _table(0, 0))
    assert fast["rows"] == 3 and fast["bytes"] > 0
    assert fast["path"].endswith("/_attempts/reduce-00000-a1.parquet")
    assert out.commit("reduce", 0, 1) is True
    assert out.commit("reduce", 0, 0) is False  # the speculative loser
    assert out.commit("reduce", 0, 1) is False  # a retried commit message
    out.discard("reduce", 0, 0)
    assert not out.fs.exists(slow["path"])
    assert out.read().column("attempt").to_pylist() == [1, 1, 1]


def test_attempt_files_appear_complete_or_not_at_all(base):
    out = OutputLocation(base)
    out.prepare()
    info = out.write_attempt("map", 3, 0, _table(3, 0))
    assert out.fs.exists(info["path"])
    assert not out.fs.exists(info["path"] + ".tmp")
    assert info["path"] == out.attempt_path("map", 3, 0)


def test_finalize_names_missing_parts_then_succeeds(base):
    out = OutputLocation(base)
    out.prepare()
    for i in (0, 2):
        out.write_attempt("t", i, 0, _table(i, 0))
        assert out.commit("t", i, 0)
    with pytest.raises(BadInput, match=r"missing parts for instances \[1, 3\]"):
        out.finalize(4)
    for i in (1, 3):
        out.write_attempt("t", i, 0, _table(i, 0, rows=i))
        out.commit("t", i, 0)
    out.write_attempt("t", 3, 1, _table(3, 1))  # a loser never discarded
    summary = out.finalize(4)
    assert summary["num_parts"] == 4 and summary["rows"] == 3 + 1 + 3 + 3
    assert summary["bytes"] == sum(out.fs.size(out.part_path(i)) for i in range(4))
    with out.fs.open(out.path + "/_SUCCESS", "rb") as f:
        assert json.loads(f.read()) == summary
    assert not out.fs.exists(out.path + "/_attempts")
    assert out.is_finalized()


def test_read_returns_all_parts_in_instance_order(base):
    out = OutputLocation(base)
    out.prepare()
    written = [_table(i, 0, rows=i + 1) for i in range(3)]
    for i in (2, 0, 1):  # commit order must not matter
        out.write_attempt("t", i, 0, written[i])
        out.commit("t", i, 0)
    out.finalize(3)
    assert out.read() == pa.concat_tables(written)
    assert OutputLocation(base).read() == pa.concat_tables(written)


def test_non_empty_location_is_refused_unless_overwrite(base):
    first = OutputLocation(base)
    first.prepare()
    first.write_attempt("t", 0, 0, _table(0, 0))
    first.commit("t", 0, 0)
    first.finalize(1)
    again = OutputLocation(base)
    with pytest.raises(BadInput, match=r"is not empty; expected an empty or missing directory"):
        again.prepare()
    again.prepare(overwrite=True)
    assert again.fs.ls(again.path, detail=False) == []
    assert again.read().num_rows == 0


def test_prepare_accepts_an_existing_empty_directory(base):
    out = OutputLocation(base)
    out.fs.makedirs(out.path, exist_ok=True)
    out.prepare()
    assert out.fs.isdir(out.path)


def test_commit_without_attempt_file_and_bad_names_are_refused(base):
    out = OutputLocation(base)
    out.prepare()
    with pytest.raises(BadInput, match="does not exist; expected write_attempt"):
        out.commit("t", 0, 0)
    with pytest.raises(BadInput, match="task name 'a/b'"):
        out.attempt_path("a/b", 0, 0)
    with pytest.raises(BadInput, match="instance must be an int >= 0; got -1"):
        out.attempt_path("t", -1, 0)
    with pytest.raises(LimitExceeded, match="instances_max"):
        out.finalize(10**6)
    out.discard("t", 5, 5)  # nothing to discard: fine


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = OutputLocation("rel/out")
    assert out.path == os.path.join(str(tmp_path), "rel", "out")
    out.prepare()
    assert (tmp_path / "rel" / "out").is_dir()


def test_output_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="is a file"):
        OutputLocation(str(tmp_path / "f")).prepare()
