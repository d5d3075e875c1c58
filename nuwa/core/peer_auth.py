"""Peer authentication for the Raft port: a mutual HMAC challenge-response (pure).

A replica that dials a peer proves it holds the cluster's peer secret, and so does the peer
it dialled; neither secret nor anything replayable crosses the wire. Each side brings a
fresh random nonce, so a recorded handshake replayed later fails both ways::

    dialer A                                   listener B
    HELLO      b"P" version:u8 A:u32 nA    ->
                                           <-  CHALLENGE  B:u32 nB mac("listener", A, B, nA, nB)
    PROOF      mac("dialer", A, B, nA, nB) ->
    ... Raft messages from A (B never writes again on this connection) ...

``mac`` is HMAC-SHA256 keyed by the secret over a domain tag, the role, both ids and both
nonces. The role tags differ, so one side's MAC can never be reflected as the other's. A
listener accepts A only if A is a current member (its configuration or the peers the
platform published); every message A then sends must carry ``frm == A`` (``nuwa.core.peer_guard``).

The secret (``SECRET_BYTES`` random bytes per cluster) is made by ``nuwa.group.start_group``
and stored 0600 beside the group (``<data_dir>/nuwa/peer.secret``). This module does no I/O
and draws no randomness: nonces are passed in (the shell uses ``secrets.token_bytes``).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

__all__ = [
    "SECRET_BYTES", "NONCE_BYTES", "MAC_BYTES", "PEER_ID_MAX", "HANDSHAKE_VERSION",
    "HELLO_BYTES", "CHALLENGE_BYTES", "PeerAuthFailed", "check_secret", "hello", "parse_hello",
    "challenge", "open_challenge", "proof", "check_proof",
]

SECRET_BYTES = 32
NONCE_BYTES = 32
MAC_BYTES = 32  # SHA-256
PEER_ID_MAX = (1 << 32) - 1  # replica ids travel as u32 in the hello
HANDSHAKE_VERSION = 1
_DOMAIN = b"nuwa-raft-peer-v1\x00"
_HELLO_HEAD = struct.Struct(">cBI")
_ID = struct.Struct(">I")
_IDS = struct.Struct(">II")
HELLO_BYTES = _HELLO_HEAD.size + NONCE_BYTES
CHALLENGE_BYTES = _ID.size + NONCE_BYTES + MAC_BYTES


class PeerAuthFailed(Exception):
    """A peer handshake that does not prove membership of this cluster (wrong secret, a
    replayed or forged frame, an unknown or non-member id). The connection is closed."""


def check_secret(secret) -> bytes:
    if not isinstance(secret, (bytes, bytearray)) or len(secret) != SECRET_BYTES:
        got = f"{len(secret)} bytes" if isinstance(secret, (bytes, bytearray)) else type(secret).__name__
        raise ValueError(f"peer secret: expected {SECRET_BYTES} random bytes, got {got}")
    return bytes(secret)


def _check_id(what: str, rid) -> int:
    if type(rid) is not int or not 1 <= rid <= PEER_ID_MAX:
        raise PeerAuthFailed(f"{what} {rid!r} is not a replica id in [1, {PEER_ID_MAX}]")
    return rid


def _check_nonce(what: str, nonce) -> bytes:
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_BYTES:
        raise PeerAuthFailed(f"{what}: expected a {NONCE_BYTES}-byte nonce")
    return bytes(nonce)


def _mac(secret: bytes, role: bytes, dialer: int, listener: int, n_dialer: bytes,
         n_listener: bytes) -> bytes:
    msg = b"".join((_DOMAIN, role, b"\x00", _IDS.pack(dialer, listener), n_dialer, n_listener))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def hello(my_id: int, nonce: bytes) -> bytes:
    """The dialer's first frame."""
    _check_id("own id", my_id)
    return _HELLO_HEAD.pack(b"P", HANDSHAKE_VERSION, my_id) + _check_nonce("hello", nonce)


def parse_hello(frame: bytes) -> tuple[int, bytes]:
    """(dialer id, dialer nonce) from a hello frame; PeerAuthFailed if it is not one."""
    if not isinstance(frame, (bytes, bytearray)) or len(frame) != HELLO_BYTES:
        n = len(frame) if isinstance(frame, (bytes, bytearray)) else type(frame).__name__
        raise PeerAuthFailed(f"peer hello of {n} bytes; expected {HELLO_BYTES} "
                             f"(b'P', version {HANDSHAKE_VERSION}, u32 id, {NONCE_BYTES}-byte nonce)")
    tag, version, rid = _HELLO_HEAD.unpack_from(frame)
    if tag != b"P" or version != HANDSHAKE_VERSION:
        raise PeerAuthFailed(f"peer hello version {version}; expected {HANDSHAKE_VERSION}")
    return _check_id("peer id", rid), bytes(frame[_HELLO_HEAD.size:])


def challenge(secret: bytes, listener_id: int, dialer_id: int, n_dialer: bytes,
              n_listener: bytes) -> bytes:
    """The listener's answer: its id, its fresh nonce, and its proof of the secret."""
    _check_id("own id", listener_id)
    _check_id("peer id", dialer_id)
    return (_ID.pack(listener_id) + _check_nonce("challenge", n_listener)
            + _mac(secret, b"listener", dialer_id, listener_id, n_dialer, n_listener))


def open_challenge(secret: bytes, frame: bytes, my_id: int, expected_peer: int,
                   n_dialer: bytes) -> bytes:
    """Dialer side: check the listener is ``expected_peer`` and holds the secret; returns the
    listener's nonce."""
    if not isinstance(frame, (bytes, bytearray)) or len(frame) != CHALLENGE_BYTES:
        n = len(frame) if isinstance(frame, (bytes, bytearray)) else type(frame).__name__
        raise PeerAuthFailed(f"peer challenge of {n} bytes; expected {CHALLENGE_BYTES}")
    (rid,) = _ID.unpack_from(frame)
    if rid != expected_peer:
        raise PeerAuthFailed(f"dialled replica {expected_peer} but replica {rid} answered")
    n_listener = bytes(frame[_ID.size:_ID.size + NONCE_BYTES])
    want = _mac(secret, b"listener", my_id, rid, n_dialer, n_listener)
    if not hmac.compare_digest(want, bytes(frame[_ID.size + NONCE_BYTES:])):
        raise PeerAuthFailed(f"replica {rid} did not prove the cluster's peer secret")
    return n_listener


def proof(secret: bytes, dialer_id: int, listener_id: int, n_dialer: bytes,
          n_listener: bytes) -> bytes:
    """The dialer's proof of the secret, bound to both nonces."""
    return _mac(secret, b"dialer", dialer_id, listener_id, n_dialer, n_listener)


def check_proof(secret: bytes, frame: bytes, dialer_id: int, listener_id: int,
                n_dialer: bytes, n_listener: bytes) -> None:
    want = proof(secret, dialer_id, listener_id, n_dialer, n_listener)
    if not isinstance(frame, (bytes, bytearray)) or not hmac.compare_digest(want, bytes(frame)):
        raise PeerAuthFailed(f"replica {dialer_id} did not prove the cluster's peer secret")
