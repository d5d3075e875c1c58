"""``fuxi.Client``: the platform from Python with no Ray handle to manage — it finds the
cluster as the CLI does (its record under ``$FUXI_HOME``; the name from ``$FUXI_CLUSTER`` or
``$RAY_ADDRESS`` when none is given) and connects on first use::

    import fuxi
    with fuxi.Client() as c:                       # the running `fuxi up` cluster "default"
        job_id = c.jobs.submit("jobs/wordcount.yaml", overrides=["output=out/wc"])
        status = c.jobs.wait(job_id)               # raises JobFailed unless it succeeded
        print(c.services.list(), c.nodes.list())

A thin layer over ``fuxi.client.FuxiClient`` (which takes a FuxiMaster handle) and
``fuxi.runtime.connect``. It needs a running cluster (``NoCluster`` otherwise): the embedded
default would end with the process's first call.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Sequence

from fuxi.errors import BadInput

SERVICE_READY_WAIT_S = 300.0  # how long register/upgrade wait for the replicas by default
SERVICE_READY_WAIT_MAX_S = 30 * 24 * 3600.0  # the longest wait one may ask for (30 days)
SERVICE_READY_POLL_S = 0.5  # between two reads of a service's status while waiting for it


class Client:
    def __init__(self, cluster: str | None = None, token: str | None = None):
        """``cluster``: a `fuxi up` cluster's name (default as the CLI picks it:
        ``$FUXI_CLUSTER``, the cluster at ``$RAY_ADDRESS``, else "default"). ``token``: what
        calls present to a cluster with access control (default the `fuxi login` one)."""
        from base.cluster import cluster_for

        if cluster is not None and not isinstance(cluster, str):
            raise BadInput(f"fuxi.Client takes a cluster name, not {type(cluster).__name__}; "
                           f"with a FuxiMaster handle use fuxi.FuxiClient(handle)")
        self.cluster = cluster_for(cluster)
        self.token = token
        self.jobs = Jobs(self)
        self.services = Services(self)
        self.nodes = Nodes(self)
        self._stack: contextlib.ExitStack | None = None
        self._client = None

    def connection(self):
        """The ``fuxi.client.FuxiClient`` of the running cluster, connected on first use."""
        if self._client is None:
            from fuxi.client import FuxiClient
            from fuxi.runtime import connect

            stack = contextlib.ExitStack()
            try:
                conn = stack.enter_context(connect(self.cluster, embedded_ok=False))
            except BaseException:
                stack.close()
                raise
            self._stack = stack
            self._client = FuxiClient(conn.master, self.cluster, token=self.token)
        return self._client

    def close(self) -> None:
        """Disconnect (the cluster and its jobs go on)."""
        self.services.close()
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Jobs:
    def __init__(self, client: Client):
        self.client = client

    def submit(self, spec, overrides: Sequence[str] = (), request_id: str | None = None,
               overwrite: bool = False) -> str:
        """Validate and submit a job (a spec file, dict or ``JobSpec``); its id. The same
        ``request_id`` twice with the same spec gives the same job (a safe retry)."""
        return self.client.connection().submit(spec, overrides, request_id=request_id,
                                                  overwrite=overwrite)

    def get(self, job_id: str) -> dict:
        """The job's status: state, per-task counts, output, report."""
        return self.client.connection().status(job_id)

    def list(self) -> list[dict]:
        return self.client.connection().list()

    def wait(self, job_id: str, timeout_s: float | None = None, check: bool = True) -> dict:
        """Wait until the job ends; its final status. ``check`` (default): raise ``JobFailed``
        if it failed or was cancelled, ``JobWaitTimeout`` if still running after
        ``timeout_s`` (each with ``.status``); ``check=False`` returns the status anyway."""
        from fuxi.client import checked

        st = self.client.connection().wait(job_id, timeout_s=timeout_s)
        return checked(st, timeout_s) if check else st

    def cancel(self, job_id: str) -> dict:
        return self.client.connection().cancel(job_id)

    def logs(self, job_id: str, task: str | None = None, instance: int | None = None) -> list[dict]:
        return self.client.connection().logs(job_id, task, instance)


