"""Zhongkui: users, tokens and access control for the whole platform.

Layout: ``zhongkui.core`` holds the pure cores (scrypt passwords, signed tokens with a
rotating keyring, ACL decisions, the user directory: time and randomness come from the
caller); ``authority`` is the identity service those cores make up, served by its own actor
(``zhongkui.actor.ZhongkuiAuthority``); ``guard`` is what every entry point decides with;
``shell`` connects guards to the authority; ``creds`` is which token a client sends;
``keys`` and ``files`` are the secrets on disk. See docs/zhongkui.md.

What users and the platform's other packages call::

    from zhongkui import creds, set_token, token     # which token this process sends
    from zhongkui import Denied, BadCredentials      # the errors (base.errors below them)
"""

from zhongkui import creds
from zhongkui.creds import set_token, token
from zhongkui.errors import (BadCredentials, BadInput, BadSignature, Denied, Expired, Malformed,
                             Revoked, UnknownKey, UnknownUser, ZhongkuiError)
from zhongkui.files import private_files, write_private
from zhongkui.guard import Guard, Principal, auth_doc, require_capability, require_platform
from zhongkui.keys import Keyring, load_or_create_keys
from zhongkui.shell import AUTHORITY_NAME

__all__ = [
    "creds", "set_token", "token",
    "ZhongkuiError", "BadCredentials", "Malformed", "BadSignature", "Expired", "UnknownKey",
    "Revoked", "UnknownUser", "Denied", "BadInput",
    "Guard", "Principal", "auth_doc", "require_platform", "require_capability",
    "Keyring", "load_or_create_keys", "private_files", "write_private", "AUTHORITY_NAME",
]
