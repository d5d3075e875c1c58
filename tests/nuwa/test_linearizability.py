"""The linearizability checker must catch the anomalies a broken Nuwa would show its users
(stale reads, lost acknowledged writes, writes seen in two orders, cas that lies) and must
never reject a history that really came from a sequential execution, whatever the overlap
of the clients' windows or the unknown outcomes."""

from __future__ import annotations

import ast
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nuwa.linearizability as lin
from nuwa.linearizability import History, Op, check

INF = None  # return_t of an op that never returned


def op(client, kind, key, invoke_t, return_t, status="ok", result=None, value=None, expected=None):
    return Op(
        client=client, kind=kind, key=key, value=value, expected=expected,
        invoke_t=invoke_t, return_t=return_t, status=status, result=result,
    )


def put(c, k, v, t0, t1, status="ok"):
    return op(c, "put", k, t0, t1, status, value=v)


def get(c, k, result, t0, t1, status="ok"):
    return op(c, "get", k, t0, t1, status, result=result)


def delete(c, k, t0, t1, status="ok"):
    return op(c, "delete", k, t0, t1, status)


def cas(c, k, expected, v, result, t0, t1, status="ok"):
    return op(c, "cas", k, t0, t1, status, result=result, value=v, expected=expected)


# --------------------------------------------------------------------------------------------
# Hand-written histories: (name, history, linearizable?)

LINEARIZABLE = [
    ("empty history", []),
    ("read of a key never written is absent", [get(1, "x", None, 0, 1)]),
    ("read after write", [put(1, "x", b"1", 0, 1), get(2, "x", b"1", 2, 3)]),
    ("read concurrent with a write may see the old value",
     [put(1, "x", b"1", 0, 10), get(2, "x", None, 1, 2)]),
    ("read concurrent with a write may see the new value",
     [put(1, "x", b"1", 0, 10), get(2, "x", b"1", 1, 2)]),
    ("concurrent writes, readers agree on one order",
     [put(1, "x", b"1", 0, 10), put(2, "x", b"2", 0, 10),
      get(3, "x", b"1", 1, 2), get(3, "x", b"2", 3, 4), get(4, "x", b"2", 11, 12)]),
    ("delete then read absent", [put(1, "x", b"1", 0, 1), delete(1, "x", 2, 3), get(2, "x", None, 4, 5)]),
    ("cas on an absent key", [cas(1, "x", None, b"1", True, 0, 1), get(2, "x", b"1", 2, 3)]),
    ("cas that loses to a concurrent cas",
     [cas(1, "x", None, b"a", True, 0, 10), cas(2, "x", None, b"b", False, 0, 10),
      get(3, "x", b"a", 11, 12)]),
    ("unknown write may have been applied",
     [put(1, "x", b"1", 0, INF, "unknown"), get(2, "x", b"1", 5, 6)]),
    ("unknown write may never have been applied",
     [put(1, "x", b"1", 0, INF, "unknown"), get(2, "x", None, 5, 6)]),
    ("unknown write may be applied long after the client gave up",
     [put(1, "x", b"1", 0, 1, "unknown"), get(2, "x", None, 5, 6), get(2, "x", b"1", 7, 8)]),
    ("unknown delete may have been applied",
     [put(1, "x", b"1", 0, 1), delete(1, "x", 2, INF, "unknown"), get(2, "x", None, 5, 6)]),
    ("unknown cas applies only if its expectation held",
     [put(1, "x", b"1", 0, 1), cas(1, "x", b"1", b"2", None, 2, INF, "unknown"),
      get(2, "x", b"2", 5, 6)]),
    ("a failed write had no effect", [put(1, "x", b"1", 0, 1, "fail"), get(2, "x", None, 2, 3)]),
    ("an unknown read constrains nothing",
     [put(1, "x", b"1", 0, 1), get(2, "x", b"garbage", 2, INF, "unknown")]),
    ("equal timestamps count as concurrent",
     [put(1, "x", b"1", 0, 5), get(2, "x", None, 5, 6)]),
    ("keys are independent",
     [put(1, "x", b"1", 0, 1), put(1, "y", b"2", 2, 3), get(2, "x", b"1", 4, 5),
      get(2, "y", b"2", 4, 5)]),
]

