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
from typing import Sequence

from fuxi.errors import BadInput


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
    def __init__(self, client: Client):
        self.client = client

    def list(self) -> list[dict]:
        return self.client.connection().service_list()

    def status(self, name: str) -> dict:
        return self.client.connection().service_status(name)

    def scale(self, name: str, replicas: int) -> dict:
        return self.client.connection().service_scale(name, replicas)


class Nodes:
    def __init__(self, client: Client):
        self.client = client

    def list(self) -> list[dict]:
        """Alive nodes: id, address, free and total resources, agent, blacklist."""
        return self.client.connection().cluster_info().get("nodes", [])
