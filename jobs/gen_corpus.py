"""Deterministic text corpus for the word-count example.

    python -m jobs.gen_corpus --out jobs/data --files 4 --bytes-per-file 1000000 --seed 7

Writes ``part-0.txt .. part-<files-1>.txt``. Words are drawn Zipf-like (weight 1/rank**1.1)
from a vocabulary of ~20k pseudo-words built from syllables plus some real English words
(with apostrophes, digits and a few non-ASCII words, to exercise tokenisation). Lines hold 5-15
words, the first capitalised, with some punctuation. Everything comes from ``random.Random``
seeded from ``--seed`` (file ``i`` uses its own stream), so the same arguments give
byte-identical files on every run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from itertools import accumulate

from fuxi.errors import BadInput, LimitExceeded

ENGLISH_WORDS = (
    "the of and to a in is it you that he was for on are with as i his they be at one have "
    "this from or had by hot word but what some we can out other were all there when up use "
    "your how said an each she which do their time if will way about many then them write "
    "would like so these her long make thing see him two has look more day could go come did "
    "number sound no most people my over know water than call first who may down side been "
    "now find don't it's can't won't o'clock 2024 42 7 café naïve"
).split()
SYLLABLES = (
    "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro "
    "ru sa se si so su ta te ti to tu va ve vi vo vu za ze zi zo zu an en in on un ar er ir "
    "or ur ash esh ish osh ust ing ed ly tion"
).split()
PUNCTUATION = ("", "", "", "", ",", ";", " -", ":")

vocabulary_words = 20_000
zipf_exponent = 1.1
files_max = 10_000
bytes_per_file_max = 1 << 30


def build_vocabulary(rng: random.Random, size: int = vocabulary_words) -> list[str]:
    """English words first (the most frequent), then distinct syllable pseudo-words, shuffled."""
    seen = set(ENGLISH_WORDS)
    pseudo: list[str] = []
    while len(pseudo) + len(ENGLISH_WORDS) < size:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if word not in seen:
            seen.add(word)
            pseudo.append(word)
    rng.shuffle(pseudo)
    return list(ENGLISH_WORDS) + pseudo


def _line(rng: random.Random, vocab: list[str], cum_weights: list[float]) -> str:
    words = rng.choices(vocab, cum_weights=cum_weights, k=rng.randint(5, 15))
    words[0] = words[0][:1].upper() + words[0][1:]
    parts = [w + rng.choice(PUNCTUATION) for w in words[:-1]] + [words[-1] + rng.choice(".!?.")]
    return " ".join(parts) + "\n"


def generate(out_dir: str, files: int, bytes_per_file: int, seed: int) -> list[str]:
    """Write the corpus; return the paths written. Each file is the first whole lines that
    reach ``bytes_per_file`` bytes (so it is at most one line longer)."""
    if files < 1 or bytes_per_file < 1:
        raise BadInput(f"files and bytes_per_file must be >= 1; got {files} and {bytes_per_file}")
    if files > files_max:
        raise LimitExceeded(f"files_max is {files_max}; got files {files}")
    if bytes_per_file > bytes_per_file_max:
        raise LimitExceeded(f"bytes_per_file_max is {bytes_per_file_max}; got {bytes_per_file}")
    vocab = build_vocabulary(random.Random(seed))
    cum_weights = list(accumulate(1.0 / (rank**zipf_exponent) for rank in range(1, len(vocab) + 1)))
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i in range(files):
        rng = random.Random(seed * 1_000_003 + i + 1)
        lines, size = [], 0
        while size < bytes_per_file:
            line = _line(rng, vocab, cum_weights)
            lines.append(line)
            size += len(line.encode("utf-8"))
        path = os.path.join(out_dir, f"part-{i}.txt")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.gen_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write part-<i>.txt into")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--bytes-per-file", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    try:
        paths = generate(args.out, args.files, args.bytes_per_file, args.seed)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"{p} {os.path.getsize(p)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