class Services:
    """Online services: register a class (``@fuxi.service``) or a spec, call it through a
    ``handle``, scale, upgrade, delete. ``fuxi.servicedecl`` says how a class becomes a spec."""

    def __init__(self, client: Client):
        self.client = client
        self._handles: dict[str, "ServiceHandle"] = {}

    def register(self, spec, *, wait: bool = True, timeout_s: float = SERVICE_READY_WAIT_S,
                 overrides: Sequence[str] = (), working_dir: str | None = None,
                 idempotent=(), **fields) -> dict:
        """Register a service from a class (its ``@fuxi.service`` declaration, then
        ``fields`` over it: replicas=, resources=, config=, version=, ...), a spec file, a
        dict or a ``ServiceSpec``; with ``wait`` (default), return once every replica is
        ready (``ServiceWaitTimeout`` after ``timeout_s``). ``working_dir``: ship that
        directory to every replica (needed when the cluster spans machines and the class is
        imported by name). ``idempotent``: a class's methods safe to resend."""
        _check_wait(timeout_s)
        doc = self._doc(spec, overrides, working_dir, idempotent, fields)
        st = self.client.connection().service_register(doc)
        return self._wait(doc["name"], doc["version"], timeout_s) if wait else st

    def upgrade(self, name: str, spec, *, wait: bool = True,
                timeout_s: float = SERVICE_READY_WAIT_S, overrides: Sequence[str] = (),
                working_dir: str | None = None, idempotent=(), **fields) -> dict:
        """Roll service ``name`` to a new class or spec (rolling, within its rollout limits;
        rolled back by the platform if the new replicas fail: ``ServiceFailed``). With no
        version given, one is derived from the change (``fuxi.servicedecl.code_version``)."""
        _check_name(name)
        _check_wait(timeout_s)
        doc = self._doc(spec, overrides, working_dir, idempotent, fields, default_name=name)
        if doc["name"] != name:
            raise BadInput(f"services.upgrade({name!r}, ...): the new spec is for service "
                           f"{doc['name']!r}; expected the same name")
        if not self._version_given(spec, overrides, fields):
            from fuxi.servicedecl import code_version

            doc["version"] = code_version(doc, self.status(name)["spec"])
        st = self.client.connection().service_upgrade(doc)
        return self._wait(name, doc["version"], timeout_s) if wait else st

    def scale(self, name: str, replicas: int) -> dict:
        """Set the number of replicas (0 keeps the service registered with none running)."""
        from fuxi.core.service_spec import REPLICAS_MAX

        _check_name(name)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or \
                not 0 <= replicas <= REPLICAS_MAX:
            raise BadInput(f"services.scale({name!r}, {replicas!r}): expected a whole number "
                           f"of replicas from 0 to {REPLICAS_MAX} (REPLICAS_MAX)")
        return self.client.connection().service_scale(name, replicas)

    def status(self, name: str) -> dict:
        """Its version, replicas (state, health, node, served), requests, latency, events."""
        _check_name(name)
        return self.client.connection().service_status(name)

    def list(self) -> list[dict]:
        return self.client.connection().service_list()

    def delete(self, name: str, *, wait: bool = False,
               timeout_s: float = SERVICE_READY_WAIT_S) -> dict:
        """Drain and stop every replica, then forget the service; with ``wait``, return once
        it is gone from ``list()``."""
        _check_name(name)
        _check_wait(timeout_s)
        h = self._handles.pop(name, None)
        if h is not None:
            h.close()
        st = self.client.connection().service_remove(name)
        if wait:
            deadline = time.monotonic() + timeout_s
            while name in [s["name"] for s in self.list()]:
                if time.monotonic() >= deadline:
                    from fuxi.servicedecl import ServiceWaitTimeout

                    raise ServiceWaitTimeout(f"service {name} still draining after "
                                             f"{timeout_s:g}s; its removal goes on", st)
                time.sleep(SERVICE_READY_POLL_S)
        return st

    remove = delete

    def handle(self, name: str, timeout_s: float | None = None) -> "ServiceHandle":
        """Call the service through Kuafu: ``handle(name).method(message)``."""
        _check_name(name)
        h = self._handles.get(name)
        if h is None or timeout_s is not None:
            h = ServiceHandle(self.client, name, timeout_s)
            if timeout_s is None:
                self._handles[name] = h
        return h

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _version_given(spec, overrides, fields) -> bool:
        from fuxi.servicedecl import declared_fields

        if fields.get("version") is not None or any(str(o).startswith("version=")
                                                     for o in overrides):
            return True
        if isinstance(spec, type):
            return declared_fields(spec).get("version") is not None
        return not isinstance(spec, type)  # a file, dict or ServiceSpec says its own

    def _doc(self, spec, overrides, working_dir, idempotent, fields, default_name=None) -> dict:
        import os

        from fuxi.core.service_spec import ServiceSpec, service_spec_from_dict

        if callable(spec) and not isinstance(spec, type):
            from fuxi.servicedecl import check_class

            check_class(spec, "services.register")  # a function: says what is expected
        if isinstance(spec, type):
            from fuxi.servicedecl import deploy_doc

            if overrides:
                raise BadInput("overrides= is for a spec file or dict; give a class's "
                               "fields as keywords (replicas=2, config={...})")
            if default_name is not None and "name" not in fields:
                from fuxi.servicedecl import declared_fields

                if "name" not in declared_fields(spec):
                    fields = dict(fields, name=default_name)
            doc, by_value_dir = deploy_doc(spec, fields, idempotent, workdir=os.getcwd())
        else:
            if idempotent:
                raise BadInput("idempotent= is for a class; a spec's class declares its own "
                               "with @kuafu.method(idempotent=True) or @fuxi.service")
            if isinstance(spec, ServiceSpec):
                spec = spec.to_doc()
            if isinstance(spec, dict):
                doc = service_spec_from_dict({**spec, **fields}, overrides, "<dict>").to_doc()
            elif isinstance(spec, (str, os.PathLike)):
                from fuxi.io.specfile import load_service_spec

                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())  # as `fuxi service register` finds modules
                loaded = load_service_spec(os.fspath(spec), overrides).to_doc()
                doc = service_spec_from_dict({**loaded, **fields}, (), os.fspath(spec)).to_doc()
            else:
                raise BadInput(f"services.register: got {type(spec).__name__}, expected a "
                               f"service class, a spec file path, a dict or a ServiceSpec")
            if doc.get("workdir") is None:
                doc["workdir"] = os.getcwd()
            by_value_dir = None
        return self._ship(doc, by_value_dir, working_dir)

    def _ship(self, doc: dict, by_value_dir: str | None, working_dir: str | None) -> dict:
        """Upload the code replicas need (a class shipped by value, a working directory,
        the spec's runtime_env) once, so the spec FuxiMaster keeps holds package URIs."""
        import os

        from fuxi.core.codeenv import RuntimeEnvSpec
        from fuxi.io import codeship

        env = RuntimeEnvSpec.model_validate(doc.get("runtime_env") or {})
        if working_dir is not None:
            env = env.model_copy(update={"working_dir": working_dir})
        if by_value_dir is not None:
            env = RuntimeEnvSpec.model_validate({**env.model_dump(),
                                                 "py_modules": [*env.py_modules, by_value_dir]})
        env = codeship.absolute(env, os.getcwd())
        if env.is_empty():
            return {**doc, "runtime_env": None}
        self.client.connection()  # connected: the upload goes to this cluster's GCS
        shipped = codeship.ship(env.model_dump(exclude_defaults=True))
        out = {**doc, "runtime_env": shipped}
        if codeship.shipped_working_dir(shipped):
            out["workdir"] = None  # replicas run in their unpacked copy (Ray sets the cwd)
        return out

    def _wait(self, name: str, version: str, timeout_s: float) -> dict:
        from fuxi.servicedecl import ServiceFailed, ServiceWaitTimeout, service_verdict

        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status(name)
            verdict = service_verdict(st, version)
            if verdict == "ready":
                return st
            if verdict is not None:
                raise ServiceFailed(verdict, st)
            if time.monotonic() >= deadline:
                raise ServiceWaitTimeout(f"service {name}: {st['ready']}/{st['desired']} "
                                         f"replicas ready after {timeout_s:g}s (version "
                                         f"{version}); it keeps trying", st)
            time.sleep(SERVICE_READY_POLL_S)


