"""`fuxi job logs -f` / `fuxi service logs -f` as loops over plain reads (cli.logs): lines are
printed once each as the cursors move, a job's follow ends with its state's exit code after
reading what was left, a failed job exits 1, Ctrl-C exits 130."""

from __future__ import annotations

import pytest

from cli import logs

A = {"key": "work/0/0", "task": "work", "instance": 0, "attempt": 0, "replica": "r-1"}


class Stream:
    """Captured output as the agents would serve it: lines appear over time."""

    def __init__(self, batches):
        self.batches = list(batches)  # what becomes readable before each read
        self.lines: list[str] = []

    def read(self, token: str) -> dict:
        if self.batches:
            self.lines += self.batches.pop(0)
        at = dict(p.split("@") for p in token.split(",")) if token else {}
        start = int(at.get(A["key"], 0))
        return {"attempts": [{**A, "cursor": len(self.lines),
                              "lines": [("stdout", t) for t in self.lines[start:]]}],
                "more": False}


class Jobs:
    def __init__(self, states):
        self.states = list(states)

    def status(self, job_id):
        return {"state": self.states.pop(0) if len(self.states) > 1 else self.states[0]}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(logs, "FOLLOW_POLL_S", 0.0)
    monkeypatch.setattr(logs, "FOLLOW_STATUS_S", 0.0)


def test_a_followed_job_prints_each_line_once_and_exits_by_its_state(capsys):
    s = Stream([["one"], [], ["two", "three"], ["four"]])
    code = logs.follow_job(Jobs(["running", "running", "running", "succeeded"]), "j", s.read,
                           {}, False)
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out == [f"work[0] a0 stdout: {t}" for t in ("one", "two", "three", "four")]


def test_a_failed_job_exits_1_and_its_last_lines_are_read(capsys):
    s = Stream([["boom"]])
    assert logs.follow_job(Jobs(["failed"]), "j", s.read, {}, False) == 1
    assert capsys.readouterr().out == "work[0] a0 stdout: boom\n"


def test_ctrl_c_exits_130():
    def read(token):
        raise KeyboardInterrupt

    assert logs.follow_service(read, {}, False) == 130
    assert logs.follow_job(Jobs(["running"]), "j", read, {}, False) == 130
