"""The README's Python snippets run as written, against a `fuxi up` cluster of their own (with
Nuwa, Pangu and Kuafu), each in a fresh interpreter from the repository root."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNIPPET_TIMEOUT_S = 180
UP_TIMEOUT_S = 240


def snippets() -> list[str]:
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _env(home) -> dict:
    env = dict(os.environ, FUXI_HOME=str(home), PYTHONPATH=REPO)
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(k, None)
    return env


def test_the_readme_has_python_snippets():
    assert len(snippets()) >= 2


def test_every_python_snippet_of_the_readme_runs(tmp_path):
    home = tmp_path / "home"
    env = _env(home)
    up = subprocess.run([sys.executable, "-m", "cli.main", "up"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=UP_TIMEOUT_S)
    assert up.returncode == 0, up.stderr
    try:
        for i, code in enumerate(snippets()):
            res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S)
            assert res.returncode == 0, f"README snippet {i + 1}:\n{code}\n{res.stdout}\n{res.stderr}"
    finally:
        subprocess.run([sys.executable, "-m", "cli.main", "down"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=UP_TIMEOUT_S)


# ------------------------------------------------------------------ the shell block

SHELL_CMD_TIMEOUT_S = 300  # one README command (the first submit starts a Ray of its own)
# Each command of the "Using it" block, as the README has it (its comment cut off), and a
# pattern its output (stdout and stderr) must match; all must exit 0. The README and this
# table change together: the test fails when they differ.
USING_IT = [
    ("fuxi submit jobs/wordcount.yaml", r"job wordcount-\S+ succeeded"),
    ("fuxi up", r"cluster 'default'"),
    ("fuxi config show", r"web\.port = \d+"),
    ("fuxi status --json", r'"running": true'),
    ("fuxi node list", r"NODE ID .*\n[0-9a-f]{12} +\S+ +\d+(\.\d+)?/\d"),
    ("fuxi top --once", r"cluster 'default': 1 node\(s\)"),
    ("fuxi alerts", r"."),
    ("ID=$(fuxi submit jobs/stragglers.yaml --no-wait --request-id readme-stragglers)",
     r"^stragglers-\S+$"),
    ("fuxi job wait $ID --timeout 300", r"job stragglers-\S+ succeeded"),
    ("fuxi job list", r"stragglers-\S+ +succeeded"),
    ("fuxi job status $ID", r"work: 40/40 done"),
    ("fuxi job logs $ID --task work --instance 0", r"^$|work\[0\]"),
    ("fuxi job timeline $ID --out trace.json", r"attempt\(s\) of job stragglers-\S+ written to "
                                               r"trace.json"),
    ("fuxi explain job $ID --task work --instance 0", r"work\[0\]|attempt"),
    ("fuxi events --since 10m --kind 'job_*'", r"job_submitted"),
    ("fuxi queue list", r"default"),
    ("fuxi nuwa put /config/threads 8", r"^$"),
    ("fuxi nuwa get /config/threads", r"^8$"),
    ("fuxi nuwa ls /config/", r"^threads$"),
    ("fuxi pangu put jobs/data/part-0.txt /in/part-0.txt", r"/in/part-0.txt"),
    ("fuxi pangu ls /in", r"part-0.txt"),
    ('fuxi submit jobs/wordcount.yaml --set input="pangu:///in/*.txt" --set output=pangu:///wc',
     r"job wordcount-\S+ succeeded"),
    ("fuxi pangu fsck", r"HEALTHY"),
    ("fuxi service register jobs/services/wordfreq.yaml --set config.counts=$PWD/out/wordcount "
     "--wait", r"wordfreq +version 1 +2/2 ready"),
    ("fuxi service status wordfreq", r"wordfreq +version 1 +2/2 ready"),
    ("fuxi service logs wordfreq", r""),  # exit 0; its replicas may print nothing
    ("fuxi call nuwa://default/wordfreq lookup word=the", r"^the=[1-9]\d*$"),
    ("fuxi service upgrade wordfreq jobs/services/wordfreq.yaml --set version=2 "
     "--set config.counts=$PWD/out/wordcount --wait", r"wordfreq +version 2 +2/2 ready"),
    ("fuxi service remove wordfreq", r"removing wordfreq"),
    ("fuxi down", r"."),
]


def shell_commands() -> list[str]:
    """The commands of the README's first ```bash block under "Using it", in order (lines
    ending in a backslash joined)."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line:
            commands.append(line)
    return commands


def _without_comment(command: str) -> str:
    return command.split("  #", 1)[0].strip()


def test_the_using_it_block_is_what_the_test_runs():
    assert [_without_comment(c) for c in shell_commands()] == [c for c, _ in USING_IT]


def test_the_using_it_block_runs_as_written(tmp_path):
    """Every command in order, in a directory holding a copy of the repository's jobs/, with a
    `fuxi` on PATH that runs this checkout; each exits 0 and prints what it should."""
    import shutil

    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    shutil.copytree(os.path.join(REPO, "jobs"), work / "jobs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir.mkdir()
    shim = bin_dir / "fuxi"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cli.main "$@"\n')
    shim.chmod(0o755)
    env = _env(home)
    env.pop("FUXI_CLUSTER", None)
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    env["PWD"] = str(work)
    assign = re.compile(r"^([A-Za-z_]\w*)=\$\((.*)\)$")
    try:
        for command, (expected_cmd, pattern) in zip(shell_commands(), USING_IT):
            bare = _without_comment(command)
            m = assign.match(bare)
            script = m.group(2) if m else command
            res = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                                 text=True, timeout=SHELL_CMD_TIMEOUT_S)
            out = (res.stdout + res.stderr).strip()
            assert res.returncode == 0, f"{command}\n-> exit {res.returncode}\n{out}"
            shown = res.stdout.strip() if m else out
            assert re.search(pattern, shown, re.M), f"{command}\n-> {pattern!r} not in:\n{out}"
            if m:
                env[m.group(1)] = res.stdout.strip()
    finally:
        subprocess.run(["bash", "-c", "fuxi down"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=UP_TIMEOUT_S)
