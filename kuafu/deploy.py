"""Kuafu on Ray: one ``KuafuProxy`` actor per node, and how programs find theirs.

Each proxy is an async actor with no CPU reserved, pinned to its node and restarted by Ray if
its process dies. It listens on a Unix socket at a path every process on the node can compute
(``socket_path``) and on TCP, and publishes itself in Nuwa under ``/kuafu/proxies``. A program
in Ray reaches its node's proxy through the socket; a program outside Ray (the ``fuxi`` CLI)
looks the proxies up in the cluster's Nuwa.
"""

from __future__ import annotations

import hashlib
import json
import os

from base import actors
from kuafu.errors import Unavailable

PROXY_PREFIX = "kuafu-proxy-"
PROXY_START_TIMEOUT_S = 60.0
INFO_TIMEOUT_S = 10.0
FDS_WANTED = 65_536  # open files a proxy asks for (ten thousand idle connections and more)
NODE_IP = "node"  # as a host: the address Ray knows the proxy's node by
HTTP_PORT_SETTING = "http_port"  # in ``settings``: start the HTTP front door on this port


def socket_dir() -> str:
    return os.environ.get("KUAFU_SOCKET_DIR") or f"/tmp/kuafu-{os.getuid()}"


def socket_path(namespace: str, node_id: str) -> str:
    """The Unix socket of ``node_id``'s proxy in the Ray namespace ``namespace`` (short: socket
    paths must stay under ~107 bytes)."""
    digest = hashlib.sha1(namespace.encode()).hexdigest()[:10]
    return os.path.join(socket_dir(), f"{digest}-{node_id[:16]}.sock")


def _namespace(cluster: str) -> str:
    from base.cluster import namespace

    return namespace(cluster)


def _actor_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=16)
    class KuafuProxy:
        """The proxy runs on an event loop of its own thread (uvloop when installed), apart
        from Ray's: actor calls are only for control (info, stats, shutdown)."""

        def __init__(self, namespace: str, node_id: str, nuwa, host: str, port: int,
                     settings: dict | None = None, detached: bool = False,
                     auth: dict | None = None):
            import resource
            import secrets

            from zhongkui.files import private_files

            private_files()  # its socket directory and anything it writes (issue 14)
            from kuafu.io.loops import LoopThread
            from kuafu.io.proxy import ProxyCore

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = min(hard, FDS_WANTED) if hard != resource.RLIM_INFINITY else FDS_WANTED
            if soft < want:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            from zhongkui.shell import make_guard

            # The config a proxy for a new node copies; never the keys (FuxiMaster starts
            # proxies when authentication is on: it holds them).
            self.config = {"namespace": namespace, "nuwa": nuwa, "host": host, "port": port,
                           "settings": settings or {}, "detached": detached,
                           "auth_enabled": bool((auth or {}).get("enabled"))}
            if host == NODE_IP:  # each proxy binds its own node's address
                host = ray.util.get_node_ip_address()
            # A new incarnation token per start: endpoint names never repeat across restarts.
            proxy_id = f"{node_id[:12]}.{secrets.token_hex(3)}"
            core_settings = dict(settings or {})
            http_port = core_settings.pop(HTTP_PORT_SETTING, None)  # not ProxyCore's
            self.loop = LoopThread("kuafu-proxy")
            self.core = ProxyCore(proxy_id, host=host, port=port,
                                  uds=socket_path(namespace, node_id), nuwa=nuwa, node=node_id,
                                  guard=make_guard(auth, f"kuafu-{node_id[:8]}", namespace),
                                  **core_settings)
            self.gateway = None
            if http_port is not None:  # before start: the proxy publishes its URL in Nuwa
                from kuafu.gateway import HttpGateway

                self.gateway = HttpGateway(self.core, host=host, port=int(http_port))
                self.loop.run(self.gateway.start(), PROXY_START_TIMEOUT_S)
                self.core.extra.update(self.gateway.info())
            self.loop.run(self.core.start(), PROXY_START_TIMEOUT_S)

        def info(self) -> dict:
            return self.core.info()

        def get_config(self) -> dict:
            return dict(self.config)

        def stats(self) -> dict:
            def both():
                out = self.core.stats()
                if self.gateway is not None:
                    out["http"] = self.gateway.stats()
                return out
            return self.loop.call(both, INFO_TIMEOUT_S)

        def cold(self, asleep: dict, cred: str | None = None) -> dict:
            """Services scaled to zero ({name: ttl_s}, from the service manager); returns
            {name: calls held here} for those whose calls wait for a replica."""
            from zhongkui.guard import require_platform

            def go():
                require_platform(self.core.guard, cred, "tell a Kuafu proxy what sleeps")
                return self.core.cold(asleep)
            return self.loop.call(go, INFO_TIMEOUT_S)

        def zk_set_keys(self, proof: str, doc: dict) -> int:
            """Zhongkui's keys after a rotation (from FuxiMaster)."""
            if self.core.guard is None:
                return 0
            return self.loop.call(lambda: self.core.guard.accept_keys(proof, doc),
                                  INFO_TIMEOUT_S)

        def shutdown(self, cred: str | None = None) -> None:
            from zhongkui.guard import require_platform

            if self.core.guard is not None:  # the platform only (issue 14, defect 8)
                self.loop.call(lambda: require_platform(self.core.guard, cred,
                                                        "shut a Kuafu proxy down"),
                               INFO_TIMEOUT_S)
            if self.gateway is not None:
                self.loop.run(self.gateway.stop(), INFO_TIMEOUT_S)
            self.loop.run(self.core.stop(), INFO_TIMEOUT_S)
            self.loop.stop()

    return KuafuProxy


