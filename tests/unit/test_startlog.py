"""The cold start's progress lines (fuxi.startlog) and the autoscaler monitor the embedded
default stops (base.cluster.stop_autoscaler_monitor), without Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


CHILDREN_SCRIPT = r"""
import json, subprocess, sys, time
from base.cluster import RAY_MONITOR_SCRIPT, cmdline, stop_autoscaler_monitor

def child(name):  # a sleeping child with name on its command line, as Ray's monitor has
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name])

monitor = child("/site-packages" + RAY_MONITOR_SCRIPT)
other = child("/site-packages/ray/_private/log_monitor.py")  # negative control
try:
    deadline = time.time() + 30
    while time.time() < deadline and RAY_MONITOR_SCRIPT not in (cmdline(monitor.pid) or ""):
        time.sleep(0.02)  # its command line is there once exec is done
    first = stop_autoscaler_monitor()
    code = monitor.wait(timeout=30)
    print(json.dumps({"first": first, "code": code, "other_alive": other.poll() is None,
                      "again": stop_autoscaler_monitor()}))
finally:
    for p in (monitor, other):
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)
"""


def test_stops_only_our_autoscaler_monitor():
    """In a fresh process of its own: this one may hold a real Ray head (the integration
    tests' cluster), whose monitor is also its child."""
    import json

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", CHILDREN_SCRIPT], capture_output=True,
                         text=True, timeout=WAIT_S * 4, cwd=repo,
                         env={**os.environ, "PYTHONPATH": repo})
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"first": 1, "code": -9, "other_alive": True, "again": 0}, got
