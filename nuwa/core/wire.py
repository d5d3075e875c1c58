"""Nuwa's client requests: their schemas, parsed before anything is decided (pure: no I/O).

A client request is a msgpack map. Its envelope is ``op``, ``id`` (echoed in the answer) and
``cred`` (a Zhongkui token); every op has its own keys, and a key an op does not know is
refused, as is a key of the wrong type::

    create | set | delete | txn | session_close   {"cmd": <a command of the same op>}
    session_open        {"cmd": {"op": "session_open", "ttl_s": s, "owner": name?}}
    session_keepalive   {"session": id}
    get | list | stat | exists   {"path": p, "linearizable": bool?}
    watch               {"path": p, "recursive": bool?, "from_revision": int?}
    unwatch             {"watch": id}
    conf_change         {"change": "add_learner" | "promote" | "remove", "member": id}
    transfer_leader     {"to": id}
    auth | status | members      {}

``parse_request`` turns the map into a ``Request`` whose ``cmd`` is the parsed command tree
(``nuwa.core.commands`` dataclasses; a txn's ops parsed one by one). The replica decides on that
tree and proposes ``command_dict(request.cmd)``, rebuilt from it, so what was authorized is
exactly what is applied: the outer ``op`` must equal the command's own op, and nothing of the
raw dict travels past the parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nuwa.core import commands as C
from nuwa.core.commands import REQUEST_ID_BYTES_MAX
from nuwa.errors import BadRequest, NuwaError, TxnFailed
from nuwa.core.paths import KIND_ANY, validate_path

__all__ = [
    "Request", "parse_request", "command_dict", "command_ops", "REQUEST_OPS", "WRITE_OPS",
    "READ_OPS", "CONF_CHANGES", "REQUEST_ID_BYTES_MAX", "CRED_BYTES_MAX", "MEMBER_ID_MAX",
]

WRITE_OPS = ("create", "set", "delete", "txn")
READ_OPS = ("get", "list", "stat", "exists")
SESSION_OPS = ("session_open", "session_keepalive", "session_close")
CONF_CHANGES = ("add_learner", "promote", "remove")
CRED_BYTES_MAX = 16 * 1024   # a token
MEMBER_ID_MAX = (1 << 64) - 1
WATCH_ID_MAX = (1 << 63) - 1
REVISION_MAX = (1 << 63) - 1
_ENVELOPE = ("op", "id", "cred")

# op -> its own keys (beyond the envelope), each required or optional
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "create": (("cmd",), ()),
    "set": (("cmd",), ()),
    "delete": (("cmd",), ()),
    "txn": (("cmd",), ()),
    "session_open": (("cmd",), ()),
    "session_close": (("cmd",), ()),
    "session_keepalive": (("session",), ()),
    "get": (("path",), ("linearizable",)),
    "list": (("path",), ("linearizable",)),
    "stat": (("path",), ("linearizable",)),
    "exists": (("path",), ("linearizable",)),
    "watch": (("path",), ("recursive", "from_revision", "from_index")),
    "unwatch": (("watch",), ()),
    "conf_change": (("change", "member"), ()),
    "transfer_leader": (("to",), ()),
    "auth": ((), ()),
    "status": ((), ()),
    "members": ((), ()),
    "snapshot": ((), ("export", "offset")),  # a backup image (nuwa.io.export), administrators only
}
REQUEST_OPS = tuple(_KEYS)


@dataclass(frozen=True)
class Request:
    op: str
    id: Any = None
    cred: str | None = None
    cmd: Any = None              # a parsed command (create/set/delete/txn/session_close);
    #                              for session_open the ttl_s only (the replica fills the rest)
    cmd_request_id: str | None = None
    ttl_s: float | None = None   # session_open
    owner: str | None = None     # session_open, as told (used with authentication off)
    path: str | None = None
    linearizable: bool = True
    recursive: bool = False
    from_revision: int | None = None
    from_index: int | None = None  # watch: the position within from_revision to resume at
    session: int | None = None   # session_keepalive
    watch: int | None = None     # unwatch
    change: str | None = None
    member: int | None = None
    to: int | None = None
    export: str | None = None    # snapshot: the image being handed out (None: take a new one)
    offset: int = 0              # snapshot: where the next chunk starts

    def watch_request(self) -> dict:
        """A watch as the replica's watch code reads it."""
        d = {"op": "watch", "path": self.path, "recursive": self.recursive}
        if self.from_revision is not None:
            d["from_revision"] = self.from_revision
        if self.from_index is not None:
            d["from_index"] = self.from_index
        return d


