"""The Nuwa namespace: a pure, deterministic, replicated state machine.

Every replica feeds the same committed commands (``nuwa.core.commands``) to ``Tree.apply`` in the
same order and so holds the same tree, sessions and watch history, and returns the same
results. ``apply`` is the only mutator and never raises: a refused command comes back as
``{"error": err.to_dict(), "revision": r}`` and leaves no trace (an undo log rolls back a
half-applied txn, recursive delete or session close). No clock, no randomness, no I/O:
session expiry is decided by the leader, which proposes ``session_close(reason="expired")``.

State
    nodes      path -> node (a directory path ends with '/'; a name is a file or a directory)
    sessions   id -> ttl_s, owner, the ephemeral files it owns
    revision   +1 per command that changed anything (a txn or a session close counts once)
    history    bounded list of Events (created / changed / deleted), whole revisions dropped
               from the front; `history_floor` is the newest revision no longer complete.
               One command may produce several events at one revision (a txn, a recursive
               delete, a session close); each carries its position ``index`` (0, 1, ...) in
               that revision, so (revision, index) orders every event and a watcher can
               resume in the middle of a revision (``events_since(rev, path, index=i)``).

Results
    create        {"path": actual_path, "stat": {...}}
    set           {"stat": {...}}
    delete        {"deleted": [paths, deepest first]}
    txn           {"results": [one result per op; {} for a check]}
    session_open  {"session": id, "ttl_s": ttl}
    session_close {"session": id, "reason": r, "deleted": [its ephemeral paths]}
    every result also carries "revision" (the tree's revision after the command) and echoes
    "request_id" when the command had one.
"""

from __future__ import annotations

import base64
import bisect
import json
from dataclasses import dataclass
from typing import Any, Callable

from nuwa.core.commands import (
    CLOSE_REASONS, CREATOR_BYTES_MAX, SESSION_TTL_MAX_S, SESSION_TTL_MIN_S, TXN_OPS_MAX,
    VALUE_BYTES_MAX, Check, Create, Delete, Set, SessionClose, SessionOpen, Txn,
    decode_command, encode_command, parse_command,
)
from nuwa.errors import (
    BadRequest, BadVersion, Compacted, CorruptSnapshot, IsADirectory, LimitExceeded,
    NodeExists, NoNode, NoSession, NotADirectory, NotEmpty, NuwaError, TxnFailed,
)
from nuwa.core.paths import (
    COMPONENT_BYTES_MAX, KIND_DIR, PATH_BYTES_MAX, ROOT, ancestors, is_dir_path,
    name_of, other_kind, parent_of, validate_path,
)

# State limits. Every replica must run with the same values (they decide outcomes).
CHILDREN_PER_DIR_MAX = 100_000
NODES_MAX = 1_000_000                  # files and directories, the root included
TREE_VALUE_BYTES_MAX = 1 << 30         # sum of all file values
SESSIONS_MAX = 100_000
EPHEMERALS_PER_SESSION_MAX = 10_000
SEQUENCE_MAX = 10**10 - 1              # the 10-digit suffix of sequential names
WATCH_HISTORY_MAX = 100_000            # events kept for events_since
WATCH_HISTORY_VALUE_BYTES_MAX = 64 << 20  # values kept in those events
ROOT_CREATOR = "nuwa"

EVENT_CREATED = "created"
EVENT_CHANGED = "changed"
EVENT_DELETED = "deleted"

SNAPSHOT_FORMAT = "nuwa-tree/1"

