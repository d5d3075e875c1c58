"""Online backup and restore of a Nuwa group (``fuxi nuwa snapshot save|status|restore``).

``save`` asks the leader for one consistent image of the tree (``AsyncNuwa.snapshot``: the
leader confirms it leads, takes the image in one step, hands it out in chunks, the client
checks its SHA-256) and writes it as a backup file (``nuwa.core.backup``), atomically and
readable by its owner only: the tree holds Zhongkui's users and ACLs.

``restore`` builds a new group's disks from a backup file, as ``etcdutl snapshot restore``
does: under ``<data_dir>/nuwa/`` one directory per voter, each holding the image as its Raft
snapshot (at the backup's index, term 1, the new voters) and a matching hard state, and the
``group.json`` that makes the next ``fuxi up`` start these replicas. It refuses a data dir
that already has a group (it never overwrites one) and a file that fails any check.
"""

from __future__ import annotations

import json
import os

from nuwa.core import backup as B
from nuwa.core.raft_types import HardState, Snapshot
from nuwa.errors import BadRequest
from nuwa.io.wal import Wal, write_atomic

SAVE_TIMEOUT_S = 300.0  # the whole download of one image


def save(client, path: str, timeout_s: float = SAVE_TIMEOUT_S) -> dict:
    """Write a backup of the group ``client`` reaches to ``path``; returns its meta."""
    meta, image = client.snapshot(timeout_s=timeout_s)
    data = B.encode(meta, image)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return B.check(data)


def _read(path: str) -> bytes:
    size = os.path.getsize(path)
    if size > B.BACKUP_IMAGE_BYTES_MAX + B.META_BYTES_MAX + 64:
        raise B.BackupCorrupt(f"{path} has {size} bytes; a Nuwa backup has at most "
                              f"{B.BACKUP_IMAGE_BYTES_MAX} (BACKUP_IMAGE_BYTES_MAX)")
    with open(path, "rb") as f:
        return f.read()


def status(path: str) -> dict:
    """The backup file's meta and counts, after every check (``BackupCorrupt`` if it fails)."""
    return B.check(_read(path))


def restore(path: str, data_dir: str, replicas: int) -> dict:
    """New disks for a group of ``replicas`` voters under ``data_dir`` holding the backup."""
    from nuwa.group import GROUP_SIZES

    if replicas not in GROUP_SIZES:
        raise BadRequest(f"a restored group has {replicas} replicas; expected one of {GROUP_SIZES}")
    info, image = B.load(_read(path))
    nuwa_dir = os.path.join(data_dir, "nuwa")
    if os.path.exists(os.path.join(nuwa_dir, "group.json")) or any(
            n.startswith("replica-") for n in (os.listdir(nuwa_dir) if os.path.isdir(nuwa_dir)
                                               else [])):
        raise BadRequest(f"{nuwa_dir} already holds a Nuwa group; a restore makes a new one and "
                         f"never overwrites: choose another cluster or data dir, or move it aside")
    voters = tuple(range(1, replicas + 1))
    os.makedirs(nuwa_dir, mode=0o700, exist_ok=True)
    for rid in voters:
        wal = Wal(os.path.join(nuwa_dir, f"replica-{rid}"))
        wal.recover()
        wal.save_snapshot(Snapshot(index=info["index"], term=1, voters=voters, data=image))
        wal.save(HardState(term=1, vote=0, commit=info["index"]), [])
        wal.close()
    write_atomic(os.path.join(nuwa_dir, "group.json"), json.dumps(
        {"voters": list(voters), "nodes": {}, "retired": [], "removing": []}).encode())
    return {**info, "data_dir": data_dir, "replicas": replicas}