NOT_LINEARIZABLE = [
    ("stale read after a completed write",
     [put(1, "x", b"1", 0, 1), put(1, "x", b"2", 2, 3), get(2, "x", b"1", 4, 5)], 2),
    ("lost acknowledged write", [put(1, "x", b"1", 0, 1), get(2, "x", None, 2, 3)], 1),
    ("two concurrent writes seen in contradictory orders",
     [put(1, "x", b"1", 0, 10), put(2, "x", b"2", 0, 10),
      get(3, "x", b"1", 1, 2), get(3, "x", b"2", 3, 4),
      get(4, "x", b"2", 1, 2), get(4, "x", b"1", 3, 4)], None),
    ("a value that was never written", [put(1, "x", b"1", 0, 1), get(2, "x", b"9", 2, 3)], 1),
    ("read goes back in time",
     [put(1, "x", b"1", 0, 10), get(2, "x", b"1", 1, 2), get(2, "x", None, 3, 4)], 2),
    ("a value read before its write was invoked",
     [get(2, "x", b"1", 0, 1), put(1, "x", b"1", 2, 3)], 0),
    ("two concurrent cas on an absent key both succeed",
     [cas(1, "x", None, b"a", True, 0, 10), cas(2, "x", None, b"b", True, 0, 10)], None),
    ("cas succeeds although the value did not match",
     [put(1, "x", b"1", 0, 1), cas(2, "x", b"2", b"3", True, 2, 3)], 1),
    ("cas fails although the value matched and nobody else wrote",
     [put(1, "x", b"1", 0, 1), cas(2, "x", b"1", b"2", False, 2, 3)], 1),
    ("read of the old value after a successful cas",
     [put(1, "x", b"1", 0, 1), cas(2, "x", b"1", b"2", True, 2, 3), get(3, "x", b"1", 4, 5)], 2),
    ("read of a deleted value after the delete returned",
     [put(1, "x", b"1", 0, 1), delete(1, "x", 2, 3), get(2, "x", b"1", 4, 5)], 2),
    ("a failed write must not be visible",
     [put(1, "x", b"1", 0, 1, "fail"), get(2, "x", b"1", 2, 3)], 1),
    ("an unknown write, once seen, cannot be unseen",
     [put(1, "x", b"1", 0, INF, "unknown"), get(2, "x", b"1", 2, 3), get(2, "x", None, 4, 5)], 2),
    ("an unknown write cannot take effect before it was invoked",
     [get(2, "x", b"1", 0, 1), put(1, "x", b"1", 2, INF, "unknown")], 0),
]


@pytest.mark.parametrize("name,history", LINEARIZABLE, ids=[c[0] for c in LINEARIZABLE])
def test_linearizable_histories_are_accepted(name, history):
    result = check(history)
    assert result.ok, result.explanation
    assert not result.timed_out and result.key is None


@pytest.mark.parametrize(
    "name,history,culprit", NOT_LINEARIZABLE, ids=[c[0] for c in NOT_LINEARIZABLE]
)
def test_anomalies_are_caught_and_explained(name, history, culprit):
    result = check(history)
    assert not result.ok and not result.timed_out
    assert result.key == "x"
    assert "'x' is not linearizable" in result.explanation
    if culprit is not None:
        # The explanation names the op whose return makes the history impossible.
        lines = result.explanation.splitlines()
        assert lines[2].strip().startswith(f"#{culprit} "), result.explanation


def test_explanation_is_cut_at_the_smallest_failing_prefix():
    history = [put(1, "x", b"0", 0, 1), get(2, "x", None, 2, 3)]  # lost write at op #1
    history += [put(1, "x", b"%d" % i, 10 + 2 * i, 11 + 2 * i) for i in range(50)]
    result = check(history)
    assert not result.ok
    lines = result.explanation.splitlines()
    assert lines[2].strip().startswith("#1 c2 get 'x' = None ok")
    # None of the 50 later writes is needed to see the problem, so none is shown.
    assert "b'49'" not in result.explanation


