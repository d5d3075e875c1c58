"""Fuxi: the batch scheduler of a Python re-creation of Alibaba's Feitian (Apsara) kernel on Ray.

Public API (the spec contract is documented in ``docs/jobs.md``)::

    import fuxi
    fuxi.run("jobs/wordcount.yaml")                 # submit and wait (embedded default)
    fuxi.JobSpec / fuxi.TaskSpec                    # the same contract as Python objects
    with fuxi.Client() as c: c.jobs.submit(...); c.jobs.wait(id)   # a `fuxi up` cluster, no Ray handle
    with fuxi.connect() as conn: fuxi.FuxiClient(conn.master).submit(...)   # with a Ray handle
    @fuxi.service(replicas=2) class Echo: ...; fuxi.Client().services.register(Echo)   # a service

Importing ``fuxi`` does not import Ray; the Ray shells load on first use.
"""

from fuxi.errors import (
    BadInput,
    ClusterError,
    FuxiError,
    JobFailed,
    JobNotFound,
    JobWaitTimeout,
    LimitExceeded,
    NoCluster,
    SpecError,
)
from fuxi.core.spec import JobSpec, ResourceSpec, SpeculationSpec, TaskSpec
from fuxi.io.specfile import load_job_spec

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import fuxi` free of Ray
    if name == "Client":
        from fuxi.facade import Client

        return Client
    if name in ("service", "ServiceFailed", "ServiceWaitTimeout"):
        from fuxi import servicedecl

        return getattr(servicedecl, name)
    if name in ("FuxiClient", "run", "load"):
        from fuxi import client

        return getattr(client, name)
    if name in ("connect", "up", "down"):
        from fuxi import runtime

        return getattr(runtime, name)
    raise AttributeError(name)


__all__ = [
    "BadInput", "ClusterError", "FuxiError", "JobFailed", "JobNotFound", "JobWaitTimeout", "LimitExceeded",
    "NoCluster", "SpecError", "JobSpec", "ResourceSpec", "SpeculationSpec", "TaskSpec",
    "load_job_spec", "FuxiClient", "Client", "service", "ServiceFailed", "ServiceWaitTimeout", "run", "load", "connect", "up", "down",
]
