"""Captured task output (issue 18 part 2): the pure bounds/rotation/cursor core
(``fuxi.core.tasklog``), the files written and read by ``fuxi.shells.tasklogs`` and the query
checks of ``fuxi.shells.logreads`` -- no Ray."""

from __future__ import annotations

import logging
import os
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from base.errors import BadInput
from fuxi.core import tasklog as tl
from fuxi.shells import logreads, tasklogs


def simulate(line_sizes, seg_max, att_max):
    """Apply plan_write to a layout as a writer would; return the layout and bytes written."""
    lay = tl.Layout()
    written = 0
    for n in line_sizes:
        plan = tl.plan_write(lay, n, seg_max, att_max)
        if plan.new_segment is not None:
            assert plan.new_segment == lay.end  # offsets stay contiguous
            lay.segments.append((plan.new_segment, 0))
        s, size = lay.segments[-1]
        lay.segments[-1] = (s, size + n)
        lay.segments = [x for x in lay.segments if x[0] not in plan.delete]
        written += n
    return lay, written


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 100), max_size=300), st.integers(100, 400), st.integers(1, 5))
def test_rotation_keeps_the_newest_bytes_within_the_bound(sizes, seg_max, segs):
    att_max = seg_max * segs
    lay, written = simulate(sizes, seg_max, att_max)
    assert lay.kept_bytes <= att_max
    assert lay.end == written  # the stream's length is never lost
    assert all(n <= seg_max for _, n in lay.segments)
    for (s1, n1), (s2, _) in zip(lay.segments, lay.segments[1:]):
        assert s1 + n1 == s2  # kept segments are contiguous: only the oldest are dropped
    if written > att_max:  # what is dropped is exactly the oldest
        assert lay.start == written - lay.kept_bytes > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=200), st.integers(0, 20000),
       st.integers(1, 500))
def test_a_read_reports_the_drop_and_never_skips_kept_bytes(sizes, cursor, bytes_max):
    lay, written = simulate(sizes, 120, 360)
    cursor = min(cursor, written)
    plan = tl.plan_read(lay, cursor, bytes_max)
    assert plan.dropped == max(0, lay.start - cursor)
    got = sum(n for _, _, n in plan.pieces)
    assert got <= bytes_max
    assert plan.next_cursor == cursor + plan.dropped + got
    at = cursor + plan.dropped
    for s, off, n in plan.pieces:  # pieces follow one another with no gap
        assert s + off == at
        at += n
    assert plan.next_cursor <= plan.end == written


def test_a_cursor_past_the_end_waits_at_the_end_and_negative_is_refused():
    lay, _ = simulate([10, 10], 100, 100)
    assert tl.plan_read(lay, 10**6, 50).next_cursor == 20
    with pytest.raises(tl.CursorError, match="out of range"):
        tl.plan_read(lay, -1, 50)


def test_every_segment_gone_still_says_how_much():
    lay = tl.parse_layout([(tl.gone_name(5000), 0), ("junk", 3), ("seg-x.log", 1)])
    assert lay.segments == [] and lay.start == lay.end == 5000
    plan = tl.plan_read(lay, 100, 1000)
    assert plan.dropped == 4900 and plan.pieces == () and plan.next_cursor == 5000


def test_the_job_trim_drops_oldest_first_and_spares_the_segment_being_written():
    a = tl.Layout([(0, 50), (50, 50)])
    b = tl.Layout([(0, 50), (50, 50)])
    ages = {("a", 0): 1.0, ("a", 50): 3.0, ("b", 0): 2.0, ("b", 50): 4.0}
    drops = tl.plan_job_trim({"a": a, "b": b}, ages, job_bytes_max=150, keep="b")
    assert drops == [("a", 0, 0)]
    drops = tl.plan_job_trim({"a": a, "b": b}, ages, job_bytes_max=40, keep="b")
    assert [(w, s) for w, s, _ in drops] == [("a", 0), ("b", 0), ("a", 50)]
    assert drops[-1][2] == 100  # a's last segment: its end is kept in a gone marker
    assert tl.plan_job_trim({"a": a}, ages, job_bytes_max=1000) == []


