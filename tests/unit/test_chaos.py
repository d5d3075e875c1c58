"""``fuxi debug kill`` (issue 16 part 8): what an operator asks for is checked before anything
is looked up, targets are picked out of Ray's tables and this machine's process list exactly
(garbage in any of them refused or skipped, never killed), and the command refuses the
embedded default. The kills themselves run on real Ray: tests/integration/test_chaos_ray.py."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from base.errors import EXIT_BAD_INPUT, exit_code
from fuxi.core import chaos as cc
from fuxi.errors import BadInput, JobNotFound, TargetNotFound
from fuxi.shells import chaos as sc

HEAD = "a" * 56
SECOND = "ab" + "c" * 54
THIRD = "d" * 56
DEAD = "e" * 56
NODES = [
    {"NodeID": HEAD, "Alive": True, "Resources": {"CPU": 2.0, cc.HEAD_RESOURCE: 1.0},
     "NodeManagerAddress": "10.0.0.1"},
    {"NodeID": SECOND, "Alive": True, "Resources": {"CPU": 2.0}, "NodeManagerAddress": "10.0.0.2"},
    {"NodeID": THIRD, "Alive": True, "Resources": {"CPU": 2.0}, "NodeManagerAddress": "10.0.0.3"},
    {"NodeID": DEAD, "Alive": False, "Resources": {}},
    "garbage", {"NodeID": 7, "Alive": True}, {"Alive": True},
]

GARBAGE = [None, 0, -1, 3.5, True, [], {}, b"\x00", "", " ", "x" * 10_000, "../../etc/passwd",
           "job id; rm -rf /", "\u202ejob", "j\x00b", "%s%n"]


# ------------------------------------------------------------------ the request

@pytest.mark.parametrize("kind", GARBAGE + ["Master", "raylet", "all"])
def test_an_unknown_kind_is_refused_naming_the_kinds(kind):
    with pytest.raises(BadInput, match="expected one of master, jobmaster, agent, worker, node"):
        cc.check_kind(kind)


@pytest.mark.parametrize("job_id", GARBAGE)
def test_a_malformed_job_id_is_refused(job_id):
    with pytest.raises(BadInput, match="fuxi job list"):
        cc.check_job_id(job_id)


def test_a_job_id_as_fuxi_makes_them_is_taken():
    assert cc.check_job_id("three-stage-20261202-180102-3fa9") == "three-stage-20261202-180102-3fa9"


@pytest.mark.parametrize("ref", GARBAGE + ["abc", "zzzz", "a" * 57, "0x" + "a" * 10, -12345])
def test_a_malformed_node_id_is_refused(ref):
    with pytest.raises(BadInput, match="node id"):
        cc.check_node_ref(ref)


@pytest.mark.parametrize("ref", GARBAGE + ["0", str(2**31), "99999999999", "abc", "a" * 33, "-5"])
def test_a_malformed_worker_is_refused(ref):
    with pytest.raises(BadInput, match="process id"):
        cc.check_worker_ref(ref)


def test_a_worker_is_a_pid_or_an_actor_id_prefix():
    assert cc.check_worker_ref("4242") == ("pid", 4242)
    assert cc.check_worker_ref("0A1B2C") == ("actor", "0a1b2c")


# ------------------------------------------------------------------ nodes

def test_a_node_is_found_by_its_id_or_a_unique_prefix():
    assert cc.resolve_node(SECOND, NODES)["NodeID"] == SECOND
    assert cc.resolve_node("abcc", NODES)["NodeID"] == SECOND
    assert cc.resolve_node(THIRD[:12].upper(), NODES)["NodeID"] == THIRD  # as `fuxi node list`


def test_an_ambiguous_prefix_names_the_candidates():
    with pytest.raises(BadInput, match=r"names 2 nodes .*give more of its id"):
        cc.resolve_node("aaaa", NODES + [{"NodeID": "aaaa" + "b" * 52, "Alive": True}])


def test_an_unknown_or_dead_node_says_so_and_where_to_look():
    with pytest.raises(TargetNotFound, match=r"no such node; the alive nodes are .*fuxi node list"):
        cc.resolve_node("f" * 12, NODES)
    with pytest.raises(TargetNotFound, match="dead already"):
        cc.resolve_node(DEAD[:12], NODES)
    with pytest.raises(TargetNotFound, match="alive nodes are none"):
        cc.resolve_node(HEAD, [])
    assert exit_code(TargetNotFound("x")) == EXIT_BAD_INPUT


def test_the_head_is_known_by_its_resource():
    assert cc.is_head(NODES[0]) and not cc.is_head(NODES[1]) and not cc.is_head({})


RAYLET = "/usr/lib/python3/site-packages/ray/core/src/ray/raylet/raylet"
PROCS = [
    (1, 0, ["/sbin/init"]),
    (100, 1, [RAYLET, "--raylet_socket_name=/tmp/s/raylet", f"--node_id={SECOND}"]),
    (101, 100, ["ray::WorkerActor"]),
    (102, 100, ["ray::IDLE"]),
    (103, 101, ["a child of a worker"]),
    (110, 1, ["python", "-m", "ray.dashboard.agent", f"--node-id={SECOND}"]),
    (200, 1, [RAYLET, f"--node_id={HEAD}"]),
    (201, 200, ["ray::FuxiMaster"]),
    (300, 1, ["vim", f"--node_id={THIRD}"]),  # mentions a node, is no raylet
    (400, 400, [RAYLET, f"--node_id={SECOND}x"]),  # another node's id with a suffix
    ("garbage", 1, ["x"]), (5, None, ["x"]), (6, 1, None),
]


def test_a_nodes_processes_are_its_raylet_what_runs_under_it_and_its_agents():
    got = cc.node_processes(SECOND, PROCS)
    assert got[0] == 100 and sorted(got[1:]) == [101, 102, 103, 110]  # the raylet first
    assert cc.node_processes(HEAD, PROCS) == [200, 201]


def test_no_raylet_here_or_two_of_them_means_nothing_to_kill():
    assert cc.node_processes(THIRD, PROCS) == []  # its raylet is on another machine
    twice = PROCS + [(500, 1, [RAYLET, f"--node_id={HEAD}"])]
    assert cc.node_processes(HEAD, twice) == []  # not sure which: none
    assert cc.node_processes(HEAD, []) == []


def test_a_parent_loop_in_the_process_list_ends():
    loop = [(10, 1, [RAYLET, f"--node_id={HEAD}"]), (11, 12, ["w"]), (12, 11, ["w"]), (13, 10, ["w"]),
            (11, 10, ["w"])]
    assert sorted(cc.node_processes(HEAD, loop)) == [10, 11, 12, 13]


# ------------------------------------------------------------------ workers

JM = {"IPAddress": "10.0.0.1", "Port": 40001}
TABLE = {
    "0a" * 16: {"ActorClassName": "WorkerActor", "State": "ALIVE", "Pid": 101,
                "OwnerAddress": dict(JM), "Address": {"NodeID": SECOND}},
    "0b" * 16: {"ActorClassName": "WorkerActor", "State": "ALIVE", "Pid": 102,
                "OwnerAddress": dict(JM), "Address": {"NodeID": SECOND}},
    "0c" * 16: {"ActorClassName": "WorkerActor", "State": "ALIVE", "Pid": 103,  # another job's
                "OwnerAddress": {"IPAddress": "10.0.0.1", "Port": 40002}, "Address": {}},
    "0d" * 16: {"ActorClassName": "WorkerActor", "State": "DEAD", "Pid": 104,
                "OwnerAddress": dict(JM), "Address": {}},
    "0e" * 16: {"ActorClassName": "FuxiAgent", "State": "ALIVE", "Pid": 105,
                "OwnerAddress": dict(JM), "Address": {}},
    "0f" * 16: "garbage",
}


def test_a_jobs_workers_are_the_alive_workers_its_jobmaster_owns():
    ws = cc.owned_workers(TABLE, JM, "WorkerActor")
    assert [w["pid"] for w in ws] == [101, 102]
    assert cc.owned_workers(TABLE, {}, "WorkerActor") == []  # no JobMaster address: none
    assert cc.owned_workers(TABLE, {"IPAddress": "10.0.0.1", "Port": 0}, "WorkerActor") == []


def test_a_worker_is_picked_by_pid_or_prefix_and_a_miss_lists_the_workers():
    ws = cc.owned_workers(TABLE, JM, "WorkerActor")
    assert cc.pick_worker(ws, None, "j")["pid"] == 101
    assert cc.pick_worker(ws, "102", "j")["pid"] == 102
    assert cc.pick_worker(ws, "0b0b", "j")["pid"] == 102
    with pytest.raises(TargetNotFound, match=r"names no worker; its workers are 0a0a.* \(pid 101\)"):
        cc.pick_worker(ws, "103", "j")  # another job's worker is not this job's
    with pytest.raises(BadInput, match="names 2 workers"):
        cc.pick_worker(ws + [{"actor_id": "0a0a" + "1" * 28, "pid": 9, "node_id": ""}], "0a0a", "j")
    with pytest.raises(TargetNotFound, match="no worker of it is alive"):
        cc.pick_worker([], None, "j")
    with pytest.raises(BadInput):
        cc.pick_worker(ws, "kill -9 1", "j")


# ------------------------------------------------------------------ the shell's checks

class Jobs:
    """Job states as FuxiMaster would answer them (only what ``Chaos`` asks)."""

    def __init__(self, states: dict):
        self.states = states
        self.asked: list = []

    def status(self, job_id):
        self.asked.append(job_id)
        if job_id not in self.states:
            raise JobNotFound(f"no job with id {job_id!r}; `fuxi job list` shows the known jobs")
        return {"state": self.states[job_id]}


@pytest.mark.parametrize("args, match", [
    (("master", "x"), "takes no argument"),
    (("jobmaster", None), r"expected a job id \(`fuxi job list`\)"),
    (("worker", None), r"expected a job id"),
    (("agent", None), r"expected a node id \(`fuxi node list`\)"),
    (("node", None), r"expected a node id"),
    (("jobmaster", "j", "extra"), "unexpected extra argument"),
    (("node", "abcd", "extra"), "unexpected extra argument"),
    (("rm -rf", None), "expected one of"),
])
def test_a_malformed_request_is_refused_before_anything_is_looked_up(args, match):
    jobs = Jobs({})
    c = sc.Chaos("fuxi-nowhere", jobs, procs=lambda: pytest.fail("looked at processes"))
    with pytest.raises(BadInput, match=match):
        c.find(*args)
    assert jobs.asked == []


@pytest.mark.parametrize("kind", ["jobmaster", "agent", "worker", "node"])
def test_no_restart_is_for_the_master_only(kind):
    with pytest.raises(BadInput, match="--no-restart applies to `master` only"):
        sc.Chaos("ns", Jobs({})).find(kind, "j", no_restart=True)


@pytest.mark.parametrize("kind", ["jobmaster", "worker"])
def test_unknown_ended_and_queued_jobs_have_nothing_to_kill(kind):
    c = sc.Chaos("ns", Jobs({"done": "succeeded", "waiting": "queued"}))
    with pytest.raises(JobNotFound, match="fuxi job list"):
        c.find(kind, "nope")
    with pytest.raises(TargetNotFound, match=r"has ended \(succeeded\)"):
        c.find(kind, "done")
    with pytest.raises(TargetNotFound, match="waits in its queue"):
        c.find(kind, "waiting")
    with pytest.raises(BadInput):
        c.find(kind, "../../x")
    if kind == "worker":
        with pytest.raises(BadInput, match="process id"):  # before any Ray lookup
            c.find("worker", "done", "zz top")


def test_this_machines_processes_are_read_from_proc_and_garbage_there_is_skipped(tmp_path):
    me = {p: (pp, argv) for p, pp, argv in sc.local_processes()}
    assert me[os.getpid()][0] == os.getppid() and me[os.getpid()][1]
    fake = tmp_path / "proc"
    for name, stat, cmd in [("7", b"7 (a b) c) S 3 7", b"raylet\0--node_id=x\0"),
                            ("8", b"garbage", b"x"), ("self", b"1 (x) S 0", b"x"), ("9", None, None)]:
        (fake / name).mkdir(parents=True)
        if stat is not None:
            (fake / name / "stat").write_bytes(stat)
            (fake / name / "cmdline").write_bytes(cmd)
    assert sc.local_processes(str(fake)) == [(7, 3, ["raylet", "--node_id=x"])]
    assert sc.local_processes(str(tmp_path / "none")) == []


# ------------------------------------------------------------------ the command

runner = CliRunner()


def test_the_command_refuses_the_embedded_default(tmp_path, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    r = runner.invoke(app, ["debug", "kill", "master", "--yes"])
    assert r.exit_code == 3, r.output  # no cluster: the platform is unavailable
    assert "embedded default" in r.output and "fuxi up" in r.output


@pytest.mark.parametrize("argv", [["debug", "kill", "agent"], ["debug", "kill", "jobmaster"],
                                  ["debug", "kill", "everything"], ["debug", "kill", "master", "x"]])
def test_the_command_refuses_a_missing_or_extra_argument(argv, tmp_path, monkeypatch):
    from cli.main import app

    monkeypatch.setenv("FUXI_HOME", str(tmp_path))
    assert runner.invoke(app, argv).exit_code == 2


def test_a_process_that_ended_or_left_its_raylet_before_the_signal_is_not_killed():
    """The process list is read again just before SIGKILL: a pid no longer under the node's
    raylet (it ended; the number may be someone else's by then) is never signalled."""
    procs = [list(PROCS)]
    c = sc.Chaos("ns", Jobs({}), procs=lambda: procs[0])
    procs[0] = [p for p in PROCS if p[0] != 101] + [(101, 1, ["someone else"])]
    with pytest.raises(TargetNotFound, match="ended before it was killed"):
        c._signal(SECOND, [101], raylet_too=False)
    procs[0] = []
    with pytest.raises(TargetNotFound, match="nothing killed"):
        c._signal(SECOND, [100, 101], raylet_too=True)