_cls = None
_held: dict = {}  # (namespace, node) -> handle: a non-detached actor lives while its handle does


def proxy_class():
    global _cls
    if _cls is None:
        _cls = _actor_class()
    return _cls


def alive_nodes() -> list[str]:
    import ray

    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def start(namespace: str, nuwa: list | None, *, host: str = "127.0.0.1", port: int = 0,
          nodes: list[str] | None = None, detached: bool = False, settings: dict | None = None,
          timeout_s: float = PROXY_START_TIMEOUT_S, auth: dict | None = None) -> list[dict]:
    """Start (or find) a proxy on every node in ``nodes`` (default: every alive node); returns
    their ``info()`` (proxy id, tcp and unix addresses, node). ``host`` is the TCP address to
    bind: an address, or ``NODE_IP`` for each node's own (clusters spanning machines).
    ``settings`` are ProxyCore keyword arguments (``idle_timeout_s``, ``hello_timeout_s``,
    ``partial_timeout_s``; and ``http_port``: serve the HTTP front door, ``kuafu.gateway``,
    on that port, 0 for a free one, on each proxy). ``auth`` is Zhongkui's ``{"enabled", "keys"}`` (None: no
    authentication)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    handles = []
    for node in nodes or alive_nodes():
        opts = {"name": PROXY_PREFIX + node, "namespace": namespace, "get_if_exists": True,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
        if detached:
            opts["lifetime"] = "detached"
        h = proxy_class().options(**opts).remote(namespace, node, nuwa, host, port,
                                                 dict(settings or {}), detached, auth)
        _held[(namespace, node)] = h
        handles.append(h)
    return actors.call_each([h.info for h in handles], timeout_s=timeout_s)


def proxies(namespace: str) -> dict:
    """{node id: actor handle} of the proxies in ``namespace``."""
    import ray
    from ray.util import list_named_actors

    out = {}
    for a in list_named_actors(all_namespaces=True):
        if a.get("namespace") == namespace and a["name"].startswith(PROXY_PREFIX):
            try:
                out[a["name"][len(PROXY_PREFIX):]] = ray.get_actor(a["name"], namespace=namespace)
            except ValueError:
                pass
    return out


def stop(namespace: str, timeout_s: float = INFO_TIMEOUT_S, token: str | None = None) -> int:
    """Stop every proxy in ``namespace`` (they withdraw from Nuwa first); returns how many.
    ``token``: a platform token for their orderly shutdown when access control is on."""
    import ray

    found = proxies(namespace)
    for h in found.values():
        try:
            actors.call(h.shutdown, cred=token, timeout_s=timeout_s)
        except Exception:  # noqa: BLE001 - killed below either way
            pass
        ray.kill(h, no_restart=True)
    for key in [k for k in _held if k[0] == namespace]:
        del _held[key]
    return len(found)


def ensure_local(namespace: str, timeout_s: float = PROXY_START_TIMEOUT_S) -> str:
    """The address of this node's proxy (inside Ray), starting one like the others if the
    node has none yet (a node that joined after ``start``)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    path = socket_path(namespace, node)
    if os.path.exists(path):
        return f"unix://{path}"
    found = proxies(namespace)
    if node in found:
        return actors.call(found[node].info, timeout_s=timeout_s)["uds"]
    if not found:
        raise Unavailable(f"Kuafu is not running in namespace {namespace!r}: no proxy on any "
                          f"node (start them with kuafu.deploy.start or `fuxi up`)")
    cfg = actors.call(next(iter(found.values())).get_config, timeout_s=timeout_s)
    if cfg.get("auth_enabled"):  # FuxiMaster holds the keys a new proxy needs
        from base.cluster import MASTER_NAME

        master = ray.get_actor(MASTER_NAME, namespace=namespace)
        from zhongkui import creds

        return actors.call(master.kuafu_start_node, node, None, creds.token(),
                           timeout_s=timeout_s)["uds"]
    # Detached like the others when they are (a worker that started it may exit).
    return start(namespace, cfg["nuwa"], host=cfg["host"], nodes=[node],
                 settings=cfg["settings"], detached=cfg["detached"],
                 timeout_s=timeout_s)[0]["uds"]


