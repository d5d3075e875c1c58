"""The pure cores never import Ray: they must replay in a plain process (unit tests, the
simulator) and stay free of hidden I/O, clocks and actors."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE_CORE_MODULES = [
    "fuxi.spec",
    "fuxi.speculation",
    "fuxi.slots",
    "fuxi.shuffle",
    "fuxi.output",
    "fuxi.inputs",
    "fuxi.states",
    "fuxi.store",
    "fuxi.plan",
    "fuxi.jobcore",
    "nuwa.raft",
    "nuwa.raft_log",
    "nuwa.raft_progress",
    "nuwa.raft_types",
    "nuwa.codec",
    "nuwa.peer_auth",
    "nuwa.peer_guard",
    "nuwa.tree",
    "nuwa.paths",
    "nuwa.commands",
    "nuwa.wire",
    "nuwa.errors",
    "nuwa.linearizability",
    "pangu.paths",
    "pangu.placement",
    "pangu.chunkfile",
    "pangu.namespace",
    "pangu.journal",
    "pangu.errors",
    "pangu.fencing",
    "pangu.access",
    "kuafu.frame",
    "kuafu.flow",
    "kuafu.errors",
    "kuafu.conn",
    "kuafu.server",
    "kuafu.client",
    "kuafu.proxy",
    "fuxi.service_spec",
    "fuxi.servicecore",
    "zhongkui.passwords",
    "zhongkui.tokens",
    "zhongkui.acl",
    "zhongkui.audit",
    "zhongkui.directory",
    "base.faults",
    "base.logfile",
]

_PROBE = """
import importlib, sys
importlib.import_module({module!r})
leaked = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY_MODULES=" + ",".join(leaked))
"""


@pytest.mark.parametrize("module", PURE_CORE_MODULES)
def test_pure_core_imports_without_ray(module):
    # A fresh interpreter: this test process may already have imported ray elsewhere.
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}"
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RAY_MODULES=")][-1]
    leaked = line.removeprefix("RAY_MODULES=")
    assert leaked == "", f"importing {module} pulled in Ray modules: {leaked}"


def test_probe_detects_ray_when_it_is_imported():
    """Guard against a vacuous test: the probe does see Ray when a module really imports it."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module="fuxi.jobmaster")],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"ray not importable here: {proc.stderr[-300:]}")
    assert "RAY_MODULES=ray" in proc.stdout
