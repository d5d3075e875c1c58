"""Cluster records and discovery: where a cluster's files live, the record `fuxi up` writes,
finding a running cluster, and making this process speak its Ray (address, auth token). Every
package finds its cluster here, so none has to import the scheduler to do it.

    <FUXI_HOME>/<cluster>/cluster.json    the record (``ClusterRecord``)
    /tmp/fuxi-<uid>/<digest>-<kind>       Ray's temp dirs (short: Unix socket paths)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass

from base.errors import BadInput, ClusterError

MASTER_NAME = "FuxiMaster"  # the scheduler's named actor, in the cluster's namespace


def fuxi_home() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("FUXI_HOME", "~/.fuxi")))


def cluster_dir(cluster: str) -> str:
    if not cluster.replace("-", "").replace("_", "").isalnum():
        raise BadInput(f"cluster name {cluster!r} is not valid; expected letters, digits, - and _")
    return os.path.join(fuxi_home(), cluster)


def namespace(cluster: str) -> str:
    return f"fuxi-{cluster}"


def ray_temp_dir(cluster: str, kind: str) -> str:
    """A short, private temp dir for Ray (Unix socket paths must stay under ~107 bytes). Ray
    makes its temp dir world-writable (0777), so it lives in ``/tmp/fuxi-<uid>/``, a directory
    only we may enter (``zhongkui.files.private_dir``, made before Ray starts)."""
    digest = hashlib.sha1(cluster_dir(cluster).encode()).hexdigest()[:10]
    return f"/tmp/fuxi-{os.getuid()}/{digest}-{kind}"


@dataclass
class ClusterRecord:
    cluster: str
    address: str
    namespace: str
    data_dir: str
    started_at: float
    head_pid: int | None = None  # set when `fuxi up` started the Ray head itself
    token_path: str | None = None
    temp_dir: str | None = None
    boot_id: str | None = None  # with head_started, proves head_pid is still our head
    nuwa: list | None = None  # [host, port] of each Nuwa replica
    nuwa_group: dict | None = None  # nuwa.group.Group.to_dict(), for FuxiMaster's supervision
    nuwa_replicas: int = 0
    head_started: int | None = None  # the head's start time in clock ticks since boot
    auth: bool = False  # Zhongkui enforces access control (`fuxi up --auth`)
    metrics: str | None = None  # the head's /metrics URL (FuxiWeb), None when not serving
    web: str | None = None  # the web console's URL (FuxiWeb's root)
    http: str | None = None  # the head node's HTTP front door (Kuafu), None when not serving
    config: dict | None = None  # `fuxi up`'s configuration layers (fuxi.core.clusterconfig)

    @classmethod
    def load(cls, cluster: str) -> "ClusterRecord | None":
        path = os.path.join(cluster_dir(cluster), "cluster.json")
        try:
            with open(path) as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise ClusterError(f"cluster record {path} is unreadable ({e}); delete it and run "
                               f"`fuxi up` again") from e

    def save(self) -> None:
        d = cluster_dir(self.cluster)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, "cluster.json.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2)
        os.replace(tmp, os.path.join(d, "cluster.json"))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(cluster_dir(self.cluster), "cluster.json"))


def port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def head_is_ours(rec: ClusterRecord) -> bool:
    """True only if ``rec.head_pid`` is still the very process `fuxi up` started: same boot,
    same start time. After a reboot or PID reuse it is someone else's, and must not be touched."""
    if not rec.head_pid or rec.boot_id is None or rec.head_started is None:
        return False
    return boot_id() == rec.boot_id and start_ticks(rec.head_pid) == rec.head_started


def find_cluster(cluster: str) -> ClusterRecord | None:
    """The running cluster's record, or None when no cluster is recorded. A record of a head we
    started that is gone is removed. A recorded external cluster that cannot be reached is an
    error: silently running on the embedded default instead would surprise its user."""
    rec = ClusterRecord.load(cluster)
    if rec is None:
        return None
    if rec.head_pid is not None:
        if not head_is_ours(rec) or not session_pids(rec.head_pid):
            rec.remove()
            return None
        return rec if port_open(rec.address) else None
    if not port_open(rec.address):
        raise ClusterError(f"cluster {cluster!r} is recorded at {rec.address} but cannot be "
                           f"reached; start it again, or forget it with `fuxi down -c {cluster}`")
    return rec


