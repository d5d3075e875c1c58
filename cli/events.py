"""``fuxi events``, ``fuxi explain job|service`` and the job timeline's writer."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from typing import List, Optional

import typer

from cli.common import EXIT_BAD_INPUT, ClusterOpt, fail, handle, print_json

EVENTS_WAIT_S = 10.0  # one long poll of --follow (FuxiMaster's ceiling: EVENTS_WAIT_S_MAX)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT
SINCE_DAYS_MAX = 3650  # --since 10y is the furthest back a duration reaches
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

explain_app = typer.Typer(no_args_is_help=True)


def parse_since(text: str | None, now: float) -> tuple[int, float | None]:
    """``--since``: an event id (``1234``) or a duration back from now (``90s``, ``10m``,
    ``2h``, ``1d``); returns (since id, since time). Garbage is a ``BadInput``."""
    from fuxi.errors import BadInput

    if text is None:
        return 0, None
    t = text.strip()
    if t.isdigit() and len(t) <= 18:
        return int(t), None
    m = _DURATION.match(t)
    if m:
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
        if seconds <= SINCE_DAYS_MAX * 86400:
            return 0, now - seconds
    raise BadInput(f"--since {text!r}: expected an event id (a whole number, e.g. 1200) or a "
                   f"duration back from now (e.g. 90s, 10m, 2h, 1d; at most {SINCE_DAYS_MAX}d)")


def _line(e: dict) -> str:
    when = dt.datetime.fromtimestamp(e.get("at") or 0).strftime("%Y-%m-%d %H:%M:%S")
    return (f"#{e.get('id')} {when} {e.get('severity', 'info'):<8} {e.get('source', '?')}"
            f" {e.get('kind')}: {e.get('message')}")


def _print(e: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(e, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(_line(e) + "\n")
    sys.stdout.flush()


def events(
    since: Optional[str] = typer.Option(None, "--since", help="An event id, or a duration back "
                                        "from now (90s, 10m, 2h, 1d)."),
    kind: List[str] = typer.Option([], "--kind", "-k", help="Only this kind (repeat; "
                                   "`instance_*` is a prefix)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    limit: int = typer.Option(1000, "--limit", help="At most this many (without --follow)."),
    cluster: str = ClusterOpt,
) -> None:
    """The cluster's event log: nodes, jobs, retries, backups, services, Nuwa, Pangu."""
    from base.errors import BadInput
    from fuxi.shells.clusterlog import EVENTS_QUERY_MAX, check_kinds

    try:  # bad input is refused before any cluster is looked for
        since_id, since_at = parse_since(since, time.time())
        kinds = check_kinds(list(kind))
        if not 1 <= limit <= EVENTS_QUERY_MAX:
            raise BadInput(f"--limit {limit}: expected 1 to {EVENTS_QUERY_MAX}")
    except BadInput as e:
        fail(str(e), EXIT_BAD_INPUT)
    from cli.job import jobs_client

    try:
        with jobs_client(cluster) as jobs:
            if not follow:
                got = jobs.events(since_id, since_at, kinds, limit)
                for e in got["events"]:
                    _print(e, as_json)
                if got.get("torn"):
                    typer.echo(f"fuxi: {got['torn']} damaged line(s) skipped (a crash "
                               f"mid-write)", err=True)
                return
            if not hasattr(jobs, "follow_events"):
                raise BadInput(f"--follow needs a running cluster {cluster!r}; start one "
                               f"with `fuxi up` (without --follow the files are read)")
            for e in jobs.follow_events(since_id, since_at, kinds, EVENTS_WAIT_S):
                _print(e, as_json)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED)
    except Exception as e:
        handle(e)


# ------------------------------------------------------------ explain


@explain_app.command("job")
def explain_job(
    job_id: str,
    task: str = typer.Option(..., "--task", help="The task's name."),
    instance: int = typer.Option(..., "--instance", help="The instance (0-based)."),
    as_json: bool = typer.Option(False, "--json"),
    cluster: str = ClusterOpt,
) -> None:
    """One instance's story: each attempt, where and why, how it ended, who won."""
    from cli.job import jobs_client
    from fuxi.core.story import check_instance, instance_story, story_text

    try:
        with jobs_client(cluster) as jobs:
            doc = jobs.attempts(job_id)
            check_instance(doc, task, instance)
            evs = jobs.events(0, None, None, 1000, 0.0, {"job": job_id, "task": task,
                                                         "instance": instance})["events"]
    except Exception as e:
        handle(e)
    story = instance_story(doc, task, instance, evs)
    if as_json:
        print_json(story)
    else:
        typer.echo(story_text(story, doc.get("submitted_at")))


@explain_app.command("service")
def explain_service(
    name: str,
    replica: str = typer.Option(..., "--replica", help="The replica: its id (NAME-3) or number."),
    as_json: bool = typer.Option(False, "--json"),
    cluster: str = ClusterOpt,
) -> None:
    """One service replica's story: placed, started, health, restarts, upgrades."""
    from cli.job import jobs_client
    from fuxi.core.story import service_story, service_text

    try:
        service_story(name, replica, [])  # its id is checked before any cluster is looked for
        with jobs_client(cluster) as jobs:
            evs = jobs.events(0, None, None, 10_000, 0.0, {"service": name})["events"]
        story = service_story(name, replica, evs)
    except Exception as e:
        handle(e)
    if as_json:
        print_json(story)
    else:
        typer.echo(service_text(story))
