"""Framing: messages larger than one fragment (snapshots, big watch batches) arrive whole."""

from __future__ import annotations

import asyncio

import pytest

from nuwa.io import transport as T


def test_large_messages_are_split_into_fragments_and_reassembled():
    async def main():
        reader = asyncio.StreamReader()
        big = bytes(range(256)) * ((3 * T.FRAGMENT_BYTES_MAX) // 256 + 7)
        small = b"hello"
        reader.feed_data(T.frame(big) + T.frame(small))
        reader.feed_eof()
        assert await T.read_frame(reader) == big
        assert await T.read_frame(reader) == small

    asyncio.run(main())


def test_a_fragment_over_the_limit_is_refused():
    async def main():
        reader = asyncio.StreamReader()
        reader.feed_data(T._LEN.pack(T.FRAGMENT_BYTES_MAX + 1))
        reader.feed_eof()
        with pytest.raises(T.FrameError, match="FRAGMENT_BYTES_MAX"):
            await T.read_frame(reader)

    asyncio.run(main())
