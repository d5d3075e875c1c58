"""The cluster's identity service: signing keys, users, ACL entries and the audit trail, in
one object that FuxiMaster holds (the shell around the pure cores).

Keys live in a file readable only by the platform's OS user (0600); users and ACL entries in
the platform's state store (Nuwa under ``fuxi up``). ``bootstrap`` creates the first
administrator once and returns its credentials, which ``fuxi up`` writes to the operator's
credentials file. Tokens are signed here and verified wherever the keys are."""

from __future__ import annotations

import json
import os
import secrets
import time

from zhongkui.acl import ADMIN_GROUP
from zhongkui.audit import AuditLog
from zhongkui.directory import Directory
from zhongkui.errors import BadCredentials, BadInput, Denied
from zhongkui.tokens import TTL_S_DEFAULT, Claims, Keyring

ADMIN_USER = "admin"


def _write_private(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Authority:
    def __init__(self, store, keys_path: str | None = None, audit_path: str | None = None):
        self.store = store
        self.keys_path = keys_path
        if keys_path and os.path.exists(keys_path):
            with open(keys_path) as f:
                self.keyring = Keyring.from_doc(json.load(f))
        else:
            self.keyring = Keyring.new()
            self._save_keys()
        self.directory = Directory(store)
        self.audit = AuditLog(audit_path)

    def _save_keys(self) -> None:
        if self.keys_path:
            _write_private(self.keys_path, json.dumps(self.keyring.to_doc()))

    # ------------------------------------------------------------ identities
    def bootstrap(self) -> dict | None:
        """The first administrator, once: {"user", "password", "token"}; None when users
        exist already."""
        if self.directory.list_users():
            return None
        password = secrets.token_urlsafe(18)
        self.directory.add_user(ADMIN_USER, password, [ADMIN_GROUP])
        self.audit.record("fuxi up", "create administrator", f"user:{ADMIN_USER}", "ok")
        return {"user": ADMIN_USER, "password": password,
                "token": self.keyring.sign(ADMIN_USER, [ADMIN_GROUP], now=time.time())}

    def login(self, user: str, password: str, ttl_s: float = TTL_S_DEFAULT) -> str:
        try:
            u = self.directory.authenticate(user, password)
        except BadCredentials:
            self.audit.record(str(user)[:64], "login", f"user:{str(user)[:64]}", "denied",
                              "wrong user name or password")
            raise
        return self.keyring.sign(u["name"], u["groups"], now=time.time(), ttl_s=ttl_s)

    def verify(self, token: str) -> Claims:
        return self.keyring.verify(token, time.time())

    def whoami(self, token: str) -> dict:
        c = self.verify(token)
        return {"user": c.user, "groups": list(c.groups), "expires_at": c.expires_at,
                "key_id": c.key_id, "scope": c.scope}

    def _admin(self, token: str, action: str, resource: str) -> Claims:
        try:
            c = self.verify(token)
        except BadCredentials as e:
            self.audit.record("?", action, resource, "denied", type(e).__name__)
            raise
        if ADMIN_GROUP not in c.groups:
            self.audit.record(c.user, action, resource, "denied", "not an administrator")
            raise Denied(f"user {c.user!r} may not {action}: administrators only")
        return c

    def add_user(self, token: str, name: str, password: str, groups=()) -> dict:
        c = self._admin(token, "add user", f"user:{name}")
        out = self.directory.add_user(name, password, groups)
        self.audit.record(c.user, "add user", f"user:{name}", "ok", f"groups {sorted(groups)}")
        return out

    def remove_user(self, token: str, name: str) -> None:
        c = self._admin(token, "remove user", f"user:{name}")
        if name == c.user:
            raise BadInput("an administrator cannot remove themselves")
        self.directory.remove_user(name)
        self.audit.record(c.user, "remove user", f"user:{name}", "ok")

    def list_users(self, token: str) -> list[dict]:
        self.verify(token)
        return self.directory.list_users()

    def set_password(self, token: str, name: str, password: str) -> None:
        c = self.verify(token)
        if c.user != name and ADMIN_GROUP not in c.groups:
            self.audit.record(c.user, "set password", f"user:{name}", "denied",
                              "only the user or an administrator")
            raise Denied(f"user {c.user!r} may not change {name!r}'s password")
        self.directory.set_password(name, password)
        self.audit.record(c.user, "set password", f"user:{name}", "ok")

    def rotate_keys(self, token: str) -> str:
        c = self._admin(token, "rotate keys", "keys")
        kid = self.keyring.rotate(time.time())
        self.keyring.retire(time.time())
        self._save_keys()
        self.audit.record(c.user, "rotate keys", "keys", "ok", f"new key {kid}")
        return kid

    def audit_records(self, token: str, **query) -> list[dict]:
        self._admin(token, "read the audit trail", "audit")
        return self.audit.query(**query)
