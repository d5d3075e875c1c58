"""Starting and stopping a cluster's Pangu: masters and one chunkserver per node.

Actor names (Ray namespace ``fuxi-<cluster>``): ``pangu-master-<i>`` and
``pangu-cs-<node>-<k>``. Starting is idempotent (``get_if_exists``): calling ``start`` again
after a node joins adds its chunkserver and leaves the rest alone.
"""

from __future__ import annotations

import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from base import actors
from pangu.chunkserver import HEARTBEAT_S, SCRUB_INTERVAL_S, ChunkServer
from pangu.client import MASTERS_MAX, master_name
from pangu.errors import BadRequest, Unavailable
from pangu.master import PanguMaster

PANGU_START_TIMEOUT_S = 60.0
MASTER_STOP_TIMEOUT_S = 5.0  # a Pangu master's orderly stop before it is killed
CHUNKSERVERS_PER_NODE_MAX = 16
# Non-detached actors live while a handle does: the process that started them keeps these.
_HANDLES: dict[str, list] = {}


def _namespace(cluster: str) -> str:
    return f"fuxi-{cluster}"


def server_name(node_id: str, k: int) -> str:
    return f"pangu-cs-{node_id[:12]}-{k}"


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def start(cluster: str, data_dir: str, *, masters: int = 1, nuwa: list | None = None,
          nodes: list[str] | None = None, per_node: int = 1, settings: dict | None = None,
          capacity_bytes: int | None = None, heartbeat_s: float = HEARTBEAT_S,
          scrub_interval_s: float = SCRUB_INTERVAL_S, detached: bool = False,
          wait: bool = True, timeout_s: float = PANGU_START_TIMEOUT_S,
          auth: dict | None = None) -> dict:
    """Start (or find) the masters and the chunkservers on ``nodes`` (default: every alive
    node), ``per_node`` each. Returns {"masters": [...], "servers": [...]} (actor names).
    ``auth`` is Zhongkui's ``{"enabled", "keys"}`` (None: no authentication)."""
    if not 1 <= masters <= MASTERS_MAX:
        raise BadRequest(f"masters={masters}; expected 1..{MASTERS_MAX}")
    if masters > 1 and not nuwa:
        raise BadRequest("more than one Pangu master needs Nuwa (they elect the active one "
                         "there and share the journal)")
    if not 1 <= per_node <= CHUNKSERVERS_PER_NODE_MAX:
        raise BadRequest(f"per_node={per_node}; expected 1..{CHUNKSERVERS_PER_NODE_MAX} "
                         f"chunkservers per node (CHUNKSERVERS_PER_NODE_MAX)")
    ns = _namespace(cluster)
    life = {"lifetime": "detached"} if detached else {}
    mnames = [master_name(i) for i in range(1, masters + 1)]
    # Masters go to distinct nodes, the first to this process's node (the head, for `fuxi up`);
    # soft, so a master still starts if that node is gone.
    here = ray.get_runtime_context().get_node_id()
    spots = [here] + [n for n in alive_nodes() if n != here]
    mh = [PanguMaster.options(
              name=n, namespace=ns, get_if_exists=True, **life,
              scheduling_strategy=NodeAffinitySchedulingStrategy(spots[i % len(spots)], soft=True))
          .remote(cluster, data_dir, ns, n, nuwa, settings, auth) for i, n in enumerate(mnames)]
    from zhongkui.guard import Guard

    proof = Guard(auth, name="deploy").platform_token() or None  # control calls need it
    roles = actors.call_each([m.start for m in mh], cred=proof, timeout_s=timeout_s)
    snames = []
    handles = []
    for node in nodes or alive_nodes():
        for k in range(per_node):
            name = server_name(node, k)
            h = ChunkServer.options(
                name=name, namespace=ns, get_if_exists=True,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False), **life,
            ).remote(cluster, data_dir, ns, capacity_bytes, heartbeat_s, scrub_interval_s, name,
                     "nuwa" if nuwa else "local", auth)
            snames.append(name)
            handles.append(h)
    _HANDLES.setdefault(cluster, []).extend(mh + handles)
    actors.call_each([h.start for h in handles], mnames, cred=proof, timeout_s=timeout_s)
    if wait:
        # Whoever starts Pangu with the keys is the platform: it asks as the platform.
        wait_ready(cluster, len(snames), timeout_s, token=proof)
    return {"masters": mnames, "servers": snames, "roles": roles}


def wait_ready(cluster: str, servers: int, timeout_s: float = PANGU_START_TIMEOUT_S,
               token: str | None = None) -> dict:
    """Wait until a master is active and knows ``servers`` live chunkservers."""
    from pangu.client import Client

    c = Client(cluster, token=token)
    deadline = time.monotonic() + timeout_s
    st: dict = {}
    while time.monotonic() < deadline:
        try:
            st = c.call("status", timeout_s=max(1.0, deadline - time.monotonic()))
            if sum(1 for s in st["servers"] if not s["dead"]) >= servers:
                return st
        except Unavailable:
            pass
        time.sleep(0.2)
    raise Unavailable(f"Pangu in cluster {cluster!r} did not get an active master with "
                      f"{servers} chunkservers within {timeout_s:g}s; status: "
                      f"{ {k: st.get(k) for k in ('master', 'active', 'servers')} }")


def stop(cluster: str, token: str | None = None) -> int:
    """Kill the cluster's Pangu actors (their data stays on disk). Returns how many.
    ``token``: a platform token, for the masters' orderly stop when access control is on
    (without it they are killed all the same)."""
    ns = _namespace(cluster)
    n = 0
    _HANDLES.pop(cluster, None)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == ns and a["name"].startswith("pangu-")]
    for name in names:
        try:
            h = ray.get_actor(name, namespace=ns)
        except ValueError:
            continue
        if name.startswith("pangu-master-"):
            try:
                actors.call(h.stop, cred=token, timeout_s=MASTER_STOP_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - killed below anyway
                pass
        ray.kill(h, no_restart=True)
        n += 1
    return n
