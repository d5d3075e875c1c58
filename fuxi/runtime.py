"""Finding, starting and stopping a Fuxi cluster.

* ``fuxi up`` starts a local Ray head of our own (``ray start --head --block`` as a child
  process in its own session, with its own temp dir and auth token) and deploys the platform
  onto it; ``fuxi up --address A`` deploys onto an existing Ray cluster instead.
* A record ``<FUXI_HOME>/<cluster>/cluster.json`` lets later commands find the cluster.
* Commands that need a cluster and find none use the *embedded default*: a private local Ray
  started in-process (``address="local"``, never a cluster we did not mean to join) that is
  shut down when the command ends.
* ``fuxi down`` stops the platform actors and, if we started the head, only that head's
  session — never the Ray CLI's stop command, which would kill every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator

from base import actors
from base.cluster import (MASTER_NAME, ClusterRecord, boot_id, cluster_dir, find_cluster,
                          fuxi_home, head_is_ours, namespace, port_open, ray_init,
                          ray_temp_dir, session_pids, set_auth_mode, start_ticks,
                          stop_autoscaler_monitor)
from base.prestart import prestart_workers, warm_worker_count
from fuxi.errors import BadInput, ClusterError, NoCluster
from fuxi.startlog import StartLog

HEAD_START_TIMEOUT_S = 60.0
HEAD_STOP_TIMEOUT_S = 3.0  # grace after SIGTERM before SIGKILL (the head keeps no state)
CLUSTER_CONNECT_TIMEOUT_S = 30.0
ACTOR_READY_TIMEOUT_S = 60.0
_CANDIDATE_HANDLES: dict = {}  # name -> handle of the non-detached candidates this driver made


def master_candidates(nuwa: list | None, name: str = MASTER_NAME,
                      n: int | None = None) -> list[str]:
    """The FuxiMaster candidates' actor names: ``MASTER_CANDIDATES`` of them on a cluster
    with Nuwa (hot standby behind an election), one without (fuxi.shells.leadership)."""
    from fuxi.core.leadership import candidate_names
    from fuxi.shells.leadership import MASTER_CANDIDATES

    return candidate_names(name, (n or MASTER_CANDIDATES) if nuwa else 1)


def _start_master(cluster: str, data_dir: str | None, detached: bool, nuwa: list | None = None,
                  nuwa_group: dict | None = None, auth: bool = False, agents: bool = True,
                  name: str = MASTER_NAME, candidates: int | None = None, log=None,
                  authority: bool = True, candidate_nodes: list[str] | None = None,
                  loops: bool = True):
    """Start FuxiMaster (its candidates) and, with ``authority``, Zhongkui's authority.
    Without access control nothing asks the authority anything (``zhongkui.shell.make_guard``
    gives such guards no link to it): the embedded default starts none, which saves the cold
    start a worker process. ``candidate_nodes``: the nodes to pin the candidates to, in order
    (default: this node, then the others in sorted order). ``loops=False``: the caller starts
    FuxiMaster's loops itself (``supervise``; the embedded default, off its critical path)."""
    log = log or StartLog()
    with log.step("import FuxiMaster", fine=True):
        import ray

        from fuxi.shells.candidates import candidate_options
        from fuxi.shells.leadership import find_leader
        from fuxi.shells.master import FuxiMaster

    if auth and not authority:
        raise ClusterError("access control needs Zhongkui's authority; start it with FuxiMaster")
    zk = _start_authority(cluster, data_dir, detached, nuwa, auth) if authority else None
    # Ray restarts a FuxiMaster that dies (its process, its node). With Nuwa there are
    # several candidates, on different nodes where there are several: the election's winner
    # leads and the others stand by (fuxi.shells.leadership); without, the restarted one
    # adopts the running jobs (fuxi.shells.adoption). Calls in flight fail; callers retry.
    names = master_candidates(nuwa, name, candidates)
    here = ray.get_runtime_context().get_node_id()
    nodes = candidate_nodes or [here] + sorted(n["NodeID"] for n in ray.nodes()
                                               if n.get("Alive") and n["NodeID"] != here)
    handles = []
    for i, nm in enumerate(names):
        # Pinned (hard: Ray's soft affinity was measured to ignore the node) where several.
        opts = candidate_options(nm, namespace(cluster),
                                 nodes[i % len(nodes)] if len(names) > 1 else None, detached)
        handles.append(FuxiMaster.options(**opts).remote(cluster, data_dir, detached, nuwa,
                                                         nuwa_group, auth, nm, names))
    if not detached and len(names) > 1:  # this driver owns them: a dropped handle ends one
        _CANDIDATE_HANDLES.update((nm, h) for nm, h in zip(names, handles))
    if zk is not None:  # FuxiMaster asks it for the entries and identities as it starts
        with log.step("Zhongkui ready", fine=True):
            actors.call(zk.mode, timeout_s=ACTOR_READY_TIMEOUT_S)
    master = handles[0] if len(names) == 1 else find_leader(
        namespace(cluster), names, handles[0], timeout_s=ACTOR_READY_TIMEOUT_S)
    with log.step("FuxiMaster answers", fine=True):
        actors.call(master.cluster_info, timeout_s=ACTOR_READY_TIMEOUT_S)
    if loops:
        with log.step("FuxiMaster loops", fine=True):
            actors.call(master.supervise, operator_proof(cluster), agents,
                        timeout_s=ACTOR_READY_TIMEOUT_S)
    return master


