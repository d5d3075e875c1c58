"""``@fuxi.service`` and the spec a class becomes (pure: no Ray, no cluster)."""

from __future__ import annotations

import pytest

import fuxi
import kuafu
from fuxi.errors import BadInput, SpecError
from fuxi.servicedecl import (check_class, class_ref, code_version, declared_fields, deploy_doc,
                              exposed_methods, service_verdict)
from kuafu.io.server import Service


class Plain:
    def __init__(self, tag: str = "v1"):
        self.tag = tag

    def echo(self, msg):
        return msg

    def version(self, msg):
        return self.tag

    def _private(self):
        return None


def test_decorator_marks_methods_and_keeps_fields():
    @fuxi.service(name="echo", replicas=2, resources={"cpu": 0.25}, idempotent=["echo"])
    class Echo(Plain):
        def extra(self, msg):
            return "x"

    assert declared_fields(Echo) == {"name": "echo", "replicas": 2, "resources": {"cpu": 0.25}}
    svc = Service.build("echo", Echo(), 4, 10)  # what Kuafu serves of an instance
    assert sorted(svc.methods) == ["echo", "extra", "version"]
    assert svc.idempotent == {"echo"}
    assert svc.methods["version"](b"") == "v1"  # inherited: forwarded, still works
    assert not hasattr(Plain.echo, "__kuafu__")  # the base class is left alone
    assert Echo().echo(b"hi") == b"hi"  # still a plain class locally


def test_bare_and_named_forms_and_idempotent_all():
    @fuxi.service
    class Bare:
        def a(self, m):
            return m

    @fuxi.service("named", idempotent=True)
    class Named:
        def a(self, m):
            return m

        @staticmethod
        def b(m):
            return m

    assert declared_fields(Bare) == {}
    assert declared_fields(Named) == {"name": "named"}
    assert Service.build("n", Named(), 1, 1).idempotent == {"a", "b"}
    assert Service.build("b", Bare(), 1, 1).idempotent == set()


def test_explicit_kuafu_marks_are_kept():
    @fuxi.service(idempotent=["get"])
    class Marked:
        @kuafu.method
        def get(self, m):
            return m

        @kuafu.method(idempotent=True, name="put_it")
        def put(self, m):
            return m

        def hidden(self, m):  # not marked while others are: Kuafu does not expose it
            return m

    svc = Service.build("m", Marked(), 1, 1)
    assert sorted(svc.methods) == ["get", "put_it"] and svc.idempotent == {"get", "put_it"}


@pytest.mark.parametrize("thing, says", [
    (lambda m: m, "expected a class"),
    (42, "expected a class"),
    ("text", "expected a class"),
])
def test_not_a_class(thing, says):
    with pytest.raises(BadInput, match=says):
        check_class(thing)


def test_no_public_methods():
    class Empty:
        def _hidden(self):
            return None

    with pytest.raises(BadInput, match="no public methods"):
        fuxi.service(Empty)


@pytest.mark.parametrize("kw, says", [
    ({"replicas": -1}, "replicas"),
    ({"replicas": 10_000}, "replicas"),
    ({"replicas": "2"}, "replicas"),
    ({"name": "1bad name"}, "name"),
    ({"resources": {"cpu": -1}}, "cpu"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"config": {"not an identifier": 1}}, "config"),
])
def test_bad_fields_fail_at_declaration(kw, says):
    with pytest.raises(SpecError, match=says):
        fuxi.service(**kw)(type("S", (Plain,), {}))


def test_unknown_field_and_bad_idempotent():
    with pytest.raises(BadInput, match="unknown field replica"):
        fuxi.service(replica=2)
    with pytest.raises(BadInput, match="unknown field class"):
        fuxi.service(**{"class": "x:y"})
    with pytest.raises(BadInput, match="not methods of"):
        fuxi.service(idempotent=["nope"])(type("S2", (Plain,), {}))
    with pytest.raises(BadInput, match="expected method names"):
        fuxi.service(idempotent=3)(type("S3", (Plain,), {}))


