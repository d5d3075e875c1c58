"""The web console's pages as HTML text, from the plain documents the platform's status calls
return (``cluster_info``, job status and attempts, service status, Pangu's and Nuwa's status).

Pure: values in, text out; everything from the platform is escaped (``webviews.esc``). A page
is a frame (title, navigation, a small script that reloads the ``<main>`` part every
``POLL_MS`` while the tab is visible — live updates with no build step and no framework) around
a body built by one function per page. Tables are bounded (``TABLE_ROWS_MAX``) and say what
they left out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterable, Mapping

from fuxi.core.webviews import cut, dag_svg, esc, timeline_svg

POLL_MS = 2000  # the page's refresh of its <main> part
TABLE_ROWS_MAX = 500  # rows of one table on a page

NAV = (("/", "overview"), ("/jobs", "jobs"), ("/services", "services"),
       ("/storage", "storage"), ("/coordination", "coordination"))

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;color:#223}
header{background:#1d2b3a;color:#fff;padding:8px 16px;display:flex;gap:18px;align-items:center}
header a{color:#cfe3ff;text-decoration:none}header a.on{color:#fff;font-weight:bold}
header .who{margin-left:auto;color:#9ab}main{padding:12px 16px}
table{border-collapse:collapse;margin:6px 0 16px}td,th{border-bottom:1px solid #e3e6ea;
padding:3px 10px;text-align:left;white-space:nowrap}th{background:#f3f5f8}
.bad{color:#b3261e}.warn{color:#a15c00}.ok{color:#1e7b34}.muted{color:#778}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #dde;border-radius:6px;
padding:8px 14px;min-width:120px}.card b{font-size:20px;display:block}
svg.dag rect{fill:#f4f7fb;stroke:#8897aa}svg.dag .task-done rect{fill:#e7f6ea;stroke:#3b8f4e}
svg.dag .task-failed rect{fill:#fdecea;stroke:#b3261e}svg.dag .task-running rect{fill:#e8f0fe;
stroke:#3367d6}svg.dag rect.progress{fill:#3b8f4e;stroke:none}svg text{font-family:system-ui}
svg.timeline .bar rect{fill:#3367d6}svg.timeline .ok rect{fill:#3b8f4e}
svg.timeline .bad rect{fill:#b3261e}svg.timeline .lost rect{fill:#9aa3ad}
svg.timeline .wait rect{fill:#c9d3df}svg.timeline .backup rect{stroke:#ff9800;stroke-width:2}
svg.timeline .retry rect{stroke:#6a1b9a;stroke-width:2;stroke-dasharray:3 2}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:12px;
height:10px;margin-right:4px;vertical-align:middle}.scroll{overflow-x:auto}
form.login{max-width:320px;margin:60px auto;display:grid;gap:8px}
"""

SCRIPT = """
(function(){var u=new URL(location.href);u.searchParams.set('partial','1');
function tick(){if(document.hidden)return;fetch(u,{credentials:'same-origin'}).then(function(r){
if(r.status===401){location.href='/login';return null}return r.ok?r.text():null}).then(function(t){
if(t!==null&&t!==undefined){document.querySelector('main').innerHTML=t;
document.body.dataset.updated=String(Date.now())}}).catch(function(){})}
setInterval(tick,%d)})();
""" % POLL_MS


def when(ts: Any) -> str:
    try:
        return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def gib(n: Any) -> str:
    try:
        return f"{float(n) / 1024 ** 3:.1f} GiB"
    except (TypeError, ValueError):
        return "-"


def frame(title: str, path: str, body: str, user: str | None = None) -> str:
    nav = "".join(f'<a href="{href}" class="{"on" if path == href else ""}">{name}</a>'
                  for href, name in NAV)
    who = f'<span class="who">{esc(user)} · <a href="/logout">sign out</a></span>' if user \
        else ""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)} — Fuxi'
            f'</title><style>{STYLE}</style></head><body><header><b>Fuxi</b>{nav}{who}'
            f'</header><main>{body}</main><script>{SCRIPT}</script></body></html>')


