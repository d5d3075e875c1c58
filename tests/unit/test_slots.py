"""FuxiMaster's slot policy: fair targets, spreading placement, the grant ledger."""

from __future__ import annotations

import ast
import inspect
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi.core import slots
from fuxi.core.slots import Demand, Ledger, add, fair_assignment, fair_targets, fits, place, subtract

CPU1 = {"CPU": 1.0}


def demand(job: str, wanted: int, shape=CPU1, priority: int = 0, seq: int = 0, name: str | None = None) -> Demand:
    return Demand(
        demand_id=name or f"{job}/{sorted(shape.items())}",
        job_id=job,
        priority=priority,
        submit_seq=seq,
        shape=shape,
        slots_wanted=wanted,
    )


# --------------------------------------------------------------------------- fair_targets


def test_two_equal_jobs_share_four_cpus_two_and_two():
    a, b = demand("a", 10, seq=1), demand("b", 10, seq=2)
    assert fair_targets({"n1": {"CPU": 4}}, [a, b]) == {a.demand_id: 2, b.demand_id: 2}


def test_odd_slot_goes_to_the_earlier_job():
    a, b = demand("a", 10, seq=2), demand("b", 10, seq=1)
    assert fair_targets({"n1": {"CPU": 5}}, [a, b]) == {a.demand_id: 2, b.demand_id: 3}


def test_high_priority_job_takes_all_it_wants_first():
    low, high = demand("low", 10, priority=0, seq=1), demand("high", 3, priority=5, seq=2)
    assert fair_targets({"n1": {"CPU": 4}}, [low, high]) == {low.demand_id: 1, high.demand_id: 3}
    greedy = demand("high", 10, priority=5, seq=2)
    assert fair_targets({"n1": {"CPU": 4}}, [low, greedy]) == {low.demand_id: 0, greedy.demand_id: 4}


def test_max_min_small_job_gets_what_it_asks_and_the_other_the_rest():
    small, big = demand("small", 1, seq=1), demand("big", 100, seq=2)
    assert fair_targets({"n1": {"CPU": 6}}, [small, big]) == {small.demand_id: 1, big.demand_id: 5}


def test_shape_that_fits_on_no_single_node_gets_nothing():
    # 8 CPUs in total, but no node has 5; the small job still gets its share.
    huge, small = demand("huge", 3, {"CPU": 5}), demand("small", 2)
    targets = fair_targets({"n1": {"CPU": 4}, "n2": {"CPU": 4}}, [huge, small])
    assert targets == {huge.demand_id: 0, small.demand_id: 2}


def test_half_cpu_slots_pack_two_per_cpu():
    half = demand("a", 100, {"CPU": 0.5})
    assert fair_targets({"n1": {"CPU": 3}, "n2": {"CPU": 1.5}}, [half]) == {half.demand_id: 9}


def test_tenth_gpu_slots_survive_rounding():
    # 10 * 0.1 != 1.0 in floating point; the tolerance must still allow all 10.
    tenth = demand("a", 100, {"GPU": 0.1})
    assert fair_targets({"n1": {"GPU": 1.0}}, [tenth]) == {tenth.demand_id: 10}


def test_custom_resource_only_on_the_node_that_has_it():
    gpu = demand("a", 10, {"CPU": 1, "gpu_a": 1})
    cluster = {"cpu-only": {"CPU": 16}, "gpu-box": {"CPU": 4, "gpu_a": 2}}
    assert fair_assignment(cluster, [gpu]) == {gpu.demand_id: {"gpu-box": 2}}


def test_zero_valued_shape_entries_need_nothing():
    d = demand("a", 3, {"CPU": 1, "gpu_a": 0})
    assert fair_targets({"n1": {"CPU": 4}}, [d]) == {d.demand_id: 3}


def test_memory_limits_even_when_cpus_are_free():
    d = demand("a", 10, {"CPU": 1, "memory": 4e9})
    assert fair_targets({"n1": {"CPU": 16, "memory": 10e9}}, [d]) == {d.demand_id: 2}