def local_proxy(cluster: str) -> str:
    """This node's proxy for a Fuxi cluster, from inside Ray."""
    return ensure_local(_namespace(cluster))


def find_proxy(cluster: str) -> str:
    """A proxy address for ``cluster``: inside Ray this node's; outside, one published in the
    cluster's Nuwa (its Unix socket when the socket is on this machine)."""
    try:
        import ray

        inside = ray.is_initialized()
    except ImportError:  # pragma: no cover - ray is a dependency
        inside = False
    if inside:
        return local_proxy(cluster)
    from base.cluster import find_cluster

    rec = find_cluster(cluster)
    if rec is None:
        raise Unavailable(f"no running cluster {cluster!r}: services live in a cluster started "
                          f"with `fuxi up`; a standalone server is called as "
                          f"tcp://host:port/<service>")
    if not rec.nuwa:
        raise Unavailable(f"cluster {cluster!r} runs without Nuwa, so nuwa:// addresses cannot "
                          f"be resolved; call a proxy directly with tcp://host:port/<service>")
    from zhongkui import creds

    return proxy_from_nuwa(rec.nuwa, creds.token(cluster))


def proxy_from_nuwa(nuwa_addresses: list, token: str | None = None) -> str:
    from nuwa import errors as NE
    from nuwa.client import connect as nuwa_connect

    from kuafu.io.watcher import PROXIES_PATH

    with nuwa_connect([tuple(a) for a in nuwa_addresses], token=token) as nw:
        try:
            names = nw.list(PROXIES_PATH)
        except NE.NoNode:
            names = []
        infos = []
        for n in names:
            try:
                infos.append(json.loads(nw.get(f"{PROXIES_PATH}{n}")[0]))
            except (NE.NoNode, ValueError):
                continue
    if not infos:
        raise Unavailable("no Kuafu proxy is published in the cluster's Nuwa (/kuafu/proxies)")
    for info in infos:
        uds = info.get("uds", "")
        if uds.startswith("unix://") and os.path.exists(uds[len("unix://"):]):
            return uds
    return infos[0]["tcp"]
