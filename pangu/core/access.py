"""Chunk access tokens: what one allows (pure).

The master signs, for a caller it has authorized on a file, a token scoped to one chunk of
that file: ``{"kind": "chunk", "id": <chunk>, "mode": "r" | "w"}``; a write token also names
the version of the lease it came with. A chunkserver accepts a token only for that chunk, in
that mode (a write token also reads) and, for a write, at that version: a token for chunk A
never opens chunk B, a read token never writes, and a write token dies with its lease (the
next lease of the chunk raises its version). Expiry is the token's own (``exp``), checked when
it is verified.
"""

from __future__ import annotations


WRITER_CHARS_MAX = 128  # a writer id (the client makes one per open file)


def writer_key(user: str | None, writer) -> str:
    """The writer id a client chose, bound to the verified ``user`` (None: access control is
    off): another user who learns or guesses it cannot act as that writer."""
    from pangu.errors import BadRequest

    if not isinstance(writer, str) or not 0 < len(writer) <= WRITER_CHARS_MAX:
        raise BadRequest(f"writer {writer!r:.80}: expected a str of 1-{WRITER_CHARS_MAX} "
                         f"characters (WRITER_CHARS_MAX)")
    return writer if user is None else f"{user}:{writer}"


def chunk_scope(cid: str, mode: str, version: int | None = None) -> dict:
    scope = {"kind": "chunk", "id": cid, "mode": mode}
    if mode == "w":
        scope["version"] = version
    return scope


def refusal(scope, cid: str, mode: str, version=None) -> str | None:
    """Why a token with ``scope`` may not do ``mode`` (r or w) on chunk ``cid`` (at
    ``version`` for a write), or None when it may."""
    if not isinstance(scope, dict) or scope.get("kind") != "chunk":
        return "not a chunk access token"
    if scope.get("id") != cid:
        return f"a token for chunk {scope.get('id')!r:.80}, not {cid}"
    have = scope.get("mode")
    if have not in ("r", "w"):
        return f"a token of unknown mode {have!r:.20}"
    if mode == "w":
        if have != "w":
            return "a read token does not write"
        if isinstance(version, bool) or scope.get("version") != version:
            return (f"a write token for version {scope.get('version')!r:.20} of the chunk, "
                    f"not {version!r:.20} (its lease has moved on)")
    elif mode != "r":
        return f"unknown access mode {mode!r:.20}"
    return None
