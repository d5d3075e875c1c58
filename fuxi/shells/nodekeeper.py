"""The node keeper (issue 18 part 5): one actor per cluster (``fuxi-nodes`` in its namespace)
that holds the operators' drain intents and every node's state (``fuxi.core.drain``), so that
`fuxi node drain / undrain / list` reach it instead of FuxiMaster (which is at its limit of
public methods), and a FuxiMaster take-over keeps every drain: the intents are stored in Nuwa
(a `fuxi up` cluster), else in the data directory, and FuxiMaster reads them from here.

Every ``KEEPER_ROUND_S`` it reads what each node holds -- service replicas and batch slots from
FuxiMaster's ``cluster_info``, chunk replicas from the Pangu master's status -- moves the
states (DRAINING -> DRAINED once nothing is left), and makes sure every chunkserver on a
leaving node is draining in Pangu (idempotent: a Pangu master that failed over forgets it).

A threaded actor: its calls and its round are short blocking calls (GCS, Pangu's client), the
book is guarded by one lock."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import ray

from base import actors, events
from base.cluster import MASTER_NAME
from fuxi.core.drain import DRAIN_TIMEOUT_DEFAULT_S, DrainBook, Holdings
from fuxi.errors import BadInput, NotLeader

logger = logging.getLogger(__name__)

KEEPER_NAME = "fuxi-nodes"
KEEPER_ROUND_S = 1.0  # how often holdings are read and states moved
KEEPER_CALL_TIMEOUT_S = 10.0  # a call to FuxiMaster or to Pangu's master
DRAINS_KEY = "/nodes/drains"  # the stored intents (fuxi.core.drain.DrainBook.to_doc)


def find_keeper(namespace: str):
    try:
        return ray.get_actor(KEEPER_NAME, namespace=namespace)
    except ValueError:
        return None


def start_keeper(cluster: str, namespace: str, data_dir: str | None, nuwa: list | None,
                 auth: dict | None, detached: bool):
    """The cluster's keeper, started if it has none (blocking)."""
    opts: dict[str, Any] = {"name": KEEPER_NAME, "namespace": namespace, "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    h = NodeKeeper.options(**opts).remote(cluster, namespace, data_dir, nuwa, auth)
    actors.call(h.start, timeout_s=KEEPER_CALL_TIMEOUT_S * 6)
    return h


@ray.remote(num_cpus=0, max_concurrency=8)
class NodeKeeper:
    def __init__(self, cluster: str, namespace: str, data_dir: str | None, nuwa: list | None,
                 auth: dict | None):
        from zhongkui.guard import Guard

        self.cluster, self.namespace = cluster, namespace
        self.guard = Guard(auth, name="nodes")
        from fuxi.io.store import open_store

        self.store = open_store(nuwa, data_dir, "fuxi-nodes", self.guard.platform_token)
        self.lock = threading.Lock()
        doc = self.store.get(DRAINS_KEY)
        try:
            self.book = DrainBook.from_doc(doc, time.time()) if doc else DrainBook()
        except BadInput as e:  # a damaged record: said, and nothing drained by it
            logger.error("the stored drain record is refused: %s", e)
            self.book = DrainBook()
        self.saved = self.book.to_doc()
        self.read_at = 0.0
        self.errors: list[str] = []
        self._thread: threading.Thread | None = None
        self._master = MASTER_NAME

    def start(self) -> bool:
        """Run the rounds from now on (idempotent); the first round is done before it returns."""
        with self.lock:
            if self._thread is not None:
                return True
            self._thread = threading.Thread(target=self._rounds, daemon=True, name="keeper")
        try:
            self._round()  # FuxiMaster may still be starting: the rounds go on regardless
        except Exception as e:  # noqa: BLE001 - said in view()
            self.errors.append(f"first round: {e!r:.200}")
        self._thread.start()
        return True

    # ------------------------------------------------------------ operators' calls
    def drain(self, node: Any, timeout_s: Any = DRAIN_TIMEOUT_DEFAULT_S,
              cred: str | None = None) -> dict:
        """Drain ``node`` (its id or a unique prefix). Administrators only with access
        control on. Idempotent."""
        self._admin(cred, "drain a node")
        with self.lock:
            out = self.book.drain(node, time.time(), timeout_s)
            self._save()
        events.emit("fuxi.nodes", "node_drain", f"node {out['node_id'][:12]} drains "
                    f"(timeout {timeout_s}s)", node=out["node_id"])
        self._pangu_marks()
        return out

    def undrain(self, node: Any, cred: str | None = None) -> dict:
        """Put ``node`` back to work. Administrators only with access control on."""
        self._admin(cred, "undrain a node")
        with self.lock:
            out = self.book.undrain(node, time.time())
            self._save()
        events.emit("fuxi.nodes", "node_undrain", f"node {out['node_id'][:12]} takes work "
                    f"again", node=out["node_id"])
        self._pangu_marks(undrain=out["node_id"])
        return out

    def view(self) -> dict:
        """Every node's state and holdings (``fuxi node list``)."""
        with self.lock:
            return {"nodes": self.book.view(time.time()), "read_age_s":
                    round(time.time() - self.read_at, 1), "errors": self.errors[-5:]}

    def leaving(self) -> dict:
        """What FuxiMaster polls: the draining (and drained) nodes, and the overdue ones."""
        with self.lock:
            return {"draining": sorted(self.book.leaving()),
                    "overdue": sorted(self.book.overdue(time.time()))}

    # ------------------------------------------------------------ the rounds
    def _admin(self, cred, what: str) -> None:
        from zhongkui.guard import require_platform

        require_platform(self.guard, cred, what, admin_ok=True)

    def _save(self) -> None:
        doc = self.book.to_doc()
        if doc != self.saved:
            self.store.put(DRAINS_KEY, doc)
            self.saved = doc

    def _rounds(self) -> None:
        while True:
            time.sleep(KEEPER_ROUND_S)
            try:
                self._round()
                self._pangu_marks()
            except Exception as e:  # noqa: BLE001 - one bad round must not stop the keeper
                logger.exception("node keeper round failed")
                self.errors = (self.errors + [f"{time.strftime('%H:%M:%S')} {e!r:.200}"])[-20:]

    def _master_info(self) -> dict:
        try:
            h = ray.get_actor(self._master, namespace=self.namespace)
            return actors.call(h.cluster_info, timeout_s=KEEPER_CALL_TIMEOUT_S)
        except NotLeader as e:  # a standby answered: ask the leader it names next time
            self._master = e.leader or MASTER_NAME
            raise

    def _pangu_status(self) -> list[dict] | None:
        from pangu.client import Client, master_name

        try:
            ray.get_actor(master_name(1), namespace=self.namespace)
        except ValueError:
            return None  # no Pangu in this cluster
        c = Client(self.cluster, token=self.guard.platform_token() or None)
        return c.call("status", timeout_s=KEEPER_CALL_TIMEOUT_S)["servers"]

    def _round(self) -> None:
        info = self._master_info()
        servers = self._pangu_status() or []
        chunks: dict[str, int] = {}
        for s in servers:
            if not s["dead"]:
                chunks[s["node"]] = chunks.get(s["node"], 0) + int(s["chunks"])
        alive = {}
        for n in info.get("nodes", []):
            holds = n.get("holds") or {}
            alive[n["node_id"]] = Holdings(len(holds.get("replicas", ())),
                                           int(holds.get("slots", 0)), chunks.get(n["node_id"], 0))
        with self.lock:
            moves = self.book.observe(alive, time.time())
            self.read_at = time.time()
            self.servers = servers
        for node, was, now in moves:
            sev = "warning" if now == "dead" else "info"
            text = (f"node {node[:12]} is drained: nothing is left there, it can be removed"
                    if now == "drained" else f"node {node[:12]}: {was} -> {now}")
            events.emit("fuxi.nodes", "node_" + now, text, severity=sev, node=node)

    def _pangu_marks(self, undrain: str | None = None) -> None:
        """Every live chunkserver on a leaving node draining in Pangu; those of ``undrain``
        taking data again."""
        servers = getattr(self, "servers", None)
        if not servers:
            return
        with self.lock:
            leaving = self.book.leaving()
        from pangu.client import Client

        c = Client(self.cluster, token=self.guard.platform_token() or None)
        for s in servers:
            if s["dead"]:
                continue
            if s["node"] in leaving and not s["draining"]:
                c.call("drain", s["id"], True, timeout_s=KEEPER_CALL_TIMEOUT_S)
                s["draining"] = True
            elif s["node"] == undrain and s["draining"]:
                c.call("drain", s["id"], False, timeout_s=KEEPER_CALL_TIMEOUT_S)
                s["draining"] = False
