"""Fuxi: the batch scheduler of a Python re-creation of Alibaba's Feitian (Apsara) kernel on Ray.

Public API (the spec contract is documented in ``docs/jobs.md``)::

    import fuxi
    fuxi.run("jobs/wordcount.yaml")                 # submit and wait (embedded default)
    fuxi.JobSpec / fuxi.TaskSpec                    # the same contract as Python objects
    with fuxi.connect() as conn: fuxi.Client(conn.master).submit(...)   # Client = FuxiClient

Importing ``fuxi`` does not import Ray; the Ray shells load on first use.
"""

from fuxi.errors import (
    BadInput,
    ClusterError,
    FuxiError,
    JobFailed,
    JobNotFound,
    LimitExceeded,
    NoCluster,
    SpecError,
)
from fuxi.core.spec import JobSpec, ResourceSpec, SpeculationSpec, TaskSpec
from fuxi.io.specfile import load_job_spec

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import fuxi` free of Ray
    if name in ("FuxiClient", "Client", "run", "load"):
        from fuxi import client

        return getattr(client, name)
    if name in ("connect", "up", "down"):
        from fuxi import runtime

        return getattr(runtime, name)
    raise AttributeError(name)


__all__ = [
    "BadInput", "ClusterError", "FuxiError", "JobFailed", "JobNotFound", "LimitExceeded",
    "NoCluster", "SpecError", "JobSpec", "ResourceSpec", "SpeculationSpec", "TaskSpec",
    "load_job_spec", "FuxiClient", "Client", "run", "load", "connect", "up", "down",
]
