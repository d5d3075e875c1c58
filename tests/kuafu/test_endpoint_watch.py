"""Kuafu's endpoint table follows /services through one Nuwa watch: it must see every change,
also the several that one txn, one recursive delete or one session expiry makes at a single
revision (issue 14, defect 12). A real Nuwa group and a real proxy core in this process, no
Ray."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile

import pytest

from kuafu.io.proxy import ProxyCore
from nuwa.core import commands as C
from nuwa.client import AsyncNuwa
from tests.nuwa.test_group_local import LocalGroup

pytestmark = pytest.mark.timeout(120)


def _ep(n: int) -> bytes:
    return json.dumps({"proxy": f"tcp://127.0.0.1:{20000 + n}", "proxy_id": "elsewhere",
                       "node": "n", "idempotent": [], "owner": "u"}).encode()


async def _until(pred, what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(0.02)


def test_the_endpoint_table_sees_every_change_of_a_multi_event_revision(tmp_path):
    async def main():
        g = LocalGroup(tmp_path)
        await g.start_all()
        sockdir = tempfile.mkdtemp(prefix="kw")
        core = None
        writer = AsyncNuwa(list(g.addresses.values()), timeout_s=5)
        try:
            await g.leader()
            core = ProxyCore("k1", port=None, uds=os.path.join(sockdir, "p.sock"),
                             nuwa=list(g.addresses.values()))
            await core.start()
            await writer.create("/services/svc/", parents=True)
            await writer.create("/services/svc/sentinel", _ep(0))

            def names() -> set:
                return set(core.endpoints.remote.get("svc", {}))

            await _until(lambda: names() == {"sentinel"}, "the proxy follows /services")
            await writer.txn([C.create(f"/services/svc/e{i}", _ep(i), creator="u")
                              for i in (1, 2, 3)])
            await _until(lambda: names() == {"sentinel", "e1", "e2", "e3"},
                         f"all three endpoints of one txn (has {names()})")
            s = await writer.session(ttl_s=5.0)
            for i in (4, 5, 6):
                await writer.create(f"/services/svc/e{i}", _ep(i), ephemeral=True, session=s)
            await _until(lambda: {"e4", "e5", "e6"} <= names(), "the ephemeral endpoints")
            await s.close()  # one session_close deletes all three at one revision
            await _until(lambda: names() == {"sentinel", "e1", "e2", "e3"},
                         f"every endpoint of the closed session gone (has {names()})")
            await writer.delete("/services/svc/", recursive=True)
            await _until(lambda: "svc" not in core.endpoints.remote,
                         f"every endpoint of the deleted subtree gone (has {names()})")
        finally:
            with contextlib.suppress(Exception):
                await writer.close()
            if core is not None:
                await core.stop()
            await g.close()

    asyncio.run(asyncio.wait_for(main(), 100))