def test_fairness_is_by_job_not_by_demand():
    # Job a has two shapes; together they count as one job against job b.
    a1 = demand("a", 10, {"CPU": 1}, name="a/cpu")
    a2 = demand("a", 10, {"CPU": 1, "memory": 1.0}, name="a/mem")
    b = demand("b", 10, name="b/cpu")
    targets = fair_targets({"n1": {"CPU": 4, "memory": 10.0}}, [a1, a2, b])
    assert targets["a/cpu"] + targets["a/mem"] == 2 and targets["b/cpu"] == 2
    assert targets["a/cpu"] == targets["a/mem"] == 1


def test_best_fit_keeps_the_big_node_for_the_big_shape():
    small, big = demand("small", 1, {"CPU": 2}, seq=1), demand("big", 1, {"CPU": 4}, seq=2)
    cluster = {"a-big": {"CPU": 4}, "b-small": {"CPU": 2}}
    assert fair_targets(cluster, [small, big]) == {small.demand_id: 1, big.demand_id: 1}


def test_no_nodes_or_no_wants_gives_zeros():
    d = demand("a", 5)
    assert fair_targets({}, [d]) == {d.demand_id: 0}
    none = demand("b", 0)
    assert fair_targets({"n1": {"CPU": 4}}, [none]) == {none.demand_id: 0}


def test_duplicate_demand_ids_are_refused():
    with pytest.raises(ValueError, match="twice"):
        fair_targets({"n1": CPU1}, [demand("a", 1, name="x"), demand("b", 1, name="x")])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"slots_wanted": -1}, "slots_wanted"),
        ({"shape": {"CPU": -1.0}}, "CPU"),
        ({"shape": {"CPU": float("nan")}}, "CPU"),
    ],
)
def test_demand_validation_names_the_problem(kwargs, field):
    base = dict(demand_id="d", job_id="j", priority=0, submit_seq=0, shape=CPU1, slots_wanted=1)
    with pytest.raises(ValueError, match=field):
        Demand(**{**base, **kwargs})


# --------------------------------------------------------------------------- place


def test_place_spreads_across_nodes():
    free = {"n1": {"CPU": 8}, "n2": {"CPU": 8}, "n3": {"CPU": 8}}
    assert place(free, CPU1, 6) == {"n1": 2, "n2": 2, "n3": 2}


def test_place_evens_out_what_the_demand_already_holds():
    free = {"n1": {"CPU": 8}, "n2": {"CPU": 8}}
    assert place(free, CPU1, 4, held_on_node={"n1": 3}) == {"n1": 1, "n2": 3}


def test_place_ties_go_to_the_node_with_most_free():
    free = {"n1": {"CPU": 2}, "n2": {"CPU": 6}}
    assert place(free, CPU1, 1) == {"n2": 1}


def test_place_uses_avoided_nodes_only_when_nothing_else_fits():
    free = {"bad": {"CPU": 8}, "good": {"CPU": 2}}
    assert place(free, CPU1, 5, avoid_nodes={"bad"}) == {"good": 2, "bad": 3}
    assert place(free, CPU1, 2, avoid_nodes={"bad"}) == {"good": 2}


def test_place_returns_fewer_when_the_cluster_is_full():
    assert place({"n1": {"CPU": 1.5}, "n2": {}}, CPU1, 5) == {"n1": 1}
    assert place({"n1": {"CPU": 1}}, CPU1, 0) == {}


# --------------------------------------------------------------------------- helpers


def test_subtract_and_add_with_tolerance():
    free = {"GPU": 1.0}
    for _ in range(10):
        free = subtract(free, {"GPU": 0.1})
    assert free == {"GPU": 0.0}
    assert add(free, {"GPU": 0.1, "CPU": 2}, 3) == pytest.approx({"GPU": 0.3, "CPU": 6.0})
    with pytest.raises(ValueError, match="GPU"):
        subtract({"GPU": 1.0}, {"GPU": 1.0}, 2)
    assert fits({"CPU": 1.0}, {"CPU": 0.5}, 2) and not fits({"CPU": 1.0}, {"CPU": 0.5}, 3)


# --------------------------------------------------------------------------- ledger


