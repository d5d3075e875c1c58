"""Declaring an online service in Python (issue 20 part 4): ``@fuxi.service`` and the spec a
class becomes when ``fuxi.Client().services.register(cls)`` deploys it::

    import fuxi

    @fuxi.service(name="counter", replicas=2, resources={"cpu": 0.25}, idempotent=["get"])
    class Counter:
        def __init__(self, start: str = "0"):
            self.n = int(start)
        def add(self, msg):                 # not idempotent: the proxy never resends it
            self.n += 1
            return str(self.n)
        def get(self, msg):                 # idempotent: resent to another replica if one dies
            return str(self.n)

    with fuxi.Client() as c:
        c.services.register(Counter, config={"start": "10"})
        print(c.services.handle("counter").add(b""))

The decorator checks the declaration at once (a class, with public methods, fields a service
spec accepts: ``fuxi.core.service_spec``) and marks the methods for Kuafu, ``idempotent`` ones
as safe to resend. It changes nothing else: the class still constructs and runs locally.

A class that replicas can import by name (``module:Class`` of an importable module) is
referenced by name, and replicas run in the registering process's directory, as `fuxi service
register` does. One they cannot (defined in ``__main__``, a notebook, inside a function) is
shipped by value: cloudpickled into a one-file module (``fuxi.io.codeship``) uploaded to the
cluster once, so a script that defines its service class and registers it just works.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Iterable

from fuxi.core.service_spec import ServiceSpec, service_spec_from_dict
from fuxi.errors import BadInput, FuxiError
from base import errors as base_errors

SERVICE_ATTR = "__fuxi_service__"  # the declaration's fields, on the decorated class
KUAFU_ATTR = "__kuafu__"  # what ``kuafu.method`` marks a method with
DECLARED_FIELDS = frozenset(ServiceSpec.model_fields) - {"class_"}  # what a declaration may set
PLACEHOLDER_CLASS = "fuxi_declared:Service"  # stands for the class while only its fields are checked


class ServiceFailed(FuxiError, base_errors.Failed):
    """A service waited for cannot become ready: its new version was rolled back, or it is
    being removed (``.status`` holds its last status)."""

    def __init__(self, message: str, status: dict | None = None):
        super().__init__(message)
        self.status = status or {}


class ServiceWaitTimeout(FuxiError, base_errors.WaitTimedOut):
    """Not every replica of the version was ready in time; the platform keeps trying."""


MARKED_BY = "fuxi.service"  # in a mark this module set (not the user's ``@kuafu.method``)


def exposed_methods(cls: type) -> list[str]:
    """The methods a service of ``cls`` serves, as Kuafu chooses (``kuafu.io.server.Service``):
    the ones the user marked ``@kuafu.method`` if any, else every public one. Marks this
    module set (on a base class declared before) do not count as the user's."""
    members = [(n, f) for n, f in inspect.getmembers(cls, callable) if not isinstance(f, type)]
    marked = [n for n, f in members
              if hasattr(f, KUAFU_ATTR) and getattr(f, KUAFU_ATTR).get("by") != MARKED_BY]
    return marked or [n for n, f in members if not n.startswith("_")]


def check_class(cls: Any, what: str = "fuxi.service") -> list[str]:
    """``cls``'s exposed methods, or ``BadInput`` saying why it cannot be a service."""
    if not isinstance(cls, type):
        hint = (" (a function is a job's task: fuxi.TaskSpec(fn=...))" if callable(cls) else "")
        raise BadInput(f"{what}: got {type(cls).__name__} {cls!r:.80}, expected a class whose "
                       f"public methods are the service's calls{hint}")
    methods = exposed_methods(cls)
    if not methods:
        raise BadInput(f"{what}: class {cls.__qualname__} has no public methods, expected at "
                       f"least one (a method not starting with '_') for callers to call")
    return methods


def _idempotent_names(idempotent: Any, methods: list[str], cls: type) -> set[str]:
    if idempotent is True:
        return set(methods)
    if idempotent is None or idempotent is False:
        return set()
    names = [idempotent] if isinstance(idempotent, str) else idempotent
    if not isinstance(names, Iterable) or isinstance(names, (bytes, dict)):
        raise BadInput(f"idempotent: got {type(idempotent).__name__}, expected method names "
                       f"(a list of str) or True for all of {methods}")
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or n not in methods]
    if bad:
        raise BadInput(f"idempotent: {bad!r:.200} {'is' if len(bad) == 1 else 'are'} not "
                       f"methods of {cls.__qualname__}; expected some of {methods}")
    return set(names)


def _raw(cls: type, name: str):
    for k in cls.__mro__:
        if name in k.__dict__:
            return k, k.__dict__[name]
    raise AttributeError(name)


def mark_methods(cls: type, idempotent: Any = ()) -> list[str]:
    """Mark every method ``cls`` exposes for Kuafu, the ``idempotent`` ones (names, or True
    for all) as safe to resend; an inherited one gets a forwarding method on ``cls``, so the
    base class is left as it was. An explicit ``@kuafu.method(idempotent=True)`` stays so."""
    methods = check_class(cls)
    idem = _idempotent_names(idempotent, methods, cls)
    for name in methods:
        owner, raw = _raw(cls, name)
        fn = getattr(raw, "__func__", raw)  # staticmethod / classmethod: the function inside
        if owner is not cls or not inspect.isfunction(fn):
            fn = _forwarder(raw, name)
            setattr(cls, name, fn)
        info = dict(getattr(fn, KUAFU_ATTR, None) or {"idempotent": False, "name": name,
                                                      "by": MARKED_BY})
        info["idempotent"] = bool(info.get("idempotent")) or name in idem
        setattr(fn, KUAFU_ATTR, info)
    return methods


