"""Signed tokens (HMAC-SHA256), a keyring with rotation, constant-time verification.

    token = base64url(payload JSON) "." base64url(HMAC-SHA256(key[kid], payload JSON))

The payload carries ``v`` (format version), ``kid`` (the signing key's id), ``sub`` (user),
``grp`` (groups), ``iat``/``exp`` (seconds since the epoch), ``jti`` (a random id) and, for a
token handed to a job or a service, ``scope`` (``{"kind": "job", "id": ...}``): such a token
acts as its user and can never carry more than that user's rights.

Rotation: ``Keyring.rotate()`` makes a new current key. Older keys keep verifying the tokens
they signed until ``retire()`` drops them (after the longest token lifetime), so rotating
logs nobody out at once. Pure: the clock (``now``) and the randomness (``rand``, a function
of a byte count returning that many random bytes) are parameters, keys are bytes the shell
stores. A keyring without ``rand`` cannot make keys or sign (it only verifies): the shell
(``zhongkui.keys.Keyring``) binds it to the OS CSPRNG, ``secrets.token_bytes``; tests give a
seeded ``random.Random(seed).randbytes``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Callable

from zhongkui.errors import BadInput, BadSignature, Expired, Malformed, Revoked, UnknownKey

TOKEN_FORMAT = 1
KEY_BYTES = 32
TOKEN_BYTES_MAX = 4096
TTL_S_DEFAULT = 12 * 3600.0
TTL_S_MAX = 30 * 24 * 3600.0
KEYS_KEPT_MAX = 16            # keys a keyring holds (current + rotated-out, still verifying);
#                               a rotation at the limit retires the oldest rotated-out key
REVOKED_KEYS_KEPT_MAX = 256   # ids of revoked keys remembered (refused with Revoked)
GROUPS_PER_TOKEN_MAX = 64
CLOCK_SKEW_S = 60.0           # slack on a token's lifetime (exp - iat) for rounding


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# The last character of an unpadded base64url text of length 4k+2 / 4k+3 carries 4 / 2
# unused bits; they must be zero, or two texts would decode to the same bytes.
_LAST_2 = frozenset("AQgw")                         # 4 low bits zero
_LAST_3 = frozenset("AEIMQUYcgkosw048")             # 2 low bits zero


def _b64d(s: str) -> bytes:
    """Strict base64url without padding: the alphabet only, no '=', no whitespace, zero
    unused bits, so exactly one text decodes to given bytes (a token is not malleable)."""
    if not isinstance(s, str) or not _B64URL.fullmatch(s):
        raise ValueError("not unpadded base64url (A-Z a-z 0-9 - _ only)")
    rest = len(s) % 4
    if rest == 1 or (rest == 2 and s[-1] not in _LAST_2) or (rest == 3 and s[-1] not in _LAST_3):
        raise ValueError("not canonical base64url (bad length or non-zero unused bits)")
    out = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if _b64e(out) != s:  # belt and braces: the only text for these bytes
        raise ValueError("not canonical base64url")
    return out


@dataclass(frozen=True)
class Claims:
    user: str
    groups: tuple[str, ...]
    issued_at: float
    expires_at: float
    key_id: str
    token_id: str
    scope: dict | None = None
    gen: str = ""               # the user's generation when signed (a re-created user differs)


@dataclass
class Keyring:
    keys: dict[str, bytes] = field(default_factory=dict)   # kid -> secret
    current: str = ""
    rotated_at: dict[str, float] = field(default_factory=dict)  # kid -> when it stopped signing
    revoked: list[str] = field(default_factory=list)  # kids refused outright (newest last)
    evicted: list[str] = field(default_factory=list)  # retired by the last rotate (not kept)
    # n -> n random bytes: key material, key ids and token ids. None: verify only.
    rand: Callable[[int], bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls, rand: Callable[[int], bytes] | None = None) -> "Keyring":
        k = cls() if rand is None else cls(rand=rand)
        k.rotate(0.0)
        return k

    def _random(self, n: int) -> bytes:
        if self.rand is None:
            raise ValueError("this keyring has no source of randomness (rand): it verifies "
                             "tokens but cannot make keys or sign")
        out = self.rand(n)
        if not isinstance(out, bytes) or len(out) != n:
            raise ValueError(f"rand({n}) returned {type(out).__name__} of another length")
        return out

    def rotate(self, now: float) -> str:
        """A new signing key; the old ones still verify until ``retire``. At KEYS_KEPT_MAX
        the oldest rotated-out keys are retired first (``evicted`` names them): rotating more
        often than KEYS_KEPT_MAX times per token lifetime ends the oldest tokens early, it
        never fails."""
        self.evicted = []
        while len(self.keys) >= KEYS_KEPT_MAX and self.rotated_at:
            oldest = min(self.rotated_at, key=lambda k: (self.rotated_at[k], k))
            self.keys.pop(oldest, None)
            self.rotated_at.pop(oldest, None)
            self.evicted.append(oldest)
        if self.current:
            self.rotated_at[self.current] = now
        kid = self._random(4).hex()
        while kid in self.keys or kid in self.revoked:
            kid = self._random(4).hex()
        self.keys[kid] = self._random(KEY_BYTES)
        self.current = kid
        return kid

    def retire(self, now: float, older_than_s: float = TTL_S_MAX) -> list[str]:
        """Drop keys rotated out more than ``older_than_s`` ago: tokens they signed have all
        expired by then."""
        gone = [k for k, t in self.rotated_at.items() if now - t > older_than_s]
        for k in gone:
            self.keys.pop(k, None)
            self.rotated_at.pop(k, None)
        return gone

    def revoke_old(self) -> list[str]:
        """Every key but the current one stops verifying at once (after a leak): their
        tokens are refused with Revoked."""
        gone = sorted(k for k in self.keys if k != self.current)
        self.revoke(gone)
        return gone

    def revoke(self, kids) -> None:
        """Refuse these key ids from now on (the current key cannot be revoked here)."""
        for k in kids:
            if not isinstance(k, str) or k == self.current:
                continue
            self.keys.pop(k, None)
            self.rotated_at.pop(k, None)
            if k not in self.revoked:
                self.revoked.append(k)
        del self.revoked[:-REVOKED_KEYS_KEPT_MAX]

    # ------------------------------------------------------------ tokens
    def sign(self, user: str, groups=(), now: float = 0.0, ttl_s: float = TTL_S_DEFAULT,
             scope: dict | None = None, gen: str = "") -> str:
        if not isinstance(user, str) or not user:
            raise BadInput("a token needs a user name")
        if not 0 < ttl_s <= TTL_S_MAX:
            raise BadInput(f"ttl_s={ttl_s!r}: expected 0 < ttl_s <= {TTL_S_MAX:g}")
        groups = sorted(set(groups))
        if len(groups) > GROUPS_PER_TOKEN_MAX:
            raise BadInput(f"{len(groups)} groups; a token carries at most "
                           f"{GROUPS_PER_TOKEN_MAX}")
        payload = {"v": TOKEN_FORMAT, "kid": self.current, "sub": user, "grp": groups,
                   "iat": now, "exp": now + ttl_s, "jti": self._random(8).hex()}
        if scope is not None:
            payload["scope"] = scope
        if gen:
            payload["gen"] = str(gen)
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        mac = hmac.new(self.keys[self.current], body, hashlib.sha256).digest()
        token = f"{_b64e(body)}.{_b64e(mac)}"
        if len(token) > TOKEN_BYTES_MAX:
            raise BadInput(f"the token would be {len(token)} bytes; TOKEN_BYTES_MAX is "
                           f"{TOKEN_BYTES_MAX}")
        return token

    def verify(self, token, now: float) -> Claims:
        """The token's claims, or a BadCredentials subclass saying what is wrong with it."""
        if not isinstance(token, str) or not token:
            raise Malformed("no token")
        if len(token) > TOKEN_BYTES_MAX:
            raise Malformed(f"a token of {len(token)} bytes; at most {TOKEN_BYTES_MAX}")
        head, dot, sig = token.partition(".")
        if not dot or not head or not sig or "." in sig:
            raise Malformed("a token has two base64url parts joined by '.'")
        try:
            body, mac = _b64d(head), _b64d(sig)
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Malformed("a token part is not canonical unpadded base64url JSON") from None
        if len(mac) != hashlib.sha256().digest_size:
            raise Malformed(f"a token's signature is {len(mac)} bytes; expected "
                            f"{hashlib.sha256().digest_size}")
        if not isinstance(payload, dict) or payload.get("v") != TOKEN_FORMAT:
            raise Malformed(f"token format {payload.get('v') if isinstance(payload, dict) else '?'!r};"
                            f" this side reads {TOKEN_FORMAT}")
        kid = payload.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None and kid in self.revoked:
            raise Revoked("the token was signed by a key that was revoked (`fuxi rotate-keys "
                          "--revoke-old`); log in again")
        if key is None:
            raise UnknownKey("the token was signed by a key this cluster does not have "
                             "(retired, or another cluster's)")
        want = hmac.new(key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(want, mac):
            raise BadSignature("the token's signature does not match its contents")
        try:
            user, groups = payload["sub"], tuple(payload["grp"])
            iat, exp = float(payload["iat"]), float(payload["exp"])
        except (KeyError, TypeError, ValueError):
            raise Malformed("a signed token missing sub, grp, iat or exp") from None
        if now >= exp:
            raise Expired(f"the token expired {now - exp:.0f}s ago; log in again")
        # No check of iat against this clock: a signed iat is ours, and a wall clock stepped
        # back (NTP, an operator) must not log everybody out. The lifetime stays bounded.
        if not exp - iat <= TTL_S_MAX + CLOCK_SKEW_S:
            raise Malformed(f"a token living {exp - iat:.0f}s; at most {TTL_S_MAX:g}")
        gen = payload.get("gen", "")
        return Claims(user, groups, iat, exp, payload["kid"], str(payload.get("jti", "")),
                      payload.get("scope"), gen if isinstance(gen, str) else "")

    # ------------------------------------------------------------ persistence
    def to_doc(self) -> dict:
        return {"current": self.current, "rotated_at": self.rotated_at,
                "keys": {k: _b64e(v) for k, v in self.keys.items()},
                "revoked": list(self.revoked)}

    @classmethod
    def from_doc(cls, doc: dict, rand: Callable[[int], bytes] | None = None) -> "Keyring":
        more = {} if rand is None else {"rand": rand}
        return cls({k: _b64d(v) for k, v in doc["keys"].items()}, doc["current"],
                   {k: float(v) for k, v in doc.get("rotated_at", {}).items()},
                   [str(k) for k in doc.get("revoked", ())][-REVOKED_KEYS_KEPT_MAX:], **more)