CLUSTER_RECORDS_SCANNED_MAX = 1000  # directories under $FUXI_HOME read to match $RAY_ADDRESS


def cluster_for(name: str | None = None) -> str:
    """The cluster a command means when it names none: ``name``, else ``$FUXI_CLUSTER``, else
    the recorded cluster whose Ray address is ``$RAY_ADDRESS`` (a ``ray://`` prefix ignored),
    else "default". The name is checked (``cluster_dir`` raises ``BadInput``)."""
    name = name or os.environ.get("FUXI_CLUSTER") or _cluster_at(os.environ.get("RAY_ADDRESS"))
    name = name or "default"
    cluster_dir(name)
    return name


def _cluster_at(address: str | None) -> str | None:
    if not address:
        return None
    address = address.removeprefix("ray://")
    try:
        names = sorted(os.listdir(fuxi_home()))
    except OSError:
        return None
    for name in names[:CLUSTER_RECORDS_SCANNED_MAX]:
        try:
            with open(os.path.join(fuxi_home(), name, "cluster.json")) as f:
                if json.load(f).get("address") == address:
                    return name
        except (OSError, ValueError, AttributeError):
            continue
    return None


def set_auth_mode(token_path: str | None) -> None:
    """Make this process speak the cluster's auth: a token file of our own, or none (an external
    cluster without auth). Ray reads the mode when it is imported, so refresh its cached config."""
    if token_path:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = token_path
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray" in sys.modules:
        from base.actors import reload_ray_auth_config

        reload_ray_auth_config()


def quiet_ray_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def ray_init(lean: bool = False, **kwargs) -> None:
    """``ray.init`` quietly. ``lean`` (a private one-node Ray started here, for one command):
    without the helper processes it does not need (``base.actors.LEAN_SKIPPED``: the
    autoscaler monitor, the dashboard's API server, the log monitor), each a Python process
    starting on the cores Ray itself is starting on."""
    import ray

    from base.actors import driver_messages_to_stderr, lean_local_head

    quiet_ray_env()
    driver_messages_to_stderr()  # a raylet's warnings must not land in a command's stdout
    with contextlib.ExitStack() as stack:
        if lean:
            stack.enter_context(lean_local_head())
        ray.init(log_to_driver=False, logging_level="ERROR", configure_logging=True, **kwargs)


def cmdline(pid: int | str) -> str | None:
    """A process's command line, arguments joined by spaces (None if it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def proc_stats():
    """(pid, fields) of every process's ``/proc/<pid>/stat`` after its name (``fields[0]``
    the state, ``[1]`` the parent, ``[3]`` the session, ``[11]``/``[12]`` user/system ticks);
    a process that ended meanwhile is skipped (Linux)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(name), stat[stat.rindex(")") + 2:].split()


def session_pids(sid: int) -> list[int]:
    """Live processes in session ``sid`` (Linux /proc). The head runs in a session of its own
    (``start_new_session``), and every Ray process it spawns stays in it — worker processes
    get their own process group, so a process-group kill would miss them."""
    return [pid for pid, fields in proc_stats() if fields[0] != "Z" and int(fields[3]) == sid]


RAY_MONITOR_SCRIPT = "/ray/autoscaler/_private/monitor.py"  # how Ray starts its autoscaler


def stop_autoscaler_monitor() -> int:
    """SIGKILL the autoscaler monitor that ``ray.init(address="local")`` started as a child of
    this process (Linux /proc); returns how many were stopped. A private single-node Ray that
    lives for one command scales nothing, and the monitor ignores SIGTERM: ``ray.shutdown``
    waits a full second for it before killing it. Ray reaps it at shutdown."""
    import signal

    me, n = os.getpid(), 0
    for pid, fields in proc_stats():
        if fields[0] == "Z" or int(fields[1]) != me:
            continue
        cmd = cmdline(pid)
        if cmd is not None and RAY_MONITOR_SCRIPT in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                n += 1
    return n
