"""The fault-injection layer itself (``base.faults``): off by default, scoped, counted, and
strict about names."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from base import faults


@pytest.fixture(autouse=True)
def _clean():
    faults.disarm()
    yield
    faults.disarm()


def test_nothing_fires_unless_armed():
    for point in faults.POINTS:
        faults.check(point, "/anywhere")


def test_an_armed_point_raises_the_errno_only_below_its_directory(tmp_path):
    faults.arm("nuwa.io.wal.fsync", "EIO", under=str(tmp_path / "r1"))
    faults.check("nuwa.io.wal.fsync", str(tmp_path / "r2" / "wal.log"))  # another replica
    faults.check("nuwa.io.wal.write", str(tmp_path / "r1" / "wal.log"))  # another point
    with pytest.raises(OSError) as info:
        faults.check("nuwa.io.wal.fsync", str(tmp_path / "r1" / "wal.log"))
    assert info.value.errno == errno.EIO and "nuwa.io.wal.fsync" in str(info.value)
    assert faults.fired("nuwa.io.wal.fsync") >= 1


def test_times_limits_the_firings():
    with faults.armed("pangu.chunk.write", "ENOSPC", times=2):
        for _ in range(2):
            with pytest.raises(OSError):
                faults.check("pangu.chunk.write")
        faults.check("pangu.chunk.write")


def test_unknown_points_and_errnos_are_refused():
    with pytest.raises(faults.FaultSpecError, match="unknown fault point"):
        faults.arm("nuwa.io.wal.fsycn")
    with pytest.raises(faults.FaultSpecError, match="errno"):
        faults.arm("nuwa.io.wal.fsync", "EWHAT")
    with pytest.raises(faults.FaultSpecError, match="expected point=ERRNO"):
        faults.load_spec("nuwa.io.wal.fsync")


def test_the_environment_arms_a_fresh_process(tmp_path):
    code = ("from base import faults\n"
            "try:\n    faults.check('pangu.io.journal.fsync', '/x/y')\nexcept OSError as e:\n"
            "    print('ERRNO', e.errno)\n")
    env = dict(os.environ, FUXI_FAULTS="pangu.io.journal.fsync=ENOSPC@/x*1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert f"ERRNO {errno.ENOSPC}" in out.stdout, out.stderr
    env.pop("FUXI_FAULTS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert "ERRNO" not in out.stdout
