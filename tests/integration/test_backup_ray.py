"""A cluster's data directory is its backup (docs/operations.md, "State on disk"): after
`fuxi down`, a copy of `<data dir>` started with `fuxi up` on a fresh Ray -- under another
$FUXI_HOME, as on a replacement machine -- holds the same Nuwa tree, the same Pangu files, the
same job records and the same users; so does an online snapshot of Nuwa (`fuxi nuwa snapshot
save`) restored into new disks beside the chunkservers' directories."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from fuxi.runtime import session_pids
from tests.integration.clihelpers import REPO, fuxi

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def down(home) -> None:
    rec_path = home / "default" / "cluster.json"
    rec = json.load(open(rec_path)) if rec_path.exists() else None
    fuxi(home, "down")
    if rec is not None:
        assert not session_pids(rec["head_pid"]), "the head's processes survived fuxi down"


def admin(home_) -> None:
    """Sign in as the first administrator, whose password is the original cluster's: a
    restored tree holds its users, so a restored cluster makes no new administrator."""
    creds = json.load(open(home_.parent / "home" / "default" / "credentials.json"))
    fuxi(home_, "login", "--user", "admin", "--password-stdin", stdin=creds["password"])


def check_restored(home_, job_id: str, original: bytes, tmp_path) -> None:
    admin(home_)
    assert fuxi(home_, "nuwa", "get", "/backup/threads").stdout == "8"
    assert fuxi(home_, "pangu", "cat", "/kept/p1.txt").stdout.encode() == original
    fsck = json.loads(fuxi(home_, "pangu", "fsck", "--json").stdout)
    assert fsck["healthy"] and fsck["files"] == 1, fsck
    st = json.loads(fuxi(home_, "job", "status", job_id, "--json").stdout)
    assert st["state"] == "succeeded", st
    fuxi(home_, "login", "--user", "bob", "--password-stdin", stdin="bobs-password")
    assert json.loads(fuxi(home_, "whoami", "--json").stdout)["user"] == "bob"
    admin(home_)
    # The restored cluster takes new writes and new jobs.
    fuxi(home_, "nuwa", "put", "/backup/after", "yes")
    fuxi(home_, "submit", "jobs/wordcount.yaml", "--set", f"output={tmp_path / ('wc-' + home_.name)}")


def test_a_copied_data_dir_and_an_online_snapshot_restore_the_same_cluster(tmp_path):
    home = tmp_path / "home"
    bak = tmp_path / "nuwa.bak"
    original = open(os.path.join(REPO, "jobs", "data", "part-1.txt"), "rb").read()
    fuxi(home, "up", "--auth", "--num-cpus", "2", "--web-port", "0")
    try:
        fuxi(home, "nuwa", "put", "/backup/threads", "8")
        fuxi(home, "pangu", "mkdir", "-p", "/kept")
        fuxi(home, "pangu", "put", "jobs/data/part-1.txt", "/kept/p1.txt")
        fuxi(home, "user", "add", "bob", "-g", "dev", "--password-stdin", stdin="bobs-password")
        job_id = fuxi(home, "submit", "jobs/wordcount.yaml", "--set",
                      f"output={tmp_path / 'wc'}", "--no-wait").stdout.strip()
        fuxi(home, "job", "wait", job_id, "--timeout", "120")
        # An online backup of the tree while the cluster runs (administrators only).
        saved = json.loads(fuxi(home, "nuwa", "snapshot", "save", str(bak), "--json").stdout)
        fuxi(home, "user", "add", "carol", "--password-stdin", stdin="carols-password")
        fuxi(home, "login", "--user", "bob", "--password-stdin", stdin="bobs-password")
        denied = fuxi(home, "nuwa", "snapshot", "save", str(tmp_path / "b.bak"), check=False)
        assert denied.returncode == 3 and "Denied" in denied.stderr, denied
        assert not (tmp_path / "b.bak").exists()
    finally:
        down(home)
    info = json.loads(fuxi(home, "nuwa", "snapshot", "status", str(bak), "--json").stdout)
    assert info["revision"] == saved["revision"] and info["nodes"] == saved["nodes"]
    (tmp_path / "junk.bak").write_bytes(bak.read_bytes()[:-7])
    bad = fuxi(home, "nuwa", "snapshot", "status", str(tmp_path / "junk.bak"), check=False)
    assert bad.returncode == 2 and "its meta says" in bad.stderr, bad

    # 1. A cold copy of the data dir, as a backup restored on another machine would be.
    copy = tmp_path / "copied"
    copy.mkdir()
    shutil.copytree(home / "default", copy / "default", symlinks=True)
    fuxi(copy, "up", "--auth", "--num-cpus", "2", "--web-port", "0")
    try:
        check_restored(copy, job_id, original, tmp_path)
        carol = fuxi(copy, "login", "--user", "carol", "--password-stdin",
                     stdin="carols-password")
        assert carol.returncode == 0  # added after the online snapshot: in the copy
    finally:
        down(copy)

    # 2. The online snapshot restored into new disks, with the chunkservers' directories.
    snap = tmp_path / "snap"
    res = fuxi(snap, "nuwa", "snapshot", "restore", str(bak))
    assert "start it with `fuxi up`" in res.stdout, res.stdout
    again = fuxi(snap, "nuwa", "snapshot", "restore", str(bak), check=False)
    assert again.returncode == 2 and "never overwrites" in again.stderr, again
    shutil.copytree(home / "default" / "pangu", snap / "default" / "pangu", symlinks=True)
    fuxi(snap, "up", "--auth", "--num-cpus", "2", "--web-port", "0")
    try:
        check_restored(snap, job_id, original, tmp_path)
        carol = fuxi(snap, "login", "--user", "carol", "--password-stdin",
                     stdin="carols-password", check=False)
        assert carol.returncode == 3  # added after the snapshot: not in it
    finally:
        down(snap)