def login_page(error: str = "") -> str:
    msg = f'<p class="bad">{esc(error)}</p>' if error else ""
    return ('<!doctype html><html><head><meta charset="utf-8"><title>Sign in — Fuxi</title>'
            f'<style>{STYLE}</style></head><body><form class="login" method="post" '
            'action="/login"><h2>Sign in to Fuxi</h2>'
            f'{msg}<input name="user" placeholder="user" autocomplete="username" required>'
            '<input name="password" type="password" placeholder="password" '
            'autocomplete="current-password" required><button type="submit">Sign in</button>'
            '</form></body></html>')


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """``rows``: cells already escaped (HTML)."""
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in headers)
           + "</tr>"]
    n = 0
    rows = list(rows)
    for r in rows[:TABLE_ROWS_MAX]:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
        n += 1
    out.append("</table>")
    if len(rows) > n:
        out.append(f'<p class="muted">{len(rows) - n} more rows not shown '
                   f'(TABLE_ROWS_MAX={TABLE_ROWS_MAX})</p>')
    return "".join(out)


def errors_html(errors: Iterable[str]) -> str:
    return "".join(f'<p class="bad">! {esc(e)}</p>' for e in errors)


def _res(free: Mapping, total: Mapping, key: str) -> str:
    t = total.get(key) or 0
    if key == "memory":
        return f"{gib(free.get(key, 0))} / {gib(t)}"
    return f"{float(free.get(key, 0) or 0):g} / {float(t):g}"


def nodes_table(nodes: list[Mapping[str, Any]]) -> str:
    rows = []
    for n in nodes:
        total, free = n.get("resources") or {}, n.get("free") or {}
        ag = n.get("agent") or {}
        bl = n.get("blacklisted")
        state = ag.get("state") or "-"
        rows.append([f'<span class="node-id">{esc(cut(n.get("node_id", ""), 16))}</span>',
                     esc(n.get("address") or "-"), _res(free, total, "CPU"),
                     _res(free, total, "memory"),
                     _res(free, total, "GPU") if total.get("GPU") else "-",
                     "-" if ag.get("load") is None else f"{float(ag['load']):.2f}",
                     f'<span class="{"ok" if state == "healthy" else "warn"}">{esc(state)}</span>',
                     esc(ag.get("workers", "-")),
                     f'<span class="bad">{esc(cut(bl.get("reason", "yes"), 80))}</span>'
                     if isinstance(bl, Mapping) else "-"])
    return table(("node", "address", "CPU free / total", "memory free / total",
                  "GPU free / total", "load", "agent", "workers", "blacklisted"), rows, "nodes")


ACTIVE = ("running", "queued", "pending", "starting")


def alerts_table(alerts: list[Mapping[str, Any]], view: Mapping[str, Any]) -> str:
    note = (f'<p class="warn">{esc(view["metrics_error"])}</p>'
            if view.get("metrics_error") else "")
    if not alerts:
        return note + '<p class="ok alerts-none">no active alert</p>'
    cls = {"critical": "bad", "warning": "warn"}
    rows = [[f'<span class="{"bad" if a.get("state") == "firing" else "muted"}">'
             f'{esc(a.get("state", ""))}</span>',
             f'<span class="{cls.get(a.get("severity"), "")}">{esc(a.get("severity", ""))}</span>',
             esc(a.get("rule", "")),
             esc(", ".join(f"{k}={v}" for k, v in (a.get("labels") or {}).items()) or "-"),
             esc(when(a.get("fired_at") or a.get("since"))), esc(cut(a.get("summary", ""), 200))]
            for a in alerts]
    return note + table(("state", "severity", "rule", "labels", "since", "summary"), rows,
                        "alerts")


