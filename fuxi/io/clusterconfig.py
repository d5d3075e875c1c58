"""Reading the cluster configuration's layers: the file (``fuxi up --config cluster.yaml``),
the ``FUXI_*`` environment (through pydantic-settings: ``FUXI_<SECTION>__<KEY>``, e.g.
``FUXI_NUWA__REPLICAS=1``; lists as JSON, ``FUXI_NUWA__PORTS='[7001,7002,7003]'``) and the
flags. The model, the merge and the errors are ``fuxi.core.clusterconfig``'s.

Environment names: a top-level key is ``FUXI_<KEY>`` (``FUXI_CLUSTER``, ``FUXI_DATA_DIR``,
``FUXI_AUTH``); a section's key is ``FUXI_<SECTION>__<KEY>``. An unknown name of the second
form is refused (a typo must not be silently ignored); ``FUXI_HOME``, ``FUXI_METRICS``,
``FUXI_FAULTS``, ``FUXI_TOKEN`` and ``FUXI_ARTIFACTS`` are not configuration keys, and
``FUXI_WEB_PORT`` is still read as ``web.port`` (below ``FUXI_WEB__PORT``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fuxi.core import clusterconfig as cc
from fuxi.core.specparse import parse_text
from fuxi.core.clusterconfig import ConfigError
from fuxi.errors import BadInput, SpecError

def read_file(path: str) -> dict:
    """The file layer: a YAML (or .json) mapping, duplicate keys refused."""
    try:
        with open(path, "rb") as f:
            raw = f.read(cc.CONFIG_BYTES_MAX + 1)
    except OSError as e:
        raise BadInput(f"--config {path}: cannot read it ({e.strerror})") from None
    if len(raw) > cc.CONFIG_BYTES_MAX:
        raise BadInput(f"--config {path}: larger than CONFIG_BYTES_MAX={cc.CONFIG_BYTES_MAX} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"--config {path}: not UTF-8 text (byte {e.start})") from None
    try:
        doc = parse_text(text, ".json" if path.endswith(".json") else ".yaml", path)
    except SpecError as e:
        raise ConfigError(e.problems, source=path) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"], source=path) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}: got {type(doc).__name__}, expected a mapping of keys "
                         f"(e.g. `nuwa: {{replicas: 3}}`)"], source=path)
    return doc


def _settings_class():
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class EnvView(BaseSettings):  # the model's fields, read from FUXI_* (values validated later)
        model_config = SettingsConfigDict(env_prefix="FUXI_", env_nested_delimiter="__",
                                          case_sensitive=False, extra="ignore")
        __annotations__ = {name: f.annotation if name in cc.SECTIONS else Any
                           for name, f in cc.ClusterConfig.model_fields.items()}

    for name in cc.ClusterConfig.model_fields:
        setattr(EnvView, name, None)
    return EnvView


def read_env(environ: Mapping[str, str] | None = None) -> dict:
    """The env layer (nested dict); unknown ``FUXI_<SECTION>__<KEY>`` names refused."""
    from pydantic_settings import EnvSettingsSource

    environ = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    ours: dict[str, str] = {}
    for name, value in environ.items():
        up = name.upper()
        if not up.startswith("FUXI_") or up in cc.RESERVED_ENV or up in cc.LEGACY_ENV:
            continue
        key = ".".join(up[5:].lower().split("__"))
        if "__" in up[5:] and key not in cc.KEYS:
            problems.append(cc.unknown_key(key, f"env {name}"))
            continue
        if key in cc.KEYS or key in cc.ClusterConfig.model_fields:
            if len(value) > cc.CONFIG_VALUE_CHARS_MAX:
                problems.append(f"env {name}: {len(value)} characters; expected at most "
                                f"CONFIG_VALUE_CHARS_MAX={cc.CONFIG_VALUE_CHARS_MAX}")
                continue
            ours[name] = value
    if problems:
        raise ConfigError(problems)
    doc: dict = {}
    for legacy, key in cc.LEGACY_ENV.items():
        if environ.get(legacy, "").strip():
            cc.set_dotted(doc, key, environ[legacy].strip())
    source = EnvSettingsSource(_settings_class(), case_sensitive=False, env_prefix="FUXI_",
                               env_nested_delimiter="__")
    source.env_vars = {k.lower(): v for k, v in ours.items()}  # only the vetted names
    try:
        got = source()
    except Exception as e:  # noqa: BLE001 - pydantic-settings' SettingsError: a bad JSON value
        raise ConfigError([f"env: {str(e)[:300]}; expected JSON for a list or mapping "
                         f"(e.g. FUXI_NUWA__PORTS='[7001,7002,7003]')"]) from None
    for k, v in got.items():
        if v is None:
            continue
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k].update(v)
        else:
            doc[k] = v
    return doc


def effective(config_path: str | None = None, flags: Mapping[str, Any] | None = None,
              environ: Mapping[str, str] | None = None) -> cc.Effective:
    """The configuration `fuxi up` runs with: flag > env > file > default."""
    problems: list[str] = []
    layers: dict[str, dict] = {}
    for src, read in (("file", lambda: read_file(config_path) if config_path else None),
                      ("env", lambda: read_env(environ))):
        try:
            got = read()
        except SpecError as e:
            problems += e.problems
            continue
        if got is not None:
            layers[src] = got
    if problems:
        raise ConfigError(problems, source=config_path)
    flag_doc: dict = {}
    for key, value in (flags or {}).items():
        if value is not None:
            cc.set_dotted(flag_doc, key, value)
    layers["flag"] = flag_doc
    try:
        return cc.layer(layers)
    except SpecError as e:
        raise ConfigError(e.problems, source=config_path) from None


# ---- applying it: ports, Ray's flags, Pangu's layout ----

PORT_NAMES = {"ray.port": "the Ray head (GCS)", "ray.node_manager_port": "Ray's raylet",
              "ray.object_manager_port": "Ray's object manager",
              "ray.metrics_export_port": "Ray's metrics exporter",
              "ray.runtime_env_agent_port": "Ray's runtime-env agent",
              "ray.dashboard_agent_grpc_port": "Ray's dashboard agent (gRPC)",
              "ray.dashboard_agent_listen_port": "Ray's dashboard agent (HTTP)",
              "ray.client_server_port": "the Ray Client server",
              "web.port": "FuxiWeb (console and /metrics)", "kuafu.port": "the Kuafu proxy",
              "kuafu.http_port": "the Kuafu HTTP front door"}
RAY_FLAGS = {"port": "--port", "node_manager_port": "--node-manager-port",
             "object_manager_port": "--object-manager-port",
             "metrics_export_port": "--metrics-export-port",
             "runtime_env_agent_port": "--runtime-env-agent-port",
             "dashboard_agent_grpc_port": "--dashboard-agent-grpc-port",
             "dashboard_agent_listen_port": "--dashboard-agent-listen-port",
             "client_server_port": "--ray-client-server-port",
             "min_worker_port": "--min-worker-port", "max_worker_port": "--max-worker-port"}


def component_of(key: str) -> str:
    if key.startswith("nuwa.ports["):
        return f"Nuwa replica {int(key[len('nuwa.ports['):-1]) + 1}"
    return PORT_NAMES.get(key, key)


def check_ports_free(cfg: cc.ClusterConfig, host: str = "127.0.0.1",
                     host_of: Mapping[str, str] | None = None) -> None:
    """Every fixed port the configuration asks for can be bound on ``host`` (``host_of``:
    another for some keys) now; else one BadInput naming each taken port and its component
    (before anything starts)."""
    import socket

    taken = []
    for key, port in cc.fixed_ports(cfg):
        at = (host_of or {}).get(key, host)
        with socket.socket() as s:
            try:
                s.bind((at, port))
            except OSError as e:
                taken.append(f"{key}={port} ({component_of(key)}): port {port} on {at} is "
                             f"taken ({e.strerror}); pick another or free it")
    if taken:
        raise BadInput("fixed ports not free:\n" + "\n".join(f"  - {t}" for t in taken))


def ray_start_args(cfg: cc.ClusterConfig) -> list[str]:
    """`ray start --head` flags for the fixed Ray ports (--port is runtime's own)."""
    return [f"{flag}={getattr(cfg.ray, name)}" for name, flag in RAY_FLAGS.items()
            if name != "port" and getattr(cfg.ray, name)]


def pangu_layout(cfg: cc.ClusterConfig, layout: dict) -> dict:
    """runtime.pangu_layout's choice with the configuration's Pangu settings applied:
    {"masters", "per_node", "settings", "capacity_bytes"}."""
    per_node = cfg.pangu.chunkservers_per_node or layout["per_node"]
    settings = dict(layout["settings"], replication=cfg.pangu.replication)
    if cfg.pangu.chunkservers_per_node and "expect_servers" in settings:
        settings["expect_servers"] = settings["expect_servers"] // layout["per_node"] * per_node
    cap = cfg.pangu.capacity_bytes_per_node
    return {"masters": cfg.pangu.masters or (2 if cfg.nuwa.replicas else 1),
            "per_node": per_node, "settings": settings,
            "capacity_bytes": cap // per_node if cap else None}


# ---- where it is kept: Nuwa (/fuxi/config/cluster), and the cluster record ----


def _nuwa_store(rec, token):
    from nuwa.client import connect

    from fuxi.io.store import NuwaStore

    return NuwaStore(connect([tuple(a) for a in rec.nuwa], creator="fuxi-config", token=token))


def publish(rec, doc: dict, token=None) -> None:
    """Keep the stored configuration in the cluster record and, when it has Nuwa, at
    /fuxi/config/cluster, where the running components read the online settings."""
    rec.config = doc
    rec.save()
    if rec.nuwa:
        store = _nuwa_store(rec, token)
        try:
            store.put(cc.STORE_KEY, doc)
        finally:
            store.client.close()


def read_stored(rec, token=None) -> tuple[dict | None, str]:
    """(the stored configuration, where it was read): Nuwa's when the cluster has Nuwa (it
    answers while FuxiMaster is down), else the cluster record's copy."""
    if rec.nuwa:
        store = _nuwa_store(rec, token)
        try:
            doc = store.get(cc.STORE_KEY)
        finally:
            store.client.close()
        if doc is not None:
            return doc, "nuwa:/fuxi" + cc.STORE_KEY
    return getattr(rec, "config", None), "cluster record"


def store_dir(rec) -> str | None:
    """The configured per-node data directory of a recorded cluster (None: its record's)."""
    doc = getattr(rec, "config", None) if rec is not None else None
    if not doc:
        return None
    try:
        return cc.from_stored(doc).config.data_dir
    except BadInput:
        return None
