"""``fuxi validate`` (cli/validate.py over fuxi.io.valsort) on real files made by the sort
jobs' functions: a correct output is VALID (exit 0); an output with records out of order
(inside a file and across files), a lost record, a changed payload byte or a duplicated record
is NOT VALID (exit 1) with a report naming the problem; garbage arguments (no such directory,
no part files, damaged checksum files) exit 2 with a message saying what was expected."""

from __future__ import annotations

import glob
import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from fuxi.errors import BadInput
from fuxi.io import valsort
from tests.unit.test_sort_job import run_gen, run_sort

runner = CliRunner()


@pytest.fixture
def sorted_run(tmp_path):
    src, out = str(tmp_path / "in"), str(tmp_path / "sorted")
    run_gen(src, 3000 * 100, 3, seed=21)
    run_sort(src, out, maps=3, reducers=4)
    parts = sorted(glob.glob(f"{out}/part-*.records"))
    return src, out, parts, [open(p, "rb").read() for p in parts]


def _cli(*args):
    return runner.invoke(app, ["validate", *args])


def test_a_correct_output_is_valid(sorted_run):
    src, out, _, _ = sorted_run
    r = _cli(out, "--expect", src)
    assert r.exit_code == 0, r.output
    assert r.output.startswith("VALID: 3000 records in 4 files")
    report = json.loads(_cli(out, "--expect", src, "--json").stdout)
    assert report["ok"] and report["records"] == report["expected_records"] == 3000
    assert report["checksum"] == report["expected_checksum"]
    order_only = _cli(out)
    assert order_only.exit_code == 0 and "not compared" in order_only.output


def _broken(parts, good, i, data):
    for p, g in zip(parts, good):
        open(p, "wb").write(g)
    open(parts[i], "wb").write(data)


def test_wrong_outputs_are_not_valid_and_say_why(sorted_run):
    src, out, parts, good = sorted_run
    cases = [
        (1, good[1][100:200] + good[1][:100] + good[1][200:], "below the record before them; "
         f"the first is {parts[1]} record 1"),
        (2, good[2][:-100], "records, expected 3000"),  # a lost record
        (0, good[0][:-1] + bytes([good[0][-1] ^ 1]), "checksum"),  # a payload bit
        (3, good[3] + good[3][-100:], "records, expected 3000"),  # a duplicated record
    ]
    for i, data, why in cases:
        _broken(parts, good, i, data)
        r = _cli(out, "--expect", src)
        assert r.exit_code == 1, r.output
        assert r.output.startswith("NOT VALID") and why in r.output, r.output
    # Files swapped: each sorted inside, not across; still the same records.
    _broken(parts, good, 0, good[3])
    open(parts[3], "wb").write(good[0])
    report = valsort.validate(out, src)
    assert not report["ok"] and report["unsorted"] == 2
    assert report["unsorted_at"] == f"{parts[1]} record 0"
    assert report["records"] == 3000 and report["checksum"] == report["expected_checksum"]


def test_garbage_arguments_exit_2(sorted_run, tmp_path):
    src, out, _, _ = sorted_run
    r = _cli(str(tmp_path / "nope"))
    assert r.exit_code == 2 and "is not a directory" in r.output
    (tmp_path / "empty").mkdir()
    r = _cli(str(tmp_path / "empty"))
    assert r.exit_code == 2 and "no part-*.records" in r.output
    r = _cli(out, "--expect", out)  # the sort's output has no _checksum files
    assert r.exit_code == 2 and "_checksum" in r.output
    sums = sorted(glob.glob(f"{src}/_checksum/*.json"))
    open(sums[0], "w").write('{"records": "many"}')
    r = _cli(out, "--expect", src)
    assert r.exit_code == 2 and "is damaged" in r.output
    open(sums[0], "w").write("x" * 5000)
    with pytest.raises(BadInput, match="damaged"):
        valsort.validate(out, src)
    open(glob.glob(f"{out}/part-*.records")[0], "ab").write(b"12345")  # not whole records
    r = _cli(out)
    assert r.exit_code == 2 and "not whole 100-byte records" in r.output