def _command_of(op: str, req: dict) -> dict:
    """The request's command map, whose own op must be the request's (decided on what runs)."""
    cmd = req["cmd"]
    if not isinstance(cmd, dict):
        raise BadRequest(f"{op}: cmd must be a command map, got {type(cmd).__name__}")
    if cmd.get("op") != op:
        raise BadRequest(f"request op {op!r} carries a command of op {cmd.get('op')!r:.40}; "
                         f"expected the same op in both")
    return cmd


def _int(op: str, name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadRequest(f"{op}: {name} must be an int in {lo}..{hi}, got {v!r:.80}")
    return v


def _bool(op: str, name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise BadRequest(f"{op}: {name} must be true or false, got {v!r:.80}")
    return v


def request_id(req: Any) -> Any:
    """The ``id`` to echo, or None when it is not an int or a short str."""
    rid = req.get("id") if isinstance(req, dict) else None
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) and -(1 << 63) <= rid < (1 << 64):
        return rid
    if isinstance(rid, str) and len(rid.encode("utf-8", "replace")) <= REQUEST_ID_BYTES_MAX:
        return rid
    return None


def parse_request(req: Any) -> Request:
    """Validate a client request and parse its command; raise BadRequest (or a subclass)
    saying what was given and what was expected. Looks at no state."""
    if not isinstance(req, dict):
        raise BadRequest(f"a request is a map, got {type(req).__name__}")
    op = req.get("op")
    if not isinstance(op, str) or op not in _KEYS:
        raise BadRequest(f"unknown op {op!r:.80}; expected one of {', '.join(REQUEST_OPS)}")
    required, optional = _KEYS[op]
    missing = [k for k in required if k not in req]
    if missing:
        raise BadRequest(f"{op} is missing {', '.join(missing)}; expected keys "
                         f"{', '.join(required) or 'none'} and optionally "
                         f"{', '.join(optional) or 'nothing'}")
    known = {*_ENVELOPE, *required, *optional}
    unknown = sorted(repr(k)[:40] for k in req if k not in known)
    if unknown:
        raise BadRequest(f"{op} got unknown keys {', '.join(unknown)}; expected "
                         f"{', '.join(sorted(known - {'op'}))}")
    rid = req.get("id")
    if rid is not None and request_id(req) is None:
        raise BadRequest(f"id must be an int or a str of at most {REQUEST_ID_BYTES_MAX} bytes, "
                         f"got {rid!r:.80}")
    cred = req.get("cred")
    if cred is not None and (not isinstance(cred, str) or len(cred) > CRED_BYTES_MAX):
        raise BadRequest(f"cred must be a token (a str of at most {CRED_BYTES_MAX} chars), got "
                         f"{type(cred).__name__}")
    base = {"op": op, "id": rid, "cred": cred or None}
    if op in WRITE_OPS or op == "session_close":
        cmd = _command_of(op, req)
        parsed = C.parse_command(cmd)
        if isinstance(parsed, C.Txn):
            parsed = C.Txn(tuple(_parse_txn_op(i, raw) for i, raw in enumerate(parsed.ops)))
        return Request(**base, cmd=parsed, cmd_request_id=cmd.get("request_id"))
    if op == "session_open":
        cmd = _command_of(op, req)
        if "session" in cmd:
            raise BadRequest("session_open: the replica picks the session id; expected no "
                             "'session' key")
        # Validated as the full command, with placeholders for what the replica fills in.
        C.parse_command({"owner": "-", **cmd, "session": 1})
        return Request(**base, ttl_s=float(cmd["ttl_s"]), owner=cmd.get("owner"),
                       cmd_request_id=cmd.get("request_id"))
    if op == "session_keepalive":
        return Request(**base, session=_int(op, "session", req["session"], 1, C.SESSION_ID_MAX))
    if op in READ_OPS:
        return Request(**base, path=validate_path(req["path"], KIND_ANY),
                       linearizable=_bool(op, "linearizable", req.get("linearizable", True)))
    if op == "watch":
        frm, at = req.get("from_revision"), req.get("from_index")
        return Request(**base, path=validate_path(req["path"], KIND_ANY),
                       recursive=_bool(op, "recursive", req.get("recursive", False)),
                       from_revision=None if frm is None else
                       _int(op, "from_revision", frm, 0, REVISION_MAX),
                       from_index=None if at is None else
                       _int(op, "from_index", at, 0, REVISION_MAX))
    if op == "unwatch":
        return Request(**base, watch=_int(op, "watch", req["watch"], 0, WATCH_ID_MAX))
    if op == "conf_change":
        change = req["change"]
        if change not in CONF_CHANGES:
            raise BadRequest(f"conf_change: change={change!r:.40}; expected one of "
                             f"{', '.join(CONF_CHANGES)}")
        return Request(**base, change=change,
                       member=_int(op, "member", req["member"], 1, MEMBER_ID_MAX))
    if op == "transfer_leader":
        return Request(**base, to=_int(op, "to", req["to"], 1, MEMBER_ID_MAX))
    if op == "snapshot":
        export, offset = req.get("export"), req.get("offset", 0)
        if export is not None and not (isinstance(export, str) and 0 < len(export) <= 64
                                       and all(c in "0123456789abcdef" for c in export)):
            raise BadRequest(f"snapshot: export must be the hex id a first snapshot request "
                             f"returned, got {export!r:.80}")
        offset = _int(op, "offset", offset, 0, REVISION_MAX)
        if export is None and offset:
            raise BadRequest("snapshot: an offset needs the export it is into; expected export")
        return Request(**base, export=export, offset=offset)
    return Request(**base)  # auth, status, members


def _parse_txn_op(index: int, raw: Any):
    """One txn op, refused as the tree would refuse it (TxnFailed naming the op)."""
    try:
        return C.parse_command(raw, in_txn=True)
    except NuwaError as err:
        op = raw.get("op") if isinstance(raw, dict) else None
        raise TxnFailed(f"txn op {index} ({op!r:.40}) failed, nothing was applied: "
                        f"{err.message}", index=index, error=err) from None


def command_ops(cmd) -> tuple:
    """The node operations a parsed command is made of (a txn's ops, or the command)."""
    return cmd.ops if isinstance(cmd, C.Txn) else (cmd,)


def command_dict(cmd, request_id: str | None = None) -> dict:
    """The command map for a parsed command: what the replica proposes."""
    if isinstance(cmd, C.Create):
        d = C.create(cmd.path, cmd.value, creator=cmd.creator,
                     ephemeral_session=cmd.ephemeral_session, sequential=cmd.sequential,
                     parents=cmd.parents)
    elif isinstance(cmd, C.Set):
        d = C.set_value(cmd.path, cmd.value, expected_version=cmd.expected_version)
    elif isinstance(cmd, C.Delete):
        d = C.delete(cmd.path, expected_version=cmd.expected_version, recursive=cmd.recursive)
    elif isinstance(cmd, C.Check):
        d = C.check(cmd.path, version=cmd.version, exists=cmd.exists)
    elif isinstance(cmd, C.Txn):
        d = C.txn(*(command_dict(c) for c in cmd.ops))
    elif isinstance(cmd, C.SessionOpen):
        d = C.session_open(cmd.session, cmd.ttl_s, cmd.owner)
    elif isinstance(cmd, C.SessionClose):
        d = C.session_close(cmd.session, cmd.reason)
    else:
        raise BadRequest(f"not a command: {type(cmd).__name__}")
    if request_id is not None:
        d["request_id"] = request_id
    return d

