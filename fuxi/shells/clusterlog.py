"""The cluster's one event log, kept by FuxiMaster (issue 17 part 2).

Every process reports to its own ``base.events`` ring. FuxiMaster collects:

* its own ring (jobs submitted and ended, nodes joined and lost, services, Nuwa supervision,
  adoption, recovery) by *pulling* ``LOG.since(seq)`` whenever it is asked anything that
  touches events, at every JobMaster sync and every agent heartbeat;
* each JobMaster's ring (attempts retried, backups launched and won, nodes blacklisted),
  piggy-backed on the sync every JobMaster sends anyway (``events=``): the JobMaster sends
  ``LOG.since(acked)`` and moves ``acked`` on only when the sync was answered, so a slow or
  restarted FuxiMaster loses nothing that is still in the JobMaster's ring; FuxiMaster drops
  what it already has by the reporter's own sequence number.

Pulling by sequence number rather than pushing each event keeps the reporters free of a
call per event, and a slow collector only makes batches bigger (each at most
``EVENT_REPORT_MAX``). The collector gives every event a cluster-wide id (one more than the
last, carried on from the files after a restart), keeps the newest ``EVENTS_TAIL_MAX`` in
memory for queries and long polls, and appends them to ``base.eventfile`` files (rotating,
bounded) under ``<data dir>/events``.

Limits: a reporter's ring drops its oldest events when the collector is away long enough for
``base.events.EVENTS_KEPT_MAX`` to fill (counted in the reporter's ``dropped``); a FuxiMaster
restart forgets which JobMaster sequence numbers it saw, so the one batch in flight at that
moment may be recorded twice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import time
from typing import Any

from base import eventfile, events
from fuxi.errors import BadInput

EVENTS_TAIL_MAX = 20_000  # newest events kept in memory (older ones are read from the files)
EVENT_REPORT_MAX = events.REPORT_EVENTS_MAX  # events one report may carry (base.events)
EVENTS_PULL_S = 2.0  # how often Pangu masters' and Nuwa replicas' rings are pulled
EVENTS_PULL_TIMEOUT_S = 5.0  # one component's answer; a silent one is asked again next round
PULLED_PREFIXES = ("pangu-master-", "nuwa-")  # named actors of the cluster's namespace pulled
EVENTS_QUERY_MAX = 10_000  # events one query returns
EVENTS_WAIT_S_MAX = 30.0  # a long poll (``fuxi events --follow``) waits at most this long
EVENT_FOLLOWERS_MAX = 64  # long polls waiting at once; more are answered at once
EVENT_REPORTERS_MAX = 10_000  # reporters whose last sequence number is remembered
logger = logging.getLogger(__name__)
KIND_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")


def check_kinds(kinds: Any) -> list[str]:
    """Event kinds to filter on: names like ``instance_retried``; a prefix ends with ``*``."""
    if kinds is None:
        return []
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, (list, tuple)) or len(kinds) > 64:
        raise BadInput(f"kinds={kinds!r}: expected a list of at most 64 event kinds")
    out = []
    for k in kinds:
        base = k[:-1] if isinstance(k, str) and k.endswith("*") else k
        if not isinstance(base, str) or not (KIND_RE.match(base) or base == ""):
            raise BadInput(f"event kind {k!r}: expected a name of lower-case letters, digits, "
                           f"'_' and '.' (at most 64), optionally ending in '*' (a prefix)")
        out.append(k)
    return out


def check_match(match: Any) -> dict:
    """Fields an event must have, with these values (``{"job": id}``)."""
    if match is None:
        return {}
    if not isinstance(match, dict) or len(match) > 4 or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool)
            for k, v in match.items()):
        raise BadInput(f"match={str(match)[:80]!r}: expected at most 4 fields, each a name "
                       f"and a string or int value")
    return dict(match)


def _matches(rec: dict, since_at: float | None, kinds: list[str], match: dict) -> bool:
    if since_at is not None and rec.get("at", 0) < since_at:
        return False
    if not kind_matches(rec.get("kind", ""), kinds):
        return False
    fields = rec.get("fields") or {}
    return all(fields.get(k) == v for k, v in match.items())


def kind_matches(kind: str, kinds: list[str]) -> bool:
    return not kinds or any(kind.startswith(k[:-1]) if k.endswith("*") else kind == k
                            for k in kinds)


def event_record(ev: events.Event | dict, origin: str, node: str | None = None) -> dict:
    """An event as the log keeps it (before it has its cluster-wide ``id``)."""
    d = ev.to_dict() if isinstance(ev, events.Event) else dict(ev)
    fields = d.get("fields") if isinstance(d.get("fields"), dict) else {}
    rec = {"at": float(d.get("at") or time.time()), "source": str(d.get("source", "?"))[:64],
           "kind": str(d.get("kind", "?"))[:64], "message": str(d.get("message", ""))[:1024],
           "severity": str(d.get("severity", "info"))[:16], "fields": fields,
           "origin": origin[:128], "origin_seq": int(d.get("seq") or 0)}
    if node:
        rec["node"] = node
    return rec


class ClusterEvents:
    def __init__(self, directory: str | None):
        self.directory = directory
        self.file = eventfile.EventFile(directory) if directory else None
        self.next_id = (eventfile.last_id(directory) if directory else 0) + 1
        self.tail: collections.deque[dict] = collections.deque(maxlen=EVENTS_TAIL_MAX)
        self._local_seq = 0  # this process's ring from its start: events before ours count
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._changed = asyncio.Event()
        self.followers = 0
        self.write_errors = 0
        self.pull_s = EVENTS_PULL_S  # online: `fuxi config set events.pull_s` (liveconfig)

    # ------------------------------------------------------------ in

    def add(self, records: list[dict]) -> None:
        if not records:
            return
        for rec in records:
            rec["id"] = self.next_id
            self.next_id += 1
            self.tail.append(rec)
        if self.file is not None:
            try:
                self.file.append(records)
            except OSError:  # a full disk must not stop the master; the tail still answers
                self.write_errors += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def pull_local(self) -> None:
        """This process's own ring since the last pull."""
        new = events.LOG.since(self._local_seq, EVENTS_QUERY_MAX)
        if new:
            self._local_seq = new[-1].seq
            self.add([event_record(e, "fuxi-master") for e in new])

    def report(self, origin: str, batch: Any, node: str | None = None) -> int:
        """A reporter's events (dicts from its ``base.events`` ring, oldest first); returns
        the highest sequence number taken. Garbage is refused before anything is kept."""
        if batch is None:
            return 0
        if isinstance(batch, dict):  # {"boot": the reporter's process, "events": [...]}
            boot = batch.get("boot")
            if not (isinstance(boot, str) and 0 < len(boot) <= 64):
                raise BadInput(f"events report from {origin}: boot={boot!r}: expected a "
                               f"name of 1 to 64 characters")
            origin, batch = f"{origin}/{boot}", batch.get("events")
        if not isinstance(batch, list) or len(batch) > EVENT_REPORT_MAX:
            raise BadInput(f"events report from {origin}: expected a list of at most "
                           f"{EVENT_REPORT_MAX} events (EVENT_REPORT_MAX)")
        for ev in batch:
            if not (isinstance(ev, dict) and isinstance(ev.get("seq"), int)
                    and isinstance(ev.get("kind"), str)):
                raise BadInput(f"events report from {origin}: {str(ev)[:80]!r} is not an event")
        self.pull_local()  # keep the master's own events in order with the reports
        last = self._seen.get(origin, 0)
        fresh = [ev for ev in batch if ev["seq"] > last]
        if fresh:
            self.add([event_record(ev, origin, node) for ev in fresh])
            self._seen[origin] = fresh[-1]["seq"]
            self._seen.move_to_end(origin)
            while len(self._seen) > EVENT_REPORTERS_MAX:
                self._seen.popitem(last=False)
        return max([last] + [ev["seq"] for ev in batch])

    def report_last(self, origin: str, batch: Any) -> None:
        """A JobMaster's last events, on its final status: garbage there is logged, not
        raised (the job's verdict must be recorded whatever its events look like)."""
        try:
            self.report(origin, batch)
        except BadInput as e:
            logger.warning("%s", e)

    def start_pulling(self, namespaces: list[str], token) -> None:
        """Pull the rings of the cluster's Pangu masters and Nuwa replicas (named actors of
        ``namespaces``) every EVENTS_PULL_S, on a thread of its own (idempotent)."""
        from fuxi.shells.offloop import OffLoop

        if getattr(self, "_puller", None) is None or self._puller.done():
            self._puller = asyncio.get_running_loop().create_task(
                self._pull_loop(OffLoop("fuxi-events", 1), namespaces, token))

    async def _pull_loop(self, offloop, namespaces: list[str], token) -> None:
        at: dict[str, tuple[str, int]] = {}  # actor name -> (its boot, last seq taken)
        while True:
            await asyncio.sleep(self.pull_s)
            try:
                got = await offloop.run(pull_components, namespaces, token(), at)
            except Exception:  # noqa: BLE001 - listing actors failed: next round
                logger.warning("pulling components' events failed", exc_info=True)
                continue
            for name, batch in got:
                try:
                    seq = self.report(name, batch)
                except BadInput as e:
                    logger.warning("%s", e)
                    continue
                at[name] = (batch["boot"], seq)

    # ------------------------------------------------------------ out

    def _read(self, since_id: int, since_at: float | None, kinds: list[str], limit: int,
              match: dict) -> list[dict]:
        if self.tail and since_id + 1 >= self.tail[0]["id"] or self.directory is None:
            src: Any = (r for r in self.tail if r["id"] > since_id)
        else:  # older than the memory holds: from the files
            src = (r for r in eventfile.iter_events(self.directory) if r["id"] > since_id)
        out = []
        for r in src:
            if _matches(r, since_at, kinds, match):
                out.append(r)
                if len(out) >= limit:
                    break
        return out

    async def query(self, since_id: int = 0, since_at: float | None = None,
                    kinds: list[str] | None = None, limit: int = 1000,
                    wait_s: float = 0.0, match: dict | None = None) -> dict:
        """Events with an id above ``since_id`` (and at or after ``since_at``), oldest first;
        with ``wait_s`` wait up to that long for the first one (a long poll). Returns
        ``{"events": [...], "last_id": the newest id in the log}``."""
        if not isinstance(since_id, int) or isinstance(since_id, bool) or since_id < 0:
            raise BadInput(f"since_id={since_id!r}: expected an event id (an int >= 0)")
        if since_at is not None and not isinstance(since_at, (int, float)):
            raise BadInput(f"since_at={since_at!r}: expected a time in seconds since the epoch")
        if not isinstance(limit, int) or not 1 <= limit <= EVENTS_QUERY_MAX:
            raise BadInput(f"limit={limit!r}: expected an int in [1, {EVENTS_QUERY_MAX}]")
        if not isinstance(wait_s, (int, float)) or not 0 <= wait_s <= EVENTS_WAIT_S_MAX:
            raise BadInput(f"wait_s={wait_s!r}: expected seconds in [0, {EVENTS_WAIT_S_MAX:g}] "
                           f"(EVENTS_WAIT_S_MAX)")
        kinds, match = check_kinds(kinds), check_match(match)
        self.pull_local()
        deadline = time.monotonic() + wait_s
        while True:
            found = self._read(since_id, since_at, kinds, limit, match)
            left = deadline - time.monotonic()
            if found or left <= 0 or self.followers >= EVENT_FOLLOWERS_MAX:
                return {"events": found, "last_id": self.next_id - 1}
            # The newest ids did not match: next time start past them.
            since_id = max(since_id, self.next_id - 1)
            changed = self._changed
            self.followers += 1
            try:
                await asyncio.wait_for(changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass
            finally:
                self.followers -= 1
            self.pull_local()


def pull_components(namespaces: list[str] | str, token: str, at: dict) -> list[tuple[str, dict]]:
    """One round (blocking, on a thread): each pulled component's events after what was
    taken from its current process (``at``: name -> (boot, seq)); a restarted one (another
    boot) from its start."""
    import ray

    from base import actors

    wanted = {namespaces} if isinstance(namespaces, str) else set(namespaces)
    out = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        name, namespace = a.get("name", ""), a.get("namespace")
        if namespace not in wanted or not name.startswith(PULLED_PREFIXES):
            continue
        try:
            h = ray.get_actor(name, namespace=namespace)
            boot, seq = at.get(name, ("", 0))
            batch = actors.call(h.events_since, seq, cred=token or None,
                                timeout_s=EVENTS_PULL_TIMEOUT_S)
            if isinstance(batch, dict) and batch.get("boot") != boot and seq:
                batch = actors.call(h.events_since, 0, cred=token or None,
                                    timeout_s=EVENTS_PULL_TIMEOUT_S)  # restarted: from 1
            out.append((name, batch))
        except Exception:  # noqa: BLE001 - gone, restarting, or an older version: skipped
            continue
    return out


def note_nodes(old: dict, new: dict, info: dict) -> None:
    """Nodes that joined or left between two views of Ray's node table (as events)."""
    for n in sorted(set(new) - set(old)):
        events.emit("fuxi", "node_joined", f"node {n[:12]} joined ({new[n]})", node=n,
                    address=info.get(n, {}).get("address"))
    for n in sorted(set(old) - set(new)):
        events.emit("fuxi", "node_lost", f"node {n[:12]} lost", severity="warning", node=n)


SERVICE_EVENT_KINDS = (  # (words in the core's text, kind), first match wins
    ("autoscaled", "service_autoscaled"),
    ("ready on", "replica_ready"), ("adopted", "replica_adopted"),
    ("asked for node", "replica_misplaced"), ("died", "replica_died"),
    ("health", "replica_unhealthy"), ("stopped", "replica_stopped"),
    ("canary", "service_canary"),  # started, promoted, rolled back
    ("rolled back", "service_rolled_back"), ("upgrade", "service_upgrade"),
    ("scaled", "service_scaled"), ("registered", "service_registered"),
    ("removal", "service_removing"))


def forward_service_events(name: str, core, seen: dict) -> None:
    """The service core's new lines (``ServiceCore.events``) as events of this process:
    ``seen`` holds how many of each service's were forwarded."""
    total = getattr(core, "events_total", 0)
    new = total - seen.get(name, 0)
    if new <= 0:
        return
    seen[name] = total
    for line in core.events[-min(new, len(core.events)):]:
        _, _, text = line.partition(" ")
        first = text.split(" ", 1)[0]
        replica = first if first.startswith(f"{name}-") else None
        kind = next((k for words, k in SERVICE_EVENT_KINDS if words in text), "service_event")
        bad = kind in ("replica_died", "replica_unhealthy", "service_rolled_back")
        events.emit("fuxi.services", kind, f"service {name}: {text}", service=name,
                    replica=replica, severity="warning" if bad else "info")


def offline_events(data_dir: str, since_id: int = 0, since_at: float | None = None,
                   kinds: list[str] | None = None, limit: int = 1000,
                   match: dict | None = None) -> dict:
    """The same query on the files of a cluster that is not running (no Ray)."""
    kinds, match = check_kinds(kinds), check_match(match)
    reading = eventfile.Reading()
    out, last = [], 0
    for r in eventfile.iter_events(os.path.join(data_dir, "events"), reading=reading):
        last = max(last, r["id"])
        if r["id"] > since_id and _matches(r, since_at, kinds, match) and len(out) < limit:
            out.append(r)
    return {"events": out, "last_id": last, "torn": reading.torn}


def visible_to(got: dict, who, auth_enabled: bool, may_view) -> dict:
    """A query's answer as ``who`` may see it: with access control on, a job's events only to
    those who may view that job (``may_view(job_id)``); administrators see everything."""
    if auth_enabled and not who.admin:
        got["events"] = [e for e in got["events"] if not e.get("fields", {}).get("job")
                         or may_view(e["fields"]["job"])]
    return got