def test_ledger_accounts_and_round_trips_through_json():
    a = demand("job-a", 4, {"CPU": 1, "memory": 2e9}, name="job-a/m")
    b = demand("job-b", 4, {"CPU": 0.5}, name="job-b/c")
    ledger = Ledger()
    ledger.grant(a, "n1", 2)
    ledger.grant(a, "n2", 1)
    ledger.grant(b, "n1", 3)
    assert ledger.held("job-a/m") == {"n1": 2, "n2": 1}
    assert ledger.used_on("n1") == {"CPU": 3.5, "memory": 4e9}
    assert ledger.free({"n1": {"CPU": 4, "memory": 8e9}, "n3": {"CPU": 1}}) == {
        "n1": {"CPU": 0.5, "memory": 4e9},
        "n3": {"CPU": 1.0},
    }
    restored = Ledger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger
    assert restored.used_on("n1") == ledger.used_on("n1")


def test_ledger_refuses_over_release_and_forgets_empty_grants():
    d = demand("j", 4, name="j/cpu")
    ledger = Ledger()
    ledger.grant(d, "n1", 2)
    with pytest.raises(ValueError, match="only 2 held"):
        ledger.release("j/cpu", "n1", 3)
    with pytest.raises(ValueError, match="only 0 held"):
        ledger.release("j/cpu", "n2", 1)
    ledger.release("j/cpu", "n1", 2)
    assert ledger.held("j/cpu") == {} and ledger.used_on("n1") == {}
    assert ledger.to_dict() == Ledger().to_dict()


def test_ledger_release_job_returns_everything_it_held():
    ledger = Ledger()
    ledger.grant(demand("j", 4, name="j/a"), "n1", 2)
    ledger.grant(demand("j", 4, {"CPU": 2}, name="j/b"), "n2", 1)
    ledger.grant(demand("k", 4, name="k/a"), "n1", 1)
    assert ledger.release_job("j") == {("j/a", "n1"): 2, ("j/b", "n2"): 1}
    assert ledger.used_on("n1") == {"CPU": 1.0} and ledger.used_on("n2") == {}
    assert ledger.release_job("j") == {}


def test_ledger_refuses_a_demand_id_changing_shape():
    ledger = Ledger()
    ledger.grant(demand("j", 4, name="j/a"), "n1", 1)
    with pytest.raises(ValueError, match="shape"):
        ledger.grant(demand("j", 4, {"CPU": 2}, name="j/a"), "n1", 1)


def test_targets_then_place_then_ledger_fits_the_cluster():
    """The way FuxiMaster uses the three together."""
    cluster = {"n1": {"CPU": 4}, "n2": {"CPU": 4}}
    a, b = demand("a", 10, seq=1), demand("b", 10, seq=2)
    targets = fair_targets(cluster, [a, b])
    ledger = Ledger()
    for d in [a, b]:
        for node, n in place(ledger.free(cluster), d.shape, targets[d.demand_id], ledger.held(d.demand_id)).items():
            ledger.grant(d, node, n)
    assert ledger.held(a.demand_id) == {"n1": 2, "n2": 2} == ledger.held(b.demand_id)
    assert all(v >= 0 for free in ledger.free(cluster).values() for v in free.values())


def test_module_is_pure():
    tree = ast.parse(inspect.getsource(slots))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"ray", "time", "random", "os", "socket"}


# --------------------------------------------------------------------------- properties

shapes = st.fixed_dictionaries(
    {"CPU": st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0])},
    optional={"memory": st.sampled_from([1.0, 2.0, 4.0]), "gpu": st.sampled_from([0.25, 1.0])},
)
node_resources = st.fixed_dictionaries(
    {"CPU": st.sampled_from([0.0, 1.0, 2.0, 4.0, 8.0])},
    optional={"memory": st.sampled_from([2.0, 8.0, 16.0]), "gpu": st.sampled_from([1.0, 2.0])},
)
clusters = st.dictionaries(st.sampled_from(["n1", "n2", "n3", "n4"]), node_resources, max_size=4)


@st.composite
def demand_lists(draw):
    n = draw(st.integers(0, 6))
    out = []
    for i in range(n):
        job = draw(st.sampled_from(["j1", "j2", "j3", "j4"]))
        out.append(
            Demand(
                demand_id=f"d{i}",
                job_id=job,
                priority=draw(st.integers(0, 2)),
                submit_seq=draw(st.integers(0, 5)),
                shape=draw(shapes),
                slots_wanted=draw(st.integers(0, 12)),
            )
        )
    return out


