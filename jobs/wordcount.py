"""Word count, the example job (see ``wordcount.yaml``).

Tokenisation, shared by the job and by the oracle :func:`plain_count`: the text is decoded as
UTF-8, lowercased with ``str.lower()``, and every maximal run of ``[a-z0-9']`` is a word.
Everything else (spaces, punctuation, hyphens, non-ASCII letters) separates words, so
``"Don't stop-me"`` gives ``don't``, ``stop``, ``me`` and ``"café"`` gives ``caf``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

import fsspec
import pyarrow as pa

from fuxi.errors import BadInput

WORD_RE = re.compile(r"[a-z0-9']+")
SCHEMA = pa.schema([("word", pa.string()), ("count", pa.int64())])

#: Inputs are read in blocks of about this size, cut after the last whitespace byte.
read_block_bytes = 4 * 1024 * 1024
_WHITESPACE = b" \t\n\r\x0b\x0c"


def tokenize(text: str) -> list[str]:
    """The words of ``text`` (see the module docstring)."""
    return WORD_RE.findall(text.lower())


def _text_blocks(path: str) -> Iterator[tuple[int, str]]:
    """Yield ``(bytes, text)`` blocks of a UTF-8 file, each ending at a whitespace byte.

    Cutting after an ASCII whitespace byte never splits a word or a UTF-8 sequence (ASCII
    bytes never occur inside a multi-byte sequence), so blocks can be tokenised one by one.
    """
    carry = b""
    offset = 0
    with fsspec.open(path, "rb") as f:
        while True:
            chunk = f.read(read_block_bytes)
            data = carry + chunk
            if not chunk:
                cut = len(data)
            else:
                cut = max(data.rfind(bytes([c])) for c in _WHITESPACE) + 1
                if cut == 0:  # no whitespace yet: keep reading
                    carry = data
                    continue
            block, carry = data[:cut], data[cut:]
            try:
                text = block.decode("utf-8")
            except UnicodeDecodeError as e:
                raise BadInput(
                    f"input {path} is not UTF-8 at byte {offset + e.start}; expected UTF-8 text"
                ) from e
            offset += len(block)
            if block:
                yield len(block), text
            if not chunk:
                return


def _count_files(paths: Iterable[str]) -> tuple[Counter, int]:
    counts: Counter = Counter()
    total_bytes = 0
    for path in paths:
        for n, text in _text_blocks(path):
            total_bytes += n
            counts.update(tokenize(text))
    return counts, total_bytes


def _counts_table(counts: Counter) -> pa.Table:
    return pa.table(
        {"word": pa.array(list(counts), pa.string()), "count": pa.array(list(counts.values()), pa.int64())},
        schema=SCHEMA,
    )


def map_words(ctx) -> None:
    """Count the words of this instance's input files; emit ``{word: string, count: int64}``."""
    counts, total_bytes = _count_files(ctx.input_paths)
    ctx.log.info("read %d bytes, %d words", total_bytes, sum(counts.values()))
    ctx.emit(_counts_table(counts))


def map_lines(ctx) -> None:
    """Like :func:`map_words` for a task with ``split: {format: lines}``: count the words of
    the lines this instance's byte ranges own (``fuxi.io.splits.read_lines``), so one large
    file feeds many instances. A newline never sits inside a word, so counts are the same."""
    from fuxi.io.splits import read_lines

    counts: Counter = Counter()
    total_bytes = 0
    for r in ctx.input_splits:
        for line in read_lines(r):
            total_bytes += len(line) + 1
            try:
                counts.update(tokenize(line.decode("utf-8")))
            except UnicodeDecodeError as e:
                raise BadInput(f"input {r.path} is not UTF-8 near byte {r.start}: {e}; "
                               "expected UTF-8 text") from None
    ctx.log.info("read %d bytes, %d words", total_bytes, sum(counts.values()))
    ctx.emit(_counts_table(counts))


def sum_counts(ctx) -> pa.Table:
    """Sum the partial counts of the words hashed to this instance.

    Returns ``{word, count}`` sorted by count descending, then word ascending.
    """
    t = ctx.read_upstream()
    if t.num_rows == 0 or "word" not in t.column_names:
        return SCHEMA.empty_table()
    summed = t.group_by("word").aggregate([("count", "sum")])
    summed = summed.rename_columns({"count_sum": "count"}).select(["word", "count"])
    summed = summed.cast(SCHEMA)
    return summed.sort_by([("count", "descending"), ("word", "ascending")])


def plain_count(paths: Iterable[str]) -> dict[str, int]:
    """The test oracle: the same tokenisation in plain Python, one file at a time."""
    counts: Counter = Counter()
    for path in paths:
        with fsspec.open(path, "rt", encoding="utf-8") as f:
            counts.update(WORD_RE.findall(f.read().lower()))
    return dict(counts)
