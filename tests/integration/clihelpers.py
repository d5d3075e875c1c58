"""The `fuxi` command in a subprocess, as the end-to-end tests run it: this checkout, its own
``$FUXI_HOME``, none of the caller's Ray or cluster choice in the environment."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CMD_TIMEOUT_S = 180  # one `fuxi` command, `fuxi up` included
_DROPPED = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "FUXI_CLUSTER")


def fuxi(home, *args, check=True, stdin=None):
    env = dict(os.environ, FUXI_HOME=str(home))
    for k in _DROPPED:
        env.pop(k, None)
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=CMD_TIMEOUT_S, input=stdin)
    if check:
        assert res.returncode == 0, (f"fuxi {' '.join(args)} -> {res.returncode}\n"
                                     f"{res.stdout}\n{res.stderr}")
    return res
