"""The contract for scripts (issue 18 part 3) against one real `fuxi up` cluster: the exit
codes that need a cluster (job wait 0/1/4/130, --request-id's same job and refused conflict,
service --wait 0/4, nuwa put --no-parents 2), completion read from the cluster's Nuwa, and
the Python side (fuxi.Client with no Ray handle, fuxi.run's check) in a fresh interpreter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from base.errors import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(800)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD_TIMEOUT_S = 180
WAITING_TIMEOUT_S = 60.0  # a `fuxi job wait` says "waiting for job" (on stderr) by then


def _env(home, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("FUXI_CLUSTER", "FUXI_TOKEN")}
    env.update(FUXI_HOME=str(home), PYTHONPATH=REPO, **extra)
    return env


def fuxi(home, *args, code=EXIT_OK, env=None):
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO,
                         env=env or _env(home), capture_output=True, text=True,
                         timeout=CMD_TIMEOUT_S)
    assert res.returncode == code, (f"fuxi {' '.join(args)} -> {res.returncode}, expected "
                                    f"{code}\n{res.stdout}\n{res.stderr}")
    return res


def spec(tmp_path, name: str, fn: str, **params) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "retry_backoff_s": 0.01, "params": params,
                                "tasks": {"t": {"fn": f"tests.integration.taskfns:{fn}",
                                                "instances": 1, "max_retries": 0}}}))
    return str(path)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("contract") / "home"
    fuxi(h, "up", "--num-cpus", "4", "--web-port", "0")
    try:
        yield h
    finally:
        subprocess.run([sys.executable, "-m", "cli.main", "down"], cwd=REPO, env=_env(h),
                       capture_output=True, text=True, timeout=CMD_TIMEOUT_S)


def test_request_id_and_job_wait_exit_codes(home, tmp_path):
    marks = str(tmp_path / "marks")
    short = spec(tmp_path, "short", "sleepy", dir=marks, sleep_s=2)
    first = fuxi(home, "submit", short, "--no-wait", "--request-id", "contract-1").stdout.strip()
    again = fuxi(home, "submit", short, "--no-wait", "--request-id", "contract-1").stdout.strip()
    assert first == again and first.startswith("short-")
    other = spec(tmp_path, "short", "sleepy", dir=marks, sleep_s=3)
    refused = fuxi(home, "submit", other, "--no-wait", "--request-id", "contract-1",
                   code=EXIT_BAD_INPUT)
    assert "different spec" in refused.stderr
    done = fuxi(home, "job", "wait", first, "--timeout", "120")
    assert f"job {first} succeeded" in done.stdout
    jobs = json.loads(fuxi(home, "job", "list", "--json").stdout)
    assert [j["job_id"] for j in jobs].count(first) == 1 and len(jobs) == 1  # no duplicate

    doomed = fuxi(home, "submit", spec(tmp_path, "doomed", "always_fails"),
                  "--no-wait").stdout.strip()
    failed = fuxi(home, "job", "wait", doomed, "--json", code=EXIT_FAILED)
    assert json.loads(failed.stdout)["state"] == "failed"

    long = fuxi(home, "submit", spec(tmp_path, "long", "sleepy", dir=marks, sleep_s=120),
                "--no-wait").stdout.strip()
    late = fuxi(home, "job", "wait", long, "--timeout", "1", code=EXIT_TIMEOUT)
    assert "after --timeout 1s; it keeps running" in late.stderr
    # Ctrl-C: the job keeps running...
    assert _interrupted(home, "job", "wait", long) .count("keeps running") == 1
    assert json.loads(fuxi(home, "job", "status", long, "--json").stdout)["state"] == "running"
    # ...unless --cancel-on-interrupt.
    assert "cancelled" in _interrupted(home, "job", "wait", long, "--cancel-on-interrupt")
    assert "cancelled" in fuxi(home, "job", "wait", long, "--timeout", "60",
                               code=EXIT_FAILED).stdout


def _interrupted(home, *args) -> str:
    """Run ``fuxi job wait ...``, Ctrl-C it once it says it waits (stderr), return stderr."""
    import threading

    p = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=_env(home),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    waiting = threading.Event()

    def read_stderr():
        for line in p.stderr:
            lines.append(line)
            if line.startswith("waiting for job "):
                waiting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert waiting.wait(WAITING_TIMEOUT_S), ("never said it waits", "".join(lines))
        assert p.poll() is None, "".join(lines)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=CMD_TIMEOUT_S)
        out = p.stdout.read()  # it has ended: nothing more comes
        reader.join(CMD_TIMEOUT_S)
        err = "".join(lines)
        assert p.returncode == EXIT_INTERRUPTED, (out, err)
        assert "Traceback" not in err
        return err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=CMD_TIMEOUT_S)


def test_service_wait_nuwa_parents_and_completion(home):
    reg = fuxi(home, "service", "register", "jobs/services/echo.yaml", "--set", "replicas=1",
               "--wait", "--timeout", "120")
    assert "echo  version 1  1/1 ready" in reg.stdout, reg.stdout
    up = fuxi(home, "service", "upgrade", "echo", "jobs/services/echo.yaml", "--set",
              "replicas=1", "--set", "version=2", "--set", "config.tag=v2", "--wait",
              "--timeout", "120")
    assert "echo  version 2  1/1 ready" in up.stdout, up.stdout
    assert fuxi(home, "call", "nuwa://default/echo", "version").stdout == "v2\n"
    late = fuxi(home, "service", "upgrade", "echo", "jobs/services/echo.yaml", "--set",
                "replicas=1", "--set", "version=3", "--wait", "--timeout", "0",
                code=EXIT_TIMEOUT)
    assert "after --timeout 0s (version 3); it keeps trying" in late.stderr

    fuxi(home, "nuwa", "put", "/contract/a/b", "x")  # parents made, like etcdctl
    assert fuxi(home, "nuwa", "get", "/contract/a/b").stdout == "x"
    no = fuxi(home, "nuwa", "put", "/contract/none/c", "x", "--no-parents", code=EXIT_BAD_INPUT)
    assert "/contract/none" in no.stderr, no.stderr

    env = _env(home, _FUXI_COMPLETE="complete_bash", COMP_WORDS="fuxi service status e",
               COMP_CWORD="3")
    assert fuxi(home, env=env).stdout.split() == ["echo"]
    env.update(COMP_WORDS="fuxi job status ", COMP_CWORD="3")
    ids = fuxi(home, env=env).stdout.split()
    listed = [j["job_id"] for j in json.loads(fuxi(home, "job", "list", "--json").stdout)]
    assert sorted(ids) == sorted(listed)


PYTHON_SIDE = r'''
import fuxi

def spec(name, fn, **params):
    return {"name": name, "retry_backoff_s": 0.01, "params": params,
            "tasks": {"t": {"fn": "tests.integration.taskfns:" + fn, "instances": 1,
                            "max_retries": 0}}}

with fuxi.Client() as c:                      # no Ray handle: the record of "default"
    jid = c.jobs.submit(spec("ok", "noop"), request_id="py-1")
    assert c.jobs.submit(spec("ok", "noop"), request_id="py-1") == jid
    assert c.jobs.wait(jid, timeout_s=120)["state"] == "succeeded"
    assert c.jobs.get(jid)["state"] == "succeeded"
    assert jid in [j["job_id"] for j in c.jobs.list()]
    assert isinstance(c.jobs.logs(jid), list)
    bad = c.jobs.submit(spec("bad", "always_fails"))
    try:
        c.jobs.wait(bad, timeout_s=120)
        raise SystemExit("wait of a failed job did not raise")
    except fuxi.JobFailed as e:
        assert e.status["state"] == "failed", e.status
    long = c.jobs.submit(spec("long", "sleepy", dir=DIR, sleep_s=120))
    try:
        c.jobs.wait(long, timeout_s=0.5)
        raise SystemExit("a wait that ran out did not raise")
    except fuxi.JobWaitTimeout as e:
        assert e.status["state"] in ("pending", "running"), e.status
    c.jobs.cancel(long)
    assert c.jobs.wait(long, timeout_s=60, check=False)["state"] == "cancelled"
    assert "echo" in [s["name"] for s in c.services.list()]
    assert c.services.status("echo")["name"] == "echo"
    assert c.services.scale("echo", 1)["desired"] == 1
    assert len(c.nodes.list()) == 1 and c.nodes.list()[0]["node_id"]
try:
    fuxi.run(spec("bad2", "always_fails"))
    raise SystemExit("fuxi.run of a failed job did not raise")
except fuxi.JobFailed as e:
    assert e.status["state"] == "failed" and "disk on fire" in str(e.status.get("report")), e
assert fuxi.run(spec("bad3", "always_fails"), check=False)["state"] == "failed"
print("python side ok")
'''


def test_the_python_side_needs_no_ray_handle(home, tmp_path):
    services = json.loads(fuxi(home, "service", "list", "--json").stdout)
    if "echo" not in [s["name"] for s in services]:  # when run alone
        fuxi(home, "service", "register", "jobs/services/echo.yaml", "--set", "replicas=1",
             "--wait", "--timeout", "120")
    code = f"DIR = {str(tmp_path / 'marks')!r}\n" + PYTHON_SIDE
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(home),
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S * 2)
    assert res.returncode == 0 and "python side ok" in res.stdout, res.stdout + res.stderr