def overview(info: Mapping[str, Any] | None, jobs: list[Mapping[str, Any]],
             services: list[Mapping[str, Any]], errors: Iterable[str] = ()) -> str:
    info = info or {}
    nodes = info.get("nodes") or []
    running = sum(1 for j in jobs if j.get("state") == "running")
    waiting = sum(1 for j in jobs if j.get("state") in ACTIVE and j.get("state") != "running")
    failed = sum(1 for j in jobs if j.get("state") == "failed")
    cpu_total = sum(float((n.get("resources") or {}).get("CPU", 0) or 0) for n in nodes)
    cpu_free = sum(float((n.get("free") or {}).get("CPU", 0) or 0) for n in nodes)
    unready = [s for s in services if (s.get("ready") or 0) < (s.get("desired") or 0)]
    alerts = (info.get("alerts") or {}).get("active") or []
    firing = [a for a in alerts if a.get("state") == "firing"]
    cards = [("alerts firing", len(firing)), ("nodes", len(nodes)),
             ("CPUs in use", f"{cpu_total - cpu_free:g} / {cpu_total:g}"),
             ("jobs running", running), ("jobs waiting", waiting), ("jobs failed", failed),
             ("services", len(services)), ("services not ready", len(unready))]
    body = [f'<h2>Cluster {esc(info.get("cluster", ""))}</h2>', errors_html(errors),
            '<div class="cards">' + "".join(f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>'
                                            for k, v in cards) + "</div>",
            "<h3>Alerts</h3>", alerts_table(alerts, (info.get("alerts") or {})),
            "<h3>Nodes</h3>", nodes_table(nodes)]
    if info.get("blacklist"):
        body.append("<h3>Blacklisted for every job</h3>" + table(
            ("node", "reason"), [[esc(cut(e.get("node", ""), 16)), esc(e.get("reason", ""))]
                                 for e in info["blacklist"]]))
    lines = list(info.get("nuwa_events") or [])[-10:] + list(info.get("agent_events") or [])[-10:]
    if lines:
        body.append("<h3>Recent platform events</h3><ul>"
                    + "".join(f"<li>{esc(cut(x, 300))}</li>" for x in lines) + "</ul>")
    return "".join(body)


def _progress(st: Mapping[str, Any]) -> str:
    tasks = (st.get("tasks") or {}).values()
    total = sum(int(t.get("instances") or 0) for t in tasks)
    done = sum(int(t.get("succeeded") or 0) for t in tasks)
    return f"{done}/{total}" if total else "-"


def jobs_page(jobs: list[Mapping[str, Any]], errors: Iterable[str] = ()) -> str:
    rows = []
    for j in reversed(jobs):  # newest first
        jid = str(j.get("job_id", ""))
        state = str(j.get("state", ""))
        cls = {"failed": "bad", "succeeded": "ok", "cancelled": "muted"}.get(state, "")
        if state == "queued" and j.get("position"):
            state = f"queued #{j['position']}"
        rows.append([f'<a href="/jobs/{esc(jid)}">{esc(cut(jid, 44))}</a>',
                     esc(cut(j.get("name") or "", 40)), f'<span class="{cls}">{esc(state)}</span>',
                     esc(j.get("queue") or "default"), _progress(j),
                     esc(when(j.get("submitted_at"))), esc(when(j.get("finished_at")))])
    return ("<h2>Jobs</h2>" + errors_html(errors)
            + table(("job", "name", "state", "queue", "done", "submitted", "finished"), rows,
                    "jobs"))


LEGEND = ('<p class="legend"><span><i class="sw" style="background:#3b8f4e"></i>succeeded'
          '</span><span><i class="sw" style="background:#3367d6"></i>running</span><span>'
          '<i class="sw" style="background:#b3261e"></i>failed</span><span><i class="sw" '
          'style="background:#9aa3ad"></i>killed / lost</span><span><i class="sw" '
          'style="border:2px solid #ff9800"></i>backup (B)</span><span><i class="sw" '
          'style="border:2px dashed #6a1b9a"></i>retry (R)</span></p>')


