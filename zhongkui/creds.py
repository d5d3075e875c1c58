"""Which token this process sends (the client side of Zhongkui), in order:

1. one set for the whole process with ``set_token`` -- a job's instances and a service's
   replicas get a scoped token from FuxiMaster this way;
2. the ``FUXI_TOKEN`` environment variable;
3. the signed-in user's token file, ``$FUXI_HOME/<cluster>/token`` (0600), written by
   ``fuxi login`` and by ``fuxi up`` for the first administrator.

An empty string means "no token": a cluster without authentication does not ask for one, and
one with authentication refuses the call, saying so.
"""

from __future__ import annotations

import os
import time

ENV_TOKEN = "FUXI_TOKEN"
TOKEN_FILE = "token"
TOKEN_FILE_BYTES_MAX = 8192
FILE_CACHE_S = 1.0  # a token file is read again at most this often (`fuxi login` replaces it)

_process_token: str | None = None
_file_cache: dict[str, tuple[float, str]] = {}


def set_token(token: str | None) -> None:
    """The token every client in this process sends from now on (None: back to the default)."""
    global _process_token
    _process_token = token or None


def token(cluster: str | None = None) -> str:
    if _process_token:
        return _process_token
    env = os.environ.get(ENV_TOKEN)
    if env:
        return env.strip()
    from base.cluster import cluster_dir

    path = os.path.join(cluster_dir(cluster or os.environ.get("FUXI_CLUSTER", "default")),
                        TOKEN_FILE)
    now = time.monotonic()
    hit = _file_cache.get(path)
    if hit is not None and now - hit[0] < FILE_CACHE_S:
        return hit[1]
    try:
        with open(path) as f:
            tok = f.read(TOKEN_FILE_BYTES_MAX).strip()
    except OSError:
        tok = ""
    _file_cache[path] = (now, tok)
    return tok
