"""What a job's core tells about itself: its status and one instance's story (pure; read
only: nothing here changes the core)."""

from __future__ import annotations

from typing import Any

from fuxi.core.states import InstanceState as I


def status(core, now: float) -> dict[str, Any]:
    tasks = {}
    for name in core.order:
        insts = core.instances[name]
        st = core.stats[name]
        tasks[name] = {
            "instances": len(insts),
            "succeeded": st.succeeded,
            "failed": st.failed,
            "running": core.counts[name].get(I.RUNNING, 0),
            "attempts": st.attempts,
            "retries": st.retries,
            "backups_launched": st.backups_launched,
            "backups_won": st.backups_won,
            "recovered": st.recovered, "rerun": st.rerun,
        }
        if core.tasks[name].preferred_nodes:
            tasks[name]["data_local"] = st.data_local
    return {
        "job_id": core.job_id,
        "name": core.plan.name,
        "state": core.state.value,
        "submitted_at": core.created_at,
        "started_at": core.started_at,
        "finished_at": core.finished_at,
        "output": core.plan.output,
        "workers": core.index.live_total,
        "workers_started": len(core.workers),  # replacements of blacklisted workers included
        "blacklisted_nodes": core.blacklist.view(now),  # level, reason, expiry
        "preempted_attempts": core.preempted,
        "jobmaster_restarts": core.resumed,
        "tasks": tasks,
        "report": core.report,
    }

def story(core, task: str, index: int) -> list[str]:
    """What happened to one instance, attempt by attempt (for reports and debugging)."""
    inst = core.instances[task][index]
    lines = [f"{task}[{index}]: {inst.state.value}, {inst.failures} failed attempt(s)"]
    for a in inst.attempts:
        kind = "backup" if a.backup else "attempt"
        lines.append(
            f"  {kind} {a.key[2]} on worker {a.worker_id} (node {a.node_id[:12]}): {a.state.value}"
            + (f" — {a.error.strip().splitlines()[-1]}" if a.error.strip() else "")
        )
    return lines
