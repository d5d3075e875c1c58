"""Which of a job's running instances get a backup this tick: JobCore's side of speculation.

The policy (``fuxi.core.speculation``) decides from facts JobCore keeps up to date as events
arrive -- finished count and running median per task (``TaskStats``), running attempts in
start order (``JobCore.by_start``), instances that have a backup running
(``JobCore.doubled``) -- so a tick looks only at attempts already past the straggler
threshold and at backups in flight, never at every instance of the task.
"""

from __future__ import annotations

from typing import Any

from fuxi.core.speculation import CANDIDATE, GONE, NOT_NOW, backup_cap, enough_done, pick_stragglers
from fuxi.core.states import AttemptState, InstanceState

A, I = AttemptState, InstanceState


def backups_due(core: Any, now: float) -> list[Any]:
    """Instances (of ``core``, a ``JobCore``) to queue for a backup now, task by task in plan
    order, slowest first: what ``pick_backups`` over every running instance would choose."""
    policy = core.plan.speculation
    if not policy.enabled:
        return []
    queued = {id(i): i for i in core.backups_pending if i.state is I.RUNNING}
    due: list[Any] = []
    for name in core.order:
        st = core.stats[name]
        n = core.tasks[name].num_instances
        done, median = len(st.durations), st.median_s()
        if not done or core.remaining[name] == 0 or not enough_done(policy, n, done):
            continue
        insts = core.instances[name]
        doubled = core.doubled[name]
        for index in [i for i in doubled if insts[i].state is not I.RUNNING or len(insts[i].live()) < 2]:
            doubled.discard(index)  # its backup or its original ended
        backups_running = len(doubled) + sum(1 for i in queued.values() if i.task == name)
        room = backup_cap(policy, n) - backups_running
        if room <= 0:
            continue

        def judge(index: int, attempt: int, insts: list = insts) -> str:
            inst = insts[index]
            if inst.attempts[attempt].state is not A.RUNNING:
                return GONE
            if len(inst.live()) != 1 or id(inst) in queued:
                return NOT_NOW  # a backup runs or is queued; it may end and this run on alone
            return CANDIDATE

        threshold_s = max(policy.slowdown * median, policy.min_runtime_s)
        running = core.by_start[name].older_than(now, threshold_s, room, judge)
        due += [insts[i] for i in pick_stragglers(policy, n, done, median, running, backups_running)]
    return due