def _start_authority(cluster: str, data_dir: str | None, detached: bool,
                     nuwa: list | None, auth: bool):
    """Zhongkui's authority actor (keys, users, ACL entries, the audit trail), next to
    FuxiMaster: its state in the same store (Nuwa under `fuxi up`), FuxiMaster its registry
    (who owns what; told every change)."""
    import functools

    from kuafu.deploy import PROXY_PREFIX
    from zhongkui.actor import AUTHORITY_NAME, ZhongkuiAuthority

    # The actors holding the cluster's keys, by name prefix: a rotation hands them new ones.
    key_holders = ("nuwa-", "pangu-", PROXY_PREFIX, MASTER_NAME)
    opts = {"name": AUTHORITY_NAME, "namespace": namespace(cluster), "get_if_exists": True}
    if detached:
        opts["lifetime"] = "detached"
    zk = os.path.join(data_dir, "zhongkui") if data_dir else None
    return ZhongkuiAuthority.options(**opts).remote(
        functools.partial(authority_store, nuwa, data_dir),
        os.path.join(zk, "keys.json") if zk else None,
        os.path.join(zk, "audit.jsonl") if zk else None, auth, MASTER_NAME, key_holders)


def authority_store(nuwa: list | None, data_dir: str | None, token):
    """The authority's state store, where FuxiMaster keeps its own (it runs in the
    authority's process: zhongkui does not import the stores)."""
    from fuxi.io.store import open_store

    return open_store(nuwa, data_dir, "fuxi-zhongkui", token)


def operator_proof(cluster: str) -> str:
    """What the operator's commands (`fuxi up`, `fuxi down`) prove themselves with to the
    platform's control methods: a platform token signed with the cluster's keys when this
    machine holds them (the platform's OS user), else the signed-in user's token."""
    path = keys_path(cluster)
    if os.path.exists(path):
        from zhongkui.authority import load_or_create_keys
        from zhongkui.guard import Guard, auth_doc

        try:
            return Guard(auth_doc(True, load_or_create_keys(path)),
                         name="operator").platform_token()
        except (OSError, ValueError, KeyError):
            pass
    from zhongkui import creds

    return creds.token(cluster)


