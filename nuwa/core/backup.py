"""The Nuwa backup file: one consistent image of the tree, as ``fuxi nuwa snapshot save``
writes it and ``fuxi nuwa snapshot restore`` reads it (etcd's ``snapshot save`` /
``etcdutl snapshot restore``).

Layout::

    b"NUWABAK1"                 magic and format version
    u32 little-endian           length of the meta document
    meta                        JSON: revision, raft index and term it was taken at, the
                                image's byte count and SHA-256, when, from which replica
    image                       ``Tree.snapshot()`` bytes

``decode`` refuses anything that is not exactly that: a wrong magic, a meta that is not the
document above, an image of another length or checksum, or an image ``Tree.restore`` cannot
read -- each with a message naming what was wrong. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import json
import struct

from nuwa.core.tree import CorruptSnapshot, Tree

MAGIC = b"NUWABAK1"
META_BYTES_MAX = 64 * 1024  # the meta document
BACKUP_IMAGE_BYTES_MAX = 2 << 30  # a tree holds at most 1 GiB of values (base64 in the image)
_LEN = struct.Struct("<I")
_META_KEYS = {"revision": int, "index": int, "term": int, "image_bytes": int, "sha256": str,
              "taken_at": float, "replica": int}


class BackupCorrupt(ValueError):
    """Not a Nuwa backup, or a damaged one; the message says what was wrong."""


def encode(meta: dict, image: bytes) -> bytes:
    """The backup file's bytes for ``image`` taken with ``meta`` (revision, index, term,
    taken_at, replica); the byte count and checksum are filled in here."""
    doc = {k: meta[k] for k in ("revision", "index", "term", "taken_at", "replica")}
    doc.update(image_bytes=len(image), sha256=hashlib.sha256(image).hexdigest(), format=1)
    raw = json.dumps(doc, sort_keys=True).encode()
    return MAGIC + _LEN.pack(len(raw)) + raw + image


def decode(data: bytes) -> tuple[dict, bytes]:
    """(meta, image) of a backup file's bytes, checked end to end (see the module doc)."""
    if not data.startswith(MAGIC):
        raise BackupCorrupt(f"not a Nuwa backup: it starts with {data[:8]!r}; expected {MAGIC!r}")
    at = len(MAGIC)
    if len(data) < at + _LEN.size:
        raise BackupCorrupt("a Nuwa backup cut short inside its header")
    (n,) = _LEN.unpack_from(data, at)
    at += _LEN.size
    if n > META_BYTES_MAX or len(data) < at + n:
        raise BackupCorrupt(f"the backup's meta document claims {n} bytes; expected at most "
                            f"{META_BYTES_MAX} (META_BYTES_MAX) and within the file")
    try:
        meta = json.loads(data[at:at + n])
    except ValueError as e:
        raise BackupCorrupt(f"the backup's meta document is not JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != 1:
        raise BackupCorrupt("the backup's meta document is not format 1")
    for k, t in _META_KEYS.items():
        v = meta.get(k)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if t is float else \
            isinstance(v, t) and not isinstance(v, bool)
        if not ok or (t is int and v < 0):
            raise BackupCorrupt(f"the backup's meta has {k}={v!r:.60}; expected a "
                                f"{'non-negative ' if t is int else ''}{t.__name__}")
    image = data[at + n:]
    if len(image) != meta["image_bytes"]:
        raise BackupCorrupt(f"the backup's image has {len(image)} bytes; its meta says "
                            f"{meta['image_bytes']} (cut short, or something appended)")
    if hashlib.sha256(image).hexdigest() != meta["sha256"]:
        raise BackupCorrupt("the backup's image fails its SHA-256: the file is damaged")
    return meta, image


def load(data: bytes) -> tuple[dict, bytes]:
    """``decode`` plus a full read of the image as a tree: (the meta with the tree's node and
    session counts, the image). The tree's revision must be the meta's."""
    meta, image = decode(data)
    try:
        tree = Tree.restore(image)
    except CorruptSnapshot as e:
        raise BackupCorrupt(f"the backup's image is not a Nuwa tree: {e}") from None
    if tree.revision != meta["revision"]:
        raise BackupCorrupt(f"the backup's image is at revision {tree.revision}; its meta says "
                            f"{meta['revision']}")
    return {**meta, "nodes": tree.node_count(), "sessions": len(tree.sessions())}, image


def check(data: bytes) -> dict:
    """``load``'s meta and counts (every check made)."""
    return load(data)[0]