class ServiceHandle:
    """Calls to one service through Kuafu (the cluster's proxies, found in its Nuwa):
    ``h.method(message)`` or ``h.call("method", message, timeout_s=..., backup="p95")``. A
    message is bytes, a str, a str-to-str dict or an Arrow table; so is the reply. Methods
    the class declared idempotent may be resent by the proxy; others never are."""

    def __init__(self, client: Client, name: str, timeout_s: float | None = None):
        self._fuxi, self.name, self._timeout_s = client, name, timeout_s
        self._kuafu = None

    def _conn(self):
        if self._kuafu is None:
            import kuafu

            kw = {} if self._timeout_s is None else {"timeout_s": self._timeout_s}
            self._kuafu = kuafu.connect(f"nuwa://{self._fuxi.cluster}/{self.name}",
                                        credentials=self._fuxi.token, **kw)
        return self._kuafu

    def call(self, method: str, message=b"", **kw):
        if not isinstance(method, str) or not method:
            raise BadInput(f"call: got method {method!r}, expected a method name")
        return self._conn().call(method, message, **kw)

    def call_async(self, method: str, message=b"", **kw):
        """A ``kuafu.Handle``: ``.result(timeout_s)``."""
        return self._conn().call_async(method, message, **kw)

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(message=b"", **kw):
            return self.call(method, message, **kw)

        call.__name__ = method
        return call

    def close(self) -> None:
        k, self._kuafu = self._kuafu, None
        if k is not None:
            k.close()


def _check_name(name) -> None:
    from fuxi.core.service_spec import SERVICE_NAME_RE

    if not isinstance(name, str) or not SERVICE_NAME_RE.match(name):
        raise BadInput(f"got service name {name!r:.80}, expected one matching "
                       f"{SERVICE_NAME_RE.pattern}")


def _check_wait(timeout_s) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or \
            not math.isfinite(timeout_s) or not 0 <= timeout_s <= SERVICE_READY_WAIT_MAX_S:
        raise BadInput(f"timeout_s={timeout_s!r}: expected seconds from 0 to "
                       f"{SERVICE_READY_WAIT_MAX_S:g} (SERVICE_READY_WAIT_MAX_S)")


class Nodes:
    def __init__(self, client: Client):
        self.client = client

    def list(self) -> list[dict]:
        """Alive nodes: id, address, free and total resources, agent, blacklist."""
        return self.client.connection().cluster_info().get("nodes", [])