def up(cluster: str = "default", address: str | None = None, num_cpus: int | None = None,
       auth_token_path: str | None = None, nuwa_replicas: int = 3,
       auth: bool | None = None, web_port: int | None = None,
       web_host: str | None = None, alert_rules: str | None = None,
       config=None) -> ClusterRecord:
    """Start (or deploy onto) a persistent cluster and record it. ``auth``: Zhongkui enforces
    access control everywhere (default: on for a cluster we deploy onto, which may span
    machines; off for a local head, where the operator is the only user). ``web_port`` and
    ``web_host``: where FuxiWeb serves the web console (``/``) and ``/metrics`` (defaults in
    fuxi.shells.webactor, or ``FUXI_WEB_PORT``; port 0: a free one). ``config``: the
    effective configuration (``fuxi.io.clusterconfig.effective``): fixed ports, data dir,
    Pangu's layout; kept in the record and in Nuwa (/fuxi/config/cluster)."""
    from fuxi.io import clusterconfig as cfg_io

    cfg = config.config if config is not None else None
    from fuxi.shells.webactor import WEB_HOST_DEFAULT, WEB_PORT_DEFAULT

    if web_port is None:  # FUXI_WEB_PORT: the default for every `fuxi up` (tests: 0)
        env_port = os.environ.get("FUXI_WEB_PORT", "").strip()
        if env_port and not env_port.isdigit():
            raise BadInput(f"FUXI_WEB_PORT={env_port!r}: expected a port number from 0 to "
                           f"65535 (0: any free port)")
        web_port = int(env_port) if env_port else WEB_PORT_DEFAULT
    web_host = web_host or WEB_HOST_DEFAULT
    if isinstance(web_port, bool) or not isinstance(web_port, int) \
            or not 0 <= web_port <= 65535:
        raise BadInput(f"--web-port {web_port!r}: expected a port number from 0 to "
                       f"65535 (0: any free port)")
    rules_text = None
    if alert_rules is not None:  # checked before anything starts: one line per problem
        from fuxi.core.alerts import ALERT_RULES_BYTES_MAX, parse_rules

        try:
            with open(alert_rules, "rb") as f:
                rules_text = f.read(ALERT_RULES_BYTES_MAX + 1).decode("utf-8", "replace")
        except OSError as e:
            raise BadInput(f"--alert-rules {alert_rules}: cannot read it ({e.strerror})") from None
        parse_rules(rules_text, alert_rules)
    existing = find_cluster(cluster)
    if existing is not None:
        raise ClusterError(f"cluster {cluster!r} is already up at {existing.address}; "
                           f"`fuxi down --cluster {cluster}` first")
    data_dir = cluster_dir(cluster)
    from zhongkui.files import private_files

    private_files(fuxi_home(), data_dir)  # before the first write: 0600 files, 0700 dirs
    from fuxi.shells.alerting import RULES_FILE

    rules_path = os.path.join(data_dir, RULES_FILE)
    if rules_text is not None:
        write_private(rules_path, rules_text)  # FuxiMaster reads it when it starts
    elif os.path.exists(rules_path):
        os.remove(rules_path)  # an earlier `fuxi up`'s rules: this one asked for the defaults
    rec = ClusterRecord(cluster=cluster, address="", namespace=namespace(cluster),
                        data_dir=data_dir, started_at=time.time(),
                        auth=bool(address is not None if auth is None else auth))
    if rec.auth and not nuwa_replicas:
        raise BadInput("--auth needs Nuwa (users, ACL entries and the audit trail live there); "
                       "use --nuwa-replicas 1, 3 or 5")
    if address is None:
        token_path = os.path.join(data_dir, "auth_token")
        if not os.path.exists(token_path):
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        temp_dir = ray_temp_dir(cluster, "head")
        from zhongkui.files import private_dir

        private_dir(os.path.dirname(temp_dir))  # Ray opens its own dir to all: ours is closed
        port = (cfg.ray.port if cfg else 0) or _free_port()
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token_path,
                   RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_AUTH_TOKEN", None)
        cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
               f"--port={port}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
               "--disable-usage-stats"]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={num_cpus}")
        cmd += cfg_io.ray_start_args(cfg) if cfg else []
        with open(os.path.join(data_dir, "head.log"), "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        rec.address = f"127.0.0.1:{port}"
        rec.head_pid = proc.pid
        rec.token_path = token_path
        rec.temp_dir = temp_dir
        rec.boot_id = boot_id()
        rec.head_started = start_ticks(proc.pid)
        rec.save()  # at once: an interrupted `fuxi up` can still be undone by `fuxi down`
        deadline = time.time() + HEAD_START_TIMEOUT_S
        try:
            while not port_open(rec.address):
                if proc.poll() is not None or time.time() > deadline:
                    raise ClusterError(f"the Ray head did not start within "
                                       f"{HEAD_START_TIMEOUT_S:g}s (HEAD_START_TIMEOUT_S); "
                                       f"see {data_dir}/head.log")
                time.sleep(0.2)
        except BaseException:
            _stop_head(rec)
            rec.remove()
            raise
    else:
        rec.address = address
        rec.token_path = auth_token_path or os.environ.get("RAY_AUTH_TOKEN_PATH")
    rec.nuwa_replicas = nuwa_replicas
    rec.save()
    try:
        # The cluster's signing keys come first: every platform actor is made with them.
        from zhongkui.authority import load_or_create_keys
        from zhongkui.guard import auth_doc

        keys = load_or_create_keys(keys_path(cluster))
        auth_config = auth_doc(rec.auth, keys) if rec.auth else None
        _start_nuwa(rec, auth_config, cfg)  # then Nuwa: FuxiMaster keeps its state there
        if config is not None:  # before FuxiMaster starts: it reads the online settings
            from fuxi.core.clusterconfig import stored_doc

            cfg_io.publish(rec, stored_doc(config), token=operator_proof(cluster))
        _start_pangu(rec, auth_config, cfg)
        _start_kuafu(rec, auth_config, cfg)
        with connect(cluster, embedded_ok=False) as conn:
            creds = actors.call(conn.authority.bootstrap, operator_proof(cluster),
                                timeout_s=CLUSTER_CONNECT_TIMEOUT_S)
            if creds is not None:  # the first administrator: the operator's credentials
                write_private(os.path.join(data_dir, CREDENTIALS_FILE), json.dumps(creds))
                write_private(os.path.join(data_dir, TOKEN_FILE), creds["token"])
        _start_web(rec, web_host, web_port)
    except BaseException:
        with contextlib.suppress(Exception):
            down(cluster)
        rec.remove()
        raise
    return rec


def keys_path(cluster: str) -> str:
    """Zhongkui's signing keys (0600), readable only by the platform's OS user."""
    return os.path.join(cluster_dir(cluster), "zhongkui", "keys.json")


CREDENTIALS_FILE = "credentials.json"  # the first administrator's name, password and token
TOKEN_FILE = "token"  # the signed-in user's token (`fuxi login`), sent by the CLI


def write_private(path: str, text: str) -> None:
    """Write a file only its owner can read (0600), atomically."""
    from zhongkui.files import write_private as write

    write(path, text)


def _start_nuwa(rec: ClusterRecord, auth: dict | None = None, cfg=None) -> None:
    """Start the cluster's Nuwa group (replicas recover their state from an earlier `fuxi up`)."""
    import ray

    from nuwa.group import start_group
    from nuwa.replica import LOOPBACK, NODE_IP

    if not rec.nuwa_replicas:
        return
    set_auth_mode(rec.token_path)
    ray_init(address=rec.address, namespace=rec.namespace)
    try:
        # As for Kuafu: a local head binds loopback; a cluster we deployed onto, each node's
        # own address. start_group also creates the cluster's peer secret (0600).
        head = rec.address.rpartition(":")[0]
        host = LOOPBACK if head in ("", "127.0.0.1", "localhost") else NODE_IP
        group = start_group(rec.nuwa_replicas, (cfg and cfg.data_dir) or rec.data_dir,
                            rec.namespace, auth=auth, host=host, ports=cfg and cfg.nuwa.ports)
        rec.nuwa = [list(a) for a in group.client_addresses()]
        rec.nuwa_group = group.to_dict()
        rec.save()
    finally:
        ray.shutdown()


def pangu_layout(nodes: int) -> dict:
    """Chunkservers per node and placement for a cluster of ``nodes`` Ray nodes: one machine
    gets three chunkservers (so the default replication factor of 3 holds, on one disk);
    several machines get one each, and replicas go to distinct nodes."""
    if nodes <= 1:
        return {"per_node": 3, "settings": {"allow_same_node": True, "expect_servers": 3}}
    return {"per_node": 1, "settings": {"expect_servers": nodes}}


def _start_pangu(rec: ClusterRecord, auth: dict | None = None, cfg=None) -> None:
    """Start the cluster's Pangu: two masters sharing a Nuwa journal (one without Nuwa) and a
    chunkserver per node. Files kept by an earlier `fuxi up` are found again on disk."""
    import ray

    from pangu import deploy

    set_auth_mode(rec.token_path)
    ray_init(address=rec.address, namespace=rec.namespace)
    try:
        layout = pangu_layout(len(deploy.alive_nodes()))
        if cfg is not None:  # the configuration's masters, layout, capacity, replication
            from fuxi.io.clusterconfig import pangu_layout as configured

            layout = configured(cfg, layout)
        deploy.start(rec.cluster, (cfg and cfg.data_dir) or rec.data_dir,
                     masters=layout.get("masters", 2 if rec.nuwa else 1), nuwa=rec.nuwa,
                     per_node=layout["per_node"], settings=layout["settings"], detached=True,
                     auth=auth, capacity_bytes=layout.get("capacity_bytes"))
    finally:
        ray.shutdown()


def _start_kuafu(rec: ClusterRecord, auth: dict | None = None, cfg=None) -> None:
    """Start a Kuafu proxy on every node; they publish themselves and the services attached
    to them in the cluster's Nuwa, so `fuxi call nuwa://<cluster>/<service>` finds them."""
    import ray

    from kuafu import deploy

    set_auth_mode(rec.token_path)
    ray_init(address=rec.address, namespace=rec.namespace)
    try:
        head = rec.address.rpartition(":")[0]
        # A local head: loopback only. A cluster we deployed onto: each node's own address.
        host = "127.0.0.1" if head in ("", "127.0.0.1", "localhost") else deploy.NODE_IP
        infos = deploy.start(rec.namespace, rec.nuwa, host=host, detached=True, auth=auth,
                             port=cfg.kuafu.port if cfg else 0,
                             settings={deploy.HTTP_PORT_SETTING: cfg.kuafu.http_port if cfg
                                       else 0})
        here = ray.get_runtime_context().get_node_id()  # the driver runs on the head
        rec.http = next((i.get("http") for i in infos if i.get("node") == here),
                        infos[0].get("http") if infos else None)
        rec.save()
    finally:
        ray.shutdown()


def _start_web(rec: ClusterRecord, host: str, port: int) -> None:
    """Start FuxiWeb (the web console and the head's /metrics) next to FuxiMaster and record
    its URLs."""
    from fuxi.shells.webactor import start_web

    with connect(rec.cluster, embedded_ok=False) as conn:
        node = actors.call(conn.master.cluster_info,
                           timeout_s=CLUSTER_CONNECT_TIMEOUT_S).get("master_node_id")
        try:
            info = start_web(rec.cluster, rec.namespace, rec.data_dir, host, port, node,
                             ACTOR_READY_TIMEOUT_S, auth=rec.auth)
        except Exception as e:
            raise ClusterError(f"the web server did not start on {host}:{port} ({e}); is the "
                               f"port taken? pick another --web-port (0: any free one)") from None
    rec.metrics, rec.web = info["metrics"], info["web"]
    rec.save()


def ensure_pangu(conn: "Connection") -> None:
    """Make sure Pangu runs for this connection: the embedded default starts it on demand
    (its files live under the cluster's data directory and outlast the command)."""
    import ray

    from pangu import deploy
    from pangu.client import master_name

    try:
        ray.get_actor(master_name(1), namespace=namespace(conn.cluster))
        return
    except ValueError:
        pass
    if conn.data_dir is None:
        raise ClusterError("Pangu is not running in this Ray program; start it with "
                           "pangu.deploy.start(cluster, data_dir)")
    rec = None if conn.embedded else ClusterRecord.load(conn.cluster)
    nuwa = rec.nuwa if rec is not None else None
    layout = pangu_layout(len(deploy.alive_nodes()))
    auth = None
    if rec is not None and rec.auth:  # the cluster's keys: Pangu enforces access like the rest
        from zhongkui.authority import load_or_create_keys
        from zhongkui.guard import auth_doc

        auth = auth_doc(True, load_or_create_keys(keys_path(conn.cluster)))
    from fuxi.io.clusterconfig import store_dir

    deploy.start(conn.cluster, store_dir(rec) or conn.data_dir, masters=2 if nuwa else 1,
                 nuwa=nuwa, per_node=layout["per_node"], settings=layout["settings"],
                 detached=not conn.embedded, auth=auth)


def _stop_replicas(namespace: str) -> int:
    """Kill every service replica actor of the cluster (they are detached under `fuxi up`)."""
    import ray
    from ray.util import list_named_actors

    from fuxi.shells.replica import REPLICA_PREFIX

    n = 0
    for a in list_named_actors(all_namespaces=True):
        if a.get("namespace") == namespace and a["name"].startswith(REPLICA_PREFIX):
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(a["name"], namespace=namespace), no_restart=True)
                n += 1
    return n


