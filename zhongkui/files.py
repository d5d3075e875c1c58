"""Files the platform writes are its user's alone (issue 14, defect 9): the Nuwa WAL and
snapshots (password hashes, ACL entries), Pangu chunks and journals, job logs, the audit trail,
keys and tokens -- everything under ``$FUXI_HOME`` -- are created 0600 and their directories
0700. Pure apart from the process umask and the directory it is given.

Every process that writes there calls ``private_files()`` once when it starts (the ``fuxi``
CLI, the embedded runtime, each platform actor's constructor), before its first write: the
umask makes every later ``open``/``makedirs`` private from creation, with no window in which
a file is readable by others and no chmod after the fact."""

from __future__ import annotations

import os
import stat

PRIVATE_UMASK = 0o077     # no group or other bits on anything created from now on
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_files(*dirs: str | None) -> int:
    """Set this process's umask to PRIVATE_UMASK; create each of ``dirs`` (0700) if missing,
    and tighten it to 0700 if it exists and belongs to us (a directory an older version
    made 0755). Returns the previous umask."""
    old = os.umask(PRIVATE_UMASK)
    for d in dirs:
        if d:
            private_dir(d)
    return old


def private_dir(path: str) -> str:
    """``path`` as a directory only its owner may enter (created with its parents)."""
    os.makedirs(path, mode=PRIVATE_DIR_MODE, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    return path


def exposed(root: str) -> list[str]:
    """Everything under ``root`` (itself included) that another local user could read, write
    or enter: files with group/other bits, directories with group/other bits. Sockets are
    listed too (a Unix socket others can connect to is an open door)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue  # gone meanwhile
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                out.append(f"{name} {stat.filemode(st.st_mode)}")
    return sorted(set(out))