def job_page(st: Mapping[str, Any], attempts: Mapping[str, Any] | None, now: float,
             errors: Iterable[str] = ()) -> str:
    tasks = st.get("tasks") or {}
    rows = [[esc(name), f'{int(t.get("succeeded") or 0)}/{int(t.get("instances") or 0)}',
             esc(t.get("running", 0)), esc(t.get("failed", 0)), esc(t.get("attempts", 0)),
             esc(t.get("retries", 0)),
             f'{int(t.get("backups_won") or 0)}/{int(t.get("backups_launched") or 0)}']
            for name, t in tasks.items()]
    rows_a = list((attempts or {}).get("attempts") or [])
    backups = sum(1 for a in rows_a if a.get("backup"))
    body = [f'<h2>Job {esc(st.get("job_id", ""))} <span class="muted">'
            f'{esc(st.get("name") or "")}</span></h2>', errors_html(errors),
            f'<p>state <b class="job-state">{esc(st.get("state", ""))}</b> · queue '
            f'{esc(st.get("queue") or "default")} · submitted {esc(when(st.get("submitted_at")))}'
            f' · started {esc(when(st.get("started_at")))} · finished '
            f'{esc(when(st.get("finished_at")))} · workers {esc(st.get("workers", "-"))} · '
            f'preempted attempts {esc(st.get("preempted_attempts", 0))}</p>',
            "<h3>DAG</h3>", f'<div class="scroll">{dag_svg(tasks)}</div>',
            table(("task", "done", "running", "failed", "attempts", "retries",
                   "backups won/launched"), rows, "tasks"),
            f"<h3>Timeline of attempts <span class=\"muted\">({len(rows_a)} attempts, "
            f"{backups} backups)</span></h3>", LEGEND]
    if attempts is None:
        body.append('<p class="muted">no attempts recorded for this job</p>')
    else:
        body.append(f'<div class="scroll">{timeline_svg(rows_a, now)}</div>')
        if attempts.get("attempts_dropped"):
            body.append(f'<p class="muted">{esc(attempts["attempts_dropped"])} uneventful '
                        f'attempts were not recorded</p>')
    if st.get("report"):
        body.append(f"<h3>Report</h3><pre>{esc(cut(st['report'], 20000))}</pre>")
    return "".join(body)


def services_page(services: list[Mapping[str, Any]], errors: Iterable[str] = ()) -> str:
    rows = []
    for s in services:
        name = str(s.get("name", ""))
        ready, desired = s.get("ready") or 0, s.get("desired") or 0
        rows.append([f'<a href="/services/{esc(name)}">{esc(name)}</a>', esc(s.get("version")),
                     f'<span class="{"ok" if ready >= desired else "bad"}">{esc(ready)}/'
                     f'{esc(desired)}</span>', esc(s.get("requests_per_s", "-")),
                     esc(s.get("rollout") or "-")])
    return ("<h2>Services</h2>" + errors_html(errors)
            + table(("service", "version", "ready", "requests/s", "rollout"), rows, "services"))


def _ms(v: Any) -> str:
    try:
        return f"{float(v) * 1000:.1f} ms" if v is not None else "-"
    except (TypeError, ValueError):
        return "-"


def service_page(st: Mapping[str, Any], errors: Iterable[str] = ()) -> str:
    rows = []
    for r in st.get("replicas") or []:
        health = str(r.get("health") or "-")
        lat = r.get("latency") or {}
        rows.append([esc(r.get("replica", "")), esc(r.get("version", "")),
                     esc(r.get("state", "")),
                     f'<span class="{"ok" if health == "ok" else "warn"}">{esc(health)}</span>',
                     esc(cut(r.get("node") or r.get("node_id") or "-", 16)),
                     esc(r.get("requests", "-")), esc(r.get("errors", "-")),
                     _ms(lat.get("p50_s") if isinstance(lat, Mapping) else None),
                     _ms(lat.get("p99_s") if isinstance(lat, Mapping) else None),
                     esc(r.get("restarts", 0))])
    return (f'<h2>Service {esc(st.get("name", ""))}</h2>' + errors_html(errors)
            + f'<p>version {esc(st.get("version", ""))} · {esc(st.get("ready", 0))}/'
              f'{esc(st.get("desired", 0))} ready · rollout {esc(st.get("rollout") or "-")}</p>'
            + "<h3>Replicas</h3>"
            + table(("replica", "version", "state", "health", "node", "requests", "errors",
                     "p50", "p99", "restarts"), rows, "replicas"))