def test_first_failing_key_is_reported_and_other_keys_do_not_interfere():
    history = [
        put(1, "a", b"1", 0, 1), get(2, "a", b"1", 2, 3),
        put(1, "b", b"1", 4, 5), get(2, "b", None, 6, 7),  # lost write on b
        put(1, "c", b"1", 8, 9), get(2, "c", b"2", 10, 11),  # never-written value on c
    ]
    result = check(history)
    assert (result.ok, result.key) == (False, "b")


def test_initial_values():
    history = [get(1, "x", b"init", 0, 1), cas(1, "x", b"init", b"2", True, 2, 3)]
    assert check(history, initial_values={"x": b"init"}).ok
    assert not check(history).ok


# --------------------------------------------------------------------------------------------
# Limits: running out of time or states is "could not decide", never a pass


def _hard_history(n_writes: int = 14) -> list[Op]:
    """Many concurrent writes, each value read by a concurrent reader, then a read of a value
    nobody wrote: proving that impossible means trying a large part of the search space."""
    history = [put(c, "x", b"%d" % c, 0, 100) for c in range(n_writes)]
    history += [get(100 + c, "x", b"%d" % c, 0, 100) for c in range(n_writes)]
    history.append(get(99, "x", b"never", 101, 102))
    return history


def test_exceeding_states_max_is_undecided_not_ok():
    result = check(_hard_history(), states_max=100)
    assert result.timed_out and not result.ok
    assert result.key == "x"
    assert "not a verdict" in result.explanation


def test_exceeding_the_time_limit_is_undecided_not_ok():
    result = check(_hard_history(), time_limit_s=0.0)
    assert result.timed_out and not result.ok


def test_a_proven_violation_wins_over_an_undecided_key():
    history = _hard_history(10) + [put(1, "y", b"1", 0, 1), get(2, "y", None, 2, 3)]
    result = check(history, states_max=50)
    assert (result.ok, result.timed_out, result.key) == (False, False, "y")


# --------------------------------------------------------------------------------------------
# Op validation and the History recorder


def test_malformed_ops_are_refused():
    with pytest.raises(ValueError, match="never returned"):
        put(1, "x", b"1", 0, INF, "ok")
    with pytest.raises(ValueError, match="kind"):
        op(1, "incr", "x", 0, 1)
    with pytest.raises(ValueError, match="before it was invoked"):
        put(1, "x", b"1", 5, 4)
    with pytest.raises(ValueError, match="cas"):
        cas(1, "x", None, b"1", "yes", 0, 1)


def test_history_records_ops_for_the_checker():
    h = History()
    w = h.invoke(1, "put", "x", value=b"1", t=0.0)
    r = h.invoke(2, "get", "x", t=0.5)
    h.ok(w, None, t=1.0)
    h.ok(r, b"1", t=1.5)
    c = h.invoke(3, "cas", "x", value=b"2", expected=b"1", t=2.0)
    h.unknown(c, t=3.0)
    f = h.invoke(4, "delete", "x", t=4.0)
    h.fail(f, t=5.0)
    pending = h.invoke(5, "put", "x", value=b"3", t=6.0)
    ops = h.ops()
    assert len(h) == 5 and pending == 4
    assert [o.status for o in ops] == ["ok", "ok", "unknown", "fail", "unknown"]
    assert ops[1] == Op(client=2, kind="get", key="x", invoke_t=0.5, return_t=1.5, status="ok", result=b"1")
    assert ops[4].return_t is None
    assert h.check().ok


def test_history_without_times_orders_events_as_recorded():
    h = History()
    w = h.invoke(1, "put", "x", value=b"1")
    h.ok(w)
    r = h.invoke(2, "get", "x")
    h.ok(r, None)  # the completed write is lost
    assert not h.check().ok


def test_history_refuses_misuse():
    h = History()
    a = h.invoke(1, "put", "x", value=b"1", t=5.0)
    with pytest.raises(ValueError, match="backwards"):
        h.ok(a, t=4.0)
    h.ok(a, t=6.0)
    with pytest.raises(ValueError, match="already ended"):
        h.fail(a, t=7.0)
    with pytest.raises(ValueError, match="no invocation"):
        h.ok(42)


