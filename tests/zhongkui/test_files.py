"""``zhongkui.files``: a process that calls ``private_files()`` creates nothing another local
user can read or enter (issue 14, defect 9). Run in a fresh interpreter: the umask is
process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from zhongkui.files import exposed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WRITER = textwrap.dedent("""
    import json, os, sys
    from zhongkui.files import private_files
    root, old, skip = sys.argv[1], sys.argv[2], sys.argv[3] == "skip"
    os.umask(0o022)               # what a login shell hands a process
    if not skip:
        private_files(root, old)  # the call every platform process makes first
    from fuxi.io.store import FileStore
    from nuwa.io.wal import Wal
    from zhongkui.authority import load_or_create_keys
    FileStore(os.path.join(root, "state")).put("/jobs/j/status", {"state": "ok"})
    os.makedirs(os.path.join(root, "logs", "deep", "er"))
    with open(os.path.join(root, "logs", "j.jsonl"), "a") as f:
        f.write("line\\n")
    load_or_create_keys(os.path.join(root, "zhongkui", "keys.json"))
    w = Wal(os.path.join(root, "nuwa"))
    w.recover()
    print(json.dumps(sorted(os.listdir(root))))
""")


def test_everything_a_private_process_creates_is_its_users_alone(tmp_path):
    root = tmp_path / "home"
    old = tmp_path / "older"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)  # a directory an older version left open
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", _WRITER, str(root), str(old), "private"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert {"state", "logs", "zhongkui", "nuwa"} <= set(eval(res.stdout))  # noqa: S307
    assert exposed(str(root)) == []
    assert exposed(str(old)) == []
    assert os.stat(root).st_mode & 0o777 == 0o700
    # Without the call, the same writes are open to others: the check above can fail.
    plain = tmp_path / "plain"
    res = subprocess.run([sys.executable, "-c", _WRITER, str(plain), str(old), "skip"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert any("j.jsonl" in x for x in exposed(str(plain)))


def test_exposed_sees_what_others_could_read(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(d, 0o700)
    f = d / "secret"
    f.write_text("x")
    os.chmod(f, 0o600)
    assert exposed(str(d)) == []
    os.chmod(f, 0o640)
    sub = d / "sub"
    sub.mkdir()
    os.chmod(sub, 0o711)
    found = exposed(str(d))
    assert any(x.startswith(str(f)) for x in found) and any(x.startswith(str(sub)) for x in found)