def storage_page(pangu: Mapping[str, Any] | None, fsck: Mapping[str, Any] | None,
                 errors: Iterable[str] = ()) -> str:
    body = ["<h2>Storage (Pangu)</h2>", errors_html(errors)]
    if pangu is None:
        body.append('<p class="muted">Pangu is not running on this cluster</p>')
        return "".join(body)
    servers = pangu.get("servers") or []
    if isinstance(servers, Mapping):
        servers = [dict(v, id=k) for k, v in servers.items()]
    live = [s for s in servers if not s.get("dead")]
    cap = sum(float(s.get("capacity_bytes") or 0) for s in live)
    used = sum(float(s.get("used_bytes") or 0) for s in live)
    fs = fsck or {}
    cards = [("files", pangu.get("files", "-")), ("chunks", pangu.get("chunks", "-")),
             ("capacity (live servers)", gib(cap)), ("used", gib(used)),
             ("under-replicated chunks", fs.get("under_replicated", "-")),
             ("missing chunks", fs.get("missing", "-")),
             ("stale-only chunks", fs.get("stale_only", "-")),
             ("corrupt replicas found", fs.get("corrupt_found", "-"))]
    body.append(f'<p>active master {esc(pangu.get("master", "-"))} · epoch '
                f'{esc(pangu.get("epoch", "-"))}</p>')
    body.append('<div class="cards">' + "".join(
        f'<div class="card"><b>{esc(v if not isinstance(v, list) else len(v))}</b>{esc(k)}</div>'
        for k, v in cards) + "</div>")
    rows = [[esc(s.get("id") or s.get("name") or ""), esc(cut(s.get("node") or "-", 16)),
             '<span class="bad">dead</span>' if s.get("dead") else
             '<span class="warn">draining</span>' if s.get("draining") else "live",
             esc(gib(s.get("used_bytes"))), esc(gib(s.get("capacity_bytes"))),
             esc(s.get("chunks", "-")), esc(s.get("last_heartbeat_s", "-"))] for s in servers]
    body.append("<h3>Chunkservers</h3>" + table(("server", "node", "state", "used", "capacity",
                                                 "chunks", "heartbeat age (s)"), rows,
                                                "chunkservers"))
    return "".join(body)


def _addr(a: Any) -> str:
    if isinstance(a, (list, tuple)) and len(a) == 2:
        return f"{a[0]}:{a[1]}"
    return str(a or "-")


def coordination_page(replicas: list[Mapping[str, Any]], errors: Iterable[str] = ()) -> str:
    top = max((int(r.get("commit") or 0) for r in replicas), default=0)
    rows = []
    for r in sorted(replicas, key=lambda r: int(r.get("id") or 0)):
        role = str(r.get("role") or "-").rsplit(".", 1)[-1].lower()
        rows.append([esc(r.get("id", "")), f'<span class="{"ok" if role == "leader" else ""}">'
                     f'{esc(role)}</span>', esc(r.get("term", "-")), esc(r.get("leader", "-")),
                     esc(r.get("commit", "-")), esc(r.get("applied", "-")),
                     esc(top - int(r.get("commit") or 0)), esc(_addr(r.get("address"))),
                     esc(r.get("sessions", "-")), esc(r.get("watchers", "-")),
                     '<span class="bad">stopped</span>' if r.get("stopped") else "-"])
    leaders = {r.get("leader") for r in replicas if r.get("leader")}
    head = (f"<p>leader: {esc(', '.join(str(x) for x in sorted(leaders)) or 'none')} · "
            f"{len(replicas)} replica(s) answering</p>")
    return ("<h2>Coordination (Nuwa)</h2>" + errors_html(errors) + head
            + table(("replica", "role", "term", "leader", "commit", "applied", "lag", "address",
                     "sessions", "watchers", "stopped"), rows, "nuwa"))