def _leftover(cluster, demands, plan):
    by_id = {d.demand_id: d for d in demands}
    free = {node: dict(total) for node, total in cluster.items()}
    for demand_id, nodes in plan.items():
        for node, n in nodes.items():
            free[node] = subtract(free[node], by_id[demand_id].shape, n)  # raises if it does not fit
    return free


@settings(max_examples=200)
@given(clusters, demand_lists())
def test_targets_are_bounded_by_wants_and_actually_fit(cluster, demands):
    plan = fair_assignment(cluster, demands)
    targets = fair_targets(cluster, demands)
    assert set(targets) == {d.demand_id for d in demands}
    for d in demands:
        assert 0 <= targets[d.demand_id] <= d.slots_wanted
        assert targets[d.demand_id] == sum(plan[d.demand_id].values())
        assert set(plan[d.demand_id]) <= set(cluster)
    _leftover(cluster, demands, plan)


@settings(max_examples=200)
@given(clusters, demand_lists())
def test_work_conserving_an_unmet_demand_fits_nowhere_in_what_is_left(cluster, demands):
    plan = fair_assignment(cluster, demands)
    free = _leftover(cluster, demands, plan)
    for d in demands:
        if sum(plan[d.demand_id].values()) < d.slots_wanted:
            assert not any(fits(node_free, d.shape) for node_free in free.values()), d


@settings(max_examples=200)
@given(clusters, demand_lists())
def test_lower_priorities_never_take_from_higher_ones(cluster, demands):
    targets = fair_targets(cluster, demands)
    for cut in {d.priority for d in demands}:
        upper = [d for d in demands if d.priority >= cut]
        alone = fair_targets(cluster, upper)
        assert {k: targets[k] for k in alone} == alone
    top = [d for d in demands if d.priority == max((x.priority for x in demands), default=0)]
    if len(top) == 1:
        (d,) = top
        assert targets[d.demand_id] == fair_targets(cluster, [d])[d.demand_id]


@settings(max_examples=200)
@given(
    clusters,
    st.sampled_from([{"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 2.0, "memory": 2.0}]),
    st.lists(st.integers(0, 12), min_size=1, max_size=4),
)
def test_same_shape_jobs_are_max_min_fair(cluster, shape, wants):
    """A job left wanting holds at least as many slots as any other job, less one."""
    demands = [demand(f"j{i}", w, shape, seq=i, name=f"j{i}") for i, w in enumerate(wants)]
    targets = fair_targets(cluster, demands)
    most = max(targets.values())
    for d in demands:
        if targets[d.demand_id] < d.slots_wanted:
            assert targets[d.demand_id] >= most - 1


@given(
    st.dictionaries(st.sampled_from(["n1", "n2", "n3"]), node_resources, max_size=3),
    shapes,
    st.integers(0, 20),
    st.dictionaries(st.sampled_from(["n1", "n2", "n3"]), st.integers(0, 5)),
    st.sets(st.sampled_from(["n1", "n2", "n3"])),
)
def test_place_fits_respects_count_and_prefers_unavoided_nodes(free, shape, count, held, avoid):
    placed = place(free, shape, count, held, avoid)
    assert sum(placed.values()) <= count and all(n > 0 for n in placed.values())
    for node, n in placed.items():
        assert fits(free[node], shape, n)
    if any(node in avoid for node in placed):
        # Avoided nodes were used, so every other node must be full for this shape.
        left = {node: subtract(f, shape, placed.get(node, 0)) for node, f in free.items()}
        assert not any(fits(left[node], shape) for node in free if node not in avoid)
    if sum(placed.values()) < count:
        left = {node: subtract(f, shape, placed.get(node, 0)) for node, f in free.items()}
        assert not any(fits(f, shape) for f in left.values())


@given(clusters, demand_lists(), st.data())
def test_ledger_round_trip_and_release_all(cluster, demands, data):
    ledger = Ledger()
    for d in demands:
        for node in cluster:
            ledger.grant(d, node, data.draw(st.integers(0, 3)))
    assert Ledger.from_dict(json.loads(json.dumps(ledger.to_dict()))) == ledger
    for job in {d.job_id for d in demands}:
        ledger.release_job(job)
    assert ledger == Ledger()
    assert all(ledger.used_on(node) == {} for node in cluster)
