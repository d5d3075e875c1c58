"""The layout rules (docs/architecture.md), checked on the code's syntax trees: layers point
down, no import cycles, pure cores, bounded module and actor sizes, no private names reached
across modules, each named limit defined once. Each test prints every violation it finds."""

from __future__ import annotations

import ast

import pytest

from tests.layout import rules

MODS = rules.modules()


def by_package(lines: list[str], pkg: str) -> list[str]:
    return [x for x in lines if x.startswith(f"{pkg}/")]


def test_layers_point_down_only():
    assert rules.layer_violations(MODS) == []


def test_no_import_cycles():
    assert [" <-> ".join(c) for c in rules.cycles(MODS)] == []


@pytest.mark.parametrize("pkg", rules.PACKAGES)
def test_cores_are_pure(pkg):
    assert by_package(rules.core_violations(MODS), pkg) == []


@pytest.mark.parametrize("pkg", rules.PACKAGES)
def test_modules_and_actors_are_bounded(pkg):
    assert by_package(rules.size_violations(MODS), pkg) == []


@pytest.mark.parametrize("pkg", rules.PACKAGES)
def test_no_private_names_across_modules(pkg):
    assert by_package(rules.private_violations(MODS), pkg) == []


def test_each_named_limit_is_defined_once():
    assert rules.limit_duplicates(MODS) == []


# -- the rules themselves catch what they claim to (on a small tree of our making) ----------

def _tree(tmp_path, monkeypatch, files: dict[str, str]):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    monkeypatch.setattr(rules, "ROOT", tmp_path)
    return rules.modules(("base", "nuwa", "fuxi"))


def test_an_upward_import_inside_a_function_is_found(tmp_path, monkeypatch):
    mods = _tree(tmp_path, monkeypatch, {
        "base/__init__.py": "", "nuwa/__init__.py": "", "fuxi/__init__.py": "",
        "fuxi/master.py": "X = 1\n",
        "nuwa/client.py": "def f():\n    from fuxi.master import X\n    return X\n"})
    assert rules.layer_violations(mods) == [
        "nuwa/client.py:2: nuwa imports fuxi.master (fuxi is not below nuwa)"]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path, monkeypatch):
    mods = _tree(tmp_path, monkeypatch, {
        "base/__init__.py": "", "nuwa/__init__.py": "", "fuxi/__init__.py": "",
        "nuwa/a.py": "from nuwa import b\n",
        "nuwa/b.py": "def g():\n    import nuwa.a\n"})
    assert rules.cycles(mods) == [["nuwa.a", "nuwa.b"]]


def test_a_core_that_reads_the_clock_or_a_file_is_impure(tmp_path, monkeypatch):
    mods = _tree(tmp_path, monkeypatch, {
        "base/__init__.py": "", "fuxi/__init__.py": "", "nuwa/__init__.py": "",
        "nuwa/core/__init__.py": "", "nuwa/errors.py": "",
        "nuwa/core/ok.py": "import json\nfrom nuwa import errors\nfrom nuwa.core import x\n",
        "nuwa/core/x.py": "import time\nfrom nuwa import client\nopen('f')\n",
        "nuwa/client.py": ""})
    assert rules.core_violations(mods) == [
        "nuwa/core/x.py:1: core module imports time",
        "nuwa/core/x.py:2: core module imports nuwa.client",
        "nuwa/core/x.py:3: core module calls open()"]


def test_big_modules_and_actors_are_found(tmp_path, monkeypatch):
    methods = "".join(f"    def m{i}(self): pass\n" for i in range(31))
    mods = _tree(tmp_path, monkeypatch, {
        "base/__init__.py": "", "fuxi/__init__.py": "", "nuwa/__init__.py": "",
        "fuxi/big.py": "x = 1\n" * 801,
        "fuxi/actor.py": "import ray\n@ray.remote(num_cpus=0)\nclass A:\n" + methods,
        "fuxi/wrapped.py": "import ray\nclass B:\n" + methods + "H = ray.remote(B)\n"})
    found = rules.size_violations(mods)
    assert "fuxi/big.py: 801 lines (MODULE_LINES_MAX = 800)" in found
    assert any(x.startswith("fuxi/actor.py:3: actor A has 31 public") for x in found)
    assert any(x.startswith("fuxi/wrapped.py:2: actor B has 31 public") for x in found)


def test_private_reach_and_duplicate_limits_are_found(tmp_path, monkeypatch):
    mods = _tree(tmp_path, monkeypatch, {
        "base/__init__.py": "", "fuxi/__init__.py": "", "nuwa/__init__.py": "",
        "nuwa/tree.py": "_sessions = {}\nCALL_TIMEOUT_S = 5.0\n",
        "fuxi/a.py": "from nuwa import tree\nfrom nuwa.tree import _sessions\nimport ray._private.state\n"
                     "print(tree._sessions)\nCALL_TIMEOUT_S = 60.0\n"})
    found = rules.private_violations(mods)
    assert "fuxi/a.py:2: imports private _sessions from nuwa.tree" in found
    assert "fuxi/a.py:3: imports private module ray._private.state" in found
    assert "fuxi/a.py:4: reaches tree._sessions" in found
    assert rules.limit_duplicates(mods) == [
        "CALL_TIMEOUT_S is defined 2 times: nuwa/tree.py:2, fuxi/a.py:5"]


def test_every_module_parses():
    assert all(isinstance(t, ast.Module) for _, _, t in MODS)


def test_only_the_ray_boundary_may_reach_rays_private_names(tmp_path, monkeypatch):
    mods = _tree(tmp_path, monkeypatch, {
        "base/__init__.py": "", "fuxi/__init__.py": "", "nuwa/__init__.py": "",
        "base/actors.py": "def f():\n    from ray._raylet import Config\n",
        "base/other.py": "def f():\n    from ray._raylet import Config\n"})
    assert rules.private_violations(mods) == [
        "base/other.py:2: imports from private module ray._raylet"]
