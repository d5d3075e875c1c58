"""The audit trail: denied and administrative operations (who, what, when, result).

Records are kept in a bounded ring (``RECORDS_KEPT``) and, when a path is given, appended as
JSON lines. Every text is passed through ``redact`` first: tokens, passwords and keys never
reach the trail, logs or errors."""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque

from base import events, metrics

RECORDS_KEPT = 10_000
DETAIL_CHARS_MAX = 500
FILE_BYTES_MAX = 64 * 1024 * 1024  # then the file is rotated to <path>.1 (one old file kept)
# A signed token (two base64url parts, long), a key-like run of base64, or password=...
_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}")
_SECRET_KV = re.compile(r"(?i)(password|passwd|token|secret|key)(\s*[=:]\s*)(\S+)")


DECISIONS = metrics.counter("zhongkui_audited_total",
                            "Decisions written to the audit trail, by result (allowed, denied...).",
                            labels=("result",), series_max=16)

def redact(text: str) -> str:
    text = _TOKEN.sub("[token]", str(text))
    return _SECRET_KV.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)


class AuditLog:
    def __init__(self, path: str | None = None, file_bytes_max: int = FILE_BYTES_MAX):
        self.records: deque = deque(maxlen=RECORDS_KEPT)
        self.path = path
        self.file_bytes_max = file_bytes_max

    def record(self, who: str, action: str, resource: str, result: str, detail: str = "",
               now: float | None = None) -> dict:
        rec = {"time": time.time() if now is None else now, "who": redact(who),
               "action": redact(action), "resource": redact(resource), "result": result,
               "detail": redact(detail)[:DETAIL_CHARS_MAX]}
        self.records.append(rec)
        DECISIONS.inc(result=result)
        if result == "denied":  # the cluster's event log collects those of FuxiMaster's process
            events.emit("zhongkui", "denied", f"{rec['who']} was refused {rec['action']} on "
                        f"{rec['resource']}", severity="warning", who=rec["who"],
                        action=rec["action"], resource=rec["resource"])
        if self.path:
            try:
                if os.path.getsize(self.path) >= self.file_bytes_max:
                    os.replace(self.path, self.path + ".1")  # a flood cannot fill the disk
            except FileNotFoundError:
                pass
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
        return rec

    def query(self, who: str | None = None, result: str | None = None,
              since: float | None = None, limit: int = 1000) -> list[dict]:
        out = [r for r in self.records
               if (who is None or r["who"] == who) and (result is None or r["result"] == result)
               and (since is None or r["time"] >= since)]
        return out[-limit:]
