"""The cold start's progress lines (fuxi.startlog) and the autoscaler monitor the embedded
default stops (base.cluster.stop_autoscaler_monitor), without Ray."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from base.cluster import RAY_MONITOR_SCRIPT, stop_autoscaler_monitor
from fuxi.startlog import TRACE_ENV, StartLog

WAIT_S = 10.0


def test_steps_are_said_and_kept(monkeypatch):
    monkeypatch.delenv(TRACE_ENV, raising=False)
    lines: list[str] = []
    log = StartLog(lines.append)
    log.say("starting…")
    with log.step("Ray started"):
        pass
    with log.step("import ray", fine=True):  # a finer step: kept, said only when tracing
        pass
    assert lines[0] == "starting…"
    assert len(lines) == 2 and lines[1].startswith("Ray started ") and lines[1].endswith(" s")
    assert [name for name, _ in log.steps] == ["Ray started", "import ray"]
    assert all(took >= 0 for _, took in log.steps)


def test_tracing_says_the_fine_steps(monkeypatch):
    monkeypatch.setenv(TRACE_ENV, "1")
    lines: list[str] = []
    log = StartLog(lines.append)
    with log.step("import ray", fine=True):
        pass
    assert len(lines) == 1 and lines[0].startswith("import ray ")


@pytest.mark.parametrize("value", ["", "0"])
def test_trace_off_values(monkeypatch, value):
    monkeypatch.setenv(TRACE_ENV, value)
    lines: list[str] = []
    with StartLog(lines.append).step("x", fine=True):
        pass
    assert lines == []


def test_a_failing_step_is_still_timed():
    log = StartLog()  # no sink: nothing said, nothing raised by the log itself
    with pytest.raises(RuntimeError):
        with log.step("FuxiMaster ready"):
            raise RuntimeError("boom")
    assert [name for name, _ in log.steps] == ["FuxiMaster ready"]


def _child(name: str) -> subprocess.Popen:
    """A sleeping child of this process with ``name`` on its command line (as Ray's monitor
    has its script's path)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name])


def test_stops_only_our_autoscaler_monitor():
    monitor = _child("/site-packages" + RAY_MONITOR_SCRIPT)
    other = _child("/site-packages/ray/_private/log_monitor.py")  # negative control
    try:
        deadline = time.time() + WAIT_S
        while time.time() < deadline:  # its command line is there once exec is done
            try:
                with open(f"/proc/{monitor.pid}/cmdline", "rb") as f:
                    if RAY_MONITOR_SCRIPT.encode() in f.read():
                        break
            except OSError:
                pass
            time.sleep(0.02)
        assert stop_autoscaler_monitor() == 1
        assert monitor.wait(timeout=WAIT_S) == -9
        assert other.poll() is None, "a process that is not the monitor was stopped"
        assert stop_autoscaler_monitor() == 0  # reaped: nothing left to stop
    finally:
        for p in (monitor, other):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=WAIT_S)
