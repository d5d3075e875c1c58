"""The online settings (``fuxi.core.clusterconfig.ONLINE``) of a running FuxiMaster: read
from its store (Nuwa's /fuxi/config/cluster, written by `fuxi up --config` and `fuxi config
set`) at every round of the alert loop, and applied to the loops that use them -- the alert loop's
period (``alerts.eval_s``), the cluster log's pull period (``events.pull_s``) and the cluster
blacklist's thresholds (``blacklist.*``: its expiry, failure window and jobs). No restart, no new
public method: the loops and the blacklist read these attributes each time they use them (an
entry already made keeps the expiry it was given).

A stored document that does not validate (written by hand with `fuxi nuwa put`) changes
nothing: the loops keep their periods and ``error`` says why.
"""

from __future__ import annotations

import asyncio
import logging

from fuxi.core import clusterconfig as cc

logger = logging.getLogger(__name__)

LIVE_CONFIG_READ_TIMEOUT_S = 5.0  # one read of the stored configuration (next round: again)


class LiveConfig:
    def __init__(self, store, alerting, events, blacklists=None):
        self.store = store  # the master's blocking StateStore (None: nothing to read)
        self.alerting = alerting  # fuxi.shells.alerting.Alerting: .eval_s
        self.events = events  # fuxi.shells.clusterlog.ClusterEvents: .pull_s
        self.blacklists = blacklists  # fuxi.core.blacklist.ClusterBlacklist: its thresholds
        self.applied: dict = {}
        self.error: str | None = None

    async def refresh(self) -> dict:
        """Read the stored configuration and apply its online settings; returns them."""
        if self.store is None:
            return {}
        try:
            doc = await asyncio.wait_for(asyncio.to_thread(self.store.get, cc.STORE_KEY),
                                         LIVE_CONFIG_READ_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - unreadable this round: keep what we have
            self.error = f"reading {cc.STORE_KEY}: {type(e).__name__}: {str(e)[:200]}"
            return self.applied
        if doc is None:
            self.error = None
            return self.applied
        values = cc.online_values(doc)
        if not values:
            self.error = f"{cc.STORE_KEY} does not validate; online settings unchanged"
            return self.applied
        self.error = None
        if values != self.applied:
            logger.info("online settings: %s", values)
        self.alerting.eval_s = float(values["alerts.eval_s"])
        if self.events is not None:
            self.events.pull_s = float(values["events.pull_s"])
        if self.blacklists is not None:
            self.blacklists.expiry_s = float(values["blacklist.cluster_expiry_s"])
            self.blacklists.window_s = float(values["blacklist.cluster_failure_window_s"])
            self.blacklists.jobs_min = int(values["blacklist.cluster_failure_jobs_min"])
        self.applied = values
        return values
