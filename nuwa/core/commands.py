"""Nuwa commands: the plain dicts the state machine applies, their validation and encoding.

A command is a dict so that it can travel in a Raft log entry as JSON or msgpack:

    {"op": "create", "path": "/a/b", "value": b"..", "creator": "alice",
     "ephemeral_session": None, "sequential": False, "parents": False}
    {"op": "set", "path": "/a/b", "value": b"..", "expected_version": None}
    {"op": "delete", "path": "/a/", "expected_version": None, "recursive": False}
    {"op": "check", "path": "/a/b", "version": 3, "exists": None}   # txn only; exists=False:
                                                                     # nothing at exactly this path
    {"op": "txn", "ops": [<create | set | delete | check>, ...]}
    {"op": "session_open", "session": 7, "ttl_s": 10.0, "owner": "fuximaster@node1"}
    {"op": "session_close", "session": 7, "reason": "closed" | "expired"}

Optional keys may be left out (defaults as shown). Any command may carry a "request_id"
(str), which the tree echoes in the result so a shell can match answers to requests.
Unknown keys are refused, so a typo is an error rather than a silently ignored option.

`parse_command` turns a dict into a frozen dataclass or raises BadRequest; the builders
(`create`, `set_value`, ...) make well-formed dicts for clients.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any, Union

from nuwa.errors import BadRequest, LimitExceeded, ValueTooLarge
from nuwa.core.paths import KIND_ANY, KIND_FILE, is_dir_path, validate_path

VALUE_BYTES_MAX = 1 << 20          # one file's value
TXN_OPS_MAX = 128                  # ops in one txn
CREATOR_BYTES_MAX = 255            # creator / session owner names, UTF-8
REQUEST_ID_BYTES_MAX = 128
SESSION_TTL_MIN_S = 1.0
SESSION_TTL_MAX_S = 300.0
SESSION_ID_MAX = (1 << 63) - 1     # session ids are positive int64s
CLOSE_REASONS = ("closed", "expired")

__all__ = [
    "VALUE_BYTES_MAX", "TXN_OPS_MAX", "CREATOR_BYTES_MAX", "REQUEST_ID_BYTES_MAX",
    "SESSION_TTL_MIN_S", "SESSION_TTL_MAX_S", "SESSION_ID_MAX", "CLOSE_REASONS",
    "Create", "Set", "Delete", "Check", "Txn", "SessionOpen", "SessionClose", "Command",
    "parse_command", "encode_command", "decode_command",
    "create", "set_value", "delete", "check", "txn", "session_open", "session_close",
]


@dataclass(frozen=True)
class Create:
    path: str
    value: bytes
    creator: str
    ephemeral_session: int | None
    sequential: bool
    parents: bool


@dataclass(frozen=True)
class Set:
    path: str
    value: bytes
    expected_version: int | None


@dataclass(frozen=True)
class Delete:
    path: str
    expected_version: int | None
    recursive: bool


@dataclass(frozen=True)
class Check:
    path: str
    version: int | None
    exists: bool | None


@dataclass(frozen=True)
class Txn:
    ops: tuple  # of Create | Set | Delete | Check


@dataclass(frozen=True)
class SessionOpen:
    session: int
    ttl_s: float
    owner: str


@dataclass(frozen=True)
class SessionClose:
    session: int
    reason: str


Command = Union[Create, Set, Delete, Check, Txn, SessionOpen, SessionClose]

# op -> (required keys, optional keys with defaults)
_SCHEMA: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "create": (("path", "creator"),
               {"value": b"", "ephemeral_session": None, "sequential": False, "parents": False}),
    "set": (("path", "value"), {"expected_version": None}),
    "delete": (("path",), {"expected_version": None, "recursive": False}),
    "check": (("path",), {"version": None, "exists": None}),
    "txn": (("ops",), {}),
    "session_open": (("session", "ttl_s", "owner"), {}),
    "session_close": (("session",), {"reason": "closed"}),
}
TXN_OP_NAMES = ("create", "set", "delete", "check")


def _fields(cmd: Any, allowed_ops: tuple[str, ...]) -> tuple[str, dict]:
    if not isinstance(cmd, dict):
        raise BadRequest(f"a command is a dict, got {type(cmd).__name__}")
    op = cmd.get("op")
    if op not in allowed_ops:
        raise BadRequest(f"unknown op {op!r}; expected one of {', '.join(allowed_ops)}")
    required, optional = _SCHEMA[op]
    missing = [k for k in required if k not in cmd]
    if missing:
        raise BadRequest(f"{op} is missing {', '.join(missing)}; expected keys "
                         f"{', '.join(required)} and optionally {', '.join(optional) or 'nothing'}")
    known = {"op", "request_id", *required, *optional}
    unknown = sorted(str(k) for k in cmd if k not in known)
    if unknown:
        raise BadRequest(f"{op} got unknown keys {', '.join(unknown)}; expected "
                         f"{', '.join(sorted(known - {'op'}))}")
    fields = {**optional, **{k: v for k, v in cmd.items() if k in required or k in optional}}
    return op, fields


def _bool(op: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise BadRequest(f"{op}: {name} must be true or false, got {v!r}")
    return v


def _optional_bool(op: str, name: str, v: Any) -> bool | None:
    return None if v is None else _bool(op, name, v)


def _version(op: str, name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise BadRequest(f"{op}: {name} must be a version >= 0 or None (any version), got {v!r}")
    return v


def _name(op: str, name: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise BadRequest(f"{op}: {name} must be a non-empty str, got {v!r}")
    try:
        n = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{op}: {name} {v!r} is not encodable as UTF-8") from None
    if n > CREATOR_BYTES_MAX:
        raise LimitExceeded(f"{op}: {name} is {n} bytes long; expected at most "
                            f"CREATOR_BYTES_MAX={CREATOR_BYTES_MAX} bytes",
                            limit="CREATOR_BYTES_MAX", limit_value=CREATOR_BYTES_MAX)
    return v


def _session_id(op: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= SESSION_ID_MAX:
        raise BadRequest(f"{op}: session must be an int in 1..{SESSION_ID_MAX}, got {v!r}")
    return v


def _value(op: str, path: str, v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise BadRequest(f"{op} {path}: value must be bytes, got {type(v).__name__} "
                         f"(encode text first, e.g. 'x'.encode())")
    if len(v) > VALUE_BYTES_MAX:
        raise ValueTooLarge(f"{op} {path}: value is {len(v)} bytes; expected at most "
                            f"VALUE_BYTES_MAX={VALUE_BYTES_MAX} bytes (1 MiB; Nuwa stores "
                            f"coordination data, keep bulk data in Pangu)",
                            limit="VALUE_BYTES_MAX", limit_value=VALUE_BYTES_MAX, path=path,
                            value_bytes=len(v))
    return v


def parse_command(cmd: Any, *, in_txn: bool = False) -> Command:
    """Validate a command dict and return its dataclass; raise BadRequest (or a subclass)
    saying what was given and what was expected. Looks at no state."""
    allowed = TXN_OP_NAMES if in_txn else tuple(n for n in _SCHEMA if n != "check")
    op, f = _fields(cmd, allowed)
    rid = cmd.get("request_id")
    if rid is not None and (not isinstance(rid, str) or len(rid.encode("utf-8", "replace"))
                            > REQUEST_ID_BYTES_MAX):
        raise BadRequest(f"request_id must be a str of at most {REQUEST_ID_BYTES_MAX} bytes, "
                         f"got {rid!r:.80}")
    if op == "create":
        path = validate_path(f["path"], KIND_ANY)
        value = _value(op, path, f["value"])
        if is_dir_path(path) and value:
            raise BadRequest(f"create {path}: directories have no value, got {len(value)} "
                             f"bytes; expected b''")
        eph = f["ephemeral_session"]
        if eph is not None:
            eph = _session_id(op, eph)
            if is_dir_path(path):
                raise BadRequest(f"create {path}: a directory cannot be ephemeral (ephemeral "
                                 f"nodes cannot have children); expected a file path or "
                                 f"ephemeral_session=None")
        return Create(path, value, _name(op, "creator", f["creator"]), eph,
                      _bool(op, "sequential", f["sequential"]), _bool(op, "parents", f["parents"]))
    if op == "set":
        path = validate_path(f["path"], KIND_FILE)
        return Set(path, _value(op, path, f["value"]),
                   _version(op, "expected_version", f["expected_version"]))
    if op == "delete":
        path = validate_path(f["path"], KIND_ANY)
        return Delete(path, _version(op, "expected_version", f["expected_version"]),
                      _bool(op, "recursive", f["recursive"]))
    if op == "check":
        path = validate_path(f["path"], KIND_ANY)
        version = _version(op, "version", f["version"])
        exists = _optional_bool(op, "exists", f["exists"])
        if version is None and exists is None:
            raise BadRequest(f"check {path}: nothing to check; expected version=<int> and/or "
                             f"exists=true|false")
        if version is not None and exists is False:
            raise BadRequest(f"check {path}: version={version} with exists=false can never "
                             f"hold; expected one or the other")
        return Check(path, version, exists)
    if op == "txn":
        ops = f["ops"]
        if not isinstance(ops, (list, tuple)):
            raise BadRequest(f"txn: ops must be a list of create/set/delete/check commands, "
                             f"got {type(ops).__name__}")
        if len(ops) > TXN_OPS_MAX:
            raise LimitExceeded(f"txn has {len(ops)} ops; expected at most "
                                f"TXN_OPS_MAX={TXN_OPS_MAX}",
                                limit="TXN_OPS_MAX", limit_value=TXN_OPS_MAX)
        # Per-op validation errors are reported by the tree as TxnFailed(index=...).
        return Txn(tuple(ops))
    if op == "session_open":
        ttl = f["ttl_s"]
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or math.isnan(ttl) \
                or not SESSION_TTL_MIN_S <= ttl <= SESSION_TTL_MAX_S:
            raise BadRequest(f"session_open: ttl_s={ttl!r}; expected seconds between "
                             f"SESSION_TTL_MIN_S={SESSION_TTL_MIN_S} and "
                             f"SESSION_TTL_MAX_S={SESSION_TTL_MAX_S}")
        return SessionOpen(_session_id(op, f["session"]), float(ttl),
                           _name(op, "owner", f["owner"]))
    # session_close
    reason = f["reason"]
    if reason not in CLOSE_REASONS:
        raise BadRequest(f"session_close: reason={reason!r}; expected one of "
                         f"{', '.join(CLOSE_REASONS)}")
    return SessionClose(_session_id(op, f["session"]), reason)


# ------------------------------------------------------------------ builders for clients

def create(path: str, value: bytes = b"", *, creator: str, ephemeral_session: int | None = None,
           sequential: bool = False, parents: bool = False) -> dict:
    return {"op": "create", "path": path, "value": value, "creator": creator,
            "ephemeral_session": ephemeral_session, "sequential": sequential, "parents": parents}


def set_value(path: str, value: bytes, *, expected_version: int | None = None) -> dict:
    return {"op": "set", "path": path, "value": value, "expected_version": expected_version}


def delete(path: str, *, expected_version: int | None = None, recursive: bool = False) -> dict:
    return {"op": "delete", "path": path, "expected_version": expected_version,
            "recursive": recursive}


def check(path: str, *, version: int | None = None, exists: bool | None = None) -> dict:
    return {"op": "check", "path": path, "version": version, "exists": exists}


def txn(*ops: dict) -> dict:
    return {"op": "txn", "ops": list(ops)}


def session_open(session: int, ttl_s: float, owner: str) -> dict:
    return {"op": "session_open", "session": session, "ttl_s": ttl_s, "owner": owner}


def session_close(session: int, reason: str = "closed") -> dict:
    return {"op": "session_close", "session": session, "reason": reason}


# ------------------------------------------------------------------ wire encoding

_BYTES_TAG = "$b64"


def _to_json(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {_BYTES_TAG: base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise BadRequest(f"command keys must be str, got {sorted(map(repr, obj))}")
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if len(obj) == 1 and _BYTES_TAG in obj:
            return base64.b64decode(obj[_BYTES_TAG], validate=True)
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def encode_command(cmd: dict) -> bytes:
    """Deterministic bytes for a command (or a result): JSON, keys sorted, bytes as base64."""
    try:
        text = json.dumps(_to_json(cmd), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"cannot encode command ({e}); expected a dict of str, int, float, "
                         f"bool, None, bytes, lists and dicts") from None
    return text.encode("ascii")


def decode_command(data: bytes) -> dict:
    """Inverse of encode_command; raises BadRequest on bytes that are not an encoded dict."""
    try:
        obj = _from_json(json.loads(data))
    except (ValueError, TypeError) as e:
        raise BadRequest(f"undecodable command ({e}); expected encode_command output") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"decoded a {type(obj).__name__}; expected a command dict")
    return obj


encode_result = encode_command
decode_result = decode_command
