"""The platform's one boundary to Ray's calls: a method call on an actor, blocking or awaited,
with a deadline, and the one translation of Ray's exceptions into ours (``base.errors``).

    from base import actors
    status = actors.call(master.status, job_id, timeout_s=30)          # a client, blocking
    status = await actors.acall(master.status, job_id, timeout_s=30)   # inside an actor

What comes back:

* an error the actor raised on purpose (a ``PlatformError``) comes back as itself;
* no answer within ``timeout_s``: ``OutcomeUnknown`` (the call may have run);
* the actor is gone, or the cluster: ``Unavailable`` (it did not run, or ran and died);
* anything else Ray raises: ``Failed`` with Ray's type and message.

An actor's event loop must never block: inside an actor use ``acall`` (it awaits the
ObjectRef), never ``call``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable

from base.errors import Failed, OutcomeUnknown, PlatformError, Unavailable

CALL_TIMEOUT_S_MAX = 3600.0  # no platform call waits longer than an hour for one answer


def _check_timeout(timeout_s: float) -> float:
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= CALL_TIMEOUT_S_MAX):
        raise ValueError(f"timeout_s={timeout_s!r}: expected a number of seconds in "
                         f"(0, {CALL_TIMEOUT_S_MAX:g}] (CALL_TIMEOUT_S_MAX)")
    return float(timeout_s)


def _name(method: Any) -> str:
    return getattr(method, "_method_name", None) or getattr(method, "__name__", None) or "call"


def translate(e: BaseException, what: str, timeout_s: float | None = None) -> BaseException:
    """Ray's exception ``e`` from calling ``what``, as one of ours (or ``e`` if it is ours)."""
    import ray.exceptions as rex

    cause = getattr(e, "cause", None)
    if isinstance(cause, PlatformError):
        return cause
    if isinstance(e, PlatformError):
        return e
    if isinstance(e, (rex.GetTimeoutError, asyncio.TimeoutError, TimeoutError)):
        within = f" within {timeout_s:g} s" if timeout_s is not None else ""
        return OutcomeUnknown(f"{what}: no answer{within}; it may or may not have taken effect")
    if isinstance(e, (rex.RayActorError, rex.RaySystemError)):
        return Unavailable(f"{what}: the actor is gone or unreachable ({type(e).__name__})")
    if isinstance(e, rex.RayError):
        return Failed(f"{what}: {type(e).__name__}: {e}")
    return e


