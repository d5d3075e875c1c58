"""Users and groups, kept in a ``StateStore`` (Nuwa under ``fuxi up``) at
``/zhongkui/users/<name>``. Passwords are stored only as scrypt hashes. Authentication gives
the same answer for an unknown user and a wrong password, so names cannot be probed.

Pure: the time (``now``) and the randomness (``rand``: n -> n random bytes, for salts and
account generations) come from the caller -- the shell (``zhongkui.authority``) gives
``time.time()`` and ``secrets.token_bytes``."""

from __future__ import annotations

from typing import Callable

from zhongkui.core.acl import check_name
from zhongkui.errors import BadCredentials, BadInput
from zhongkui.core.passwords import SALT_BYTES, hash_password, verify_password

USERS_MAX = 100_000
GROUPS_PER_USER_MAX = 64
KEY = "/zhongkui/users/"


class Directory:
    def __init__(self, store, rand: Callable[[int], bytes]):
        self.store = store
        self.rand = rand

    def _get(self, name: str) -> dict | None:
        return self.store.get(KEY + check_name(name))

    def add_user(self, name: str, password: str, groups, now: float) -> dict:
        check_name(name)
        if self._get(name) is not None:
            raise BadInput(f"user {name!r} exists; `fuxi user passwd` changes a password")
        if len(self.store.list(KEY)) >= USERS_MAX:
            raise BadInput(f"{USERS_MAX} users exist (USERS_MAX)")
        groups = self._groups(groups)
        # ``gen``: this account's generation, carried in its tokens. A user removed and added
        # again gets a new one, so the old account's tokens name nobody (issue 14, defect 5).
        doc = {"name": name, "groups": groups,
               "password": hash_password(password, self.rand(SALT_BYTES)),
               "created_at": now, "gen": self.rand(8).hex()}
        self.store.put(KEY + name, doc)
        return self.public(doc)

    @staticmethod
    def _groups(groups) -> list[str]:
        groups = sorted({check_name(g, "group") for g in groups})
        if len(groups) > GROUPS_PER_USER_MAX:
            raise BadInput(f"{len(groups)} groups; at most {GROUPS_PER_USER_MAX} per user")
        return groups

    def remove_user(self, name: str) -> None:
        if not self.store.delete(KEY + check_name(name)):
            raise BadInput(f"no user {name!r}")

    def set_password(self, name: str, password: str) -> None:
        doc = self._get(name)
        if doc is None:
            raise BadInput(f"no user {name!r}")
        doc["password"] = hash_password(password, self.rand(SALT_BYTES))
        self.store.put(KEY + name, doc)

    def set_groups(self, name: str, groups) -> dict:
        doc = self._get(name)
        if doc is None:
            raise BadInput(f"no user {name!r}")
        doc["groups"] = self._groups(groups)
        doc["gv"] = int(doc.get("gv", 0)) + 1  # chunk access tokens of the old groups end
        self.store.put(KEY + name, doc)
        return self.public(doc)

    def authenticate(self, name: str, password: str) -> dict:
        doc = None
        try:
            doc = self._get(name)
        except BadInput:
            pass
        # Verify against a dummy when the user is unknown, so both cases take as long.
        stored = doc["password"] if doc else _DUMMY
        ok = verify_password(password, stored)
        if doc is None or not ok:
            raise BadCredentials("wrong user name or password")
        return self.public(doc)

    def identity(self, name: str) -> dict | None:
        """``{"gen", "groups"}`` of a user as they are now; None when there is no such user."""
        try:
            doc = self._get(name)
        except BadInput:
            return None
        return None if doc is None else {"gen": doc.get("gen", ""),
                                         "groups": list(doc.get("groups", ())),
                                         "gv": int(doc.get("gv", 0))}

    def identities(self) -> dict[str, dict]:
        """Every user's ``{"gen", "groups"}``: what the guards check tokens against."""
        out = {}
        for k in sorted(self.store.list(KEY)):
            doc = self.store.get(k)
            if doc:
                out[doc["name"]] = {"gen": doc.get("gen", ""),
                                    "groups": list(doc.get("groups", ())),
                                    "gv": int(doc.get("gv", 0))}
        return out

    def list_users(self) -> list[dict]:
        return [self.public(self.store.get(k)) for k in sorted(self.store.list(KEY))]

    @staticmethod
    def public(doc: dict) -> dict:
        """A user's record without its password hash (nor its generation)."""
        return {k: v for k, v in doc.items() if k not in ("password", "gen", "gv")}


# Only there to make an unknown user cost one scrypt too: its salt needs no secrecy.
_DUMMY = hash_password("not-a-real-password", bytes(SALT_BYTES))
