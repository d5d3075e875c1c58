"""The web console's pictures, as SVG text: a job's DAG (each task a box with its instance
counts by state, each edge its shuffle mode) and a timeline of attempts (one row per worker,
grouped by node; stragglers, backups and retries visible at a glance).

Pure: values in, text out. Every name that reaches the page is escaped (task names, node ids
and errors come from users); the pictures are bounded (``DAG_TASKS_MAX`` boxes,
``TIMELINE_ATTEMPTS_MAX`` bars, ``TIMELINE_ROWS_MAX`` rows) and say what they left out.
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Mapping

DAG_TASKS_MAX = 200  # boxes drawn in one DAG picture
TIMELINE_ATTEMPTS_MAX = 5000  # bars drawn in one timeline
TIMELINE_ROWS_MAX = 400  # worker rows in one timeline
LABEL_CHARS_MAX = 40  # a name cut to this many characters in a picture

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 190, 74, 70, 26, 16
ROW_H, LABEL_W, PLOT_W, AXIS_H = 16, 190, 900, 22

# Attempt outcome -> colour (CSS classes the page also explains in its legend).
OUTCOME_CLASS = {"succeeded": "ok", "failed": "bad", "running": "run", "queued": "wait",
                 "killed": "lost", "lost": "lost", "late": "lost", "timed_out": "bad"}


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def cut(v: Any, n: int = LABEL_CHARS_MAX) -> str:
    s = str(v)
    return s if len(s) <= n else s[:n - 1] + "…"


def levels(tasks: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Each task's column: one more than its deepest producer (producers outside ``tasks``
    ignored, a cycle — which a checked plan never has — broken by visiting order)."""
    out: dict[str, int] = {}
    visiting: set[str] = set()

    def level(name: str) -> int:
        if name in out:
            return out[name]
        if name in visiting:
            return 0
        visiting.add(name)
        ups = [u["from"] for u in tasks[name].get("upstream") or () if u.get("from") in tasks]
        out[name] = 1 + max((level(u) for u in ups), default=-1)
        visiting.discard(name)
        return out[name]

    for name in tasks:
        level(name)
    return out


def dag_svg(tasks: Mapping[str, Mapping[str, Any]]) -> str:
    """``tasks``: name -> the job status's task entry (``instances``, ``succeeded``,
    ``running``, ``failed``, ``retries``, ``backups_launched``, ``backups_won``) plus
    ``upstream``: ``[{"from": producer, "mode": shuffle mode}]``."""
    names = list(tasks)[:DAG_TASKS_MAX]
    shown = {n: tasks[n] for n in names}
    lv = levels(shown)
    cols: dict[int, list[str]] = {}
    for n in names:
        cols.setdefault(lv[n], []).append(n)
    pos: dict[str, tuple[int, int]] = {}
    for c, members in cols.items():
        for r, n in enumerate(members):
            pos[n] = (PAD + c * (BOX_W + GAP_X), PAD + r * (BOX_H + GAP_Y))
    width = PAD * 2 + (max(cols, default=0) + 1) * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + max((len(m) for m in cols.values()), default=1) * (BOX_H + GAP_Y) - GAP_Y
    left_out = len(tasks) - len(names)
    if left_out:
        height += 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="job DAG">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
           'fill="#667"/></marker></defs>']
    for n in names:
        x2, y2 = pos[n]
        for u in shown[n].get("upstream") or ():
            src = u.get("from")
            if src not in pos:
                continue
            x1, y1 = pos[src]
            ax, ay, bx, by = x1 + BOX_W, y1 + BOX_H // 2, x2, y2 + BOX_H // 2
            mx = (ax + bx) // 2
            out.append(f'<path class="edge" d="M {ax} {ay} C {mx} {ay}, {mx} {by}, {bx} {by}" '
                       f'fill="none" stroke="#667" stroke-width="1.5" '
                       f'marker-end="url(#arrow)"/>')
            out.append(f'<text class="edge-label" x="{mx}" y="{(ay + by) // 2 - 4}" '
                       f'text-anchor="middle" font-size="10" fill="#556">'
                       f'{esc(cut(u.get("mode", ""), 16))}</text>')
    for n in names:
        t, (x, y) = shown[n], pos[n]
        total = max(int(t.get("instances") or 0), 0)
        done, running, failed = (int(t.get(k) or 0) for k in ("succeeded", "running", "failed"))
        frac = done / total if total else 0.0
        state = "done" if total and done >= total else "failed" if failed else \
            "running" if running else "waiting"
        out.append(f'<g class="task task-{state}" data-task="{esc(n)}">'
                   f'<title>{esc(n)}: {done}/{total} done, {running} running, {failed} failed, '
                   f'{int(t.get("retries") or 0)} retries, backups '
                   f'{int(t.get("backups_won") or 0)}/{int(t.get("backups_launched") or 0)} won'
                   f'</title>'
                   f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6"/>'
                   f'<rect class="progress" x="{x}" y="{y + BOX_H - 6}" '
                   f'width="{int(BOX_W * frac)}" height="6"/>'
                   f'<text x="{x + 8}" y="{y + 18}" font-weight="bold">{esc(cut(n, 24))}</text>'
                   f'<text x="{x + 8}" y="{y + 36}" font-size="12">{done}/{total} done · '
                   f'{running} running</text>'
                   f'<text x="{x + 8}" y="{y + 52}" font-size="12">{failed} failed · '
                   f'{int(t.get("retries") or 0)} retries · backups '
                   f'{int(t.get("backups_won") or 0)}/{int(t.get("backups_launched") or 0)}'
                   f'</text></g>')
    if left_out:
        out.append(f'<text x="{PAD}" y="{height - 6}" font-size="12">{left_out} more tasks not '
                   f'drawn (DAG_TASKS_MAX={DAG_TASKS_MAX})</text>')
    out.append("</svg>")
    return "".join(out)


