"""The master's namespace state machine: a rule-based model test, checkpoints, bad input."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pangu.errors import BadRequest, Exists, IsADir, NotADir, NotEmpty, NotFound, PanguError
from pangu.core.namespace import CHUNK_BYTES_MIN, Namespace

CS = CHUNK_BYTES_MIN
# A small path space, so that steps keep meeting the same files and directories.
names = st.sampled_from(["a", "b"])
paths = st.lists(names, min_size=1, max_size=2).map(lambda xs: "/" + "/".join(xs))


class NamespaceModel(RuleBasedStateMachine):
    """The model: path -> ("dir", None) or ("file", size). Every command either does what the
    model says or raises a PanguError and changes nothing."""

    def __init__(self):
        super().__init__()
        self.ns = Namespace()
        self.model: dict[str, tuple[str, int | None]] = {"/": ("dir", None)}
        # Start with data in place, so short runs already rename, truncate and delete files
        # that have chunks.
        self.mkdir("/a", False)
        for p, n in (("/a/a", 2 * CS + 5), ("/b", CS)):
            self.create(p, False)
            self.write(p, n)

    def _parent(self, p):
        return p.rsplit("/", 1)[0] or "/"

    def _try(self, cmd, expect_ok):
        before = self.ns.snapshot()
        try:
            out = self.ns.apply(cmd)
        except PanguError:
            assert not expect_ok, cmd
            assert self.ns.snapshot() == before, f"{cmd} failed but changed the namespace"
            return None
        assert expect_ok, f"{cmd} should have been refused"
        return out

    @rule(p=paths, parents=st.booleans())
    def mkdir(self, p, parents):
        par = self._parent(p)
        ok = (p not in self.model or (parents and self.model[p][0] == "dir"))
        chain, q = [], p
        while q not in self.model:
            chain.append(q)
            q = self._parent(q)
        ok = ok and self.model[q][0] == "dir" and (parents or len(chain) <= 1)
        if self._try({"op": "mkdir", "path": p, "parents": parents}, ok) is not None:
            for c in chain:
                self.model[c] = ("dir", None)
        del par

    @rule(p=paths, overwrite=st.booleans())
    def create(self, p, overwrite):
        par = self._parent(p)
        ok = (self.model.get(par, ("x",))[0] == "dir"
              and (p not in self.model or (overwrite and self.model[p][0] == "file")))
        if self._try({"op": "create", "path": p, "overwrite": overwrite, "chunk_size": CS,
                      "replication": 2}, ok) is not None:
            self.model[p] = ("file", 0)

    @rule(p=paths, n=st.integers(1, 3 * CS))
    def write(self, p, n):
        """Append n bytes the way a client does: fill the last chunk, add chunks."""
        if self.model.get(p, ("x",))[0] != "file":
            with pytest.raises(PanguError):
                self.ns.apply({"op": "add_chunk", "path": p})
            return
        size = self.model[p][1]
        left = n
        while left:
            chunks = self.ns.chunks(p)
            if not chunks or chunks[-1].length == CS:
                self.ns.apply({"op": "add_chunk", "path": p})
                chunks = self.ns.chunks(p)
            c = chunks[-1]
            take = min(left, CS - c.length)
            self.ns.apply({"op": "commit", "chunk": c.id, "length": c.length + take,
                           "version": c.version})
            left -= take
        self.model[p] = ("file", size + n)

    @rule(p=paths, frac=st.floats(0, 1))
    def truncate(self, p, frac):
        if self.model.get(p, ("x",))[0] != "file":
            self._try({"op": "truncate", "path": p, "length": 0}, False)
            return
        n = int(self.model[p][1] * frac)
        self._try({"op": "truncate", "path": p, "length": n}, True)
        self.model[p] = ("file", n)

    @rule(src=paths, dst=paths, overwrite=st.booleans())
    def rename(self, src, dst, overwrite):
        ok = (src in self.model and not (dst == src or dst.startswith(src + "/"))
              and self.model.get(self._parent(dst), ("x",))[0] == "dir"
              and (dst not in self.model or (overwrite and self.model[dst][0] == "file"
                                             and self.model[src][0] == "file")))
        if self._try({"op": "rename", "src": src, "dst": dst, "overwrite": overwrite}, ok) is not None:
            moved = {k: v for k, v in self.model.items() if k == src or k.startswith(src + "/")}
            for k in moved:
                del self.model[k]
            for k in [k for k in self.model if k == dst or k.startswith(dst + "/")]:
                del self.model[k]
            for k, v in moved.items():
                self.model[dst + k[len(src):]] = v

    @rule(p=paths, recursive=st.booleans())
    def delete(self, p, recursive):
        has_children = any(k.startswith(p + "/") for k in self.model)
        ok = p in self.model and (recursive or not has_children)
        if self._try({"op": "delete", "path": p, "recursive": recursive}, ok) is not None:
            for k in [k for k in self.model if k == p or k.startswith(p + "/")]:
                del self.model[k]

    @precondition(lambda self: True)
    @rule()
    def checkpoint_round_trip(self):
        again = Namespace.restore(self.ns.snapshot())
        assert again.snapshot() == self.ns.snapshot()
        self.ns = again

    @invariant()
    def agrees_with_the_model(self):
        for p, (kind, size) in self.model.items():
            st_ = self.ns.stat(p)
            assert st_["type"] == ("directory" if kind == "dir" else "file"), p
            if kind == "file":
                assert st_["size"] == size, (p, st_, size)
        assert set(self.ns.nodes) == set(self.model)
        # every chunk is indexed once, at its place
        seen = {}
        for p, n in self.ns.nodes.items():
            for i, c in enumerate(n.chunks):
                seen[c.id] = (p, i)
        assert seen == self.ns.chunk_index
        assert self.ns.du("/")["bytes"] == sum(s for k, s in self.model.values() if k == "file")


TestNamespaceModel = NamespaceModel.TestCase
TestNamespaceModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_errors_name_the_problem():
    ns = Namespace()
    with pytest.raises(NotFound, match="use parents=True"):
        ns.apply({"op": "mkdir", "path": "/a/b"})
    ns.apply({"op": "mkdir", "path": "/a/b", "parents": True})
    with pytest.raises(Exists):
        ns.apply({"op": "mkdir", "path": "/a"})
    with pytest.raises(BadRequest, match="replication must be"):
        ns.apply({"op": "create", "path": "/a/f", "replication": 0})
    with pytest.raises(BadRequest, match="chunk_size must be a multiple"):
        ns.apply({"op": "create", "path": "/a/f", "chunk_size": 1000})
    ns.apply({"op": "create", "path": "/a/f", "chunk_size": CS})
    with pytest.raises(NotADir):
        ns.apply({"op": "mkdir", "path": "/a/f/g", "parents": True})
    with pytest.raises(IsADir):
        ns.apply({"op": "create", "path": "/a/b"})
    with pytest.raises(NotEmpty, match="recursive=True"):
        ns.apply({"op": "delete", "path": "/a"})
    with pytest.raises(BadRequest, match="into itself"):
        ns.apply({"op": "rename", "src": "/a", "dst": "/a/b/c"})
    c = ns.apply({"op": "add_chunk", "path": "/a/f"})
    with pytest.raises(BadRequest, match="stale writer"):
        ns.apply({"op": "commit", "chunk": c["chunk"], "length": 10, "version": 0})
    with pytest.raises(BadRequest, match="no holes"):
        ns.apply({"op": "add_chunk", "path": "/a/f"})
    with pytest.raises(BadRequest, match="unknown namespace op"):
        ns.apply({"op": "chmod"})


def test_delete_and_overwrite_free_chunks_for_collection():
    ns = Namespace()
    ns.apply({"op": "mkdir", "path": "/d"})
    ns.apply({"op": "create", "path": "/d/f", "chunk_size": CS})
    c1 = ns.apply({"op": "add_chunk", "path": "/d/f"})["chunk"]
    ns.apply({"op": "commit", "chunk": c1, "length": CS, "version": 1})
    c2 = ns.apply({"op": "add_chunk", "path": "/d/f"})["chunk"]
    assert ns.apply({"op": "truncate", "path": "/d/f", "length": 5})["freed"] == [c2]
    assert ns.chunks("/d/f")[0].version == 2  # cut: replicas must follow
    assert ns.apply({"op": "create", "path": "/d/f", "overwrite": True})["freed"] == [c1]
    assert ns.apply({"op": "delete", "path": "/d", "recursive": True})["freed"] == []
    assert ns.all_chunks() == {}