def test_checker_is_pure_python_without_ray():
    tree = ast.parse(Path(lin.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "ray" not in imported


# --------------------------------------------------------------------------------------------
# Property tests over generated executions


def generate_execution(
    rng: random.Random,
    n_ops: int,
    n_keys: int,
    n_clients: int,
    unknown_p: float = 0.0,
    fail_p: float = 0.0,
    values_max: int = 1_000_000,
) -> list[Op]:
    """Clients run ops one after another; every op that takes effect does so at one instant
    inside its [invoke, return] window (unknown writes: any time after invoke, or never), and
    results come from applying the ops in the order of those instants. So the history is
    linearizable by construction, whatever the windows' overlap."""
    clock = [0.0] * n_clients
    planned = []  # (point or None, client, kind, key, value, expected, invoke, return, status)
    written: list[bytes | None] = [None]
    for _ in range(n_ops):
        c = rng.randrange(n_clients)
        invoke = clock[c] + rng.uniform(0.0, 1.0)
        ret = invoke + rng.expovariate(1.0)
        clock[c] = ret
        key = f"k{rng.randrange(n_keys)}"
        kind = rng.choice(("get", "get", "put", "put", "cas", "delete"))
        value = expected = None
        if kind in ("put", "cas"):
            value = b"v%d" % rng.randrange(values_max)
            written.append(value)
        if kind == "cas":
            expected = rng.choice(written[-6:])
        status = "ok"
        roll = rng.random()
        if roll < fail_p:
            status = "fail"
        elif roll < fail_p + unknown_p:
            status = "unknown"
        if status == "ok":
            point = rng.uniform(invoke, ret)
        elif status == "unknown" and kind != "get" and rng.random() < 0.7:
            point = invoke + rng.expovariate(0.3)  # may land long after the client gave up
        else:
            point = None  # failed, or an unknown op that never took effect
        end = None if (status == "unknown" and rng.random() < 0.5) else ret
        planned.append([point, c, kind, key, value, expected, invoke, end, status])

    store: dict[str, bytes | None] = {}
    results: dict[int, object] = {}
    order = sorted((p[0], i) for i, p in enumerate(planned) if p[0] is not None)
    for _, i in order:
        _, _, kind, key, value, expected, *_ = planned[i]
        current = store.get(key)
        if kind == "get":
            results[i] = current
        elif kind == "put":
            store[key] = value
        elif kind == "delete":
            store.pop(key, None)
        else:
            results[i] = current == expected
            if current == expected:
                store[key] = value
    history = []
    for i, (_, c, kind, key, value, expected, invoke, end, status) in enumerate(planned):
        if status == "ok":
            result = results.get(i)
        elif kind == "get":
            result = b"anything: nobody saw it"
        else:
            result = None
        history.append(Op(client=c, kind=kind, key=key, value=value, expected=expected,
                          invoke_t=invoke, return_t=end, status=status, result=result))
    return history


execution_params = dict(
    seed=st.integers(0, 2**32 - 1),
    n_ops=st.integers(1, 40),
    n_keys=st.integers(1, 3),
    n_clients=st.integers(1, 5),
    unknown_p=st.sampled_from([0.0, 0.1, 0.3]),
    fail_p=st.sampled_from([0.0, 0.1]),
    values_max=st.sampled_from([2, 1_000_000]),
)


@settings(max_examples=300, deadline=None)
@given(**execution_params)
def test_sequential_executions_are_always_accepted(seed, n_ops, n_keys, n_clients, unknown_p, fail_p, values_max):
    history = generate_execution(random.Random(seed), n_ops, n_keys, n_clients, unknown_p, fail_p, values_max)
    result = check(history, time_limit_s=30.0)
    assert result.ok, result.explanation


@settings(max_examples=300, deadline=None)
@given(pick=st.integers(0, 10**6), **execution_params)
def test_reading_a_value_never_written_is_caught(seed, n_ops, n_keys, n_clients, unknown_p, fail_p, values_max, pick):
    history = generate_execution(random.Random(seed), n_ops, n_keys, n_clients, unknown_p, fail_p, values_max)
    reads = [i for i, o in enumerate(history) if o.kind == "get" and o.status == "ok"]
    if not reads:
        return
    i = reads[pick % len(reads)]
    bad = Op(**{**history[i].__dict__, "result": b"never written"})
    history = history[:i] + [bad] + history[i + 1:]
    result = check(history, time_limit_s=30.0)
    assert not result.ok and not result.timed_out
    assert result.key == bad.key
    assert "b'never written'" in result.explanation


# --------------------------------------------------------------------------------------------
# Speed: the Raft simulation checks a few hundred ops per seed, hundreds of seeds per CI run


@pytest.mark.parametrize(
    "n_ops,n_keys,n_clients,unknown_p",
    [(300, 5, 5, 0.0), (300, 5, 5, 0.1), (300, 1, 5, 0.05)],
)
def test_a_few_hundred_ops_check_quickly(n_ops, n_keys, n_clients, unknown_p, capsys):
    elapsed = []
    for seed in range(5):
        history = generate_execution(random.Random(seed), n_ops, n_keys, n_clients, unknown_p)
        start = time.perf_counter()
        result = check(history)
        elapsed.append(time.perf_counter() - start)
        assert result.ok, result.explanation
    with capsys.disabled():
        print(f"\n{n_ops} ops, {n_keys} keys, {n_clients} clients, unknown_p={unknown_p}: "
              f"worst {max(elapsed) * 1000:.1f} ms of 5 seeds")
    assert max(elapsed) < 5.0  # generous: a regression to exponential time would blow far past it


# --------------------------------------------------------------------------------------------
# Cross-check against brute force: the search prunes a lot (memo, optional-op normal form,
# interchangeable unknown writes); on small random histories it must agree with trying
# every order of every allowed subset of ops.


def brute_force_linearizable(history: list[Op]) -> bool:
    from itertools import permutations

    ops = [o for o in history if o.status != "fail" and not (o.status == "unknown" and o.kind == "get")]
    required = [o for o in ops if o.status == "ok"]
    optional = [o for o in ops if o.status == "unknown"]

    def returns(o):
        return float("inf") if o.status == "unknown" else o.return_t

    for mask in range(1 << len(optional)):
        chosen = required + [o for j, o in enumerate(optional) if mask >> j & 1]
        for order in permutations(chosen):
            # real time: nobody may be placed after an op that was invoked after it returned
            if any(returns(b) < a.invoke_t for x, a in enumerate(order) for b in order[x + 1:]):
                continue
            state, good = None, True
            for o in order:
                if o.kind == "get":
                    good = o.result == state
                elif o.kind == "put":
                    state = o.value
                elif o.kind == "delete":
                    state = None
                else:
                    hit = state == o.expected
                    if o.status == "ok" and o.result != hit:
                        good = False
                    elif hit:
                        state = o.value
                if not good:
                    break
            if good:
                return True
    return False


@st.composite
def small_histories(draw):
    values = [None, b"a", b"b", b"c"]
    history = []
    for c in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(KIND_CHOICES))
        t0 = draw(st.integers(0, 6))
        t1 = t0 + draw(st.integers(0, 4))
        status = draw(st.sampled_from(["ok", "ok", "ok", "unknown", "fail"]))
        value = draw(st.sampled_from(values[1:])) if kind in ("put", "cas") else None
        expected = draw(st.sampled_from(values)) if kind == "cas" else None
        result = None
        if status == "ok" and kind == "get":
            result = draw(st.sampled_from(values))
        elif status == "ok" and kind == "cas":
            result = draw(st.booleans())
        end = None if status == "unknown" and draw(st.booleans()) else float(t1)
        history.append(op(c, kind, "x", float(t0), end, status, result, value, expected))
    return history


KIND_CHOICES = ["get", "get", "put", "cas", "delete"]


@settings(max_examples=400, deadline=None)
@given(small_histories())
def test_agrees_with_brute_force_on_small_histories(history):
    assert check(history).ok == brute_force_linearizable(history)
