"""Submit-time import checks and pip requirements: a task module that imports a requirement
only the workers get (runtime_env.pip) is left to the worker; a module of the fn's own that is
missing, or a dependency missing with no pip requirement, is still refused at submit."""

from __future__ import annotations

import sys

import pytest

from fuxi.core.spec import SpecError, spec_from_dict


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "needsdep.py").write_text("import fuxi_absent_dep_xyz\n\ndef f(ctx):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("needsdep", None)


def _doc(fn: str, pip: list[str] | None) -> dict:
    doc = {"name": "j", "tasks": {"t": {"fn": fn, "instances": 1}}}
    if pip is not None:
        doc["runtime_env"] = {"pip": pip}
    return doc


def test_a_dependency_a_pip_requirement_provides_is_checked_on_the_worker(module_dir):
    spec = spec_from_dict(_doc("needsdep:f", ["fuxi-absent-dep-xyz==1.0"]))
    assert spec.tasks["t"].fn == "needsdep:f"


def test_without_pip_the_missing_dependency_is_refused_at_submit(module_dir):
    with pytest.raises(SpecError, match="tasks.t.fn: cannot import 'needsdep:f'.*fuxi_absent_dep_xyz"):
        spec_from_dict(_doc("needsdep:f", None))


@pytest.mark.parametrize("fn", ["nosuchmodule_xyz:f", "nosuchpkg_xyz.sub:f"])
def test_the_fns_own_module_missing_is_refused_even_with_pip(module_dir, fn):
    with pytest.raises(SpecError, match="tasks.t.fn: cannot import"):
        spec_from_dict(_doc(fn, ["pyyaml"]))


def test_a_module_that_raises_is_refused_even_with_pip(tmp_path, monkeypatch):
    (tmp_path / "raises_xyz.py").write_text("raise RuntimeError('broken at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SpecError, match="broken at import"):
            spec_from_dict(_doc("raises_xyz:f", ["pyyaml"]))
    finally:
        sys.modules.pop("raises_xyz", None)


def test_a_service_class_needing_a_pip_requirement_is_checked_on_the_replicas(tmp_path,
                                                                               monkeypatch):
    from fuxi.core.service_spec import service_spec_from_dict

    (tmp_path / "svcdep_xyz.py").write_text("import fuxi_absent_dep_xyz\n\nclass S:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = {"name": "s", "class": "svcdep_xyz:S", "replicas": 1}
    try:
        with pytest.raises(SpecError, match="fuxi_absent_dep_xyz"):
            service_spec_from_dict(doc)
        spec = service_spec_from_dict({**doc, "runtime_env": {"pip": ["fuxi-absent-dep-xyz"]}})
        assert spec.class_ == "svcdep_xyz:S"
    finally:
        sys.modules.pop("svcdep_xyz", None)