@given(st.text(max_size=3000), st.sampled_from(sorted(tl.STREAM_LETTERS)))
def test_lines_round_trip_cut_to_the_line_limit(text, stream):
    pieces = tl.encode_line(stream, text, line_bytes_max=64)
    assert all(len(p) <= 64 and p.endswith(b"\n") for p in pieces)
    back = tl.decode_lines(b"".join(pieces))
    assert {s for s, _ in back} == {stream}
    assert "".join(t for _, t in back) == text.replace("\n", " ").encode(
        "utf-8", "replace").decode("utf-8", "replace")


def test_whole_lines_never_hand_out_half_a_line():
    assert tl.whole_lines(b"O a\nO b") == b"O a\n"
    assert tl.whole_lines(b"O half") == b""
    assert tl.decode_lines(b"garbage\n") == [("fuxi", "garbage")]


@given(st.dictionaries(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True),
                                 st.integers(0, 999), st.integers(0, 99)),
                       st.integers(0, tl.OFFSET_MAX), max_size=20))
def test_cursor_tokens_round_trip(entries):
    cursors = {tl.attempt_key(*k): v for k, v in entries.items()}
    assert tl.parse_cursor(tl.format_cursor(cursors)) == cursors


@pytest.mark.parametrize("token,why", [
    ("map/0/0", "not <key>@<offset>"), ("map/0/0@-1", "not <key>@<offset>"),
    ("map/0/0@abc", "not <key>@<offset>"), (f"map/0/0@{2**60}", "out of range"),
    ("../etc/0/0@1", "cursor key"), ("..x/0/0@1", "not valid"), ("a/b/c@1", "must be numbers"), ("a/1/2/3@1", "expected"),
    ("x" * (tl.CURSOR_CHARS_MAX + 1), "at most"), (",".join(f"t/{i}/0@1" for i in range(600)),
                                                    "READ_ATTEMPTS_MAX"),
])
def test_garbage_cursors_are_refused_saying_why(token, why):
    with pytest.raises(tl.CursorError, match=why):
        tl.parse_cursor(token)
    with pytest.raises(tl.CursorError):
        tl.parse_cursor(12)


# ----------------------------------------------------------------------- files (the shell)

def test_a_sink_captures_print_stderr_and_logging_of_its_thread_only(tmp_path):
    sink = tasklogs.AttemptSink(str(tmp_path / "tasks" / "j" / "t" / "0.0"))
    other = []
    tasklogs.begin(sink)
    try:
        print("from the attempt")
        sys.stderr.write("to stderr\n")
        logging.getLogger("user.mod").warning("careful %s", "now")
        print("no newline yet", end="")
    finally:
        tasklogs.end(sink)
    print("after the attempt")  # not captured: the attempt ended
    got = tasklogs.read_job(str(tmp_path), "j")["attempts"][0]
    streams = [(s, t) for s, t in got["lines"]]
    assert ("stdout", "from the attempt") in streams and ("stderr", "to stderr") in streams
    assert any(s == "logging" and "WARNING user.mod: careful now" in t for s, t in streams)
    assert ("stdout", "no newline yet") in streams  # a partial line is kept at the end
    assert not any("after the attempt" in t for _, t in streams)
    del other


