"""The node's own load as its FuxiAgent measures it (``fuxi.shells.nodeload``): runnable
threads of the process tree under a root, averaged; the machine's load average when alone."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from fuxi.shells import nodeload

TREE_START_TIMEOUT_S = 60.0  # the test's burners started and seen runnable


def test_runnable_threads_of_a_process_tree_are_counted():
    # A tree of our own: a parent (sleeping) with two burning children.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "ps = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(2)]\n"
        "time.sleep(60)\n")])
    try:
        # A loaded machine starts Pythons slowly: look until a burner is seen (bounded).
        deadline, best = time.monotonic() + TREE_START_TIMEOUT_S, 0.0
        while best < 1.0 and time.monotonic() < deadline:
            best = max(best, nodeload.sample(parent.pid)[0])
            time.sleep(0.05)
        assert best >= 1.0  # a burner is runnable whenever we look at it (mostly both)
        idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            time.sleep(0.5)
            assert nodeload.sample(idle.pid)[0] == 0.0  # negative control: a sleeping tree
        finally:
            idle.kill()
            idle.wait()
    finally:
        for line in subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True,
                                   text=True).stdout.split():
            os.kill(int(line), 9)
        parent.kill()
        parent.wait()


def test_a_vanished_root_counts_nothing_and_no_raylet_means_the_machine():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert nodeload.sample(gone.pid)[0] == 0.0
    assert nodeload.find_raylet() is None  # pytest does not run under a raylet
    nl = nodeload.NodeLoad()
    assert nl.raylet is None and nl.read(0.0) == pytest.approx(os.getloadavg()[0], abs=5.0)
    assert nl.source == "machine"


def test_the_average_follows_its_time_constant():
    nl = nodeload.NodeLoad(avg_s=10.0)
    nl.raylet = os.getpid()  # pretend: our own tree
    samples = iter([(4.0, 2), (0.0, 2)])
    real = nodeload.sample
    nodeload.sample = lambda root, skip_tid=None: next(samples)
    try:
        assert nl.read(0.0) == 4.0 and nl.shared and nl.source == "node"
        assert nl.read(10.0) == pytest.approx(4.0 * math.exp(-1.0))
    finally:
        nodeload.sample = real


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "10", None])
def test_bad_time_constants_are_refused(bad):
    with pytest.raises(ValueError, match="avg_s"):
        nodeload.NodeLoad(avg_s=bad)


def test_garbage_stat_files_are_ignored(tmp_path, monkeypatch):
    for name, text in {"1": "garbage", "2": "2 (x) R", "3": "3 (raylet) S notanumber",
                       "4": "4 (ok) R 1 rest"}.items():
        d = tmp_path / name
        d.mkdir()
        (d / "stat").write_text(text)
    monkeypatch.setattr(nodeload, "PROC", str(tmp_path))
    assert nodeload._stat(str(tmp_path / "1" / "stat")) is None
    assert nodeload._stat(str(tmp_path / "3" / "stat")) is None
    assert nodeload._stat(str(tmp_path / "4" / "stat")) == ("ok", "R", 1)
    assert nodeload.sample(4) == (0.0, 0)  # no task directory: nothing counted, no error
