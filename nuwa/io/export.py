"""Handing one consistent image of the tree to a backup client, in chunks.

``fuxi nuwa snapshot save`` asks the leader for an image (op ``snapshot`` without ``export``):
the leader confirms it still leads (a read barrier, as for a linearizable read), takes
``Tree.snapshot()`` at that instant -- one synchronous step, so the image is exactly the tree
at one revision -- and hands it out ``SNAPSHOT_CHUNK_BYTES`` at a time (op ``snapshot`` with
``export`` and ``offset``). One image is held at a time (a new export replaces it) and it is
dropped after ``EXPORT_IDLE_S`` without a request, so a client that walks away costs nothing
for long.
"""

from __future__ import annotations

import hashlib
import os
import time

from nuwa import errors as E

SNAPSHOT_CHUNK_BYTES = 4 << 20  # one reply of an export
EXPORT_IDLE_S = 60.0  # an export not asked for this long is dropped
EXPORT_ID_BYTES = 16


class Exports:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._id: str | None = None
        self._image = b""
        self._meta: dict = {}
        self._used = 0.0

    def _expire(self) -> None:
        if self._id is not None and self.clock() - self._used > EXPORT_IDLE_S:
            self._id, self._image, self._meta = None, b"", {}

    def start(self, image: bytes, meta: dict) -> dict:
        """Hold ``image`` (taken with ``meta``) as the export; its first chunk."""
        self._id = os.urandom(EXPORT_ID_BYTES).hex()
        self._image = image
        self._meta = {**meta, "image_bytes": len(image),
                      "sha256": hashlib.sha256(image).hexdigest()}
        self._used = self.clock()
        return self.chunk(self._id, 0)

    def chunk(self, export_id: str, offset: int) -> dict:
        self._expire()
        if export_id != self._id:
            raise E.BadRequest(f"export {export_id:.40} is not held here (expired after "
                               f"{EXPORT_IDLE_S:g}s idle, replaced by a newer export, or taken "
                               f"on another replica); start the snapshot again")
        if not 0 <= offset <= len(self._image):
            raise E.BadRequest(f"snapshot offset {offset} is outside the image of "
                               f"{len(self._image)} bytes")
        self._used = self.clock()
        data = self._image[offset:offset + SNAPSHOT_CHUNK_BYTES]
        return {"export": self._id, "offset": offset, "data": data, "meta": self._meta}

    def held_bytes(self) -> int:
        self._expire()
        return len(self._image)
