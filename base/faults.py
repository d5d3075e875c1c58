"""Named fault points: a disk that fails (EIO) or fills up (ENOSPC), injected where the
durable logs and chunk files touch the disk. Never on by default.

A component calls ``check(point, path)`` just before the real system call (``os.write``,
``os.fdatasync``, ...). Nothing happens unless the point is armed; an armed point raises
``OSError(errno, ...)`` as the kernel would, so the component's own error handling is what a
test exercises -- no mock replaces it.

Arming:

* in-process (tests): ``arm("nuwa.io.wal.fsync", "EIO", under=replica_dir, times=1)``, or the
  context manager ``armed(...)``; ``disarm()`` clears. ``under`` limits the fault to files
  below one directory, so several replicas in one process fail independently; ``times``
  limits how often it fires (``None``: until disarmed).
* in an actor's process: the environment variable ``FUXI_FAULTS``, read once when this
  module is first imported, e.g. ``FUXI_FAULTS="pangu.io.journal.fsync=EIO,pangu.chunk.write=ENOSPC@/data/x"``
  (``point=ERRNO[@directory][*times]``, comma separated). Unset or empty: nothing is armed.

Only the points in ``POINTS`` exist; arming another name is refused (a typo must not make a
fault test pass vacuously). ``fired(point)`` counts how often a point fired.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import threading
from dataclasses import dataclass

POINTS = frozenset({
    "nuwa.io.wal.write",       # appending records to a Nuwa replica's WAL
    "nuwa.io.wal.fsync",       # its fdatasync (group commit)
    "pangu.io.journal.write",  # appending an entry to the Pangu master's local journal
    "pangu.io.journal.fsync",  # its fdatasync
    "pangu.chunk.write",    # writing bytes or checksums of a chunk replica
    "pangu.chunk.fsync",    # making a chunk replica durable
})
ERRNOS = {"EIO": _errno.EIO, "ENOSPC": _errno.ENOSPC, "EDQUOT": _errno.EDQUOT,
          "EROFS": _errno.EROFS}
ENV_VAR = "FUXI_FAULTS"


class FaultSpecError(ValueError):
    """A fault point or errno that does not exist, or a malformed ``FUXI_FAULTS``."""


@dataclass
class _Arm:
    err: int
    under: str | None
    times: int | None  # firings left; None: unlimited


_lock = threading.Lock()  # chunk files are written from worker threads (asyncio.to_thread)
_armed: dict[str, list[_Arm]] = {}
_fired: dict[str, int] = {}


def _errno_of(err: int | str) -> int:
    if isinstance(err, int) and not isinstance(err, bool):
        return err
    if isinstance(err, str) and err.upper() in ERRNOS:
        return ERRNOS[err.upper()]
    raise FaultSpecError(f"fault errno {err!r}; expected an int or one of {sorted(ERRNOS)}")


def arm(point: str, err: int | str = "EIO", *, under: str | None = None,
        times: int | None = None) -> None:
    """From now on, ``check(point, path)`` raises ``OSError(err)`` for paths below ``under``
    (every path if None), ``times`` times (forever if None)."""
    if point not in POINTS:
        raise FaultSpecError(f"unknown fault point {point!r}; expected one of {sorted(POINTS)}")
    if times is not None and (not isinstance(times, int) or times < 1):
        raise FaultSpecError(f"times must be a positive int or None, got {times!r}")
    a = _Arm(_errno_of(err), os.path.abspath(under) if under else None, times)
    with _lock:
        _armed.setdefault(point, []).append(a)


def disarm(point: str | None = None) -> None:
    """Clear one point, or every point (None)."""
    with _lock:
        if point is None:
            _armed.clear()
        else:
            _armed.pop(point, None)


@contextlib.contextmanager
def armed(point: str, err: int | str = "EIO", *, under: str | None = None,
          times: int | None = None):
    arm(point, err, under=under, times=times)
    try:
        yield
    finally:
        disarm(point)


def fired(point: str) -> int:
    with _lock:
        return _fired.get(point, 0)


def _matches(a: _Arm, path: str | None) -> bool:
    if a.under is None:
        return True
    if path is None:
        return False
    p = os.path.abspath(path)
    return p == a.under or p.startswith(a.under.rstrip(os.sep) + os.sep)


def check(point: str, path: str | None = None) -> None:
    """Raise the armed error for ``point`` on ``path``, if any; otherwise do nothing."""
    if not _armed:  # the common case: nothing armed, no lock taken
        return
    with _lock:
        for a in _armed.get(point, ()):
            if not _matches(a, path):
                continue
            if a.times is not None:
                a.times -= 1
                if a.times <= 0:
                    _armed[point].remove(a)
                    if not _armed[point]:
                        del _armed[point]
            _fired[point] = _fired.get(point, 0) + 1
            raise OSError(a.err, f"{os.strerror(a.err)} (injected at fault point {point})",
                          path)


def load_spec(spec: str) -> None:
    """Arm what ``spec`` names (the ``FUXI_FAULTS`` syntax)."""
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, sep, rest = item.partition("=")
        if not sep:
            raise FaultSpecError(f"{ENV_VAR} item {item!r}; expected point=ERRNO[@dir][*times]")
        times = None
        if "*" in rest:
            rest, _, n = rest.rpartition("*")
            if not n.isdigit():
                raise FaultSpecError(f"{ENV_VAR} item {item!r}: times {n!r} is not a number")
            times = int(n)
        err, _, under = rest.partition("@")
        arm(point.strip(), err.strip(), under=under.strip() or None, times=times)


load_spec(os.environ.get(ENV_VAR, ""))
