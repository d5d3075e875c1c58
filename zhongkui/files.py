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


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so only its owner can read it (0600, its directory 0700),
    atomically: a reader sees the old content or the new, never a part."""
    os.makedirs(os.path.dirname(path), mode=PRIVATE_DIR_MODE, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_secret(path: str, nbytes: int, what: str, error: type[Exception] = PermissionError,
                hint: str = "") -> bytes:
    """The ``nbytes`` random bytes at ``path``; ``error`` if the file is absent, of another
    length, or readable by anyone but its owner (0600 expected). Symlinks are not followed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise error(f"no {what} at {path}{'; ' + hint if hint else ''}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        data = f.read(nbytes + 1)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(f"the {what} {path} has mode {stat.S_IMODE(mode):04o}; expected 0600 "
                    f"(readable by its owner only)")
    if len(data) != nbytes:
        raise error(f"the {what} {path} holds {len(data)} bytes; expected {nbytes}")
    return data


def create_once(path: str, make) -> None:
    """Create ``path`` (0600) with the bytes ``make()`` returns, unless it exists; atomically
    and once: concurrent creators all end up with the file of the first to link it."""
    import secrets

    if os.path.exists(path):
        return
    private_dir(os.path.dirname(path) or ".")
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(make())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another creator was first: keep theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def load_or_create_secret(path: str, nbytes: int, what: str,
                          error: type[Exception] = PermissionError) -> bytes:
    """Create the secret on first use (0600, once: see ``create_once``), then return it."""
    import secrets

    create_once(path, lambda: secrets.token_bytes(nbytes))
    return load_secret(path, nbytes, what, error)
