"""Live per-task progress for ``fuxi submit``: a table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

COLUMNS = ("instances", "succeeded", "running", "failed", "retries", "backups_launched", "backups_won")


def _line(st: dict) -> str:
    parts = []
    for name, t in st.get("tasks", {}).items():
        extra = ""
        if t.get("retries"):
            extra += f" retries={t['retries']}"
        if t.get("backups_launched"):
            extra += f" backups={t['backups_won']}/{t['backups_launched']}"
        parts.append(f"{name} {t['succeeded']}/{t['instances']} running={t['running']}"
                     f" failed={t['failed']}{extra}")
    return f"[{st['state']}] " + "; ".join(parts)


class PlainProgress:
    """One line whenever something changed, at most every ``interval_s``."""

    def __init__(self, stream=None, interval_s: float = 1.0):
        self.stream = stream or sys.stderr
        self.last = ""
        self.last_at = 0.0
        self.interval_s = interval_s

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, st: dict) -> None:
        line = _line(st)
        now = time.time()
        final = st["state"] in ("succeeded", "failed", "cancelled")
        if line != self.last and (final or now - self.last_at >= self.interval_s):
            print(line, file=self.stream, flush=True)
            self.last, self.last_at = line, now


class LiveProgress:
    """A rich table redrawn in place (done / running / failed / retries / backups per task)."""

    def __init__(self, job_id: str):
        from rich.console import Console
        from rich.live import Live

        self.job_id = job_id
        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        return self.live.__exit__(*exc)

    def update(self, st: dict) -> None:
        from rich.table import Table

        elapsed = ""
        if st.get("started_at"):
            end = st.get("finished_at") or time.time()
            elapsed = f" {end - st['started_at']:.1f}s"
        table = Table(title=f"{self.job_id} — {st['state']}{elapsed}", title_justify="left")
        table.add_column("task")
        for c in ("done", "running", "failed", "retries", "backups (won/launched)"):
            table.add_column(c, justify="right")
        for name, t in st.get("tasks", {}).items():
            table.add_row(name, f"{t['succeeded']}/{t['instances']}", str(t["running"]),
                          str(t["failed"]), str(t["retries"]),
                          f"{t['backups_won']}/{t['backups_launched']}")
        self.live.update(table)


def progress_for(job_id: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        return LiveProgress(job_id)
    return PlainProgress()
