"""Who may do what on the Pangu master (Zhongkui): the caller verified from its credential,
namespace operations decided on their paths (a file's or directory's owner is who created
it), and the chunk access tokens that the chunkservers check, signed here."""

from __future__ import annotations

import time

from pangu.core import paths as P
from pangu.core.access import chunk_scope, writer_key
from pangu.errors import BadRequest, Denied, PanguError, Unauthenticated

CHUNK_ACCESS_TTL_S = 600.0  # a chunk access token's life (a reader asks again after it)


class MasterAuth:
    def __init__(self, guard, mastership):
        self.guard = guard
        self.mastership = mastership  # whose namespace says who owns a path

    @property
    def enabled(self) -> bool:
        return self.guard.enabled

    async def who(self, cred):
        from zhongkui.errors import BadCredentials

        try:
            who = await self.guard.aidentify(cred)
        except BadCredentials as e:
            raise Unauthenticated(f"{type(e).__name__}: {e}") from None
        if (who.scope or {}).get("kind") == "chunk":
            # A chunk access token opens one chunk on the chunkservers, nothing here.
            raise Unauthenticated("a chunk access token is not a credential for the master; "
                                  "present the user's token")
        return who

    def owner_of(self, path: str, nearest: bool = False) -> str | None:
        """The owner of ``path``; with ``nearest``, of its nearest existing ancestor (what a
        create with parents=True is decided on)."""
        try:
            p = P.normalize(path)
        except PanguError:
            return None
        nodes = self.mastership.ns.nodes
        while True:
            n = nodes.get(p)
            if n is not None or not nearest or p == "/":
                return n.owner if n is not None else None
            p = P.parent(p)

    async def authz(self, cred, path, perm: str, owner_path: str | None = None):
        """The verified caller, allowed ``perm`` on ``path`` (owned by ``owner_path``'s
        owner, default the path's own), or Unauthenticated / Denied."""
        from zhongkui.errors import Denied as ZDenied
        from zhongkui.errors import ZhongkuiError

        who = await self.who(cred)
        if not self.guard.enabled:
            return who
        if not isinstance(path, str):
            raise BadRequest(f"path {path!r:.60}: expected a str")
        try:
            await self.guard.acheck(who, "pangu", P.normalize(path), perm,
                                    self.owner_of(owner_path or path, nearest=perm == "create"))
        except ZDenied as e:
            raise Denied(str(e)) from None
        except ZhongkuiError as e:
            raise BadRequest(str(e)) from None
        return who

    def require_platform(self, cred, what: str, admin_ok: bool = False) -> None:
        from zhongkui.guard import require_platform

        require_platform(self.guard, cred, what, admin_ok=admin_ok)

    async def platform_only(self, cred, what: str) -> None:
        who = await self.who(cred)
        if self.guard.enabled and not who.platform:
            raise Denied(f"user {who.user!r} may not {what}: the platform's own actors only")

    async def admin_only(self, cred, what: str) -> None:
        who = await self.who(cred)
        if self.guard.enabled and not who.admin:
            self.guard.report_denial(who.user, what, "pangu", "administrators only")
            raise Denied(f"user {who.user!r} may not {what}: administrators only")

    def access(self, who, cid: str, mode: str, version: int | None = None) -> str:
        """A chunk access token: user, chunk, mode (r or w), CHUNK_ACCESS_TTL_S; a write
        token also names the lease's version, so it dies with the lease (a writer that lost
        the file, or whose lease moved on, cannot write with it)."""
        if not self.guard.enabled:
            return ""
        return self.guard.keyring.sign(who.user, (), now=time.time(), ttl_s=CHUNK_ACCESS_TTL_S,
                                       scope=chunk_scope(cid, mode, version),
                                       gen=self.guard.chunk_gen(who))  # revoked with its user

    def writer_key(self, who, writer) -> str:
        return writer_key(who.user if self.guard.enabled else None, writer)

    def owner_name(self, who, given: str) -> str:
        return who.user if self.guard.enabled else given

    def call_kwargs(self, epoch: int) -> dict:
        """What the master's calls to a chunkserver carry: its term, and its credential."""
        kw = {"epoch": epoch}
        if self.guard.enabled:
            kw["cred"] = self.guard.platform_token()
        return kw
