"""Attaching a plain Python program (no Ray yet) to a running ``fuxi up`` cluster, so that
``pangu.open`` and the fsspec filesystem work outside Ray programs too."""

from __future__ import annotations

from base.cluster import find_cluster, ray_init, set_auth_mode
from base.errors import PlatformError
from pangu.errors import Unavailable


def attach(cluster: str) -> None:
    try:
        rec = find_cluster(cluster)
    except PlatformError as e:
        raise Unavailable(str(e)) from None
    if rec is None:
        raise Unavailable(f"no running cluster {cluster!r} to reach Pangu in: start one with "
                          f"`fuxi up`, or call ray.init() and pangu.deploy.start() first")
    set_auth_mode(rec.token_path)
    ray_init(address=rec.address, namespace=rec.namespace)