def _stop_nuwa(rec: ClusterRecord) -> None:
    import ray

    for rid in range(1, (rec.nuwa_replicas or 0) + 1):
        try:
            ray.kill(ray.get_actor(f"nuwa-{rid}", namespace=rec.namespace), no_restart=True)
        except (ValueError, Exception):
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_head(rec: ClusterRecord) -> None:
    """Stop the head we started and everything in its session: SIGTERM first, SIGKILL for what
    is left after HEAD_STOP_TIMEOUT_S. Never touches processes outside that session."""
    sid = rec.head_pid
    if not sid or not head_is_ours(rec):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + (HEAD_STOP_TIMEOUT_S if sig == signal.SIGTERM else 10.0)
        while session_pids(sid) and time.time() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(sid, os.WNOHANG)  # reap it if `fuxi up` (we) started it
            time.sleep(0.1)
        if not session_pids(sid):
            break
    if rec.temp_dir and os.path.isdir(rec.temp_dir):
        shutil.rmtree(rec.temp_dir, ignore_errors=True)


def down(cluster: str = "default") -> dict:
    rec = ClusterRecord.load(cluster)
    if rec is None:
        raise NoCluster(f"no cluster {cluster!r} is recorded under {cluster_dir(cluster)}")
    stopped_jobs = 0
    if rec.head_pid is not None and not head_is_ours(rec):
        rec.remove()  # the head is long gone (reboot, PID reused): nothing of ours to stop
        return {"cluster": cluster, "stopped_jobs": 0, "stopped_head": False}
    if port_open(rec.address):
        with contextlib.suppress(Exception):
            with connect(cluster, embedded_ok=False) as conn:
                import ray

                proof = operator_proof(cluster)
                stopped_jobs = actors.call(conn.master.shutdown_jobs, proof,
                                           timeout_s=CLUSTER_CONNECT_TIMEOUT_S)
                for nm in reversed(master_candidates(rec.nuwa)):  # standbys first: no take-over
                    with contextlib.suppress(Exception):
                        ray.kill(ray.get_actor(nm, namespace=rec.namespace), no_restart=True)
                ray.kill(conn.master, no_restart=True)
                with contextlib.suppress(Exception):
                    ray.kill(conn.authority, no_restart=True)
                with contextlib.suppress(Exception):
                    from pangu import deploy

                    deploy.stop(cluster, token=proof)
                with contextlib.suppress(Exception):
                    _stop_replicas(rec.namespace)  # detached: they would outlive FuxiMaster
                with contextlib.suppress(Exception):
                    from fuxi.shells.agents import stop_agents

                    stop_agents(rec.namespace)  # detached too
                with contextlib.suppress(Exception):
                    from fuxi.shells.webactor import stop_web

                    stop_web(rec.namespace, rec.data_dir)
                with contextlib.suppress(Exception):
                    from kuafu import deploy as kuafu_deploy

                    kuafu_deploy.stop(rec.namespace, token=proof)  # withdraws from Nuwa first
                _stop_nuwa(rec)
    _stop_head(rec)
    from fuxi.shells.webactor import file_sd_path

    with contextlib.suppress(OSError):
        os.remove(file_sd_path(rec.data_dir))  # FuxiWeb is gone with the head
    rec.remove()
    return {"cluster": cluster, "stopped_jobs": stopped_jobs, "stopped_head": bool(rec.head_pid)}