def test_importable_class_by_name_local_class_by_value(tmp_path):
    assert class_ref(Plain) == "tests.unit.test_servicedecl:Plain"
    doc, where = deploy_doc(Plain, {"replicas": 1}, workdir=str(tmp_path))
    assert doc["class"] == "tests.unit.test_servicedecl:Plain" and where is None
    assert doc["workdir"] == str(tmp_path) and doc["name"] == "Plain"

    class Local:  # defined in a function: no worker can import it by name
        def ping(self, m):
            return b"pong"

    assert class_ref(Local) is None
    doc, where = deploy_doc(Local, {"name": "local", "config": {}}, workdir=str(tmp_path))
    assert doc["class"].startswith("fuxi_fn_") and doc["class"].endswith(":fn")
    assert where is not None and doc["workdir"] is None
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path.parent))
    try:  # the shipped module gives back the class, as a replica would import it
        sys.path.insert(0, where.rsplit("/", 1)[0])
        mod = importlib.import_module(doc["class"].split(":")[0])
        assert mod.fn().ping(b"") == b"pong"
    finally:
        sys.path[:] = [p for p in sys.path if p not in (str(tmp_path.parent), where.rsplit("/", 1)[0])]


def test_register_fields_override_the_declaration(tmp_path):
    @fuxi.service(name="over", replicas=3, version="7")
    class Over(Plain):
        pass

    doc, _ = deploy_doc(Over, {"replicas": 1, "config": {"tag": "v2"}}, workdir=str(tmp_path))
    assert (doc["name"], doc["replicas"], doc["version"], doc["config"]) == \
        ("over", 1, "7", {"tag": "v2"})


def test_code_version():
    cur = {"name": "a", "version": "3", "class": "m:A", "replicas": 1}
    assert code_version(dict(cur), cur) == "3"
    new = code_version(dict(cur, **{"class": "m:B"}), cur)
    assert new.startswith("3+") and len(new) == 10
    again = code_version(dict(cur, **{"class": "m:C"}), dict(cur, version=new))
    assert again.startswith("3+") and again != new


def test_service_verdict():
    st = {"name": "s", "version": "2", "desired": 2, "rollout": "", "removing": False,
          "replicas": [{"version": "2", "state": "ready"}, {"version": "2", "state": "starting"}]}
    assert service_verdict(st, "2") is None
    st["replicas"][1]["state"] = "ready"
    assert service_verdict(st, "2") == "ready"
    assert "rolled back" in service_verdict(dict(st, version="1", rollout="rolled_back"), "2")
    assert "removed" in service_verdict(dict(st, removing=True), "2")


def test_facade_input_checks_need_no_cluster():
    c = fuxi.Client("default")
    with pytest.raises(BadInput, match="replicas from 0"):
        c.services.scale("echo", -1)
    with pytest.raises(BadInput, match="replicas from 0"):
        c.services.scale("echo", True)
    with pytest.raises(BadInput, match="service name"):
        c.services.status("../etc")
    with pytest.raises(BadInput, match="expected a service class"):
        c.services.register(42)
    with pytest.raises(BadInput, match="timeout_s"):
        c.services.register(Plain, timeout_s=float("nan"))
    with pytest.raises(BadInput, match="overrides= is for a spec"):
        c.services.register(Plain, overrides=["replicas=2"])
    with pytest.raises(BadInput, match="expected a class"):
        c.services.register(lambda m: m)
    assert exposed_methods(Plain) == ["echo", "version"]


def test_a_subclass_of_a_declared_class_exposes_its_new_methods():
    @fuxi.service(idempotent=["echo"])
    class Base(Plain):
        pass

    @fuxi.service
    class Child(Base):
        def echo(self, msg):  # overridden, not declared idempotent here
            return b"child:" + msg

        def more(self, msg):
            return b"more"

    svc = Service.build("c", Child(), 1, 1)
    assert sorted(svc.methods) == ["echo", "more", "version"], svc.methods
    assert svc.idempotent == set() and svc.methods["echo"](b"x") == b"child:x"
    assert Service.build("b", Base(), 1, 1).idempotent == {"echo"}
