"""The pure cores never import Ray: they must replay in a plain process (unit tests, the
simulator) and stay free of hidden I/O, clocks and actors."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE_CORE_MODULES = [
    "fuxi.core.spec",
    "fuxi.core.speculation",
    "fuxi.core.slots",
    "fuxi.io.shuffle",
    "fuxi.io.output",
    "fuxi.io.inputs",
    "fuxi.core.states",
    "fuxi.io.store",
    "fuxi.core.plan",
    "fuxi.core.jobcore",
    "fuxi.core.jobtypes",
    "fuxi.io.resolve",
    "nuwa.core.raft",
    "nuwa.core.raft_log",
    "nuwa.core.raft_progress",
    "nuwa.core.raft_types",
    "nuwa.core.raft_read",
    "nuwa.core.raft_conf",
    "nuwa.core.sessions",
    "nuwa.core.codec",
    "nuwa.core.peer_auth",
    "nuwa.core.peer_guard",
    "nuwa.core.tree",
    "nuwa.core.paths",
    "nuwa.core.commands",
    "nuwa.core.wire",
    "nuwa.errors",
    "nuwa.linearizability",
    "pangu.core.paths",
    "pangu.core.placement",
    "pangu.io.chunkfile",
    "pangu.core.namespace",
    "pangu.io.journal",
    "pangu.errors",
    "pangu.core.fencing",
    "pangu.core.access",
    "kuafu.frame",
    "kuafu.core.flow",
    "kuafu.core.frame",
    "kuafu.core.routing",
    "kuafu.io.addresses",
    "kuafu.io.admission",
    "kuafu.io.forward",
    "kuafu.io.peers",
    "kuafu.io.watcher",
    "kuafu.io.ownership",
    "kuafu.io.registry",
    "kuafu.errors",
    "kuafu.io.conn",
    "kuafu.io.server",
    "kuafu.client",
    "kuafu.io.proxy",
    "fuxi.core.service_spec",
    "fuxi.core.specparse",
    "fuxi.io.specfile",
    "fuxi.core.servicecore",
    "fuxi.core.autoscale",
    "zhongkui.core.passwords",
    "zhongkui.core.tokens",
    "zhongkui.core.acl",
    "zhongkui.audit",
    "zhongkui.core.directory",
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
        [sys.executable, "-c", _PROBE.format(module="fuxi.shells.jobmaster")],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"ray not importable here: {proc.stderr[-300:]}")
    assert "RAY_MODULES=ray" in proc.stdout
