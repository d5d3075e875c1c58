"""A real multi-process Ray cluster (issue 18): `ray start --head` plus a second `ray start
--address` (a separate raylet with its own temp dir), `fuxi up --address` onto it, and code
that exists only in the submitter's directory.

Everything runs in subprocesses (this test process never connects to Ray, so it runs beside
the shared fixture's cluster in any order); the Ray processes it started are ended by PID,
found by their temp dir in /proc, in a ``finally``.

Run it alone: ``timeout 600 flock /tmp/fuxi-ray.lock python -m pytest tests/integration/test_real_cluster.py``
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from base.cluster import cmdline

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD_TIMEOUT_S = 240
JOB_WAIT_S = 180
SECOND_IP = "127.0.0.2"
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

JOB_MODULE = '''
import os
import time

import ray

def count(ctx):
    """Each instance: its index squared, and where (node, directory) its code came from."""
    i = ctx.instance
    time.sleep(2)  # held long enough that the four instances run at once, on both nodes
    return {"i": [i], "sq": [i * i], "file": [os.path.abspath(__file__)], "cwd": [os.getcwd()],
            "node": [ray.get_runtime_context().get_node_id()]}
'''
JOB_SPEC = """
name: shipped
tasks:
  sq:
    fn: onlyhere:count
    instances: 4
    output: {out}
"""
SERVICE_MODULE = '''
import kuafu

class Greeter:
    def __init__(self, greeting="hello"):
        self.greeting = greeting

    @kuafu.method(idempotent=True)
    async def greet(self, msg):
        return f"{self.greeting} {msg} from {__file__}"
'''
SERVICE_SPEC = """
name: greeter
class: greetsvc:Greeter
replicas: 1
resources: {cpu: 0}
config: {greeting: hi}
"""
# A function defined in __main__ with a closure: refused before issue 18, shipped by value now.
BY_VALUE_SCRIPT = '''
import json, sys
import fuxi
from fuxi import JobSpec, TaskSpec

factor = int(sys.argv[2])

def scaled(ctx):
    return {"i": [ctx.instance], "v": [ctx.instance * factor]}

spec = JobSpec(name="byvalue", tasks={"t": TaskSpec(fn=scaled, instances=3,
                                                   output={"path": sys.argv[1], "shared": True})})
with fuxi.Client("default") as client:  # the facade: no Ray handle to manage
    st = client.jobs.wait(client.jobs.submit(spec), timeout_s=120, check=False)
print(json.dumps({"state": st["state"], "report": st.get("report")}))
'''


# A requirement installed for real by Ray's pip runtime_env: a wheel of our own, found by pip
# in a local directory (PIP_FIND_LINKS, PIP_NO_INDEX on the raylets' environment), so the test
# needs no network and still runs pip's resolver, Ray's virtualenv and the install.
PIP_JOB_SPEC = """
name: withpip
runtime_env:
  pip: ["fuxiprobe==0.1.0"]
tasks:
  t:
    fn: usesprobe:where
    instances: 2
    output: {{path: {out}, shared: true}}