def call(method: Callable, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
    """Call an actor method and wait (at most ``timeout_s``) for its result. Blocking: for
    clients and drivers only, never inside an actor's event loop."""
    import ray

    t = _check_timeout(timeout_s)
    try:
        return ray.get(method.remote(*args, **kwargs), timeout=t)
    except Exception as e:  # noqa: BLE001 - every failure leaves as one of ours
        raise translate(e, _name(method), t) from None


def call_each(methods: list, *args: Any, timeout_s: float, **kwargs: Any) -> list:
    """Call each of ``methods`` (the same method of several actors, say) with the same
    arguments, all at once, and wait at most ``timeout_s`` for every answer. Blocking."""
    import ray

    t = _check_timeout(timeout_s)
    what = _name(methods[0]) if methods else "call"
    try:
        return ray.get([m.remote(*args, **kwargs) for m in methods], timeout=t)
    except Exception as e:  # noqa: BLE001 - every failure leaves as one of ours
        raise translate(e, what, t) from None


async def acall(method: Callable, *args: Any, timeout_s: float, **kwargs: Any) -> Any:
    """Call an actor method from inside an actor (or any asyncio code) without blocking the
    event loop: the ObjectRef is awaited, at most ``timeout_s``."""
    t = _check_timeout(timeout_s)
    try:
        return await asyncio.wait_for(method.remote(*args, **kwargs), t)
    except Exception as e:  # noqa: BLE001 - every failure leaves as one of ours
        raise translate(e, _name(method), t) from None


def reload_ray_auth_config() -> None:
    """Make an already imported Ray re-read its auth mode and token from the environment.

    Ray has no public API for this, so this is the one place the platform reaches Ray's private
    names (``tests/layout`` allows them in this module only); a Ray upgrade is checked here."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def available_resources_per_node() -> dict[str, dict[str, float]]:
    """Free resources per alive node, by node id, as Ray's scheduler sees them now. Blocking
    (a GCS call): run it off an actor's event loop.

    Ray has no public API for this without ``ray[default]`` (``ray.util.state`` needs the
    dashboard; ``ray.available_resources()`` sums over nodes and drops keys at zero), so the
    private module is reached here, the one place that knows Ray's internals."""
    from ray._private.state import available_resources_per_node as per_node

    return per_node()


def actor_table(actor_id: str | None = None, state: str | None = None) -> dict:
    """Ray's actor table (GCS): one actor by hex id (``{}`` if unknown), or every actor in
    ``state`` ("ALIVE", "DEAD", ...): id -> {"ActorClassName", "Address": {"NodeID"}, "Pid",
    "State", "DeathCause" (a protobuf ``ActorDeathCause``), "EndTime" (ms)}. Blocking (a GCS
    call). Private in Ray (``ray.util.state`` needs the dashboard): reached here only."""
    from ray._private.state import state as gcs

    if actor_id is not None:
        return gcs.actor_table(actor_id)
    return gcs.actor_table(None, actor_state_name=state)


def temp_dir() -> str | None:
    """This Ray node's temp directory (its sessions, logs and spilled objects), or None
    outside a Ray worker. Private in Ray: reached here only."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_temp_dir_path() if node is not None else None


def named_actor(name: str, namespace: str):
    """The handle of the live actor ``name`` in ``namespace``, or None if there is none.
    Blocking (a GCS call)."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def actor_id(handle: Any) -> str:
    """An actor handle's Ray actor id, in hex (to find it in ``actor_table``). Private in Ray:
    reached here only."""
    return handle._actor_id.hex()


def kill(handle: Any, restart: bool) -> None:
    """Kill an actor's process now (its calls in flight fail). ``restart``: Ray starts it
    again if it has restarts left (``max_restarts``); else it stays dead."""
    import ray

    try:
        ray.kill(handle, no_restart=not restart)
    except Exception as e:  # noqa: BLE001 - every failure leaves as one of ours
        raise translate(e, "kill") from None


def nodes() -> list[dict]:
    """Ray's node table (alive and dead nodes): NodeID, Alive, NodeManagerAddress,
    Resources, ... Blocking (a GCS call)."""
    import ray

    return ray.nodes()


def this_node_id() -> str:
    """The Ray node this process (driver or actor) is attached to."""
    import ray

    return ray.get_runtime_context().get_node_id()


def driver_messages_to_stderr() -> None:
    """Ray prints the messages its raylets publish to every driver ("N worker processes have
    been started…") on the driver's stdout, where they corrupt a command's ``--json`` output:
    send them to stderr instead. Private in Ray (its only printer of those messages); a Ray
    without it keeps its own behaviour."""
    import ray._private.worker as w

    orig = getattr(w, "print_to_stdstream", None)
    if orig is None or getattr(orig, "fuxi_to_stderr", False):
        return

    def to_stderr(data, *args, **kwargs):
        return orig(dict(data, is_err=True), *args, **kwargs)

    to_stderr.fuxi_to_stderr = True
    w.print_to_stdstream = to_stderr


def upload_code(runtime_env: dict) -> dict:
    """``runtime_env`` with its local ``working_dir`` and ``py_modules`` packaged and uploaded
    to the GCS once, each replaced by its ``gcs://_ray_pkg_<hash>.zip`` URI (a URI already
    there is not uploaded again: the name is the content's hash). Ray does this itself only
    for ``ray.init(runtime_env=...)``; an actor's ``.options(runtime_env=...)`` must be given
    URIs, because the process creating the actor (a JobMaster on the head) may not have the
    submitter's files. Private in Ray (its packaging module); needs a connected driver."""
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
    from ray._private.runtime_env.working_dir import upload_working_dir_if_needed

    import shutil
    import tempfile

    env = dict(runtime_env)
    scratch = tempfile.mkdtemp(prefix="fuxi-pkg-")  # the zip is made here, not in the cwd
    try:
        env = upload_working_dir_if_needed(env, include_gitignore=True, scratch_dir=scratch)
        env = upload_py_modules_if_needed(env, include_gitignore=True, scratch_dir=scratch)
    except Exception as e:  # noqa: BLE001 - one of ours, naming Ray's complaint
        raise Failed(f"packaging the job's code: {type(e).__name__}: {str(e)[:300]}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return env


def raylet_prestart(n: int, keep_alive_s: int, timeout_s: float) -> None:
    """Ask this node's raylet (its ``PrestartWorkers`` call; Ray has no public API for it) to
    start ``n`` idle Python workers for the current driver's job, in the default runtime
    environment, kept at most ``keep_alive_s`` if nobody takes them. Raises on any failure
    (a Ray without the call, a refusal): callers treat it as best effort (base.prestart)."""
    import grpc
    import ray
    from ray._private.authentication.grpc_authentication_client_interceptor import \
        SyncAuthenticationMetadataClientInterceptor
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    if not ray.is_initialized():  # get_runtime_context() would start a Ray of its own
        raise RuntimeError("Ray is not initialized in this process")
    node = ray._private.worker.global_worker.node
    job_id = bytes.fromhex(ray.get_runtime_context().get_job_id())
    channel = grpc.insecure_channel(f"{node.node_ip_address}:{node.node_manager_port}")
    try:  # the interceptor adds the session's auth token, as Ray's own clients do
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(
            grpc.intercept_channel(channel, SyncAuthenticationMetadataClientInterceptor()))
        stub.PrestartWorkers(node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.PYTHON, job_id=job_id, keep_alive_duration_secs=keep_alive_s,
            num_workers=n), timeout=_check_timeout(timeout_s))
    finally:
        channel.close()


# What a private one-node Ray started for one command does without (Node methods, each
# started by ``ray.init(address="local")``): the autoscaler monitor (nothing to scale; it
# ignores SIGTERM, so ``ray.shutdown`` waited a second for it), the dashboard's API server
# (even with ``include_dashboard=False`` it starts the non-UI modules: the state and job
# APIs, which nothing of ours calls) and the log monitor (it streams worker output to
# drivers, and ours set ``log_to_driver=False``; the logs stay in files).
LEAN_SKIPPED = ("start_monitor", "start_api_server", "start_log_monitor")


@contextlib.contextmanager
def lean_local_head():
    """While ``ray.init`` starts a local head: its node skips the processes in LEAN_SKIPPED
    (Ray's ``RayParams`` has ``no_monitor`` and ``include_log_monitor``, but ``ray.init``
    passes neither). A Ray without one of these methods: that one starts as usual
    (``base.cluster.stop_autoscaler_monitor`` is the fallback for the monitor)."""
    try:
        from ray._private.node import Node
    except ImportError:
        yield
        return
    saved = {name: Node.__dict__[name] for name in LEAN_SKIPPED if name in Node.__dict__}
    for name in saved:
        setattr(Node, name, lambda self, *args, **kwargs: None)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(Node, name, method)
