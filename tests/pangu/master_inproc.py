"""The Pangu master's class run in this process, without Ray: its namespace, authorization,
leases and fencing with a real local journal and a real Zhongkui guard (keys, ACL entries).
Nothing here reaches a chunkserver: the checks under test refuse before any would be called.
"""

from __future__ import annotations

import time

from pangu.master import PanguMaster
from zhongkui.core.acl import Entry
from zhongkui.guard import auth_doc
from zhongkui.keys import Keyring

MasterClass = PanguMaster.__ray_metadata__.modified_class


class Cluster:
    def __init__(self, data_dir: str, grants=(), settings: dict | None = None):
        self.keys = Keyring.new()
        self.data_dir = data_dir
        self.grants = [Entry.make(*g).to_doc() for g in grants]
        self.settings = dict({"maintain_s": 3600.0}, **(settings or {}))

    def token(self, user: str, groups=(), ttl_s: float = 600.0) -> str:
        return self.keys.sign(user, groups, now=time.time(), ttl_s=ttl_s)

    async def master(self):
        m = MasterClass("c", self.data_dir, "fuxi-c", "m1", None, self.settings,
                        auth_doc(True, self.keys))
        # The guard's I/O hooks reach FuxiMaster over Ray: here the entries are set directly.
        m.guard.fetch_acl = m.guard.fetch_keys = m.guard.report = None
        m.guard.set_acl({"version": 1, "entries": self.grants})
        await m.start(cred=m.guard.platform_token())
        return m


async def stop(m) -> None:
    await m.stop(cred=m.guard.platform_token())
