"""Passwords, stored only as salted scrypt hashes (hashlib, the standard library).

Stored form: ``scrypt$<n>$<r>$<p>$<salt base64>$<hash base64>``. Verification recomputes the
hash with the stored parameters and compares in constant time. Pure: the salt is the
caller's (the directory draws it from the randomness it was given; the shell gives the OS
CSPRNG)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from zhongkui.errors import BadInput

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1  # ~16 MiB and ~50 ms per hash on this machine
SALT_BYTES = 16
HASH_BYTES = 32
PASSWORD_CHARS_MIN = 8
PASSWORD_BYTES_MAX = 1024  # scrypt's cost does not depend on it, but memory and logs do


def check_password(password: str) -> bytes:
    if not isinstance(password, str):
        raise BadInput(f"a password is a str; got {type(password).__name__}")
    raw = password.encode()
    if len(password) < PASSWORD_CHARS_MIN:
        raise BadInput(f"a password needs at least {PASSWORD_CHARS_MIN} characters")
    if len(raw) > PASSWORD_BYTES_MAX:
        raise BadInput(f"a password is at most {PASSWORD_BYTES_MAX} bytes")
    return raw


def hash_password(password: str, salt: bytes) -> str:
    """The stored form of ``password`` with ``salt`` (SALT_BYTES random bytes, at least)."""
    raw = check_password(password)
    if not isinstance(salt, bytes) or len(salt) < SALT_BYTES:
        raise ValueError(f"a salt is at least {SALT_BYTES} random bytes")
    digest = hashlib.scrypt(raw, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=HASH_BYTES,
                            maxmem=64 * 1024 * 1024)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; False for anything else, including a
    malformed stored value (it never raises on bad input from a caller)."""
    if not isinstance(password, str) or len(password.encode()) > PASSWORD_BYTES_MAX:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        salt, digest = base64.b64decode(salt), base64.b64decode(digest)
    except (ValueError, AttributeError):
        return False
    if kind != "scrypt" or not (2 <= n <= 2 ** 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                         maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(got, digest)