"""
PIP_JOB_MODULE = '''
import fuxiprobe

def where(ctx):
    return {"i": [ctx.instance], "magic": [fuxiprobe.MAGIC], "file": [fuxiprobe.__file__]}
'''


def _probe_wheel(wheels) -> None:
    """fuxiprobe 0.1.0 as a wheel file (a zip with its dist-info), written by hand."""
    import base64
    import hashlib
    import zipfile

    files = {"fuxiprobe.py": "MAGIC = 'installed-by-pip-0.1.0'\n",
             "fuxiprobe-0.1.0.dist-info/METADATA":
                 "Metadata-Version: 2.1\nName: fuxiprobe\nVersion: 0.1.0\n",
             "fuxiprobe-0.1.0.dist-info/WHEEL":
                 "Wheel-Version: 1.0\nGenerator: fuxi-tests\nRoot-Is-Purelib: true\n"
                 "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(text.encode())}")
    record.append("fuxiprobe-0.1.0.dist-info/RECORD,,")
    files["fuxiprobe-0.1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(wheels / "fuxiprobe-0.1.0-py3-none-any.whl", "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home) -> dict:
    env = dict(os.environ, FUXI_HOME=str(home), RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=REPO)
    for k in ("RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_TMPDIR"):
        env.pop(k, None)
    return env


def _run(args, cwd, env, check=True, timeout_s=CMD_TIMEOUT_S):
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout_s)
    if check:
        assert res.returncode == 0, f"{' '.join(map(str, args))} -> {res.returncode}\n" \
                                    f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _fuxi(home, cwd, *args, check=True):
    return _run([sys.executable, "-m", "cli.main", *args], cwd, _env(home), check)


def _pids_under(text: str) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            cmd = cmdline(name)
            if cmd is not None and text in cmd:
                out.append(int(name))
    return out


def _session_pids(temp_dir: str) -> list[int]:
    """Every process of a Ray node started with ``--temp-dir temp_dir``: its raylet, GCS and
    agents name the dir (or its session) on their command line; workers are children of the
    raylet, found through /proc/<pid>/stat."""
    roots = set(_pids_under(temp_dir))
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen or p == os.getpid():
            continue
        seen.add(p)
        todo += children.get(p, [])
    return sorted(seen)


def _kill_all(temp_dirs: list[str]) -> list[int]:
    pids = sorted({p for d in temp_dirs for p in _session_pids(d)})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") and
                                             _alive(p) for p in pids):
            time.sleep(0.2)
    return [p for p in pids if os.path.exists(f"/proc/{p}") and _alive(p)]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_job(home, cwd, job_id: str) -> dict:
    """The job's final status, from one `fuxi job wait` (exit 0 succeeded, 1 failed)."""
    res = _fuxi(home, cwd, "job", "wait", job_id, "--timeout", f"{JOB_WAIT_S:g}", "--json",
                check=False)
    assert res.returncode in (0, 1), (res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


def _alive_nodes(address: str, env: dict, cwd: str) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
             "print(sum(1 for n in ray.nodes() if n['Alive'])); ray.shutdown()" % address)
    return int(_run([sys.executable, "-c", probe], cwd, env).stdout.strip().splitlines()[-1])


