"""The cluster's keyring as the platform uses it: the pure ``zhongkui.core.tokens.Keyring``
bound to the OS CSPRNG (``secrets.token_bytes``) for key material, key ids and token ids,
and its file (0600), created on first use. Every production keyring is made here (or from a
document with ``Keyring.from_doc``, which binds it the same way); only tests give the core a
seeded source."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Callable

from zhongkui.core import tokens
from zhongkui.files import create_once, write_private


@dataclass
class Keyring(tokens.Keyring):
    rand: Callable[[int], bytes] | None = field(default=secrets.token_bytes, repr=False,
                                                compare=False)


def load_or_create_keys(path: str) -> Keyring:
    """The cluster's keyring at ``path`` (0600), created on first use -- once: processes
    creating it at the same time (the authority and FuxiMaster starting together) all end
    up with the keyring of the first to link its file."""
    create_once(path, lambda: json.dumps(Keyring.new().to_doc()).encode())
    with open(path) as f:
        return Keyring.from_doc(json.load(f))


def save_keys(path: str, keyring: tokens.Keyring) -> None:
    write_private(path, json.dumps(keyring.to_doc()))
