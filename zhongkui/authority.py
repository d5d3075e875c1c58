"""The cluster's identity service: signing keys, users, ACL entries and the audit trail, in
one object (the shell around the pure cores) that the authority actor holds
(``zhongkui.actor.ZhongkuiAuthority``).

Keys live in a file readable only by the platform's OS user (0600); users and ACL entries in
the platform's state store (Nuwa under ``fuxi up``). ``bootstrap`` creates the first
administrator once and returns its credentials, which ``fuxi up`` writes to the operator's
credentials file. Tokens are signed here and verified wherever the keys are. This is where
the pure cores get their clock (``time.time()``) and randomness (the OS CSPRNG,
``secrets``)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import replace

from zhongkui.core.acl import (ADMIN_GROUP, ACL_ENTRIES_MAX, PERMISSIONS, RESERVED_GROUPS, Entry,
                               check_principal, under)
from zhongkui.audit import AuditLog
from zhongkui.core.directory import Directory
from zhongkui.errors import BadCredentials, BadInput, Denied, Revoked
from zhongkui.guard import Guard, Principal, auth_doc
from zhongkui.core.tokens import TTL_S_DEFAULT, TTL_S_MAX
from zhongkui.keys import Keyring, load_or_create_keys, save_keys

__all__ = ["Authority", "load_or_create_keys"]

ADMIN_USER = "admin"
ACL_KEY = "/zhongkui/acl/"            # one entry per (kind, resource, principal)
RESTRICTED_KEY = "/zhongkui/restricted/"  # Nuwa prefixes closed to the open namespace
ACL_VERSION_KEY = "/zhongkui/acl-version"
# What a fresh cluster allows beyond owners and administrators: any signed-in user may submit
# jobs to any queue (revoke it with `fuxi acl revoke queue '*' '*' submit`).
DEFAULT_ENTRIES = (("queue", "*", "*", ("submit",)),)
RESTRICTED_MAX = 10_000
AUTHORITY_GUARD_NAME = "zhongkui"  # its platform token's user is fuxi-zhongkui


def _entry_key(kind: str, resource: str, principal: str) -> str:
    return ACL_KEY + hashlib.sha256(f"{kind}\0{resource}\0{principal}".encode()).hexdigest()[:32]


class Authority:
    def __init__(self, store, keys_path: str | None = None, audit_path: str | None = None,
                 enabled: bool = True, keyring: Keyring | None = None):
        """``store``: a state store, or a function of a token source returning one (the
        store then proves itself with this authority's own platform token, which is renewed
        when the keys rotate)."""
        self.keys_path = keys_path
        self.keyring = keyring or (load_or_create_keys(keys_path) if keys_path else Keyring.new())
        self.guard = Guard(auth_doc(enabled, None), name=AUTHORITY_GUARD_NAME,
                           keyring=self.keyring)
        self.store = store(self.guard.platform_token) if callable(store) else store
        self.directory = Directory(self.store, secrets.token_bytes)
        self.audit = AuditLog(audit_path)
        self._identities = self.directory.identities()  # user -> {"gen", "groups"}
        self._load_acl()

    # ------------------------------------------------------------ ACL entries
    def _load_acl(self) -> None:
        entries = []
        for k in sorted(self.store.list(ACL_KEY)):
            doc = self.store.get(k)
            if doc:
                entries.append(doc)
        restricted = [self.store.get(k)["path"] for k in sorted(self.store.list(RESTRICTED_KEY))]
        self.guard.set_acl({"version": int(self.store.get(ACL_VERSION_KEY) or 0),
                            "entries": entries, "restricted": restricted,
                            "identities": self.identities_doc()})

    def identities_doc(self) -> dict:
        """What every guard checks tokens against (issue 14, defect 5): each user's
        generation and current groups, and the revoked key ids."""
        return {"users": self._identities, "revoked_keys": list(self.keyring.revoked)}

    def acl_doc(self) -> dict:
        return {"version": self.guard.acl_version,
                "entries": [e.to_doc() for e in self.guard.entries],
                "restricted": list(self.guard.restricted),
                "identities": self.identities_doc()}

    def _bump_acl(self) -> None:
        """A new version of what guards poll: entries, restrictions or identities changed."""
        self.store.put(ACL_VERSION_KEY, max(self.guard.acl_version, 0) + 1)
        self._load_acl()

    def _identity_changed(self, name: str) -> None:
        ident = self.directory.identity(name)
        if ident is None:
            self._identities.pop(name, None)
        else:
            self._identities[name] = ident
        self._bump_acl()

    def principal(self, token) -> Principal:
        """The verified caller (the local operator when authentication is off)."""
        return self.guard.identify(token)

    def check(self, who: Principal, kind: str, resource: str, perm: str,
              owner: str | None = None) -> None:
        try:
            self.guard.check(who, kind, resource, perm, owner)
        except Denied as e:
            self.audit.record(who.user, perm, f"{kind}:{resource}", "denied", str(e))
            raise

    def _platform(self, proof) -> Principal:
        """A call only the platform's own actors may make: ``proof`` is a platform token."""
        who = Guard(auth_doc(True, self.keyring)).identify(proof)
        if not who.platform:
            self.audit.record(who.user, "fetch platform secrets", "keys", "denied",
                              "not a platform actor")
            raise Denied(f"user {who.user!r} is not one of the platform's actors")
        return who

    def keys_for_platform(self, proof) -> dict:
        self._platform(proof)
        return self.keyring.to_doc()

    def acl_for_platform(self, proof, have_version: int | None = None) -> dict:
        """The entries, or only the version when the asking guard has it already (guards
        ask every ACL_REFRESH_S: most answers are this small one)."""
        self._platform(proof)
        if have_version is not None and have_version == self.guard.acl_version:
            return {"version": have_version, "unchanged": True}
        return self.acl_doc()

    def record_from_platform(self, proof, rec: dict) -> None:
        """A denial seen at another entry point (Nuwa, Pangu, Kuafu), for the one trail."""
        self._platform(proof)
        self.audit.record(str(rec.get("who", "?"))[:64], str(rec.get("action", ""))[:64],
                          str(rec.get("resource", ""))[:256], str(rec.get("result", "denied")),
                          str(rec.get("detail", "")))

    def grant(self, token, kind: str, resource: str, principal: str, perms,
              owner: str | None = None) -> dict:
        """Add ``perms`` for ``principal`` on a resource. Administrators and the resource's
        owner may grant."""
        who = self.principal(token)
        e = Entry.make(kind, resource, principal, perms)
        self._may_administer(who, e.kind, e.resource, owner, "grant")
        key = _entry_key(e.kind, e.resource, e.principal)
        old = self.store.get(key)
        if old is None and len(self.guard.entries) >= ACL_ENTRIES_MAX:
            raise BadInput(f"{ACL_ENTRIES_MAX} ACL entries exist (ACL_ENTRIES_MAX)")
        merged = Entry.make(e.kind, e.resource, e.principal,
                            set(e.perms) | set(old["perms"] if old else ()))
        self.store.put(key, merged.to_doc())
        self._bump_acl()
        self.audit.record(who.user, "grant", f"{kind}:{resource}", "ok",
                          f"{principal} {sorted(e.perms)}")
        return merged.to_doc()

    def revoke(self, token, kind: str, resource: str, principal: str, perms=None,
               owner: str | None = None) -> dict | None:
        """Take ``perms`` (all when None) from ``principal``'s entry on the resource."""
        who = self.principal(token)
        if kind not in PERMISSIONS:
            raise BadInput(f"resource kind {kind!r}; expected one of {sorted(PERMISSIONS)}")
        check_principal(principal)
        self._may_administer(who, kind, resource, owner, "revoke")
        key = _entry_key(kind, resource, principal)
        old = self.store.get(key)
        if old is None:
            raise BadInput(f"no ACL entry for {principal} on {kind}:{resource}; "
                           f"`fuxi acl show` lists them")
        left = set(old["perms"]) - set(perms or old["perms"])
        if left:
            doc = Entry.make(kind, resource, principal, left).to_doc()
            self.store.put(key, doc)
        else:
            doc = None
            self.store.delete(key)
        self._bump_acl()
        self.audit.record(who.user, "revoke", f"{kind}:{resource}", "ok",
                          f"{principal} {sorted(set(old['perms']) - left)}")
        return doc

    def restrict(self, token, path: str, on: bool = True, owner: str | None = None) -> list:
        """Close (or reopen) a Nuwa prefix to the open namespace: only its owner, the
        administrators and ACL entries reach it then."""
        who = self.principal(token)
        if not isinstance(path, str) or not path.startswith("/"):
            raise BadInput(f"a Nuwa prefix is an absolute path; got {path!r:.60}")
        self._may_administer(who, "nuwa", path, owner, "restrict")
        key = RESTRICTED_KEY + hashlib.sha256(path.encode()).hexdigest()[:32]
        if on:
            if len(self.guard.restricted) >= RESTRICTED_MAX:
                raise BadInput(f"{RESTRICTED_MAX} restricted prefixes (RESTRICTED_MAX)")
            self.store.put(key, {"path": path, "by": who.user})
        elif not self.store.delete(key):
            raise BadInput(f"{path} is not restricted")
        self._bump_acl()
        self.audit.record(who.user, "restrict" if on else "unrestrict", f"nuwa:{path}", "ok")
        return list(self.guard.restricted)

    def acl_show(self, token, kind: str | None = None, resource: str | None = None) -> dict:
        self.principal(token)
        out = []
        for e in self.guard.entries:
            if kind and e.kind != kind:
                continue
            if resource and not (e.resource == resource or (
                    e.kind in ("nuwa", "pangu") and under(resource, e.resource))):
                continue
            out.append(e.to_doc())
        return {"entries": out, "restricted": list(self.guard.restricted)}

    def _may_administer(self, who: Principal, kind: str, resource: str, owner: str | None,
                        action: str) -> None:
        if who.scope is not None:
            self.audit.record(who.user, action, f"{kind}:{resource}", "denied", "scoped token")
            raise Denied(f"a {who.scope.get('kind', 'scoped')} token may not {action} access")
        if who.admin or (owner is not None and owner == who.user):
            return
        self.audit.record(who.user, action, f"{kind}:{resource}", "denied",
                          "not the owner nor an administrator")
        raise Denied(f"user {who.user!r} may not {action} access to {kind}:{resource}: only "
                     f"its owner ({owner or 'none'}) or an administrator")

    def scoped_token(self, who: Principal | str, kind: str, ident: str,
                     ttl_s: float = TTL_S_DEFAULT) -> str:
        """A token for a job's instances or a service's replicas: they act as ``who``, with no
        more rights than that user. Signed from the directory as it is now (groups and the
        account's generation), never from what was stored beside a job or service: Denied
        when the user no longer exists."""
        if not self.guard.enabled:
            return ""
        user = who if isinstance(who, str) else who.user
        ident_now = self._identities.get(user)
        if ident_now is None:
            raise Denied(f"user {user!r} no longer exists: no token is signed for their "
                         f"{kind} {ident!r}")
        return self.keyring.sign(user, ident_now["groups"], now=time.time(),
                                 ttl_s=min(max(ttl_s, 60.0), TTL_S_MAX),
                                 scope={"kind": kind, "id": ident}, gen=ident_now["gen"])

    def _save_keys(self) -> None:
        if self.keys_path:
            save_keys(self.keys_path, self.keyring)

    # ------------------------------------------------------------ identities
    def bootstrap(self) -> dict | None:
        """The first administrator, once: {"user", "password", "token"}; None when users
        exist already."""
        if self.directory.list_users():
            return None
        password = secrets.token_urlsafe(18)
        self.directory.add_user(ADMIN_USER, password, [ADMIN_GROUP], now=time.time())
        for kind, resource, principal, perms in DEFAULT_ENTRIES:
            e = Entry.make(kind, resource, principal, perms)
            self.store.put(_entry_key(e.kind, e.resource, e.principal), e.to_doc())
        self._identity_changed(ADMIN_USER)
        self.audit.record("fuxi up", "create administrator", f"user:{ADMIN_USER}", "ok")
        return {"user": ADMIN_USER, "password": password,
                "token": self._sign_login(ADMIN_USER)}

    def _sign_login(self, user: str, ttl_s: float = TTL_S_DEFAULT) -> str:
        ident = self._identities.get(user) or self.directory.identity(user) or {}
        return self.keyring.sign(user, ident.get("groups", ()), now=time.time(), ttl_s=ttl_s,
                                 gen=ident.get("gen", ""))

    def login(self, user: str, password: str, ttl_s: float = TTL_S_DEFAULT) -> str:
        try:
            u = self.directory.authenticate(user, password)
        except BadCredentials:
            self.audit.record(str(user)[:64], "login", f"user:{str(user)[:64]}", "denied",
                              "wrong user name or password")
            raise
        return self._sign_login(u["name"], ttl_s=ttl_s)

    def verify(self, token: str) -> Principal:
        """The caller as the directory has them now (Revoked when removed or re-created, or
        the token's key was revoked), whether or not access control is enforced."""
        c = self.keyring.verify(token, time.time())
        who = Principal(c.user, tuple(c.groups), c.scope, c.expires_at, c.gen, c.key_id)
        if who.platform:
            return who
        ident = self._identities.get(c.user)
        if ident is None:
            raise Revoked(f"user {c.user!r} no longer exists")
        want = ident["gen"] if (c.scope or {}).get("kind") != "chunk" else \
            f"{ident['gen']}/{ident.get('gv', 0)}"
        if want != c.gen:
            raise Revoked(f"the token belongs to an earlier account named {c.user!r} "
                          f"(removed since); log in again")
        return replace(who, groups=tuple(sorted(ident["groups"])))

    def whoami(self, token: str) -> dict:
        c = self.verify(token)
        return {"user": c.user, "groups": list(c.groups), "expires_at": c.expires_at,
                "key_id": c.key_id, "scope": c.scope}

    def _admin(self, token: str, action: str, resource: str) -> Principal:
        try:
            c = self.verify(token)
        except BadCredentials as e:
            self.audit.record("?", action, resource, "denied", type(e).__name__)
            raise
        if c.scope is not None:
            self.audit.record(c.user, action, resource, "denied", "scoped token")
            raise Denied(f"a {c.scope.get('kind', 'scoped')} token may not {action}")
        if ADMIN_GROUP not in c.groups:
            self.audit.record(c.user, action, resource, "denied", "not an administrator")
            raise Denied(f"user {c.user!r} may not {action}: administrators only")
        return c

    def approve_admin(self, token, action: str, resource: str) -> str:
        """An administrator's operation done outside this service (``fuxi debug kill``):
        administrators only when access control is on; recorded in the audit trail either
        way. Returns who did it ("operator" when access control is off and no valid token
        came)."""
        action, resource = str(action)[:64], str(resource)[:256]
        if self.guard.enabled:
            who = self._admin(token, action, resource).user
        else:
            try:
                who = self.verify(token).user if isinstance(token, str) and token else "operator"
            except BadCredentials:
                who = "operator"
        self.audit.record(who, action, resource, "ok")
        return who

    def add_user(self, token: str, name: str, password: str, groups=()) -> dict:
        c = self._admin(token, "add user", f"user:{name}")
        reserved = sorted(set(groups) & set(RESERVED_GROUPS))
        if reserved:
            raise BadInput(f"group {reserved[0]!r} is reserved for the platform's own actors")
        out = self.directory.add_user(name, password, groups, now=time.time())
        self._identity_changed(name)
        self.audit.record(c.user, "add user", f"user:{name}", "ok", f"groups {sorted(groups)}")
        return out

    def set_groups(self, token: str, name: str, groups) -> dict:
        """Replace a user's groups (administrators only); every entry point decides with
        the new ones within REVOKE_WITHIN_S, whatever groups the user's tokens name."""
        c = self._admin(token, "set groups", f"user:{name}")
        reserved = sorted(set(groups) & set(RESERVED_GROUPS))
        if reserved:
            raise BadInput(f"group {reserved[0]!r} is reserved for the platform's own actors")
        if name == c.user and ADMIN_GROUP not in groups:
            raise BadInput("an administrator cannot take themselves out of "
                           f"{ADMIN_GROUP!r}")
        out = self.directory.set_groups(name, groups)
        self._identity_changed(name)
        self.audit.record(c.user, "set groups", f"user:{name}", "ok", f"groups {sorted(groups)}")
        return out

    def remove_user(self, token: str, name: str) -> None:
        c = self._admin(token, "remove user", f"user:{name}")
        if name == c.user:
            raise BadInput("an administrator cannot remove themselves")
        self.directory.remove_user(name)
        self._identity_changed(name)
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

    def rotate_keys(self, token: str, revoke_old: bool = False) -> str:
        """A new signing key. With ``revoke_old`` (after a leak) every older key stops
        verifying at once: their tokens are refused everywhere within REVOKE_WITHIN_S."""
        c = self._admin(token, "rotate keys", "keys")
        kid = self.keyring.rotate(time.time())
        retired = self.keyring.retire(time.time()) + list(self.keyring.evicted)
        revoked = self.keyring.revoke_old() if revoke_old else []
        self._save_keys()
        self._bump_acl()  # guards learn the revoked key ids with their next poll
        self.audit.record(c.user, "rotate keys", "keys", "ok",
                          f"new key {kid}" + (f"; revoked {len(revoked)}" if revoke_old else "")
                          + (f"; retired {len(retired)}" if retired else ""))
        return kid

    def audit_records(self, token: str, **query) -> list[dict]:
        self._admin(token, "read the audit trail", "audit")
        return self.audit.query(**query)