def test_two_attempts_on_two_threads_keep_their_own_lines(tmp_path):
    sinks = [tasklogs.AttemptSink(str(tmp_path / "tasks" / "j" / "t" / f"{i}.0")) for i in (0, 1)]
    go = threading.Barrier(2)

    def run(i):
        tasklogs.begin(sinks[i])
        go.wait(timeout=10)
        for k in range(200):
            print(f"attempt {i} line {k}")
        go.wait(timeout=10)
        tasklogs.end(sinks[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for a in tasklogs.read_job(str(tmp_path), "j")["attempts"]:
        texts = [t for _, t in a["lines"]]
        assert texts == [f"attempt {a['instance']} line {k}" for k in range(200)]


def test_a_flood_stays_within_the_bound_with_a_marker(tmp_path):
    sink = tasklogs.AttemptSink(str(tmp_path / "tasks" / "j" / "t" / "0.0"))
    line = "y" * 1000
    for _ in range(tl.ATTEMPT_LOG_BYTES_MAX // 1000 * 2):
        sink.line("stdout", line)
    sink.close()
    files = os.listdir(tmp_path / "tasks" / "j" / "t" / "0.0")
    kept = sum(os.path.getsize(tmp_path / "tasks" / "j" / "t" / "0.0" / f) for f in files)
    assert kept <= tl.ATTEMPT_LOG_BYTES_MAX
    assert len(files) <= tl.ATTEMPT_LOG_BYTES_MAX // tl.SEGMENT_BYTES_MAX + 1
    got = tasklogs.read_job(str(tmp_path), "j")["attempts"][0]
    assert got["dropped"] > tl.ATTEMPT_LOG_BYTES_MAX // 2
    assert got["lines"][0][0] == "fuxi" and f"{got['dropped']} bytes" in got["lines"][0][1]
    assert len(b"".join(t.encode() for _, t in got["lines"])) <= tl.LOG_READ_BYTES_MAX + 500


def test_a_job_on_a_node_stays_within_its_share(tmp_path):
    share = 3 * tl.SEGMENT_BYTES_MAX
    job = tmp_path / "tasks" / "j"
    for i in range(4):
        sink = tasklogs.AttemptSink(str(job / "t" / f"{i}.0"), str(job), share)
        for _ in range(int(1.5 * tl.SEGMENT_BYTES_MAX) // 500):
            sink.line("stdout", "z" * 500)
        sink.close()
    sink = tasklogs.AttemptSink(str(job / "t" / "9.0"), str(job), share)
    sink.line("stdout", "z")  # a new segment: the job's share is checked
    sink.close()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(job) for f in fs)
    assert total <= share + tl.SEGMENT_BYTES_MAX  # the one being written
    first = tasklogs.read_job(str(tmp_path), "j", instance=0)["attempts"]
    assert first == [] or first[0]["dropped"] > 0  # the oldest went first, with its count


def test_reads_resume_from_a_cursor_with_whole_lines_only(tmp_path):
    sink = tasklogs.AttemptSink(str(tmp_path / "tasks" / "j" / "t" / "0.0"))
    for k in range(1000):
        sink.line("stdout", f"line {k}")
    sink.close()
    cursors, seen = {}, []
    for _ in range(100):
        r = tasklogs.read_job(str(tmp_path), "j", cursors=cursors, bytes_max=1000)
        a = r["attempts"][0]
        seen += [t for _, t in a["lines"]]
        cursors[a["key"]] = a["cursor"]
        if not r["more"]:
            break
    assert seen == [f"line {k}" for k in range(1000)]  # nothing twice, nothing missed


def test_hostile_names_never_leave_the_logs_directory(tmp_path):
    for bad in ("..", "../x", "a/b", "", "x" * 200, ".hidden"):
        with pytest.raises(ValueError):
            tasklogs.attempt_dir(str(tmp_path), bad, "t", 0, 0)
        with pytest.raises(ValueError):
            tasklogs.read_job(str(tmp_path), bad)
    assert tasklogs.open_attempt("default", "../../etc", "t", 0, 0) is None


@pytest.mark.parametrize("kind,q,why", [
    ("job", [], "must be a mapping"), ("job", {"evil": 1}, "unknown"),
    ("job", {"attempt": -1}, "attempt -1 is not valid"), ("job", {"instance": True}, "not valid"),
    ("job", {"task": "../x"}, "not valid"), ("job", {"cursors": "zz"}, "not <key>@<offset>"),
    ("job", {"bytes_max": 0}, "positive"), ("job", {"replica": "r1"}, "for service logs"),
    ("service", {"task": "t"}, "for job logs"), ("nope", {}, "expected job or service"),
])
def test_garbage_queries_are_refused_naming_the_field(kind, q, why):
    with pytest.raises(BadInput, match=why):
        logreads.check_query(kind, q)


def test_a_query_is_bounded_and_normalised():
    q = logreads.check_query("job", {"task": "map", "attempt": 2, "cursors": "map/0/2@10",
                                     "bytes_max": 10**12})
    assert q["bytes_max"] == tl.LOG_READ_BYTES_MAX and q["cursors"] == "map/0/2@10"
    assert logreads.check_query("job", q) == q  # an agent checks it again: same answer


def test_replies_of_nodes_sharing_a_disk_are_merged_once():
    a = {"key": "t/0/0", "task": "t", "instance": 0, "attempt": 0, "cursor": 10, "lines": []}
    b = {**a, "cursor": 30}
    c = {**a, "key": "t/1/0", "instance": 1, "cursor": 5}
    got = tasklogs.merge_replies([{"attempts": [a, c]}, {"attempts": [b], "more": True}])
    assert [(x["key"], x["cursor"]) for x in got["attempts"]] == [("t/0/0", 30), ("t/1/0", 5)]
    assert got["more"]