def _outcome(a: Mapping[str, Any]) -> str:
    return str(a.get("state") or a.get("outcome") or "running").lower()


def timeline_svg(attempts: Iterable[Mapping[str, Any]], now: float) -> str:
    """``attempts``: dicts with ``task``, ``instance``, ``attempt``, ``worker``, ``node``,
    ``started_at``, ``ended_at`` (None while running), ``state`` and ``backup`` (and
    optionally ``won``). One row per worker, rows grouped by node; a bar per attempt from
    its start to its end (or ``now``), coloured by outcome; backups outlined and marked
    "B", retries (attempt > 0 that is not a backup) marked "R"."""
    rows: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    total = drawn = 0
    for a in attempts:
        total += 1
        if a.get("started_at") is None or drawn >= TIMELINE_ATTEMPTS_MAX:
            continue
        key = (str(a.get("node") or "?"), str(a.get("worker") or "?"))
        if key not in rows and len(rows) >= TIMELINE_ROWS_MAX:
            continue
        rows.setdefault(key, []).append(a)
        drawn += 1
    bars = [a for r in rows.values() for a in r]
    t0 = min((float(a["started_at"]) for a in bars), default=now)
    t1 = max([float(a["ended_at"]) if a.get("ended_at") is not None else now for a in bars]
             + [t0 + 1e-3])
    span = max(t1 - t0, 1e-3)
    height = AXIS_H + ROW_H * max(len(rows), 1) + 24
    width = LABEL_W + PLOT_W + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="timeline of attempts">']
    for i in range(5):  # the time axis: 0 .. span, in seconds from the first start
        x = LABEL_W + PLOT_W * i // 4
        out.append(f'<line x1="{x}" y1="{AXIS_H - 4}" x2="{x}" y2="{height - 24}" '
                   f'stroke="#ddd"/><text x="{x}" y="{AXIS_H - 8}" font-size="10" '
                   f'text-anchor="middle">{span * i / 4:.1f}s</text>')
    last_node = None
    for r, ((node, worker), items) in enumerate(sorted(rows.items())):
        y = AXIS_H + r * ROW_H
        label = f"{cut(node, 12)} / {cut(worker, 14)}" if node != last_node else \
            f"· {cut(worker, 14)}"
        last_node = node
        out.append(f'<text class="row-label" x="4" y="{y + ROW_H - 4}" font-size="10">'
                   f'{esc(label)}</text>')
        for a in items:
            s = float(a["started_at"])
            e = float(a["ended_at"]) if a.get("ended_at") is not None else now
            x = LABEL_W + PLOT_W * (s - t0) / span
            w = max(PLOT_W * (e - s) / span, 2.0)
            outcome = _outcome(a)
            backup = bool(a.get("backup"))
            retry = not backup and int(a.get("attempt") or 0) > 0
            cls = ["bar", OUTCOME_CLASS.get(outcome, "run")] + \
                (["backup"] if backup else []) + (["retry"] if retry else []) + \
                (["won"] if a.get("won") else [])
            name = f"{a.get('task')}[{a.get('instance')}]#{a.get('attempt')}"
            tip = (f"{name} on {node} / {worker}: {outcome}, {e - s:.2f}s"
                   + (" (backup)" if backup else "") + (" (retry)" if retry else "")
                   + (" — won" if a.get("won") else "")
                   + (f" — {cut(a.get('error'), 200)}" if a.get("error") else ""))
            out.append(f'<g class="{" ".join(cls)}" data-attempt="{esc(name)}"><title>'
                       f'{esc(tip)}</title><rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" '
                       f'height="{ROW_H - 4}" rx="2"/>')
            mark = "B" if backup else "R" if retry else ""
            if mark and w >= 10:
                out.append(f'<text x="{x + 2:.1f}" y="{y + ROW_H - 5}" font-size="9" '
                           f'fill="#fff">{mark}</text>')
            out.append("</g>")
    if total > drawn:
        out.append(f'<text x="4" y="{height - 6}" font-size="11">{total - drawn} attempts not '
                   f'drawn (not started, or beyond TIMELINE_ATTEMPTS_MAX={TIMELINE_ATTEMPTS_MAX}'
                   f' / TIMELINE_ROWS_MAX={TIMELINE_ROWS_MAX})</text>')
    out.append("</svg>")
    return "".join(out)