class Connection:
    """A live connection to a cluster's FuxiMaster (``embedded`` when we started Ray here)."""

    def __init__(self, cluster: str, master, address: str, embedded: bool, data_dir: str | None):
        self.cluster = cluster
        self.master = master
        self.address = address
        self.embedded = embedded
        self.data_dir = data_dir

    @property
    def authority(self):
        """Zhongkui's authority actor (identities, ACL entries, keys, the audit trail)."""
        import ray

        from zhongkui.actor import AUTHORITY_NAME

        return ray.get_actor(AUTHORITY_NAME, namespace=namespace(self.cluster))


@contextlib.contextmanager
def connect(cluster: str = "default", embedded_ok: bool = True,
            num_cpus: int | None = None, progress=None) -> Iterator[Connection]:
    """Connect to the running cluster, or (``embedded_ok``) start the embedded default.
    ``progress``: called with one short line per start-up step (fuxi.startlog)."""
    log = StartLog(progress)
    with log.step("import ray", fine=True):
        import ray

    if ray.is_initialized():
        # Already inside a Ray program (tests, a user's driver): use it as it is.
        ctx = ray.get_runtime_context()
        yield Connection(cluster, _start_master(cluster, None, detached=False),
                         ctx.gcs_address, embedded=False, data_dir=None)
        return
    rec = find_cluster(cluster)
    if rec is None:
        if not embedded_ok:
            raise NoCluster(f"no running cluster {cluster!r}; start one with `fuxi up`")
        # Each embedded run gets its own temp dir (two `fuxi submit` at once must not share a
        # session) and a throwaway token, so its head is not open to anyone on the network.
        temp_dir = ray_temp_dir(cluster, f"embedded-{os.getpid()}")
        from zhongkui.files import private_files

        private_files(fuxi_home(), os.path.dirname(temp_dir), temp_dir)  # 0600 files, 0700 dirs
        token_path = os.path.join(temp_dir, "auth_token")
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        set_auth_mode(token_path)
        log.say("starting an embedded Ray (no cluster recorded)…")
        with log.step("Ray started"):
            # Lean: no autoscaler monitor (one node has nothing to scale, and it held up
            # ray.shutdown by 1 s), no dashboard API server, no log monitor (base.actors).
            ray_init(address="local", namespace=namespace(cluster), include_dashboard=False,
                     _temp_dir=temp_dir, num_cpus=num_cpus, lean=True)
        try:
            stop_autoscaler_monitor()  # a Ray where the hook above did not take
            # Warm processes for the job's WorkerActors, booting while FuxiMaster starts
            # (FuxiMaster and the JobMaster take the raylet's own ready ones): base.prestart.
            warm = warm_worker_count(num_cpus if num_cpus is not None else os.cpu_count())
            why_not = prestart_workers(warm)
            log.say(f"warm workers: {warm} asked" if why_not is None
                    else f"warm workers: none ({why_not})", fine=True)
            # No FuxiAgent: one node, this machine, for one command's lifetime. No Zhongkui
            # authority: access control is off, so no guard would ever ask it anything.
            with log.step("FuxiMaster ready"):
                master = _start_master(cluster, cluster_dir(cluster), detached=False,
                                       agents=False, log=log, authority=False, loops=False)
            # Its loops (events, alerting, services) start while the command goes on: nothing
            # a command does waits for them. Their answer is checked when the command is done.
            started = master.supervise.remote(operator_proof(cluster), False)
            yield Connection(cluster, master, "embedded", embedded=True,
                             data_dir=cluster_dir(cluster))
            with log.step("FuxiMaster loops", fine=True):
                try:
                    ray.get(started, timeout=ACTOR_READY_TIMEOUT_S)
                except Exception as e:  # noqa: BLE001 - leaves as one of ours
                    raise actors.translate(e, "FuxiMaster.supervise",
                                           ACTOR_READY_TIMEOUT_S) from None
        finally:
            with log.step("Ray stopped", fine=True):
                ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
        return
    set_auth_mode(rec.token_path)
    try:
        ray_init(address=rec.address, namespace=rec.namespace)
    except Exception as e:
        raise ClusterError(f"cannot connect to cluster {cluster!r} at {rec.address}: {e}") from e
    try:
        try:
            from zhongkui.actor import AUTHORITY_NAME

            ray.get_actor(AUTHORITY_NAME, namespace=rec.namespace)
            master = ray.get_actor(MASTER_NAME, namespace=rec.namespace)
            if rec.nuwa:  # hot standby: the one that leads (fuxi.shells.leadership)
                from fuxi.shells.leadership import find_leader

                master = find_leader(rec.namespace, master_candidates(rec.nuwa), master,
                                     timeout_s=CLUSTER_CONNECT_TIMEOUT_S)
        except ValueError:
            master = _start_master(cluster, rec.data_dir, detached=True, nuwa=rec.nuwa,
                                   nuwa_group=rec.nuwa_group, auth=rec.auth)
        yield Connection(cluster, master, rec.address, embedded=False, data_dir=rec.data_dir)
    finally:
        ray.shutdown()
