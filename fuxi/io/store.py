"""Hard state behind a small key/value interface, so Nuwa can back it later without rework.

Keys are absolute ``/``-separated paths (``/jobs/<id>/status``); values are JSON documents of
at most ``STATE_VALUE_BYTES_MAX`` (Nuwa's limit). ``FileStore`` writes each key to its own file with
write-to-temp-then-rename, so a crash never leaves a half-written value.
"""

from __future__ import annotations

import json
import os
import re
import threading
from typing import Any, Protocol

from fuxi.errors import BadInput, LimitExceeded

STATE_VALUE_BYTES_MAX = 1024 * 1024
_KEY_RE = re.compile(r"^(/[A-Za-z0-9_.@=+-]+)+$")


def _check_key(key: str) -> None:
    if not _KEY_RE.match(key) or "/../" in key + "/" or "/./" in key + "/":
        raise BadInput(f"store key {key!r} is not valid; expected an absolute path like "
                       f"/jobs/<id>/status made of letters, digits and _.@=+-")


def _encode(key: str, value: Any) -> bytes:
    data = json.dumps(value, sort_keys=True, default=str).encode()
    if len(data) > STATE_VALUE_BYTES_MAX:
        raise LimitExceeded(f"value for {key} is {len(data)} bytes; STATE_VALUE_BYTES_MAX is {STATE_VALUE_BYTES_MAX}")
    return data


JOB_LOG_LINES_READ_MAX = 100_000  # lines one `fuxi job logs` call returns


def read_job_logs(log_dir: str, job_id: str, task: str | None = None,
                  instance: int | None = None) -> list[dict]:
    """A job's log lines (JSON lines written by its JobMaster), optionally for one task and
    instance, at most JOB_LOG_LINES_READ_MAX of them."""
    path = os.path.join(log_dir, f"{job_id}.jsonl")
    out: list[dict] = []
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if (task is None or rec["task"] == task) and (instance is None or rec["instance"] == instance):
                out.append(rec)
                if len(out) >= JOB_LOG_LINES_READ_MAX:
                    break
    return out


class StateStore(Protocol):
    def put(self, key: str, value: Any) -> None: ...
    def get(self, key: str, default: Any = None) -> Any: ...
    def delete(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        _check_key(key)
        data = _encode(key, value)
        with self._lock:
            self._data[key] = data

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            data = self._data.get(key)
        return default if data is None else json.loads(data)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def list(self, prefix: str) -> list[str]:
        with self._lock:
            return sorted(k for k in self._data if k.startswith(prefix))


class FileStore:
    """One file per key under ``root`` (``/jobs/x/status`` -> ``root/jobs/x/status.json``)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        _check_key(key)
        return os.path.join(self.root, key.lstrip("/")) + ".json"

    def put(self, key: str, value: Any) -> None:
        data = _encode(key, value)
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            with open(self._path(key), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return default

    def delete(self, key: str) -> bool:
        try:
            os.remove(self._path(key))
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str) -> list[str]:
        out = []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if not name.endswith(".json"):
                    continue
                key = "/" + os.path.relpath(os.path.join(dirpath, name[:-5]), self.root)
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)


class NuwaStore:
    """The StateStore on Nuwa: key ``/jobs/x/status`` lives at Nuwa path ``<root>/jobs/x/status``.

    Used by a `fuxi up` cluster, so job specs and statuses survive a restart of the platform's
    actors and are replicated. ``client`` is a blocking ``nuwa.client.Nuwa``."""

    def __init__(self, client, root: str = "/fuxi") -> None:
        self.client = client
        self.root = root.rstrip("/")
        # (Nuwa path, version): with a fence set, every write is a transaction that first
        # checks the path still has that version -- a deposed FuxiMaster's writes are refused
        # (``StaleTerm``) instead of overwriting its successor's (fuxi.core.leadership).
        self.fence: tuple[str, int] | None = None

    def _fenced(self, op: dict) -> None:
        from nuwa.core import commands as C
        from nuwa.errors import TxnFailed

        from fuxi.errors import StaleTerm

        path, version = self.fence
        try:
            self.client.txn([C.check(path, version=version), op])
        except TxnFailed as e:
            if getattr(e, "index", None) == 0:
                raise StaleTerm(f"write to {op['path']} refused: {path} is no longer at "
                                f"version {version} (this FuxiMaster's term); a newer leader "
                                f"has been elected") from None
            inner = getattr(e, "error", None)  # the op's own error (NoNode, NodeExists)
            raise inner if isinstance(inner, Exception) else e

    def _path(self, key: str) -> str:
        _check_key(key)
        return self.root + key

    PUT_TRIES_MAX = 5  # a blind set by the only writer is safe to repeat after an unknown outcome

    def put(self, key: str, value: Any) -> None:
        from nuwa.errors import NodeExists, NoNode, OutcomeUnknown, Unavailable

        data = _encode(key, value)
        path = self._path(key)
        for attempt in range(self.PUT_TRIES_MAX):
            try:
                if self.fence is not None:
                    self._fenced_put(path, data)
                    return
                try:
                    self.client.set(path, data)
                except NoNode:
                    try:
                        self.client.create(path, data, parents=True)
                    except NodeExists:  # created by an earlier try whose answer was lost
                        self.client.set(path, data)
                return
            except (OutcomeUnknown, Unavailable):
                if attempt == self.PUT_TRIES_MAX - 1:
                    raise

    def _fenced_put(self, path: str, data: bytes) -> None:
        """A set (or a create, parents made, when there is none yet) under the fence."""
        from nuwa.core import commands as C
        from nuwa.errors import NodeExists, NoNode

        try:
            self._fenced(C.set_value(path, data))
        except NoNode:
            try:
                self._fenced({"op": "create", "path": path, "value": data,  # creator: the client's
                              "ephemeral_session": None, "sequential": False, "parents": True})
            except NodeExists:  # created by an earlier try whose answer was lost
                self._fenced(C.set_value(path, data))

    def get(self, key: str, default: Any = None) -> Any:
        from nuwa.errors import NoNode

        try:
            value, _ = self.client.get(self._path(key))
        except NoNode:
            return default
        return json.loads(value)

    def delete(self, key: str) -> bool:
        from nuwa.errors import NoNode

        try:
            if self.fence is not None:
                from nuwa.core import commands as C

                self._fenced(C.delete(self._path(key)))
            else:
                self.client.delete(self._path(key))
            return True
        except NoNode:
            return False

    def list(self, prefix: str) -> list[str]:
        from nuwa.errors import NoNode

        start = prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"
        out: list[str] = []
        stack = [start]
        while stack:
            d = stack.pop()
            try:
                children = self.client.list(self.root + d)
            except NoNode:
                continue
            for c in children:
                if c.endswith("/"):
                    stack.append(d + c)
                elif (d + c).startswith(prefix):
                    out.append(d + c)
        return sorted(out)


def open_store(nuwa: list | None, data_dir: str | None, creator: str, token) -> StateStore:
    """A platform actor's hard-state store: Nuwa when the cluster has it (a ``fuxi up``
    cluster), else files under ``<data_dir>/state``, else memory (lost with the process).
    ``token``: the platform token (or a callable giving it) the Nuwa client presents."""
    if nuwa:
        from nuwa.client import connect as nuwa_connect

        return NuwaStore(nuwa_connect([tuple(a) for a in nuwa], creator=creator, token=token))
    if data_dir:
        return FileStore(os.path.join(data_dir, "state"))
    return MemoryStore()