def test_code_only_in_the_submit_dir_runs_on_a_real_two_raylet_cluster(tmp_path):
    # Short: Ray's socket paths under a temp dir must stay within AF_UNIX's 107 bytes.
    short = tempfile.mkdtemp(prefix="fxrc-", dir="/tmp")
    home = os.path.join(short, "home")
    head_tmp, node_tmp = os.path.join(short, "h"), os.path.join(short, "n")
    code = tmp_path / "code"  # the submitter's directory: on no worker's path
    other = tmp_path / "elsewhere"  # where `fuxi up` runs from
    out, out2 = tmp_path / "out", tmp_path / "out2"
    for d in (code, other):
        d.mkdir()
    (code / "onlyhere.py").write_text(textwrap.dedent(JOB_MODULE))
    (code / "job.yaml").write_text(JOB_SPEC.format(out=out))
    (code / "greetsvc.py").write_text(textwrap.dedent(SERVICE_MODULE))
    (code / "greeter.yaml").write_text(SERVICE_SPEC)
    (code / "byvalue.py").write_text(BY_VALUE_SCRIPT)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _probe_wheel(wheels)
    (code / "usesprobe.py").write_text(textwrap.dedent(PIP_JOB_MODULE))
    (code / "pipjob.yaml").write_text(PIP_JOB_SPEC.format(out=tmp_path / "out3"))
    env = dict(_env(home), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    try:
        _run([RAY, "start", "--head", f"--port={port}", f"--temp-dir={head_tmp}",
              "--num-cpus=2", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
              "--disable-usage-stats"], str(other), env)
        # A second raylet on this machine, its own temp dir: a node of its own to Ray, on
        # another loopback address (127.0.0.0/8 is all this host), so to Fuxi the cluster
        # spans two machines, as a real one does.
        _run([RAY, "start", f"--address={address}", f"--temp-dir={node_tmp}", "--num-cpus=2",
              f"--node-ip-address={SECOND_IP}", "--disable-usage-stats"], str(other), env)
        assert _alive_nodes(address, env, str(other)) == 2
        _fuxi(home, str(other), "up", "--address", address, "--no-auth", "--nuwa-replicas", "1",
              "--web-port", "0")

        # A local output on a cluster spanning machines: refused at submit, pointing to Pangu.
        (code / "job.yaml").write_text(JOB_SPEC.format(out=out))
        refused = _fuxi(home, str(code), "submit", "job.yaml", "--working-dir", ".",
                        "--no-wait", check=False)
        assert refused.returncode == 2, refused.stderr
        assert "tasks.sq.output" in refused.stderr and "pangu://" in refused.stderr
        assert "2 machines" in refused.stderr, refused.stderr
        # Declared shared (here it is: one host), the job runs. Its module exists only in
        # `code`: with no --working-dir, a cluster spanning machines ships the submit dir.
        (code / "job.yaml").write_text(JOB_SPEC.format(out=f"{{path: {out}, shared: true}}"))
        job_id = _fuxi(home, str(code), "submit", "job.yaml", "--no-wait").stdout.strip()
        shutil.copytree(code, tmp_path / "code-copy")
        shutil.rmtree(code)  # uploaded at submit: the workers never need the original
        st = _wait_job(home, str(other), job_id)
        assert st["state"] == "succeeded", st.get("report") or st
        import pyarrow.parquet as pq

        rows = sorted(pq.read_table(str(out)).to_pylist(), key=lambda r: r["i"])
        assert [(r["i"], r["sq"]) for r in rows] == [(i, i * i) for i in range(4)]
        for r in rows:  # imported from Ray's unpacked package, not from the submit directory
            assert not r["file"].startswith(str(tmp_path / "code")), r
            assert "runtime_resources" in r["file"] and r["cwd"] == os.path.dirname(r["file"]), r
        # 4 instances of 1 CPU held 2 s each on two 2-CPU nodes: both nodes ran the code.
        assert len({r["node"] for r in rows}) == 2, rows

        # A service registered the same way answers calls.
        shutil.copytree(tmp_path / "code-copy", code)
        reg = json.loads(_fuxi(home, str(code), "service", "register", "greeter.yaml",
                               "--working-dir", ".", "--json").stdout)
        assert reg["name"] == "greeter"
        shutil.rmtree(code)
        deadline = time.time() + JOB_WAIT_S
        st = reg
        while st.get("ready", 0) < 1 or st.get("starting"):
            assert time.time() < deadline, st
            time.sleep(1.0)
            st = json.loads(_fuxi(home, str(other), "service", "status", "greeter",
                                  "--json").stdout)
        reply = _fuxi(home, str(other), "call", "nuwa://default/greeter", "greet",
                      "--data", "bob").stdout
        assert reply.startswith("hi bob from ") and "runtime_resources" in reply, reply

        # A __main__ function closing over a variable, given to the Python API, by value.
        shutil.copytree(tmp_path / "code-copy", code)
        res = _run([sys.executable, "byvalue.py", str(out2), "7"], str(code), env)
        got = json.loads(res.stdout.strip().splitlines()[-1])
        assert got["state"] == "succeeded", got
        rows = sorted(pq.read_table(str(out2)).to_pylist(), key=lambda r: r["i"])
        assert [(r["i"], r["v"]) for r in rows] == [(0, 0), (1, 7), (2, 14)]

        # A pip requirement: installed by Ray into the job's own virtualenv on each node, not
        # in the submitter's environment (which lacks it).
        res = _run([sys.executable, "-c", "import fuxiprobe"], str(code), env, check=False)
        assert res.returncode != 0, "the probe must not be installed where the test runs"
        job_id = _fuxi(home, str(code), "submit", "pipjob.yaml", "--working-dir", ".",
                       "--no-wait").stdout.strip()
        st = _wait_job(home, str(other), job_id)
        assert st["state"] == "succeeded", st.get("report") or st
        rows = sorted(pq.read_table(str(tmp_path / "out3")).to_pylist(), key=lambda r: r["i"])
        assert [(r["i"], r["magic"]) for r in rows] == [(0, "installed-by-pip-0.1.0"),
                                                        (1, "installed-by-pip-0.1.0")]
        assert all("runtime_resources" in r["file"] and "pip" in r["file"] for r in rows), rows

        # `fuxi down` stops Fuxi, not the Ray cluster it was deployed onto.
        _fuxi(home, str(other), "down")
        assert _alive_nodes(address, env, str(other)) == 2
    finally:
        left = _kill_all([head_tmp, node_tmp])
        shutil.rmtree(short, ignore_errors=True)
        assert left == [], f"Ray processes still running: {left}"