__all__ = [
    "Tree", "TreeLimits", "Stat", "Event", "encode_command", "decode_command",
    "EVENT_CREATED", "EVENT_CHANGED", "EVENT_DELETED",
    "VALUE_BYTES_MAX", "PATH_BYTES_MAX", "COMPONENT_BYTES_MAX", "TXN_OPS_MAX",
    "CREATOR_BYTES_MAX", "SESSION_TTL_MIN_S", "SESSION_TTL_MAX_S", "CLOSE_REASONS",
    "CHILDREN_PER_DIR_MAX", "NODES_MAX", "TREE_VALUE_BYTES_MAX", "SESSIONS_MAX",
    "EPHEMERALS_PER_SESSION_MAX", "SEQUENCE_MAX", "WATCH_HISTORY_MAX",
    "WATCH_HISTORY_VALUE_BYTES_MAX", "ROOT_CREATOR",
]


@dataclass(frozen=True)
class TreeLimits:
    """The state limits as one value, so tests can shrink them. Not part of the snapshot:
    a deployment passes the same limits to every replica (the defaults)."""
    children_per_dir_max: int = CHILDREN_PER_DIR_MAX
    nodes_max: int = NODES_MAX
    tree_value_bytes_max: int = TREE_VALUE_BYTES_MAX
    sessions_max: int = SESSIONS_MAX
    ephemerals_per_session_max: int = EPHEMERALS_PER_SESSION_MAX
    sequence_max: int = SEQUENCE_MAX
    watch_history_max: int = WATCH_HISTORY_MAX
    watch_history_value_bytes_max: int = WATCH_HISTORY_VALUE_BYTES_MAX


@dataclass(frozen=True)
class Stat:
    creator: str
    created_rev: int
    modified_rev: int
    version: int                      # 0 at create, +1 per set
    ephemeral_session: int | None
    children: int                     # directories: number of children; files: 0
    data_len: int

    def to_dict(self) -> dict:
        # Spelled out: dataclasses.asdict deep-copies and cost ~60 µs per write on the hot path.
        return {"creator": self.creator, "created_rev": self.created_rev,
                "modified_rev": self.modified_rev, "version": self.version,
                "ephemeral_session": self.ephemeral_session, "children": self.children,
                "data_len": self.data_len}

    @classmethod
    def from_dict(cls, d: dict) -> "Stat":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Event:
    revision: int
    type: str                         # EVENT_CREATED | EVENT_CHANGED | EVENT_DELETED
    path: str
    stat: Stat                        # after the change; for "deleted", the last stat
    value: bytes | None               # the new value; b"" for a directory; None for "deleted"
    index: int = 0                    # position among all the events of this revision

    @property
    def position(self) -> tuple[int, int]:
        """(revision, index): strictly increasing along the history."""
        return (self.revision, self.index)

    def to_dict(self) -> dict:
        return {"revision": self.revision, "index": self.index, "type": self.type,
                "path": self.path, "stat": self.stat.to_dict(), "value": self.value}

    @classmethod
    def from_dict(cls, d: dict) -> "Event":
        return cls(d["revision"], d["type"], d["path"], Stat.from_dict(d["stat"]), d["value"],
                   d.get("index", 0))


class _Node:
    __slots__ = ("is_dir", "value", "creator", "created_rev", "modified_rev", "version",
                 "ephemeral_session", "children", "seq_next")

    def __init__(self, is_dir: bool, value: bytes, creator: str, created_rev: int,
                 modified_rev: int, version: int, ephemeral_session: int | None,
                 seq_next: int = 0):
        self.is_dir = is_dir
        self.value = value
        self.creator = creator
        self.created_rev = created_rev
        self.modified_rev = modified_rev
        self.version = version
        self.ephemeral_session = ephemeral_session
        self.children: set[str] | None = set() if is_dir else None  # names, dirs with '/'
        self.seq_next = seq_next      # next sequential suffix handed out in this directory

    def stat(self) -> Stat:
        return Stat(self.creator, self.created_rev, self.modified_rev, self.version,
                    self.ephemeral_session, len(self.children) if self.is_dir else 0,
                    len(self.value))


