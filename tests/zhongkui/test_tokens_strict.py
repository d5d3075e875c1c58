"""Tokens are not malleable (issue 14, defect 10): exactly one text verifies for a signed
token. Python's base64 decoder alone accepts padding, junk after the padding and non-zero
unused bits, so a token with '=' (or more) appended, or a changed last character, used to
verify as the same token."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zhongkui.errors import BadCredentials, Malformed
from zhongkui.core.tokens import _b64d, _b64e
from zhongkui.keys import Keyring

RING = Keyring.new()
TOKENS = [RING.sign("carol", ["g"], now=0.0), RING.sign("dave", [], now=0.0, ttl_s=77,
                                                        scope={"kind": "job", "id": "j-1"})]
PRINTABLE = st.characters(min_codepoint=1, max_codepoint=0x2FF)


def _verdict(text: str):
    try:
        return RING.verify(text, now=1.0)
    except BadCredentials:
        return None


def test_the_known_lenient_forms_are_refused():
    t = TOKENS[0]
    head, sig = t.split(".")
    for bad in (t + "=", t + "==", t + "===", t + "=junk", t + "\n", " " + t, t + ".",
                f"{head}=.{sig}", f"{head}.{sig}=", f"{head}.{sig}.x", t.replace(".", ".."),
                f"{head}\n.{sig}", f"{head}.{sig[:-1]}{chr(ord(sig[-1]) + 1)}"):
        if bad == t:
            continue
        with pytest.raises(Malformed):
            RING.verify(bad, now=1.0)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TOKENS), st.integers(0, 10_000),
       st.sampled_from(["append", "insert", "replace", "case", "pad", "drop"]),
       st.text(PRINTABLE, min_size=1, max_size=4))
def test_any_mutation_of_a_token_is_refused_unless_byte_identical(token, pos, how, junk):
    i = pos % (len(token) + 1)
    if how == "append":
        m = token + junk
    elif how == "insert":
        m = token[:i] + junk + token[i:]
    elif how == "replace":
        j = min(i, len(token) - 1)
        m = token[:j] + junk[0] + token[j + 1:]
    elif how == "case":
        j = min(i, len(token) - 1)
        m = token[:j] + token[j].swapcase() + token[j + 1:]
    elif how == "pad":
        m = token[:i] + "=" * (1 + pos % 3) + token[i:]
    else:
        m = token[:i] + token[i + 1:]
    if m == token:
        assert _verdict(m) is not None
        return
    assert _verdict(m) is None, f"a mutated token verified: {how} at {i}"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_strict_base64_round_trips_and_has_one_text_per_value(data):
    text = _b64e(data)
    assert _b64d(text) == data
    for other in (text + "=", text + "A", text[:-1] + "_" if text else "=",
                  text.swapcase()):
        if other == text:
            continue
        try:
            assert _b64d(other) != data
        except ValueError:
            pass
