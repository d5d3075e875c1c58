"""`fuxi job logs` and `fuxi service logs` in subprocesses (issue 18 part 2): the embedded
default's captured output read after its Ray is gone, and `fuxi job logs -f` streaming a
`fuxi up` cluster's running task (the task waits for a mark the test writes only after it saw
the line), ending with the job's state; `fuxi service logs` of a replica; bad input exit 2."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.clihelpers import REPO, fuxi

pytestmark = [pytest.mark.ray, pytest.mark.timeout(400)]
LINE_TIMEOUT_S = 90.0


def chatty_spec(tmp_path, d, fail_first=True) -> str:
    spec = tmp_path / "chatty.yaml"
    spec.write_text(f"name: chatty\nretry_backoff_s: 0.01\nparams: {{dir: {d}, fail_first: "
                    f"{str(fail_first).lower()}}}\ntasks:\n  t:\n    fn: "
                    f"tests.integration.logfns:chatty\n    instances: 1\n    max_retries: 2\n")
    return str(spec)


def test_embedded_output_survives_the_shutdown_and_bad_input_exits_2(tmp_path):
    home, d = tmp_path / "home", tmp_path / "marks"
    d.mkdir()
    for a in (0, 1):
        (d / f"go-0-{a}").write_text("")  # no waiting: the job runs through
    res = fuxi(home, "submit", chatty_spec(tmp_path, d), "--json")
    job_id = json.loads(res.stdout)["job_id"]
    # Ray is gone; the files under $FUXI_HOME are read directly.
    text = fuxi(home, "job", "logs", job_id).stdout
    assert "t[0] a1: " in text  # today's ctx.log lines are still there...
    assert "t[0] a0 stdout: hello from t[0] attempt 0" in text  # ...and then what it printed
    assert "t[0] a1 stderr: to stderr attempt 1" in text
    assert "t[0] a1 logging: " in text and "WARNING user.task: logged attempt 1" in text
    rows = [json.loads(x) for x in fuxi(home, "job", "logs", job_id, "--json", "--attempt", "0"
                                        ).stdout.splitlines()]
    lines = [r for r in rows if "line" in r]
    assert {r["attempt"] for r in lines} == {0}
    assert {"stdout", "stderr", "logging", "ctx.log", "fuxi"} <= {r["stream"] for r in lines}
    cursor = rows[-1]["cursor"]
    again = fuxi(home, "job", "logs", job_id, "--json", "--cursor", cursor, "--attempt", "0")
    assert again.stdout == ""  # nothing new after the cursor
    follow = fuxi(home, "job", "logs", job_id, "-f")  # an ended job: everything, exit by state
    assert "released attempt 1" in follow.stdout
    for args, why in [(["--attempt", "-1"], "--attempt -1 is not valid"),
                      (["--task", "nope"], "has no task 'nope'"),
                      (["--task", "t", "--instance", "5"], "--instance 5 is not valid"),
                      (["--cursor", "garbage"], "is not <key>@<offset>"),
                      (["--cursor", "t/0/0@99999999999999999999"], "out of range")]:
        bad = fuxi(home, "job", "logs", job_id, *args, check=False)
        assert bad.returncode == 2 and why in bad.stderr, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1  # one line, no traceback


def _reader(proc, q):
    for line in proc.stdout:
        q.put(line)
    q.put(None)


def wait_line(q, want, timeout_s=LINE_TIMEOUT_S):
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            raise AssertionError(f"stream ended before {want!r}; saw {seen[-10:]}")
        seen.append(line)
        if want in line:
            return seen
    raise AssertionError(f"{want!r} not seen in {timeout_s}s; saw {seen[-10:]}")


def test_follow_streams_a_running_task_and_service_logs(tmp_path):
    home, d = tmp_path / "home", tmp_path / "marks"
    d.mkdir()
    fuxi(home, "up", "--num-cpus", "2", "--web-port", "0")
    proc = None
    try:
        job_id = fuxi(home, "submit", chatty_spec(tmp_path, d), "--no-wait").stdout.strip()
        env = dict(os.environ, FUXI_HOME=str(home))
        for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
            env.pop(k, None)
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "job", "logs", job_id, "-f"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc, q), daemon=True).start()
        seen = wait_line(q, "t[0] a0 stdout: hello from t[0] attempt 0")
        # the task still waits for this mark: the line came from a running task
        assert not (d / "go-0-0").exists()
        (d / "go-0-0").write_text("")
        seen += wait_line(q, "t[0] a1 stdout: hello from t[0] attempt 1")
        (d / "go-0-1").write_text("")
        seen += wait_line(q, "released attempt 1")
        assert proc.wait(timeout=120) == 0  # -f ends when the job ends, by its state
        assert any("first attempt fails on purpose" in x for x in seen)
        proc = None
        # A service's replica output.
        svc = tmp_path / "talker.yaml"
        svc.write_text("name: talker\nclass: tests.integration.logfns:Talker\nversion: \"1\"\n"
                       "replicas: 1\nresources: {cpu: 0}\nconfig: {greeting: hola}\n")
        fuxi(home, "service", "register", str(svc), "--json")
        deadline = time.time() + 120
        while True:
            out = fuxi(home, "service", "logs", "talker", check=False)
            if "talker starting: hola" in out.stdout or time.time() > deadline:
                break
            time.sleep(1.0)
        assert out.returncode == 0 and "stdout: talker starting: hola" in out.stdout, out
        bad = fuxi(home, "service", "logs", "talker", "--replica", "nope", check=False)
        assert bad.returncode == 2 and "no output kept for replica 'nope'" in bad.stderr
        bad = fuxi(home, "service", "logs", "talker", "--cursor", "@@", check=False)
        assert bad.returncode == 2 and "--cursor" in bad.stderr
    finally:
        if proc is not None:
            proc.kill()
        for a in (0, 1):
            (d / f"go-0-{a}").write_text("")
        fuxi(home, "down", check=False)