class _Session:
    __slots__ = ("ttl_s", "owner", "opened_rev", "ephemerals")

    def __init__(self, ttl_s: float, owner: str, opened_rev: int):
        self.ttl_s = ttl_s
        self.owner = owner
        self.opened_rev = opened_rev
        self.ephemerals: set[str] = set()


def _b64(v: bytes | None) -> str | None:
    return None if v is None else base64.b64encode(v).decode("ascii")


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s, validate=True)


def _stat_row(s: Stat) -> list:
    return [s.creator, s.created_rev, s.modified_rev, s.version, s.ephemeral_session,
            s.children, s.data_len]


class Tree:
    """The namespace state machine. See the module docstring for commands and results."""

    def __init__(self, limits: TreeLimits = TreeLimits()):
        self.limits = limits
        self.revision = 0
        self._nodes: dict[str, _Node] = {ROOT: _Node(True, b"", ROOT_CREATOR, 0, 0, 0, None)}
        self._sessions: dict[int, _Session] = {}
        self._value_bytes = 0
        self._history: list[Event] = []   # live part is _history[_history_head:]
        self._history_head = 0
        self._history_value_bytes = 0
        self._history_floor = 0           # events with revision <= floor may be missing
        # How many events the floor revision had (None: unknown, after a restore). Not
        # replicated state: it only lets a watcher resume exactly at the end of the floor.
        self._history_floor_events: int | None = 0
        # Scratch of the command being applied.
        self._undo: list[Callable[[], None]] = []
        self._pending: list[Event] = []
        self._next_rev = 1

    # ------------------------------------------------------------------ the mutator

    def apply(self, cmd: dict) -> dict:
        """Apply one command; return its result dict. Never raises."""
        self._undo, self._pending, self._next_rev = [], [], self.revision + 1
        try:
            result = self._apply(parse_command(cmd))
        except NuwaError as err:
            self._rollback()
            result = {"error": err.to_dict()}
        except Exception as err:  # a bug; still leave every replica in the same state
            self._rollback()
            op = cmd.get("op") if isinstance(cmd, dict) else None
            result = {"error": NuwaError(f"internal error applying {op!r}: "
                                         f"{type(err).__name__}: {err}").to_dict()}
        else:
            if self._undo:
                self.revision = self._next_rev
                self._record(self._pending)
        self._undo, self._pending = [], []
        result["revision"] = self.revision
        if isinstance(cmd, dict) and isinstance(cmd.get("request_id"), str):
            result["request_id"] = cmd["request_id"]
        return result

    def _rollback(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo, self._pending = [], []

    def _apply(self, c: Any) -> dict:
        if isinstance(c, Txn):
            return self._txn(c)
        if isinstance(c, SessionOpen):
            return self._session_open(c)
        if isinstance(c, SessionClose):
            return self._session_close(c)
        return self._apply_node_op(c)

    def _apply_node_op(self, c: Any) -> dict:
        if isinstance(c, Create):
            return self._create(c)
        if isinstance(c, Set):
            return self._set(c)
        if isinstance(c, Delete):
            return self._delete(c)
        if isinstance(c, Check):
            return self._check(c)
        raise AssertionError(f"unhandled command {c!r}")

    def _txn(self, t: Txn) -> dict:
        results = []
        for index, raw in enumerate(t.ops):
            op = raw.get("op") if isinstance(raw, dict) else None
            try:
                results.append(self._apply_node_op(parse_command(raw, in_txn=True)))
            except NuwaError as err:
                raise TxnFailed(f"txn op {index} ({op}) failed, nothing was applied: "
                                f"{err.message}", index=index, error=err) from None
        return {"results": results}

    # ------------------------------------------------------------------ node operations

    def _create(self, c: Create) -> dict:
        path = c.path
        parent = parent_of(path)
        if parent is None:
            raise NodeExists("cannot create /: the root always exists", path=path)
        if c.parents:
            for d in ancestors(parent) + [parent]:
                if d not in self._nodes:
                    self._refuse_other_kind(d, f"cannot create {path}")
                    self._insert(d, _Node(True, b"", c.creator, self._next_rev,
                                          self._next_rev, 0, None))
        pnode = self._nodes.get(parent)
        if pnode is None:
            self._refuse_other_kind(parent, f"cannot create {path}")
            raise NoNode(f"cannot create {path}: parent directory {parent} does not exist; "
                         f"create it first or pass parents=True", path=parent)
        if c.ephemeral_session is not None:
            session = self._sessions.get(c.ephemeral_session)
            if session is None:
                raise NoSession(f"cannot create ephemeral {path}: session "
                                f"{c.ephemeral_session} is not open (expired or closed); "
                                f"expected a live session", session=c.ephemeral_session)
            if len(session.ephemerals) >= self.limits.ephemerals_per_session_max:
                raise self._limit("EPHEMERALS_PER_SESSION_MAX",
                                  self.limits.ephemerals_per_session_max,
                                  f"session {c.ephemeral_session} already owns "
                                  f"{len(session.ephemerals)} ephemeral nodes")
        if c.sequential:
            seq = pnode.seq_next
            if seq > self.limits.sequence_max:
                raise self._limit("SEQUENCE_MAX", self.limits.sequence_max,
                                  f"directory {parent} has handed out every sequence number")
            suffix = f"{seq:010d}"
            path = path[:-1] + suffix + "/" if is_dir_path(path) else path + suffix
            validate_path(path)  # the suffix may push a name over COMPONENT_BYTES_MAX
            pnode.seq_next = seq + 1
            self._undo.append(lambda: setattr(pnode, "seq_next", seq))
        if path in self._nodes:
            raise NodeExists(f"cannot create {path}: it already exists", path=path)
        other = other_kind(path)
        if other in self._nodes:
            raise NodeExists(f"cannot create {path}: {other} exists (a name is either a file "
                             f"or a directory, not both)", path=path)
        node = _Node(is_dir_path(path), c.value, c.creator, self._next_rev, self._next_rev, 0,
                     c.ephemeral_session)
        self._insert(path, node)
        return {"path": path, "stat": node.stat().to_dict()}

    def _set(self, c: Set) -> dict:
        node = self._lookup(c.path)
        self._check_version(node, c.path, c.expected_version, "set")
        grow = len(c.value) - len(node.value)
        if self._value_bytes + grow > self.limits.tree_value_bytes_max:
            raise self._limit("TREE_VALUE_BYTES_MAX", self.limits.tree_value_bytes_max,
                              f"set {c.path} would bring all values to "
                              f"{self._value_bytes + grow} bytes")
        old = (node.value, node.version, node.modified_rev)

        def undo() -> None:
            node.value, node.version, node.modified_rev = old
            self._value_bytes -= grow
        node.value, node.version, node.modified_rev = c.value, node.version + 1, self._next_rev
        self._value_bytes += grow
        self._undo.append(undo)
        stat = node.stat()
        self._pending.append(Event(self._next_rev, EVENT_CHANGED, c.path, stat, c.value,
                                   len(self._pending)))
        return {"stat": stat.to_dict()}

    def _delete(self, c: Delete) -> dict:
        if c.path == ROOT:
            raise BadRequest("cannot delete /: the root always exists; expected a path below it")
        node = self._lookup(c.path)
        self._check_version(node, c.path, c.expected_version, "delete")
        if node.is_dir and node.children and not c.recursive:
            raise NotEmpty(f"cannot delete {c.path}: it has {len(node.children)} children; "
                           f"expected an empty directory, or recursive=True", path=c.path)
        doomed = self._subtree(c.path) if node.is_dir else [c.path]
        for path in doomed:
            self._remove(path)
        return {"deleted": doomed}

    def _check(self, c: Check) -> dict:
        if c.exists is False:
            if c.path in self._nodes:
                raise NodeExists(f"check {c.path}: it exists; expected it not to", path=c.path)
            return {}
        node = self._lookup(c.path)
        self._check_version(node, c.path, c.version, "check")
        return {}

    # ------------------------------------------------------------------ sessions

    def _session_open(self, c: SessionOpen) -> dict:
        if c.session in self._sessions:
            raise BadRequest(f"session_open: session {c.session} is already open; expected a "
                             f"new session id")
        if len(self._sessions) >= self.limits.sessions_max:
            raise self._limit("SESSIONS_MAX", self.limits.sessions_max,
                              f"{len(self._sessions)} sessions are open")
        self._sessions[c.session] = _Session(c.ttl_s, c.owner, self._next_rev)
        self._undo.append(lambda: self._sessions.pop(c.session))
        return {"session": c.session, "ttl_s": c.ttl_s}

    def _session_close(self, c: SessionClose) -> dict:
        session = self._sessions.get(c.session)
        if session is None:
            raise NoSession(f"session_close: session {c.session} is not open (already closed "
                            f"or expired)", session=c.session)
        doomed = sorted(session.ephemerals)
        for path in doomed:
            self._remove(path)
        del self._sessions[c.session]
        self._undo.append(lambda: self._sessions.__setitem__(c.session, session))
        return {"session": c.session, "reason": c.reason, "deleted": doomed}

    def sessions(self) -> list[dict]:
        """Open sessions, by id, for a new leader to restart their expiry timers."""
        return [{"session": sid, "ttl_s": s.ttl_s, "owner": s.owner, "opened_rev": s.opened_rev,
                 "ephemerals": len(s.ephemerals)} for sid, s in sorted(self._sessions.items())]

    def session(self, session: int) -> _Session | None:
        """The open session ``session`` (its ``ttl_s``, ``owner``, ``ephemerals``), or None."""
        return self._sessions.get(session)

    def sessions_of(self, owner: str) -> list[_Session]:
        """The open sessions of ``owner`` (per-user quotas count them and their ephemerals)."""
        return [s for s in self._sessions.values() if s.owner == owner]

    def creator_of(self, path: str) -> str | None:
        """Who created the node at exactly ``path`` (a directory ends with '/'), or None."""
        node = self._nodes.get(path)
        return node.creator if node is not None else None

    # ------------------------------------------------------------------ primitives (with undo)

    def _insert(self, path: str, node: _Node) -> None:
        parent = self._nodes[parent_of(path)]
        limits = self.limits
        if len(parent.children) >= limits.children_per_dir_max:
            raise self._limit("CHILDREN_PER_DIR_MAX", limits.children_per_dir_max,
                              f"cannot create {path}: {parent_of(path)} already has "
                              f"{len(parent.children)} children")
        if len(self._nodes) >= limits.nodes_max:
            raise self._limit("NODES_MAX", limits.nodes_max,
                              f"cannot create {path}: the tree already has "
                              f"{len(self._nodes)} nodes")
        if self._value_bytes + len(node.value) > limits.tree_value_bytes_max:
            raise self._limit("TREE_VALUE_BYTES_MAX", limits.tree_value_bytes_max,
                              f"cannot create {path}: values would total "
                              f"{self._value_bytes + len(node.value)} bytes")
        name = name_of(path)
        self._nodes[path] = node
        parent.children.add(name)
        self._value_bytes += len(node.value)
        session = self._sessions.get(node.ephemeral_session) \
            if node.ephemeral_session is not None else None
        if session is not None:
            session.ephemerals.add(path)

        def undo() -> None:
            del self._nodes[path]
            parent.children.discard(name)
            self._value_bytes -= len(node.value)
            if session is not None:
                session.ephemerals.discard(path)
        self._undo.append(undo)
        self._pending.append(Event(self._next_rev, EVENT_CREATED, path, node.stat(),
                                   node.value, len(self._pending)))

    def _remove(self, path: str) -> None:
        node = self._nodes[path]
        parent = self._nodes[parent_of(path)]
        name = name_of(path)
        stat = node.stat()
        del self._nodes[path]
        parent.children.discard(name)
        self._value_bytes -= len(node.value)
        session = self._sessions.get(node.ephemeral_session) \
            if node.ephemeral_session is not None else None
        if session is not None:
            session.ephemerals.discard(path)

        def undo() -> None:
            self._nodes[path] = node
            parent.children.add(name)
            self._value_bytes += len(node.value)
            if session is not None:
                session.ephemerals.add(path)
        self._undo.append(undo)
        self._pending.append(Event(self._next_rev, EVENT_DELETED, path, stat, None,
                                   len(self._pending)))

    def _subtree(self, top: str) -> list[str]:
        """`top` and everything below it, deepest first (reversed pre-order, sorted names)."""
        order: list[str] = []
        stack = [top]
        while stack:
            path = stack.pop()
            order.append(path)
            node = self._nodes[path]
            if node.is_dir:
                stack.extend(path + name for name in sorted(node.children, reverse=True))
        order.reverse()
        return order

    # ------------------------------------------------------------------ lookups

    def _lookup(self, path: str) -> _Node:
        node = self._nodes.get(path)
        if node is not None:
            return node
        self._refuse_other_kind(path, path)
        raise NoNode(f"{path} does not exist", path=path)

    def _refuse_other_kind(self, path: str, context: str) -> None:
        other = other_kind(path)
        if other is None or other not in self._nodes:
            return
        if is_dir_path(path):
            raise NotADirectory(f"{context}: {other} is a file, not a directory "
                                f"(expected {other} without the trailing '/')", path=path)
        raise IsADirectory(f"{context}: {other} is a directory, not a file "
                           f"(expected {other} with the trailing '/')", path=path)

    @staticmethod
    def _check_version(node: _Node, path: str, expected: int | None, what: str) -> None:
        if expected is not None and node.version != expected:
            raise BadVersion(f"{what} {path}: expected version {expected}, found version "
                             f"{node.version}", path=path, expected_version=expected,
                             actual_version=node.version)

    @staticmethod
    def _limit(name: str, value: int, what: str) -> LimitExceeded:
        return LimitExceeded(f"{what}; {name}={value}", limit=name, limit_value=value)

    # ------------------------------------------------------------------ reads (not replicated)

    def get(self, path: str) -> tuple[bytes, Stat]:
        node = self._lookup(validate_path(path))
        return node.value, node.stat()

    def stat(self, path: str) -> Stat:
        return self._lookup(validate_path(path)).stat()

    def node_count(self) -> int:
        """Files and directories, the root included."""
        return len(self._nodes)

    def exists(self, path: str) -> bool:
        return validate_path(path) in self._nodes

    def list(self, dir_path: str) -> list[str]:
        """Child names of a directory, sorted; directories keep their trailing '/'."""
        node = self._lookup(validate_path(dir_path, KIND_DIR))
        return sorted(node.children)

    # ------------------------------------------------------------------ watch history

    def _record(self, events: list[Event]) -> None:
        self._history.extend(events)
        self._history_value_bytes += sum(len(e.value or b"") for e in events)
        limits = self.limits
        while (len(self._history) - self._history_head > limits.watch_history_max
               or self._history_value_bytes > limits.watch_history_value_bytes_max):
            # Drop the oldest revision whole, so "complete after history_floor" stays exact.
            rev = self._history[self._history_head].revision
            dropped = 0
            while (self._history_head < len(self._history)
                   and self._history[self._history_head].revision == rev):
                self._history_value_bytes -= len(self._history[self._history_head].value or b"")
                self._history_head += 1
                dropped += 1
            self._history_floor = rev
            self._history_floor_events = dropped
        if self._history_head > 4096 and self._history_head * 2 > len(self._history):
            del self._history[: self._history_head]
            self._history_head = 0

    @property
    def history_floor(self) -> int:
        """events_since accepts any revision >= this one."""
        return self._history_floor

    def events_since(self, revision: int, path: str, recursive: bool = False,
                     limit: int | None = None, index: int | None = None) -> list[Event]:
        """Events after a position, in (revision, index) order: on the file `path`, or on the
        directory `path` itself and its direct children (all descendants if `recursive`).
        Without `index`, every event with revision > `revision`; with it, also the events of
        `revision` whose index is > `index` (a watcher resuming in the middle of a txn).
        At most `limit` events when given. Raises Compacted if some were dropped."""
        validate_path(path)
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise BadRequest(f"events_since: revision must be an int >= 0, got {revision!r}")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)
                                  or index < 0):
            raise BadRequest(f"events_since: index must be None or an int >= 0, got {index!r}")
        floor = self._history_floor
        if revision < floor or (index is not None and revision == floor and floor > 0 and (
                self._history_floor_events is None or index + 1 < self._history_floor_events)):
            raise Compacted(f"events after revision {revision}"
                            f"{'' if index is None else f' index {index}'} were compacted; "
                            f"history is complete only after revision {floor}: re-read the "
                            f"state, then watch from the revision of that read",
                            oldest_revision=floor)
        if index is None:
            start = bisect.bisect_right(self._history, revision, lo=self._history_head,
                                        key=lambda e: e.revision)
        else:
            start = bisect.bisect_right(self._history, (revision, index),
                                        lo=self._history_head, key=lambda e: e.position)
        if is_dir_path(path):
            if recursive:
                def wanted(p: str) -> bool:
                    return p.startswith(path)
            else:
                def wanted(p: str) -> bool:
                    return p == path or parent_of(p) == path
        else:
            def wanted(p: str) -> bool:
                return p == path
        out = []
        for e in self._history[start:]:
            if wanted(e.path):
                out.append(e)
                if limit is not None and len(out) >= limit:
                    break
        return out

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        """Deterministic bytes of the whole state (JSON, base64 values, sorted)."""
        nodes = [[p, n.creator, n.created_rev, n.modified_rev, n.version, n.ephemeral_session,
                  "/" if n.is_dir else _b64(n.value), n.seq_next]
                 for p, n in sorted(self._nodes.items())]
        sessions = [[sid, s.ttl_s, s.owner, s.opened_rev] for sid, s in sorted(self._sessions.items())]
        history = [[e.revision, e.type, e.path, _stat_row(e.stat), _b64(e.value)]
                   for e in self._history[self._history_head:]]
        doc = {"format": SNAPSHOT_FORMAT, "revision": self.revision,
               "history_floor": self._history_floor, "nodes": nodes, "sessions": sessions,
               "history": history}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def restore(cls, data: bytes, limits: TreeLimits = TreeLimits()) -> "Tree":
        """Rebuild a tree from `snapshot()` bytes; raises CorruptSnapshot if they are not."""
        try:
            return cls._restore(data, limits)
        except CorruptSnapshot:
            raise
        except Exception as e:
            raise CorruptSnapshot(f"not a Nuwa tree snapshot: {type(e).__name__}: {e}") from None

    @classmethod
    def _restore(cls, data: bytes, limits: TreeLimits) -> "Tree":
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise CorruptSnapshot(f"unknown snapshot format; expected {SNAPSHOT_FORMAT!r}")
        t = cls(limits)
        t.revision = _int(doc["revision"])
        t._history_floor = _int(doc["history_floor"])
        for sid, ttl_s, owner, opened_rev in doc["sessions"]:
            t._sessions[_int(sid)] = _Session(float(ttl_s), str(owner), _int(opened_rev))
        t._nodes = {}
        for path, creator, created, modified, version, eph, value, seq_next in doc["nodes"]:
            validate_path(path)
            is_dir = value == "/"
            if is_dir != is_dir_path(path):
                raise CorruptSnapshot(f"node {path!r} has the wrong kind")
            node = _Node(is_dir, b"" if is_dir else _unb64(value), str(creator), _int(created),
                         _int(modified), _int(version), None if eph is None else _int(eph),
                         _int(seq_next))
            parent = parent_of(path)
            if parent is not None:
                pnode = t._nodes.get(parent)
                if pnode is None or not pnode.is_dir:
                    raise CorruptSnapshot(f"node {path!r} comes before its parent directory")
                pnode.children.add(name_of(path))
            if node.ephemeral_session is not None:
                t._sessions[node.ephemeral_session].ephemerals.add(path)
            t._nodes[path] = node
            t._value_bytes += len(node.value)
        if ROOT not in t._nodes:
            raise CorruptSnapshot("the root / is missing")
        # The index is not stored: whole revisions are dropped from the history, so the
        # events of each revision are all there and numbered again in order from 0.
        t._history_floor_events = None if t._history_floor > 0 else 0
        prev_rev, index = None, 0
        for rev, typ, path, stat, value in doc["history"]:
            index = index + 1 if rev == prev_rev else 0
            prev_rev = rev
            t._history.append(Event(_int(rev), str(typ), str(path), Stat(*stat), _unb64(value),
                                    index))
            t._history_value_bytes += len(t._history[-1].value or b"")
        problems = t.validate_state()
        if problems:
            raise CorruptSnapshot(f"inconsistent snapshot: {'; '.join(problems[:5])}")
        return t

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ self-check

    def validate_state(self) -> list[str]:
        """Cross-check the derived indexes; return a list of problems (empty when sound).
        Tests call it after every step; restore refuses a snapshot that fails it."""
        problems = []
        for path, node in self._nodes.items():
            if node.is_dir != is_dir_path(path):
                problems.append(f"{path}: kind does not match the path")
            if not node.created_rev <= node.modified_rev <= self.revision:
                problems.append(f"{path}: revisions {node.created_rev}/{node.modified_rev} "
                                f"out of order (tree at {self.revision})")
            parent = parent_of(path)
            if parent is not None:
                pnode = self._nodes.get(parent)
                if pnode is None or name_of(path) not in pnode.children:
                    problems.append(f"{path}: not listed by its parent {parent}")
            if node.is_dir:
                for name in node.children:
                    if path + name not in self._nodes:
                        problems.append(f"{path}: lists missing child {name}")
            eph = node.ephemeral_session
            if eph is not None and (eph not in self._sessions
                                    or path not in self._sessions[eph].ephemerals):
                problems.append(f"{path}: ephemeral of session {eph} that does not own it")
            if other_kind(path) in self._nodes:
                problems.append(f"{path}: exists both as a file and as a directory")
        for sid, s in self._sessions.items():
            for path in s.ephemerals:
                node = self._nodes.get(path)
                if node is None or node.ephemeral_session != sid:
                    problems.append(f"session {sid}: owns {path}, which is not its ephemeral")
        if self._value_bytes != sum(len(n.value) for n in self._nodes.values()):
            problems.append("value byte count is off")
        live = self._history[self._history_head:]
        if any(a.position >= b.position for a, b in zip(live, live[1:])):
            problems.append("history is out of (revision, index) order")
        if any(b.index != (a.index + 1 if a.revision == b.revision else 0)
               for a, b in zip(live, live[1:])) or (live and live[0].index != 0):
            problems.append("history event indexes are not 0, 1, ... within each revision")
        if live and not self._history_floor < live[0].revision <= live[-1].revision <= self.revision:
            problems.append("history revisions outside (history_floor, revision]")
        if self._history_value_bytes != sum(len(e.value or b"") for e in live):
            problems.append("history value byte count is off")
        return problems


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise CorruptSnapshot(f"expected an int, got {v!r}")
    return v
