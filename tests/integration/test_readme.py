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
