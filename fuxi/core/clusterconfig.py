"""The cluster's configuration (issue 18 part 4): one validated model for what `fuxi up` takes
from a file (``--config cluster.yaml``), ``FUXI_*`` environment variables and flags, layered
``flag > env > file > default``, each value remembered with where it came from.

Pure: dicts in, a validated model (or one ``SpecError`` listing every problem, one line each,
formatted like job spec errors) out. Reading the file and the environment is the shell's
(``fuxi.io.clusterconfig``). ``reference()`` is the table in docs/config.md (a test keeps them
in step).

A few settings can change while the cluster runs (``ONLINE``): ``fuxi config set`` writes them
to Nuwa and the components that use them read them again on their own loop. Every other
setting needs a restart (``fuxi down`` + ``fuxi up``); ``config set`` refuses it and says so.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fuxi.core import blacklist as bl
from fuxi.core.specparse import Problems, humane_errors, join_path
from fuxi.errors import BadInput, SpecError

CONFIG_BYTES_MAX = 256 * 1024  # one configuration file
CONFIG_PATH_CHARS_MAX = 4096  # a path inside the configuration
CONFIG_VALUE_CHARS_MAX = 4096  # one value given by an environment variable or `config set`
WEB_PORT = 9469  # FuxiWeb's port unless told (fuxi.shells.webactor.WEB_PORT_DEFAULT; a test)
WEB_HOST = "127.0.0.1"
RESERVED_ENV = ("FUXI_HOME", "FUXI_METRICS", "FUXI_FAULTS", "FUXI_TOKEN", "FUXI_ARTIFACTS")
LEGACY_ENV = {"FUXI_WEB_PORT": "web.port"}  # older names, still read (a lower rank than FUXI_WEB__PORT)
NUWA_SIZES = (0, 1, 3, 5)  # nuwa.group.GROUP_SIZES, and 0 for none
SOURCES = ("default", "file", "env", "flag", "set")  # "set": changed online (`fuxi config set`)

Port = Annotated[int, Field(ge=0, le=65535)]
Path = Annotated[str, Field(min_length=1, max_length=CONFIG_PATH_CHARS_MAX)]


class ConfigError(SpecError):
    """The cluster configuration is invalid: every problem, one line each."""

    def __init__(self, problems: list[str], source: str | None = None):
        super().__init__(problems, source=source, kind="cluster config")
        head = f"invalid cluster configuration {source}" if source else \
            "invalid cluster configuration"
        self.args = (head + ":\n" + "\n".join(f"  - {p}" for p in self.problems),)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RayConfig(_Section):
    address: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        None, description="Deploy onto this existing Ray cluster (host:port) instead of "
                          "starting a head; the ray ports below then do not apply")
    num_cpus: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="CPUs the local head offers (none: all)")
    auth_token_path: Path | None = Field(None, description="Ray auth token file of the "
                                                           "cluster given by ray.address")
    port: Port = Field(0, description="The head's GCS port (0: a free one)")
    node_manager_port: Port = Field(0, description="The raylet's port (0: Ray picks)")
    object_manager_port: Port = Field(0, description="The object manager's port (0: Ray picks)")
    metrics_export_port: Port = Field(0, description="Ray's own metrics exporter (0: Ray picks)")
    runtime_env_agent_port: Port = Field(0, description="Ray's runtime-env agent (0: Ray picks)")
    dashboard_agent_grpc_port: Port = Field(0, description="Ray's dashboard agent, gRPC (0: Ray picks)")
    dashboard_agent_listen_port: Port = Field(0, description="Ray's dashboard agent, HTTP (0: Ray picks)")
    client_server_port: Port = Field(0, description="Ray Client server (0: Ray's own default, 10001)")
    min_worker_port: Port = Field(0, description="Lowest port of Ray's worker processes (0: Ray's range)")
    max_worker_port: Port = Field(0, description="Highest port of Ray's worker processes (0: Ray's range)")


class WebConfig(_Section):
    host: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        WEB_HOST, description="Address FuxiWeb binds (0.0.0.0: reachable from other machines)")
    port: Port = Field(WEB_PORT, description="FuxiWeb: the console at / and /metrics (0: a free one)")
    alert_rules: Path | None = Field(None, description="A YAML file of alert rules replacing "
                                                       "the default set")


class NuwaConfig(_Section):
    replicas: Annotated[int, Field(ge=0, le=5)] = Field(
        3, description="Nuwa group size: 0 (no Nuwa), 1, 3 or 5")
    ports: list[Port] = Field([], max_length=5, description="One port per replica, for clients "
                                                            "and peers alike (empty: free ones)")


class KuafuConfig(_Section):
    port: Port = Field(0, description="Every node's Kuafu proxy TCP port (0: a free one)")
    http_port: Port = Field(0, description="Every node's HTTP front door, POST /v1/services/"
                                           "<name>/<method> (0: a free one)")


class PanguConfig(_Section):
    masters: Annotated[int, Field(ge=1, le=3)] | None = Field(
        None, description="Pangu masters (none: 2 with Nuwa, 1 without)")
    chunkservers_per_node: Annotated[int, Field(ge=1, le=16)] | None = Field(
        None, description="Chunkservers per node (none: 3 on one machine, else 1)")
    capacity_bytes_per_node: Annotated[int, Field(ge=1 << 20, le=1 << 60)] | None = Field(
        None, description="Bytes Pangu may keep on each node, split among its chunkservers "
                          "(none: the disk, at most 1 TiB per chunkserver)")
    replication: Annotated[int, Field(ge=1, le=8)] = Field(
        3, description="Replicas of a file's chunks unless its writer asks otherwise")


class TimeoutsConfig(_Section):
    head_start_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        60.0, description="`fuxi up` waits this long for the Ray head")
    connect_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        30.0, description="`fuxi up`'s calls to the cluster's actors")
    actor_ready_s: Annotated[float, Field(ge=1, le=3600)] = Field(
        60.0, description="`fuxi up` waits this long for each platform actor")


class AlertsConfig(_Section):
    eval_s: Annotated[float, Field(ge=0.5, le=3600)] = Field(
        5.0, description="How often FuxiMaster evaluates the alert rules")


class EventsConfig(_Section):
    pull_s: Annotated[float, Field(ge=0.2, le=600)] = Field(
        2.0, description="How often the cluster log pulls Pangu's and Nuwa's event rings")


class BlacklistConfig(_Section):
    cluster_expiry_s: Annotated[float, Field(ge=1, le=7 * 86400)] = Field(
        bl.CLUSTER_BLACKLIST_EXPIRY_S, description="How long the cluster-level blacklist "
                                                    "excludes a node")
    cluster_failure_window_s: Annotated[float, Field(ge=1, le=7 * 86400)] = Field(
        bl.CLUSTER_FAILURE_WINDOW_S, description="Failures of distinct jobs on a node count "
                                                  "together within this window")
    cluster_failure_jobs_min: Annotated[int, Field(ge=1, le=1000)] = Field(
        bl.CLUSTER_FAILURE_JOBS_MIN, description="Distinct jobs failing on a node before the "
                                                 "cluster excludes it")


class ClusterConfig(_Section):
    cluster: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(
        "default", description="The cluster's name (its record: $FUXI_HOME/<name>)")
    data_dir: Path | None = Field(None, description="Each node's directory for Nuwa's logs and "
                                                    "Pangu's chunks (none: $FUXI_HOME/<name>)")
    auth: bool | None = Field(None, description="Zhongkui access control (none: on with "
                                                "ray.address, off for a local head)")
    ray: RayConfig = RayConfig()
    web: WebConfig = WebConfig()
    nuwa: NuwaConfig = NuwaConfig()
    kuafu: KuafuConfig = KuafuConfig()
    pangu: PanguConfig = PanguConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    alerts: AlertsConfig = AlertsConfig()
    events: EventsConfig = EventsConfig()
    blacklist: BlacklistConfig = BlacklistConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "ClusterConfig":
        problems: list[tuple[str, str]] = []
        if self.data_dir is not None and not self.data_dir.startswith("/"):
            problems.append(("data_dir", f"got {self.data_dir!r}, expected an absolute path"))
        if self.nuwa.replicas not in NUWA_SIZES:
            problems.append(("nuwa.replicas", f"got {self.nuwa.replicas}, expected 0 (no Nuwa), "
                             f"1, 3 or 5"))
        elif self.nuwa.ports and len(self.nuwa.ports) != self.nuwa.replicas:
            problems.append(("nuwa.ports", f"{len(self.nuwa.ports)} port(s) for "
                             f"{self.nuwa.replicas} replica(s); expected one per replica"))
        if self.auth and not self.nuwa.replicas:
            problems.append(("auth", "access control needs Nuwa (users, ACL entries and the "
                             "audit trail live there); expected nuwa.replicas 1, 3 or 5"))
        if (self.pangu.masters or 1) > 1 and not self.nuwa.replicas:
            problems.append(("pangu.masters", "more than one Pangu master needs Nuwa; "
                             "expected 1 with nuwa.replicas 0"))
        r = self.ray
        if r.address is not None:
            for name in ray_port_fields():
                if getattr(r, name):
                    problems.append((f"ray.{name}", "applies only to a head `fuxi up` "
                                     "starts; expected 0 with ray.address set"))
        if bool(r.min_worker_port) != bool(r.max_worker_port):
            problems.append(("ray.min_worker_port", "expected both ray.min_worker_port and "
                             "ray.max_worker_port, or neither"))
        elif r.min_worker_port > r.max_worker_port:
            problems.append(("ray.min_worker_port", f"{r.min_worker_port} is above "
                             f"ray.max_worker_port {r.max_worker_port}"))
        seen: dict[int, str] = {}
        for key, port in fixed_ports(self):
            if port in seen and key != "ray.max_worker_port":
                problems.append((key, f"port {port} is also {seen[port]}; expected a "
                                 f"different port for each component"))
            seen.setdefault(port, key)
        if problems:
            raise Problems(problems)
        return self


SECTIONS = [n for n, f in ClusterConfig.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
EXPECTED = {("ClusterConfig", "cluster"): "1 to 64 letters, digits, - and _"}
ONLINE = {"alerts.eval_s": "FuxiMaster's alert loop, at its next round",
          "events.pull_s": "the cluster log's pull loop, at its next round",
          "blacklist.cluster_expiry_s": "FuxiMaster's cluster blacklist, for entries made after "
                                        "its next alert round",
          "blacklist.cluster_failure_window_s": "FuxiMaster's cluster blacklist, at its next "
                                                "alert round",
          "blacklist.cluster_failure_jobs_min": "FuxiMaster's cluster blacklist, at its next "
                                                "alert round"}


def ray_port_fields() -> list[str]:
    return [n for n in RayConfig.model_fields if n.endswith("_port") or n == "port"]


def fixed_ports(cfg: ClusterConfig) -> list[tuple[str, int]]:
    """(key, port) of every fixed (non-zero) port the configuration asks for."""
    out = [(f"ray.{n}", getattr(cfg.ray, n)) for n in ray_port_fields()
           if n not in ("min_worker_port", "max_worker_port") and getattr(cfg.ray, n)]
    out += [("web.port", cfg.web.port)] if cfg.web.port else []
    out += [(f"nuwa.ports[{i}]", p) for i, p in enumerate(cfg.nuwa.ports) if p]
    out += [("kuafu.port", cfg.kuafu.port)] if cfg.kuafu.port else []
    out += [("kuafu.http_port", cfg.kuafu.http_port)] if cfg.kuafu.http_port else []
    return out


# ---- keys ----


def _leaf_fields(model: type[BaseModel] = ClusterConfig, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_leaf_fields(ann, f"{prefix}{name}."))
        else:
            out[prefix + name] = info
    return out


KEYS = _leaf_fields()  # "nuwa.replicas" -> its FieldInfo


def nearest_key(key: str) -> str | None:
    hint = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.5)
    return hint[0] if hint else None


def unknown_key(key: str, where: str) -> str:
    hint = nearest_key(key)
    return f"{where}: unknown key {key!r}" + (f" (did you mean {hint!r}?)" if hint else "") \
        + "; `fuxi config show` lists the keys"


def set_dotted(doc: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """{"nuwa.replicas": 3, ...} of a nested mapping (a non-mapping section is kept whole,
    for the validator to refuse)."""
    out: dict[str, Any] = {}
    if not isinstance(doc, dict):
        return {prefix.rstrip("."): doc} if prefix else {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in KEYS:
            if v or key not in ClusterConfig.model_fields:  # an empty section says nothing
                out.update(flatten(v, key + ".") if v else {key: v})
        else:
            out[key] = v
    return out


# ---- layering ----


class Effective:
    """The validated configuration and where each value came from."""

    def __init__(self, config: ClusterConfig, sources: dict[str, str]):
        self.config = config
        self.sources = sources

    def get(self, key: str) -> Any:
        node: Any = self.config
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def view(self) -> dict:
        """{key: {"value", "source", "online"}} of every key (``fuxi config show --json``)."""
        return {k: {"value": self.get(k), "source": self.sources.get(k, "default"),
                    "online": k in ONLINE} for k in KEYS}

    def layers(self) -> dict:
        """What was given, by layer, as nested dicts (kept in Nuwa; ``from_layers`` rebuilds)."""
        out: dict[str, dict] = {}
        for key, src in self.sources.items():
            if src != "default":
                set_dotted(out.setdefault(src, {}), key, _plain(self.get(key)))
        return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def layer(layers: dict[str, dict], source_order: tuple[str, ...] = SOURCES) -> Effective:
    """Merge the given layers (each a nested mapping: "file", "env", "flag", "set"), the later
    in ``source_order`` winning, and validate. Every problem of every layer in one SpecError."""
    merged: dict = {}
    sources: dict[str, str] = {}
    problems: list[str] = []
    for src in source_order:
        doc = layers.get(src)
        if doc is None:
            continue
        if not isinstance(doc, dict):
            problems.append(f"{src}: got {type(doc).__name__}, expected a mapping of keys "
                            f"(e.g. `nuwa: {{replicas: 3}}`)")
            continue
        for key, value in flatten(doc).items():
            if key not in KEYS:
                section = key.split(".")[0]
                if section in ClusterConfig.model_fields and not isinstance(value, dict) \
                        and key == section:
                    problems.append(f"{src}: {key}: got {value!r}, expected a mapping")
                else:
                    problems.append(unknown_key(key, src))
                continue
            set_dotted(merged, key, value)
            sources[key] = src
    try:
        cfg = ClusterConfig.model_validate(merged)
    except ValidationError as e:
        lines = humane_errors(e, ClusterConfig, EXPECTED)
        raise ConfigError(problems + [_with_source(line, sources) for line in lines]) from None
    if problems:
        raise ConfigError(problems)
    return Effective(cfg, sources)


def _with_source(line: str, sources: dict[str, str]) -> str:
    key = line.split(":", 1)[0].split("[")[0]
    src = sources.get(key)
    return f"{line} (from {src})" if src else line


def parse_value(key: str, text: str) -> Any:
    """A value given as text (``fuxi config set KEY VALUE``) for ``key``: numbers and booleans
    are read as such, the rest stays a string (the model validates it)."""
    if len(text) > CONFIG_VALUE_CHARS_MAX:
        raise BadInput(f"{key}: value of {len(text)} characters; expected at most "
                       f"CONFIG_VALUE_CHARS_MAX={CONFIG_VALUE_CHARS_MAX}")
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, list, str)) or value is None else text


def check_online_set(key: str) -> None:
    """``fuxi config set`` accepts only the ONLINE keys; the rest need a restart."""
    if key not in KEYS:
        raise BadInput(unknown_key(key, "config set"))
    if key not in ONLINE:
        raise BadInput(f"config set {key}: needs a restart (`fuxi down`, then `fuxi up` with "
                       f"it in --config, FUXI_* or a flag); online: {', '.join(sorted(ONLINE))}")


STORE_KEY = "/config/cluster"  # FuxiMaster's store (Nuwa: /fuxi/config/cluster), by /config/admission
STORED_FORMAT = 1


def stored_doc(eff: Effective) -> dict:
    """What is kept in Nuwa: the layers as given (so ``config show`` can tell the sources)."""
    return {"format": STORED_FORMAT, "layers": eff.layers()}


def from_stored(doc: Any) -> Effective:
    """The Effective configuration of a stored document; SpecError if it is not one."""
    if not isinstance(doc, dict) or doc.get("format") != STORED_FORMAT \
            or not isinstance(doc.get("layers"), dict):
        raise ConfigError([f"stored configuration: got {str(doc)[:80]!r}, expected "
                           f"{{format: {STORED_FORMAT}, layers: {{...}}}}"])
    return layer(doc["layers"])


def online_values(doc: Any) -> dict[str, Any]:
    """{key: value} of the ONLINE settings in a stored document (the running components'
    view); a document that does not validate gives {} (they keep what they have)."""
    try:
        eff = from_stored(doc)
    except BadInput:
        return {}
    return {k: eff.get(k) for k in ONLINE}


# ---- the reference (docs/config.md) ----


def _type_text(info) -> str:
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    optional = type(None) in typing.get_args(ann)
    base = args[0] if optional and len(args) == 1 else ann
    if typing.get_origin(base) is Literal:
        text = " or ".join(str(a) for a in typing.get_args(base))
    elif typing.get_origin(base) is list:
        text = "list of ports"
    else:
        inner = typing.get_args(base)
        core_t = inner[0] if typing.get_origin(base) is Annotated else base
        text = getattr(core_t, "__name__", str(core_t))
        lo = hi = None
        metas = list(getattr(base, "__metadata__", ())) + list(info.metadata)
        metas += [x for m in metas for x in getattr(m, "metadata", ())]  # a Field's own
        for m in metas:
            lo = getattr(m, "ge", lo)
            hi = getattr(m, "le", hi)
        if lo is not None or hi is not None:
            text += f" {lo if lo is not None else ''}..{hi if hi is not None else ''}"
    return text + (" or none" if optional else "")


def env_name(key: str) -> str:
    parts = key.upper().split(".")
    return "FUXI_" + "__".join(parts)


def reference() -> str:
    """The markdown table of every key: type, default, environment variable, online or not."""
    rows = ["| key | type | default | environment | online | what |",
            "|---|---|---|---|---|---|"]
    for key, info in KEYS.items():
        default = info.default
        shown = "none" if default is None else (str(default).lower() if isinstance(default, bool)
                                                else str(default))
        rows.append(f"| `{key}` | {_type_text(info)} | {shown} | `{env_name(key)}` | "
                    f"{'yes' if key in ONLINE else 'no'} | {info.description or ''} |")
    return "\n".join(rows) + "\n"


__all__ = ["ClusterConfig", "Effective", "KEYS", "ONLINE", "check_online_set", "env_name",
           "fixed_ports", "join_path", "layer", "nearest_key", "parse_value", "reference"]
