"""A JobMaster killed during its job is restarted by FuxiMaster and resumes from its
checkpoint (issue 16 part 4): the job succeeds with exactly the right output, and the
instances that had finished (and were checkpointed) before the kill are not run again.

Every task function here leaves one file per attempt it actually ran (``ran-<task>-<i>-<uuid>``,
whatever the attempt's number), so "not run again" is counted on disk, not taken from status.
"""

from __future__ import annotations

import glob
import os

import pytest
from tests.integration.jobhelpers import kill_jobmaster, ran, read_output, wait_status

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]

FNS = "tests.integration.taskfns"
WAIT_S = 180.0


def kill_jobmaster_when(client, job_id: str, ready, what: str) -> dict:
    """Poll the job's status until ``ready(status)``, then kill its JobMaster (no restart by
    Ray: only FuxiMaster may bring it back). Returns the status seen just before."""
    st = wait_status(client, job_id, ready, what, timeout_s=WAIT_S)
    kill_jobmaster(job_id)
    return st


def test_a_killed_jobmaster_resumes_a_three_stage_job_without_rerunning_the_first(client, tmp_path):
    marks, out = tmp_path / "marks", tmp_path / "out"
    n, gens = 500, 4
    spec = {"name": "resume-three", "params": {"dir": str(marks), "n": n, "sleep_s": 4.0},
            "tasks": {
                "gen": {"fn": f"{FNS}:gen_counted", "instances": gens},
                "shuffle": {"fn": f"{FNS}:pass_slowly", "instances": 3, "depends_on": ["gen"],
                            "partition_by": ["key"]},
                "sum": {"fn": f"{FNS}:sum_counted", "instances": 3, "depends_on": ["shuffle"],
                        "shuffle": "one_to_one", "output": str(out)}}}
    job_id = client.submit(spec)
    before = kill_jobmaster_when(
        client, job_id,
        lambda st: st["checkpoint"]["stored"] >= gens and ran(marks, "shuffle") > 0,
        "the first stage checkpointed and the second running")
    assert before["tasks"]["gen"]["succeeded"] == gens
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    # Exactly the right output: every key once, with the sum and count of all its values.
    t = read_output(out)
    got = {k: (s, c) for k, s, c in zip(t.column("key").to_pylist(), t.column("v_sum").to_pylist(),
                                         t.column("v_count").to_pylist())}
    want: dict[int, tuple[int, int]] = {}
    for v in range(gens * n):
        s, c = want.get(v % 97, (0, 0))
        want[v % 97] = (s + v, c + 1)
    assert got == want and t.num_rows == 97
    # The first stage ran once per instance, before the kill; the new JobMaster says so.
    assert ran(marks, "gen") == gens
    assert st["jobmaster_restarts"] == 1
    assert st["submitted_at"] <= before["submitted_at"]  # the job's, not the new JobMaster's
    assert st["tasks"]["gen"]["recovered"] == gens and st["tasks"]["gen"]["attempts"] == 0
    for name, task in st["tasks"].items():
        assert task["recovered"] + task["rerun"] == task["instances"], (name, task)
    assert st["tasks"]["shuffle"]["rerun"] >= 1  # it was running when its master died


def test_wordcount_survives_its_jobmaster_killed_mid_run(client, tmp_path):
    from jobs.wordcount import plain_count

    marks, out = tmp_path / "marks", tmp_path / "wc"
    inputs = sorted(glob.glob(os.path.abspath("jobs/data/*.txt")))
    spec = {"name": "wordcount-resume",
            "params": {"dir": str(marks), "sleep_s": 3.0},
            "tasks": {
                "map": {"fn": f"{FNS}:map_words_counted", "input": os.path.abspath("jobs/data/*.txt")},
                "reduce": {"fn": f"{FNS}:sum_counts_slowly", "instances": 2, "depends_on": ["map"],
                           "partition_by": ["word"], "output": str(out)}}}
    job_id = client.submit(spec)
    before = kill_jobmaster_when(
        client, job_id, lambda st: (st["checkpoint"]["stored"] >= st["tasks"]["map"]["instances"]
                                    and ran(marks, "reduce") > 0),
        "the maps checkpointed and a reduce running")
    maps = before["tasks"]["map"]["instances"]
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    t = read_output(out)
    got = dict(zip(t.column("word").to_pylist(), t.column("count").to_pylist()))
    assert got == plain_count(inputs) and len(got) == t.num_rows
    assert ran(marks, "map") == maps  # no map ran twice
    assert st["tasks"]["map"]["recovered"] == maps and st["jobmaster_restarts"] == 1
    assert os.path.exists(out / "_SUCCESS")


def test_a_damaged_checkpoint_file_means_that_instance_runs_again_never_wrong_data(client, tmp_path):
    import tempfile

    marks, out = tmp_path / "marks", tmp_path / "out"
    n, gens = 300, 3
    spec = {"name": "resume-damaged", "params": {"dir": str(marks), "n": n, "sleep_s": 4.0},
            "tasks": {
                "gen": {"fn": f"{FNS}:gen_counted", "instances": gens},
                "shuffle": {"fn": f"{FNS}:pass_slowly", "instances": 2, "depends_on": ["gen"],
                            "partition_by": ["key"]},
                "sum": {"fn": f"{FNS}:sum_counted", "instances": 2, "depends_on": ["shuffle"],
                        "shuffle": "one_to_one", "output": str(out)}}}
    job_id = client.submit(spec)

    def damaged(st) -> bool:
        if not (st["checkpoint"]["stored"] >= gens and ran(marks, "shuffle") > 0):
            return False
        # FuxiMaster's data dir here is a temporary one; the checkpoint sits under it.
        (path,) = glob.glob(os.path.join(tempfile.gettempdir(), "fuxi-master-*", "ckpt", job_id,
                                         "gen-1-*.arrow"))
        with open(path, "r+b") as f:  # one flipped byte in the middle of the file
            f.seek(os.path.getsize(path) // 2)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0xFF]))
        return True

    kill_jobmaster_when(client, job_id, damaged, "the first stage checkpointed")
    st = client.wait(job_id, timeout_s=WAIT_S)
    assert st["state"] == "succeeded", st.get("report")
    t = read_output(out)
    assert sorted(t.column("key").to_pylist()) == list(range(97))
    assert sum(t.column("v_sum").to_pylist()) == sum(range(gens * n))
    assert ran(marks, "gen") == gens + 1  # gen[1] ran again; the others were recovered
    assert st["tasks"]["gen"]["recovered"] == gens - 1 and st["tasks"]["gen"]["rerun"] == 1
    assert any("gen[1]" in line and "checksum" in line
               for line in st["checkpoint"]["resume_report"]), st["checkpoint"]
