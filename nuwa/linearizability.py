"""A linearizability checker for key-value histories (Wing & Gong, with Lowe's memoisation).

A client history is a list of :class:`Op`: each operation was *invoked* at some time and then
either returned ``ok`` (it happened, with this result), returned ``fail`` (it definitely did
not happen) or ended ``unknown`` (a timeout or lost connection: it may or may not have
happened, now or at any later time). These are Jepsen's ``ok | fail | info``. :func:`check`
decides whether some total order of the operations

* respects real time: if ``a`` returned before ``b`` was invoked, ``a`` comes first;
* contains every ``ok`` operation, no ``fail`` operation, and any subset of the ``unknown``
  writes (an unknown write may take effect at any point after its invocation, or never);
  an unknown read constrains nothing and is dropped;
* and, replayed against the sequential key-value model below from the initial values,
  gives every ``ok`` operation the result it actually returned.

The sequential model, per key (an absent key is ``None``):

==========  ==========================================================================
``get``     returns the current value (``None`` if absent)
``put``     sets the value; returns ``None``
``delete``  removes the key; returns ``None``
``cas``     if the current value equals ``expected`` (``None``: the key must be absent),
            sets ``value`` and returns ``True``; otherwise changes nothing, returns ``False``
==========  ==========================================================================

How: every operation touches one key and the model of one key is independent of the others,
so a history is linearizable iff each key's sub-history is (P-compositionality, Horn & Kroening
2015); keys are checked one at a time. For one key, the WGL search walks a doubly linked list of
invoke/return events in time order: it tries to linearize the earliest pending invocations
first, lifts a linearized operation (its invoke and return) out of the list, and backtracks when
it reaches the return of an operation it has not linearized. Lowe's memoisation skips any
(set of linearized operations, model value) configuration already explored; the set is an int
bitset. Events with equal timestamps are treated as concurrent (an operation that returned at
``t`` does not precede one invoked at ``t``), so a coarse clock can only make the check more
permissive, never report a false violation.

Limits: the search is exponential in the worst case, so it is bounded by ``time_limit_s`` for
the whole call and by ``states_max`` memo entries per key. Exceeding either gives
``CheckResult(ok=False, timed_out=True)``. **Callers must treat ``timed_out`` as "could not
decide"**, neither a pass nor a proven violation; a definite violation on another key still
wins (``ok=False, timed_out=False``).

Speed (measured on generated histories, CPython 3.11): 300 ops over 5 keys from 5 concurrent
clients check in ~1-3 ms, whether they pass or fail, also with 10-20% unknown outcomes. The
cost grows with the concurrency *per key* and, above all, with many unknown writes on one hot
key: 300 ops on a single key with 10 clients or 20% unknown writes can exhaust the limits when
the history is not linearizable. Unknown writes are pruned hard (see ``_search``), but keep
histories to a few hundred ops per key.

When a key is not linearizable the explanation is built from the smallest failing prefix of
that key's history (cut just after some operation's return; operations still running at the
cut count as unknown) found by binary search, since linearizability is prefix-closed: it names
the operation whose return makes the history impossible, the longest linearization found, the
model value it leaves, and the operations that could not be placed.

Pure Python, no ``ray``: the Raft simulation records histories with :class:`History`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "STATES_MAX",
    "TIME_LIMIT_S",
    "CheckResult",
    "History",
    "Op",
    "check",
]

#: Memo entries (explored configurations) allowed per key before giving up as ``timed_out``.
#: One entry is an (int bitset, value) tuple; two million of them stay well under 1 GiB.
STATES_MAX = 2_000_000
#: Default wall-clock budget for one :func:`check` call.
TIME_LIMIT_S = 10.0

KINDS = ("get", "put", "cas", "delete")
STATUSES = ("ok", "fail", "unknown")

# Explanations list at most this many operations per section.
_EXPLAIN_OPS_MAX = 30
# How many search steps between two looks at the clock.
_CLOCK_CHECK_EVERY = 2048


@dataclass(frozen=True, kw_only=True)
class Op:
    """One client operation, as the client saw it.

    ``value`` is what put/cas write; ``expected`` is the value cas requires (``None``: the key
    must be absent). ``result`` is what an ``ok`` operation returned: for get the value read
    (``None``: absent), for cas ``True``/``False``, for put/delete ``None``. ``return_t`` is
    ``None`` for an operation that never returned (its status must be ``unknown``); for an
    unknown operation it is ignored either way: it may take effect at any time after
    ``invoke_t``.
    """

    client: int
    kind: str
    key: str
    value: bytes | None = None
    expected: bytes | None = None
    invoke_t: float
    return_t: float | None
    status: str
    result: object = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Op.kind must be one of {KINDS}, got {self.kind!r}")
        if self.status not in STATUSES:
            raise ValueError(f"Op.status must be one of {STATUSES}, got {self.status!r}")
        if self.return_t is None and self.status != "unknown":
            raise ValueError(
                f"an Op that never returned (return_t=None) must have status 'unknown', "
                f"got {self.status!r}: {self}"
            )
        if self.return_t is not None and self.return_t < self.invoke_t:
            raise ValueError(f"Op returned (t={self.return_t}) before it was invoked: {self}")
        if self.kind in ("put", "cas") and self.value is None:
            raise ValueError(f"{self.kind} needs a value (use delete to remove a key): {self}")
        if self.status == "ok":
            if self.kind == "cas" and not isinstance(self.result, bool):
                raise ValueError(f"an ok cas must have result True or False, got {self.result!r}")
            if self.kind == "get" and not (self.result is None or isinstance(self.result, bytes)):
                raise ValueError(f"an ok get must have a bytes or None result, got {self.result!r}")

    def describe(self) -> str:
        """A one-line, human-readable rendering, e.g. ``c2 cas 'x' b'1'->b'2' = True ok [3, 5]``."""
        if self.kind == "get":
            call = f"get {self.key!r}"
        elif self.kind == "put":
            call = f"put {self.key!r} {self.value!r}"
        elif self.kind == "delete":
            call = f"delete {self.key!r}"
        else:
            call = f"cas {self.key!r} {self.expected!r}->{self.value!r}"
        if self.status == "ok" and self.kind in ("get", "cas"):
            call += f" = {self.result!r}"
        end = "inf" if self.return_t is None else f"{self.return_t:g}"
        return f"c{self.client} {call} {self.status} [{self.invoke_t:g}, {end}]"


@dataclass
class CheckResult:
    """The verdict of :func:`check`.

    ``ok`` is True only when every key was proven linearizable. ``timed_out`` means the search
    hit ``time_limit_s`` or ``states_max`` before deciding some key (then ``ok`` is False, but
    nothing was proven wrong: treat it as "could not decide"). ``key`` is the first key (in
    order of first invocation) that is not linearizable, or, if none was proven so, the first
    undecided one.
    """

    ok: bool
    key: str | None
    explanation: str
    timed_out: bool
    states_explored: int = 0


# --------------------------------------------------------------------------------------------
# The search for one key


_GET, _PUT, _DELETE, _CAS = 0, 1, 2, 3
_KIND_CODE = {"get": _GET, "put": _PUT, "delete": _DELETE, "cas": _CAS}
_FREE = object()  # no optional op was just placed


class _Unread:
    def __repr__(self) -> str:
        return "<a value nobody read>"


_UNREAD = _Unread()  # stands for every value that no get returned and no cas expected


@dataclass
class _Outcome:
    verdict: str  # "ok" | "fail" | "timeout"
    states: int
    best_order: list[int]  # op indexes of the longest linearization found, in order
    best_value: bytes | None


def _search(
    ops: Sequence[Op],
    events: Sequence[tuple[int, bool]],
    must_return: frozenset[int],
    initial: bytes | None,
    deadline: float,
    states_max: int,
) -> _Outcome:
    """WGL over one key. ``events`` are (op index, is_invoke) in real-time order; an op in
    ``must_return`` has a return event and its result is checked, any other op is optional
    and takes its model effect without a result check (reads must not be passed that way).

    Optional ops: unknown writes stay in the list forever, so a plain search would try every
    subset of them at every point and blow up. It is enough to search linearizations in a
    normal form, because any valid linearization can be rewritten into one, by dropping an
    optional op (it needs no place) or moving it later (its return is at infinity):

    * an optional op that leaves the value as it was is never placed (drop it);
    * an optional op that changed the value from ``v0`` must be followed directly by an op
      that observes the change: a get or a cas whose result ``v0`` would not give. A put or
      delete next (or nothing) would overwrite it unseen (drop it); a get of ``v0`` or a cas
      that ``v0`` also fails could come first, with the optional op right after (move it).

    ``v0`` (or ``_FREE`` when the last op placed was not optional) is part of the memo key,
    since it limits the next move.
    """
    n = len(events)
    head = n  # sentinel
    nxt = list(range(1, n)) + [-1, 0] if n else [-1]  # nxt[head] is the first entry
    prv = [head] + list(range(0, n - 1)) + [-1] if n else [-1]
    op_of = [i for i, _ in events]
    is_call = [c for _, c in events]
    return_entry: dict[int, int] = {}
    for e, (i, c) in enumerate(events):
        if not c:
            return_entry[i] = e
    partner = [return_entry.get(op_of[e], -1) if is_call[e] else -1 for e in range(n)]

    kind = [_KIND_CODE[op.kind] for op in ops]
    # Values no get returned and no cas expected can never be told apart by any later op,
    # so they all become one "unread" value: fewer distinct memo entries.
    read = {ops[i].result for i in must_return if ops[i].kind == "get"}
    read |= {op.expected for op in ops if op.kind == "cas"}
    value = [op.value if op.kind == "get" or op.value in read else _UNREAD for op in ops]
    expected = [op.expected for op in ops]
    result = [op.result for op in ops]
    checked = [i in must_return for i in range(len(ops))]
    bit = [1 << i for i in range(len(ops))]
    # Optional puts of unread values are interchangeable; only the earliest invoked one still
    # pending is ever placed (if a linearization uses a later one, swapping them gives another).
    interchangeable = [not checked[i] and kind[i] == _PUT and value[i] is _UNREAD for i in range(len(ops))]

    # The memo: (ops linearized as a bitset, value, value before a just-placed optional op).
    cache: set[tuple[int, bytes | None, object]] = set()
    # (invoke entry, value before it, `before_optional` before it, `passed_interchangeable`)
    stack: list[tuple[int, object, object, bool]] = []
    passed_interchangeable = False  # this scan already passed an interchangeable op
    linearized = 0
    state = initial
    # The value before the optional op just placed, or _FREE: see "Optional ops" above.
    before_optional: object = _FREE
    best_depth = -1
    best_order: list[int] = []
    best_value = initial
    steps = 0
    e = nxt[head]
    while True:
        steps += 1
        if steps % _CLOCK_CHECK_EVERY == 0 and time.monotonic() > deadline:
            return _Outcome("timeout", len(cache), best_order, best_value)
        if e == -1:  # no return event left: every ok op is linearized
            order = [op_of[x] for x, _, _, _ in stack]
            return _Outcome("ok", len(cache), order, state)
        if is_call[e]:
            i = op_of[e]
            if interchangeable[i]:
                if passed_interchangeable:
                    e = nxt[e]
                    continue
                passed_interchangeable = True
            k = kind[i]
            if k == _GET:
                allowed, new_state = state == result[i], state
                # a read the value before the optional op would satisfy as well: swap them
                if before_optional is not _FREE and before_optional == result[i]:
                    allowed = False
            elif k == _CAS:
                if state == expected[i]:
                    allowed, new_state = (not checked[i] or result[i] is True), value[i]
                elif checked[i]:
                    allowed, new_state = result[i] is False, state
                    # a failing cas the value before the optional op fails as well: swap them
                    if before_optional is not _FREE and before_optional != expected[i]:
                        allowed = False
                else:
                    allowed, new_state = False, state  # an optional cas that changes nothing
            elif before_optional is not _FREE:
                allowed, new_state = False, state  # a blind write hides the optional op
            elif k == _PUT:
                allowed, new_state = True, value[i]
            else:
                allowed, new_state = True, None
            if allowed and not checked[i] and new_state == state:
                allowed = False  # an optional op that changes nothing
            if allowed:
                new_linearized = linearized | bit[i]
                new_before_optional = _FREE if checked[i] else state
                memo = (new_linearized, new_state, new_before_optional)
                if memo not in cache:
                    if len(cache) >= states_max:
                        return _Outcome("timeout", len(cache), best_order, best_value)
                    cache.add(memo)
                    stack.append((e, state, before_optional, passed_interchangeable))
                    passed_interchangeable = False
                    linearized = new_linearized
                    state = new_state
                    before_optional = new_before_optional
                    # lift the invoke and its return out of the list
                    nxt[prv[e]] = nxt[e]
                    if nxt[e] != -1:
                        prv[nxt[e]] = prv[e]
                    r = partner[e]
                    if r != -1:
                        nxt[prv[r]] = nxt[r]
                        if nxt[r] != -1:
                            prv[nxt[r]] = prv[r]
                    if len(stack) > best_depth:
                        best_depth = len(stack)
                        best_order = [op_of[x] for x, _, _, _ in stack]
                        best_value = state
                    e = nxt[head]
                    continue
            e = nxt[e]
        else:
            # The return of an op we have not linearized: this branch is dead, backtrack.
            if not stack:
                return _Outcome("fail", len(cache), best_order, best_value)
            e, state, before_optional, passed_interchangeable = stack.pop()
            linearized &= ~bit[op_of[e]]
            r = partner[e]  # unlift in reverse order of lifting
            if r != -1:
                nxt[prv[r]] = r
                if nxt[r] != -1:
                    prv[nxt[r]] = r
            nxt[prv[e]] = e
            if nxt[e] != -1:
                prv[nxt[e]] = e
            e = nxt[e]


@dataclass
class _KeyHistory:
    key: str
    ops: list[Op]  # the ops that matter (fail ops and unknown reads already dropped)
    history_index: list[int]  # ops[j] is history[history_index[j]]
    events: list[tuple[int, bool]]  # (index into ops, is_invoke), real-time order


def _split_by_key(history: Sequence[Op]) -> list[_KeyHistory]:
    by_key: dict[str, _KeyHistory] = {}
    raw_events: dict[str, list[tuple[float, int, int, bool]]] = {}
    for h, op in enumerate(history):
        if op.status == "fail":
            continue  # definitely had no effect
        if op.status == "unknown" and op.kind == "get":
            continue  # a read whose answer nobody saw constrains nothing
        kh = by_key.get(op.key)
        if kh is None:
            kh = by_key[op.key] = _KeyHistory(op.key, [], [], [])
            raw_events[op.key] = []
        j = len(kh.ops)
        kh.ops.append(op)
        kh.history_index.append(h)
        # At equal times invokes sort before returns: equal timestamps count as concurrent.
        raw_events[op.key].append((op.invoke_t, 0, j, True))
        if op.status == "ok":
            assert op.return_t is not None
            raw_events[op.key].append((op.return_t, 1, j, False))
    for key, kh in by_key.items():
        kh.events = [(j, is_call) for _, _, j, is_call in sorted(raw_events[key])]
    # Keys in order of their first invocation, so "the first failing key" means something.
    return sorted(by_key.values(), key=lambda kh: min(op.invoke_t for op in kh.ops))


def _prefix(kh: _KeyHistory, cut: int) -> tuple[list[tuple[int, bool]], frozenset[int]]:
    """The events up to and including ``kh.events[cut]``; ops still running there are
    treated as unknown (writes optional, reads dropped)."""
    returned = {j for j, is_call in kh.events[: cut + 1] if not is_call}
    events = []
    for j, is_call in kh.events[: cut + 1]:
        if is_call and j not in returned and kh.ops[j].kind == "get":
            continue
        events.append((j, is_call))
    return events, frozenset(returned)


def _describe_ops(kh: _KeyHistory, js: Sequence[int], indent: str = "  ") -> list[str]:
    lines = [f"{indent}#{kh.history_index[j]} {kh.ops[j].describe()}" for j in js[:_EXPLAIN_OPS_MAX]]
    if len(js) > _EXPLAIN_OPS_MAX:
        lines.append(f"{indent}... and {len(js) - _EXPLAIN_OPS_MAX} more")
    return lines


def _explain_failure(
    kh: _KeyHistory, initial: bytes | None, full: _Outcome, deadline: float, states_max: int
) -> tuple[str, int]:
    """Find the smallest failing prefix by binary search and describe it."""
    return_cuts = [pos for pos, (_, is_call) in enumerate(kh.events) if not is_call]
    states = 0
    # Invariant: the prefix ending at return_cuts[hi] fails (the last return: whatever follows
    # is invocations of unknown writes, which cannot make a history fail).
    lo, hi = 0, len(return_cuts) - 1
    outcome_hi = full
    events_hi, returned_hi = _prefix(kh, return_cuts[hi])
    while lo < hi:
        mid = (lo + hi) // 2
        events, returned = _prefix(kh, return_cuts[mid])
        outcome = _search(kh.ops, events, returned, initial, deadline, states_max)
        states += outcome.states
        if outcome.verdict == "timeout":
            break  # explain the smallest failing prefix proven so far
        if outcome.verdict == "fail":
            hi, outcome_hi, events_hi, returned_hi = mid, outcome, events, returned
        else:
            lo = mid + 1
    culprit = kh.events[return_cuts[hi]][0]
    placed = set(outcome_hi.best_order)
    in_prefix = [j for j, is_call in events_hi if is_call]
    unplaced = [j for j in in_prefix if j not in placed]
    lines = [
        f"key {kh.key!r} is not linearizable (initial value {initial!r}).",
        "Its history becomes impossible when this op returns:",
        *_describe_ops(kh, [culprit]),
        f"Longest linearization found for the history up to there "
        f"({len(outcome_hi.best_order)} ops), leaving the value {outcome_hi.best_value!r}:",
        *(_describe_ops(kh, outcome_hi.best_order) or ["  (none)"]),
        "Ops that could not be placed after it (they must take effect, or may, if unknown):",
        *_describe_ops(kh, unplaced),
    ]
    return "\n".join(lines), states


# --------------------------------------------------------------------------------------------
# The public entry point


def check(
    history: Sequence[Op],
    time_limit_s: float = TIME_LIMIT_S,
    *,
    states_max: int = STATES_MAX,
    initial_values: Mapping[str, bytes] | None = None,
) -> CheckResult:
    """Decide whether ``history`` is linearizable against the key-value model.

    ``initial_values`` gives keys that exist before the history starts (others are absent).
    A ``timed_out`` result means "could not decide" (see the module docstring).
    """
    deadline = time.monotonic() + time_limit_s
    initial_values = initial_values or {}
    states = 0
    undecided: list[str] = []
    keys = _split_by_key(history)
    for kh in keys:
        initial = initial_values.get(kh.key)
        if time.monotonic() > deadline:
            undecided.append(kh.key)
            continue
        must_return = frozenset(j for j, is_call in kh.events if not is_call)
        outcome = _search(kh.ops, kh.events, must_return, initial, deadline, states_max)
        states += outcome.states
        if outcome.verdict == "timeout":
            undecided.append(kh.key)
        elif outcome.verdict == "fail":
            explanation, more = _explain_failure(kh, initial, outcome, deadline, states_max)
            return CheckResult(False, kh.key, explanation, False, states + more)
    n_ops = sum(len(kh.ops) for kh in keys)
    if undecided:
        shown = ", ".join(repr(k) for k in undecided[:_EXPLAIN_OPS_MAX])
        return CheckResult(
            False,
            undecided[0],
            f"could not decide {len(undecided)} of {len(keys)} keys ({shown}) within "
            f"time_limit_s={time_limit_s:g} and states_max={states_max} per key; no violation "
            f"was found in the other keys. This is not a verdict.",
            True,
            states,
        )
    return CheckResult(
        True,
        None,
        f"linearizable: {n_ops} ops on {len(keys)} keys ({states} states explored)",
        False,
        states,
    )


# --------------------------------------------------------------------------------------------
# Recording histories


class History:
    """Records client operations as they happen and turns them into :class:`Op` s.

    ::

        h = History()
        op_id = h.invoke(client=1, kind="put", key="x", value=b"1", t=now)
        ...
        h.ok(op_id, None, t=later)       # or h.fail(op_id, t) / h.unknown(op_id, t)
        result = h.check()

    Times are optional: without ``t`` an event gets the previous event's time plus one, so the
    recording order is the real-time order. With ``t`` they must not go backwards. Equal times
    count as concurrent (see the module docstring), so a simulation that records several
    events in one tick should pass distinct times if it wants them ordered.
    """

    def __init__(self) -> None:
        self._invocations: list[dict] = []
        self._ends: dict[int, tuple[str, float, object]] = {}
        self._last_t = 0.0
        self._any_event = False

    def _time(self, t: float | None) -> float:
        if t is None:
            t = self._last_t + 1.0 if self._any_event else 0.0
        elif self._any_event and t < self._last_t:
            raise ValueError(f"time went backwards: {t} after {self._last_t}")
        self._last_t = float(t)
        self._any_event = True
        return self._last_t

    def invoke(
        self,
        client: int,
        kind: str,
        key: str,
        value: bytes | None = None,
        expected: bytes | None = None,
        t: float | None = None,
    ) -> int:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._invocations.append(
            dict(client=client, kind=kind, key=key, value=value, expected=expected, invoke_t=self._time(t))
        )
        return len(self._invocations) - 1

    def _end(self, op_id: int, status: str, t: float | None, result: object) -> None:
        if not 0 <= op_id < len(self._invocations):
            raise ValueError(f"no invocation with op_id {op_id}")
        if op_id in self._ends:
            raise ValueError(f"op {op_id} already ended as {self._ends[op_id][0]!r}")
        self._ends[op_id] = (status, self._time(t), result)

    def ok(self, op_id: int, result: object = None, t: float | None = None) -> None:
        """The op returned successfully with ``result``."""
        self._end(op_id, "ok", t, result)

    def fail(self, op_id: int, t: float | None = None) -> None:
        """The op definitely did not take effect."""
        self._end(op_id, "fail", t, None)

    def unknown(self, op_id: int, t: float | None = None) -> None:
        """The client gave up (timeout, lost connection): the op may take effect, now or later."""
        self._end(op_id, "unknown", t, None)

    def ops(self) -> list[Op]:
        """All ops in invocation order; ops that have not ended yet count as unknown."""
        out = []
        for op_id, inv in enumerate(self._invocations):
            status, end_t, result = self._ends.get(op_id, ("unknown", None, None))
            out.append(Op(**inv, return_t=end_t, status=status, result=result))
        return out

    def __len__(self) -> int:
        return len(self._invocations)

    def check(self, time_limit_s: float = TIME_LIMIT_S, **kwargs) -> CheckResult:
        return check(self.ops(), time_limit_s, **kwargs)
