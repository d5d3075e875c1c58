"""The Pangu master's metadata as a pure, deterministic state machine.

Directories and files by absolute path; each file has an owner, times, a replication factor,
a chunk size and an ordered list of chunks (id, version, length). Commands are plain dicts
applied by ``apply`` -- the operation log the master replicates (with the Raft core from
``nuwa``) and replays. A command is validated completely before anything changes, so a
refused command (a ``PanguError`` saying what was wrong) leaves the namespace untouched.
Time comes in the command (``now``), and chunk ids from a counter in the state, so every
replica that applies the same log reaches the same state.

Files have no holes: every chunk but the last is full (``chunk_size`` bytes), and the file's
length is ``(chunks - 1) * chunk_size + last chunk's length``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from pangu.core import fencing as F
from pangu.core import paths as P
from pangu.errors import BadRequest, Denied, Exists, IsADir, NotADir, NotEmpty, NotFound

REPLICATION_DEFAULT = 3
REPLICATION_MAX = 8
CHUNK_BYTES_DEFAULT = 64 * 1024 * 1024
CHUNK_BYTES_MIN = 64 * 1024  # one checksum block
CHUNK_BYTES_MAX = 1024 * 1024 * 1024
NAMESPACE_ENTRIES_MAX = 1_000_000  # files plus directories
CHUNKS_PER_FILE_MAX = 1_000_000
OWNER_CHARS_MAX = 128


@dataclass
class Chunk:
    id: str
    version: int = 1
    length: int = 0


@dataclass
class Inode:
    kind: str  # "dir" | "file"
    owner: str
    ctime: float
    mtime: float
    replication: int = 0
    chunk_size: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    children: set[str] = field(default_factory=set)  # directories: child names

    @property
    def length(self) -> int:
        if self.kind != "file" or not self.chunks:
            return 0
        return (len(self.chunks) - 1) * self.chunk_size + self.chunks[-1].length


class Namespace:
    def __init__(self) -> None:
        self.nodes: dict[str, Inode] = {P.ROOT: Inode("dir", "root", 0.0, 0.0)}
        self.next_chunk = 1
        self.chunk_index: dict[str, tuple[str, int]] = {}  # chunk id -> (path, index in file)
        self.fencing = F.FencingTable()  # lock path -> newest fencing token seen (defect 16)

    # ------------------------------------------------------------ queries
    def _get(self, path: str) -> Inode:
        node = self.nodes.get(path)
        if node is None:
            raise NotFound(f"{path}: no such file or directory")
        return node

    def _file(self, path: str) -> Inode:
        node = self._get(path)
        if node.kind != "file":
            raise IsADir(f"{path} is a directory; expected a file")
        return node

    def _dir(self, path: str) -> Inode:
        node = self._get(path)
        if node.kind != "dir":
            raise NotADir(f"{path} is a file; expected a directory")
        return node

    def _parent_dir(self, path: str, doing: str) -> Inode:
        """The directory a new name ``path`` goes into; ``doing`` starts the error."""
        parent = self.nodes.get(P.parent(path))
        if parent is None:
            raise NotFound(f"{doing}: directory {P.parent(path)} does not exist")
        if parent.kind != "dir":
            raise NotADir(f"{doing}: {P.parent(path)} is a file")
        return parent

    def exists(self, path: str) -> bool:
        return P.normalize(path) in self.nodes

    def stat(self, path: str) -> dict:
        path = P.normalize(path)
        n = self._get(path)
        out = {"path": path, "type": "directory" if n.kind == "dir" else "file",
               "owner": n.owner, "ctime": n.ctime, "mtime": n.mtime, "size": n.length}
        if n.kind == "file":
            out.update(replication=n.replication, chunk_size=n.chunk_size,
                       chunks=len(n.chunks))
        else:
            out["children"] = len(n.children)
        return out

    def ls(self, path: str) -> list[dict]:
        path = P.normalize(path)
        d = self._get(path)
        if d.kind == "file":
            return [self.stat(path)]
        return [self.stat(P.join(path, c)) for c in sorted(d.children)]

    def du(self, path: str) -> dict:
        path = P.normalize(path)
        self._get(path)
        files = dirs = size = 0
        for p in self._subtree(path):
            n = self.nodes[p]
            if n.kind == "file":
                files += 1
                size += n.length
            else:
                dirs += 1
        return {"path": path, "files": files, "directories": dirs, "bytes": size}

    def chunks(self, path: str) -> list[Chunk]:
        return list(self._file(P.normalize(path)).chunks)

    def chunk_of(self, path: str, cid: object) -> tuple[Inode, int]:
        """The file ``path`` and the index in it of chunk ``cid``, which must be one of that
        file's chunks: a caller authorized for ``path`` acts on its chunks only (a chunk id
        of another file, learnt from ``locate`` or guessed, is ``Denied``)."""
        if not isinstance(cid, str) or not 0 < len(cid) <= 64:
            raise BadRequest(f"chunk id {cid!r:.80}: expected a str of 1-64 characters "
                             f"(an id from locate or a lease)")
        f = self._file(path)
        loc = self.chunk_index.get(cid)
        if loc is None or loc[0] != path:
            raise Denied(f"chunk {cid} is not a chunk of {path}: a chunk operation acts only "
                         f"on chunks of the file it names")
        return f, loc[1]

    def all_chunks(self) -> dict[str, dict]:
        """chunk id -> {path, index, version, length, replication} (for the master's repair)."""
        out = {}
        for cid, (path, i) in self.chunk_index.items():
            f = self.nodes[path]
            c = f.chunks[i]
            out[cid] = {"path": path, "index": i, "version": c.version, "length": c.length,
                        "replication": f.replication}
        return out

    def _subtree(self, path: str) -> list[str]:
        out, stack = [], [path]
        while stack:
            p = stack.pop()
            out.append(p)
            n = self.nodes[p]
            if n.kind == "dir":
                stack.extend(P.join(p, c) for c in n.children)
        return out

    # ------------------------------------------------------------ commands
    def apply(self, cmd: dict) -> dict:
        if not isinstance(cmd, dict) or not isinstance(cmd.get("op"), str):
            raise BadRequest(f"a namespace command is a dict with an 'op'; got {cmd!r:.100}")
        handler = getattr(self, "_op_" + cmd["op"], None)
        if handler is None:
            raise BadRequest(f"unknown namespace op {cmd['op']!r}; expected one of "
                             f"mkdir, create, add_chunk, commit, bump_version, truncate, "
                             f"rename, delete, fence")
        # A command may carry a fencing token: checked before anything changes, recorded
        # (as the newest for its lock) only once the command has been applied.
        fence = F.parse(cmd.get("fencing"))
        if fence is not None:
            self.fencing.check(*fence)
        res = handler(cmd)
        if fence is not None:
            self.fencing.record(*fence)
        return res

    def _op_fence(self, cmd: dict) -> dict:
        """Only the fencing token (checked and recorded by ``apply``): a newer token seen on
        a write that changes nothing else in the namespace (a lease) is journaled this way."""
        if cmd.get("fencing") is None:
            raise BadRequest("a fence command carries fencing: (lock path, token)")
        return {}

    @staticmethod
    def _owner(cmd: dict) -> str:
        owner = cmd.get("owner", "anonymous")
        if not isinstance(owner, str) or not 0 < len(owner) <= OWNER_CHARS_MAX:
            raise BadRequest(f"owner must be a non-empty str of at most {OWNER_CHARS_MAX} "
                             f"characters, got {owner!r:.80}")
        return owner

    @staticmethod
    def _now(cmd: dict) -> float:
        now = cmd.get("now", 0.0)
        if not isinstance(now, (int, float)):
            raise BadRequest(f"now must be a number (seconds), got {now!r}")
        return float(now)

    def _room(self, n: int = 1) -> None:
        if len(self.nodes) + n > NAMESPACE_ENTRIES_MAX:
            raise BadRequest(f"the namespace is full: NAMESPACE_ENTRIES_MAX={NAMESPACE_ENTRIES_MAX} files and "
                             f"directories")

    def _op_mkdir(self, cmd: dict) -> dict:
        path = P.normalize(cmd.get("path"))
        owner, now = self._owner(cmd), self._now(cmd)
        parents = bool(cmd.get("parents", False))
        missing = []
        p = path
        while p not in self.nodes:
            missing.append(p)
            p = P.parent(p)
        if self.nodes[p].kind != "dir":
            raise NotADir(f"cannot create {path}: {p} is a file")
        if not missing:
            if self.nodes[path].kind == "dir" and parents:
                return {"path": path, "created": False}
            raise Exists(f"cannot create directory {path}: it exists")
        if len(missing) > 1 and not parents:
            raise NotFound(f"cannot create {path}: parent {P.parent(path)} does not exist; "
                           f"use parents=True (mkdir -p)")
        self._room(len(missing))
        for q in reversed(missing):
            self.nodes[q] = Inode("dir", owner, now, now)
            self.nodes[P.parent(q)].children.add(P.name(q))
        return {"path": path, "created": True}

    def _op_create(self, cmd: dict) -> dict:
        path = P.normalize(cmd.get("path"))
        if path == P.ROOT:
            raise IsADir("cannot create / as a file")
        owner, now = self._owner(cmd), self._now(cmd)
        rf = cmd.get("replication", REPLICATION_DEFAULT)
        cs = cmd.get("chunk_size", CHUNK_BYTES_DEFAULT)
        if not isinstance(rf, int) or not 1 <= rf <= REPLICATION_MAX:
            raise BadRequest(f"replication must be an int in 1..{REPLICATION_MAX}, got {rf!r}")
        if (not isinstance(cs, int) or not CHUNK_BYTES_MIN <= cs <= CHUNK_BYTES_MAX
                or cs % CHUNK_BYTES_MIN):
            raise BadRequest(f"chunk_size must be a multiple of {CHUNK_BYTES_MIN} bytes between "
                             f"{CHUNK_BYTES_MIN} and {CHUNK_BYTES_MAX}, got {cs!r}")
        parent = self._parent_dir(path, f"cannot create {path}")
        freed: list[str] = []
        old = self.nodes.get(path)
        if old is not None:
            if old.kind == "dir":
                raise IsADir(f"cannot create file {path}: it is a directory")
            if not cmd.get("overwrite", False):
                raise Exists(f"cannot create {path}: it exists (overwrite=False)")
            freed = self._drop_file(path)
        else:
            self._room()
        self.nodes[path] = Inode("file", owner, now, now, rf, cs)
        parent.children.add(P.name(path))
        parent.mtime = now
        return {"path": path, "freed": freed}

    def _op_add_chunk(self, cmd: dict) -> dict:
        """Append a new, empty chunk to a file whose chunks are all full."""
        path = P.normalize(cmd.get("path"))
        f = self._file(path)
        if f.chunks and f.chunks[-1].length < f.chunk_size:
            raise BadRequest(f"cannot add a chunk to {path}: its last chunk holds "
                             f"{f.chunks[-1].length} of {f.chunk_size} bytes (no holes)")
        if len(f.chunks) >= CHUNKS_PER_FILE_MAX:
            raise BadRequest(f"{path} already has CHUNKS_PER_FILE_MAX={CHUNKS_PER_FILE_MAX} chunks")
        cid = f"c{self.next_chunk:012x}"
        self.next_chunk += 1
        f.chunks.append(Chunk(cid))
        self.chunk_index[cid] = (path, len(f.chunks) - 1)
        f.mtime = self._now(cmd)
        return {"chunk": cid, "index": len(f.chunks) - 1, "version": 1}

    def locate_chunk(self, cid: object) -> tuple[str, Inode, int]:
        """The file holding chunk ``cid``: (path, file, index of the chunk in it)."""
        loc = self.chunk_index.get(cid) if isinstance(cid, str) else None
        if loc is None:
            raise NotFound(f"chunk {cid!r} belongs to no file")
        path, i = loc
        return path, self.nodes[path], i

    def _op_commit(self, cmd: dict) -> dict:
        """Record that a chunk now holds ``length`` bytes (writes acknowledged by every
        replica at ``version``)."""
        path, f, i = self.locate_chunk(cmd.get("chunk"))
        if "path" in cmd and P.normalize(cmd["path"]) != path:
            raise Denied(f"chunk {cmd.get('chunk')} is not a chunk of {cmd['path']}: a "
                         f"commit acts only on chunks of the file it names")
        length, version = cmd.get("length"), cmd.get("version")
        c = f.chunks[i]
        if version != c.version:
            raise BadRequest(f"commit of chunk {c.id} at version {version!r}; it is at "
                             f"version {c.version} (a stale writer)")
        if not isinstance(length, int) or not c.length <= length <= f.chunk_size:
            raise BadRequest(f"commit of chunk {c.id}: length {length!r} must be between its "
                             f"current length {c.length} and the chunk size {f.chunk_size}")
        if i < len(f.chunks) - 1 and length != f.chunk_size:
            raise BadRequest(f"chunk {c.id} is not the last of {path}: it must stay full")
        c.length = length
        f.mtime = self._now(cmd)
        return {"path": path, "size": f.length}

    def _op_bump_version(self, cmd: dict) -> dict:
        """A new lease or a replica marked stale: replicas at older versions are stale."""
        _, f, i = self.locate_chunk(cmd.get("chunk"))
        f.chunks[i].version += 1
        return {"chunk": f.chunks[i].id, "version": f.chunks[i].version}

    def _op_truncate(self, cmd: dict) -> dict:
        path = P.normalize(cmd.get("path"))
        f = self._file(path)
        length = cmd.get("length")
        if not isinstance(length, int) or not 0 <= length <= f.length:
            raise BadRequest(f"truncate {path} to {length!r}: expected 0..{f.length} "
                             f"(truncate only shortens; write to extend)")
        keep = (length + f.chunk_size - 1) // f.chunk_size
        freed = [c.id for c in f.chunks[keep:]]
        for cid in freed:
            del self.chunk_index[cid]
        del f.chunks[keep:]
        cut = None
        if f.chunks and f.chunks[-1].length != length - (keep - 1) * f.chunk_size:
            c = f.chunks[-1]
            c.length = length - (keep - 1) * f.chunk_size
            c.version += 1  # replicas must be cut too; until then they are stale
            cut = {"chunk": c.id, "length": c.length, "version": c.version}
        f.mtime = self._now(cmd)
        return {"path": path, "size": f.length, "freed": freed, "cut": cut}

    def _op_rename(self, cmd: dict) -> dict:
        src, dst = P.normalize(cmd.get("src")), P.normalize(cmd.get("dst"))
        if src == P.ROOT:
            raise BadRequest("cannot rename /")
        node = self._get(src)
        if P.is_under(dst, src):
            raise BadRequest(f"cannot move {src} into itself ({dst})")
        dparent = self._parent_dir(dst, f"cannot move to {dst}")
        freed: list[str] = []
        if dst in self.nodes:
            target = self.nodes[dst]
            if not cmd.get("overwrite", False):
                raise Exists(f"cannot move {src} to {dst}: it exists (overwrite=False)")
            if target.kind != "file" or node.kind != "file":
                raise IsADir(f"cannot move {src} over {dst}: only a file replaces a file")
            freed = self._drop_file(dst)
        moved = self._subtree(src)
        for p in sorted(moved, key=len):
            newp = dst + p[len(src):]
            self.nodes[newp] = self.nodes.pop(p)
            n = self.nodes[newp]
            if n.kind == "file":
                for i, c in enumerate(n.chunks):
                    self.chunk_index[c.id] = (newp, i)
        self.nodes[P.parent(src)].children.discard(P.name(src))
        dparent.children.add(P.name(dst))
        now = self._now(cmd)
        self.nodes[P.parent(src)].mtime = dparent.mtime = now
        return {"src": src, "dst": dst, "freed": freed}

    def _drop_file(self, path: str) -> list[str]:
        f = self.nodes.pop(path)
        self.nodes[P.parent(path)].children.discard(P.name(path))
        for c in f.chunks:
            self.chunk_index.pop(c.id, None)
        return [c.id for c in f.chunks]

    def _op_delete(self, cmd: dict) -> dict:
        path = P.normalize(cmd.get("path"))
        if path == P.ROOT:
            raise BadRequest("cannot delete /; delete what is under it")
        node = self._get(path)
        if node.kind == "dir" and node.children and not cmd.get("recursive", False):
            raise NotEmpty(f"cannot delete {path}: it has {len(node.children)} entries; "
                           f"use recursive=True")
        freed: list[str] = []
        for p in sorted(self._subtree(path), key=len, reverse=True):
            n = self.nodes[p]
            if n.kind == "file":
                freed.extend(self._drop_file(p))
            else:
                del self.nodes[p]
                self.nodes[P.parent(p)].children.discard(P.name(p))
        return {"path": path, "freed": freed}

    # ------------------------------------------------------------ checkpoints
    def snapshot(self) -> dict:
        return {"format": "pangu-namespace-1", "next_chunk": self.next_chunk,
                "nodes": {p: {"kind": n.kind, "owner": n.owner, "ctime": n.ctime,
                              "mtime": n.mtime, "replication": n.replication,
                              "chunk_size": n.chunk_size,
                              "chunks": [[c.id, c.version, c.length] for c in n.chunks]}
                          for p, n in self.nodes.items()},
                "fencing": self.fencing.snapshot()}

    @classmethod
    def restore(cls, snap: dict) -> "Namespace":
        if not isinstance(snap, dict) or snap.get("format") != "pangu-namespace-1":
            raise BadRequest("not a Pangu namespace checkpoint (format pangu-namespace-1)")
        ns = cls()
        ns.nodes = {}
        ns.next_chunk = int(snap["next_chunk"])
        ns.fencing = F.FencingTable.restore(snap.get("fencing"))
        for p, d in snap["nodes"].items():
            ns.nodes[p] = Inode(d["kind"], d["owner"], d["ctime"], d["mtime"],
                                d["replication"], d["chunk_size"],
                                [Chunk(*c) for c in d["chunks"]])
        for p, n in ns.nodes.items():
            if p != P.ROOT:
                ns.nodes[P.parent(p)].children.add(P.name(p))
            for i, c in enumerate(n.chunks):
                ns.chunk_index[c.id] = (p, i)
        return ns

    def clone(self) -> "Namespace":
        return copy.deepcopy(self)
