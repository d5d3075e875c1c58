"""Access control: who may do what to which resource (pure: no I/O).

Resources and their permissions:

    nuwa     path prefix   read, write, create, delete, admin
    pangu    path prefix   read, write, create, delete, admin
    job      job id or *   submit, view, cancel
    queue    queue or *    submit, view, cancel       (job queues / quota groups)
    service  name or *     call, manage

A decision, in order:
1. members of the administrators' group (``ADMIN_GROUP``) may do everything;
2. the owner of a resource (who created the node, file, job or service) may do everything to it;
3. an ACL entry (kind, resource, principal, permissions) that covers the resource, names the
   caller (``user:<name>``, ``group:<name>`` or ``*`` for any signed-in user) and holds the
   permission (``admin`` on a path holds every path permission) allows it;
4. the seed's default for Nuwa: once created, a path is readable and writable by everyone --
   except under the platform's own prefixes (``PROTECTED_NUWA_PREFIXES``) and under any prefix
   an owner restricted;
5. otherwise: denied, with a reason naming the caller, the permission and the resource.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zhongkui.errors import BadInput

PERMISSIONS = {
    "nuwa": ("read", "write", "create", "delete", "admin"),
    "pangu": ("read", "write", "create", "delete", "admin"),
    "job": ("submit", "view", "cancel"),
    "queue": ("submit", "view", "cancel"),
    "service": ("call", "manage"),
}
PATH_KINDS = ("nuwa", "pangu")
ADMIN_GROUP = "admins"
PROTECTED_NUWA_PREFIXES = ("/fuxi/", "/pangu/", "/kuafu/", "/services/", "/zhongkui/")
# Of those, what any signed-in user may still read: the service directory is public.
READABLE_NUWA_PREFIXES = ("/kuafu/", "/services/")
PLATFORM_GROUP = "platform"  # the platform's own actors; no user may be put in it
RESERVED_GROUPS = (PLATFORM_GROUP,)
NAME_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
ACL_ENTRIES_MAX = 100_000
RESOURCE_CHARS_MAX = 1024


def check_name(name: str, what: str = "user") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadInput(f"{what} name {name!r:.40}: expected 1-32 of a-z, 0-9, '_', '.', '-' "
                       f"starting with a letter or '_'")
    return name


def check_principal(p: str) -> str:
    if p == "*":
        return p
    kind, _, name = p.partition(":")
    if kind not in ("user", "group") or not name:
        raise BadInput(f"principal {p!r:.60}: expected user:<name>, group:<name> or *")
    check_name(name, kind)
    return p


@dataclass(frozen=True)
class Entry:
    kind: str
    resource: str
    principal: str
    perms: frozenset

    @classmethod
    def make(cls, kind: str, resource: str, principal: str, perms) -> "Entry":
        if kind not in PERMISSIONS:
            raise BadInput(f"resource kind {kind!r}; expected one of {sorted(PERMISSIONS)}")
        if not isinstance(resource, str) or not resource or len(resource) > RESOURCE_CHARS_MAX:
            raise BadInput(f"resource {resource!r:.60}: expected 1-{RESOURCE_CHARS_MAX} chars")
        if kind in PATH_KINDS and not resource.startswith("/"):
            raise BadInput(f"a {kind} resource is an absolute path prefix; got {resource!r:.60}")
        perms = frozenset(perms)
        bad = perms - set(PERMISSIONS[kind])
        if not perms or bad:
            raise BadInput(f"permissions {sorted(perms)} on {kind}: expected a non-empty subset "
                           f"of {list(PERMISSIONS[kind])}")
        return cls(kind, resource, check_principal(principal), perms)

    def to_doc(self) -> dict:
        return {"kind": self.kind, "resource": self.resource, "principal": self.principal,
                "perms": sorted(self.perms)}

    @classmethod
    def from_doc(cls, d: dict) -> "Entry":
        return cls.make(d["kind"], d["resource"], d["principal"], d["perms"])


def under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` or inside it, component-wise (``/a`` covers ``/a/b``, not ``/ab``)."""
    if prefix == "/":
        return True
    p = prefix.rstrip("/")
    return path.rstrip("/") == p or path.startswith(p + "/")


def covers(entry: Entry, kind: str, resource: str) -> bool:
    if entry.kind != kind:
        return False
    if kind in PATH_KINDS:
        return under(resource, entry.resource)
    return entry.resource == "*" or entry.resource == resource


def names(entry: Entry, user: str, groups) -> bool:
    p = entry.principal
    return p == "*" or p == f"user:{user}" or (p.startswith("group:") and p[6:] in groups)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def decide(entries, user: str, groups, kind: str, resource: str, perm: str,
           owner: str | None = None, restricted=()) -> Decision:
    if kind not in PERMISSIONS or perm not in PERMISSIONS[kind]:
        raise BadInput(f"permission {perm!r} on {kind!r}; expected one of "
                       f"{list(PERMISSIONS.get(kind, ()))}")
    groups = set(groups)
    if ADMIN_GROUP in groups:
        return Decision(True, "administrator")
    if owner is not None and owner == user:
        return Decision(True, "owner")
    for e in entries:
        if covers(e, kind, resource) and names(e, user, groups) and (
                perm in e.perms or (kind in PATH_KINDS and "admin" in e.perms)):
            return Decision(True, f"granted to {e.principal} on {kind}:{e.resource}")
    if kind == "nuwa" and perm != "admin" and not any(under(resource, p) for p in restricted):
        if not any(under(resource, p) for p in PROTECTED_NUWA_PREFIXES):
            return Decision(True, "open Nuwa namespace (the seed's default)")
        if perm == "read" and any(under(resource, p) for p in READABLE_NUWA_PREFIXES):
            return Decision(True, "the service directory is public")
    return Decision(False, f"user {user!r} may not {perm} {kind}:{resource}")
