"""Shipping a service's code at `fuxi service register|upgrade` (``--working-dir``, the spec's
``runtime_env``): the directories are measured and uploaded to the cluster's GCS once, here,
so the spec FuxiMaster keeps holds only package URIs (``fuxi.io.codeship``)."""

from __future__ import annotations

import os


def ship_service_code(doc: dict, working_dir: str | None, cluster: str | None) -> dict:
    from fuxi.core.codeenv import RuntimeEnvSpec
    from fuxi.errors import NoCluster
    from fuxi.io import codeship
    from fuxi.runtime import connect, find_cluster

    env = RuntimeEnvSpec.model_validate(doc.get("runtime_env") or {})
    if working_dir is not None:
        env = env.model_copy(update={"working_dir": working_dir})
    env = codeship.absolute(env, os.getcwd())
    if env.is_empty():
        return {**doc, "runtime_env": None}
    if find_cluster(cluster or "default") is None:
        raise NoCluster(f"no running cluster {cluster!r}: shipping a service's code needs a "
                        "persistent cluster; start one with `fuxi up`")
    with connect(cluster or "default", embedded_ok=False):
        shipped = codeship.ship(env.model_dump(exclude_defaults=True))
    out = {**doc, "runtime_env": shipped}
    if codeship.shipped_working_dir(shipped):
        out["workdir"] = None  # replicas run in their unpacked copy (Ray sets the cwd)
    return out