def _forwarder(raw, name: str):
    inner = getattr(raw, KUAFU_ATTR, None) or getattr(getattr(raw, "__func__", None), KUAFU_ATTR, None)

    def forward(self, *args, **kw):
        return raw.__get__(self, type(self))(*args, **kw)

    forward.__name__ = forward.__qualname__ = name
    forward.__doc__ = getattr(raw, "__doc__", None)
    if inner:
        setattr(forward, KUAFU_ATTR, dict(inner))
    return forward


def declared_fields(cls: type) -> dict:
    """What ``@fuxi.service`` declared on ``cls`` (a copy; {} for a plain class)."""
    return dict(cls.__dict__.get(SERVICE_ATTR) or {})


def _fields(kw: dict, where: str) -> dict:
    out = {k: v for k, v in kw.items() if v is not None}
    unknown = sorted(set(out) - DECLARED_FIELDS)
    if unknown:
        raise BadInput(f"{where}: unknown field {', '.join(unknown)}; expected some of "
                       f"{sorted(DECLARED_FIELDS)} (and idempotent=)")
    res = out.get("resources")
    if res is not None and hasattr(res, "model_dump"):
        out["resources"] = res.model_dump(exclude_defaults=True)
    return out


def spec_of(cls: type, fields: dict, class_ref: str = PLACEHOLDER_CLASS) -> ServiceSpec:
    """The checked spec of ``cls`` with ``fields`` (a declaration's and the caller's): name
    defaults to the class's name. ``SpecError`` with a line per problem."""
    doc = {"name": cls.__name__, **fields, "class": class_ref}
    return service_spec_from_dict(doc, source=f"service class {cls.__qualname__}",
                                  check_class=False)


def service(cls=None, /, *, idempotent: Any = (), name: str | None = None,
            replicas: int | None = None, resources: Any = None, **fields):
    """Declare a service class: ``@fuxi.service``, ``@fuxi.service("name")`` or
    ``@fuxi.service(name=..., replicas=..., resources={"cpu": 0.5}, idempotent=[...],
    version=..., config={...}, max_concurrency=..., health_check={...}, ...)`` -- any field of
    a service spec but ``class``. Checked now: a bad field is a ``SpecError`` at import."""
    if isinstance(cls, str):  # @fuxi.service("name")
        name, cls = cls, None
    kw = _fields(dict(fields, name=name, replicas=replicas, resources=resources), "fuxi.service")

    def declare(c):
        mark_methods(c, idempotent)
        spec_of(c, kw)  # every field checked against the service spec now
        setattr(c, SERVICE_ATTR, kw)
        return c

    return declare(cls) if cls is not None else declare


def class_ref(cls: type) -> str | None:
    """``module:Class`` when replicas can import ``cls`` by name (a module-level class of an
    importable module, which that name still finds), else None: ship it by value."""
    import sys

    module, qualname = getattr(cls, "__module__", None), getattr(cls, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or module == "__main__" \
            or "<locals>" in qualname or module not in sys.modules:
        return None
    target: Any = sys.modules[module]
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return f"{module}:{qualname}" if target is cls else None


def deploy_doc(cls: type, fields: dict, idempotent: Any = (), workdir: str | None = None) -> tuple[dict, str | None]:
    """(the spec document, the local by-value module directory or None) to register ``cls``
    with: its declaration, then ``fields`` over it. Shipping the directory is the caller's
    (``fuxi.io.codeship.ship``, connected)."""
    fields = {**declared_fields(cls), **_fields(fields, "services.register")}
    mark_methods(cls, idempotent)
    spec_of(cls, fields)  # the fields' problems first, before anything is pickled
    ref, where = class_ref(cls), None
    if ref is None:
        from fuxi.io.codeship import pickle_by_value

        module, where = pickle_by_value(cls)
        ref = f"{module}:fn"
    doc = spec_of(cls, fields, ref).to_doc()
    if doc.get("workdir") is None and where is None and workdir is not None:
        doc["workdir"] = workdir  # replicas import the class from here, as the CLI's do
    return doc, where


def code_version(doc: dict, current: dict) -> str:
    """The version an upgrade without one gets: the current one when nothing else changed,
    else the current one's base with a digest of the new spec (``3`` -> ``3+1a2b3c4d``)."""
    def rest(d: dict) -> str:
        return json.dumps({k: v for k, v in d.items() if k != "version"}, sort_keys=True,
                          default=str)

    if rest(doc) == rest(current):
        return current["version"]
    digest = hashlib.sha256(rest(doc).encode()).hexdigest()[:8]
    return f"{str(current['version']).split('+')[0][:50]}+{digest}"


def service_verdict(st: dict, version: str) -> str | None:
    """A service waited for: "ready" when ``desired`` replicas of ``version`` are ready and no
    rollout is under way; a reason when that cannot happen (rolled back, being removed); None
    while it may still come."""
    if st.get("removing"):
        return f"service {st['name']} is being removed"
    if st.get("rollout") == "rolled_back" and st.get("version") != version:
        return (f"service {st['name']}: version {version} was rolled back to "
                f"{st.get('version')} (its status's events say why)")
    if st.get("version") != version or st.get("rollout") == "rolling":
        return None
    ready = sum(1 for r in st.get("replicas", ()) if r.get("version") == version
                and r.get("state") == "ready")
    return "ready" if ready >= st.get("desired", 0) else None
