"""Pangu as an fsspec filesystem, registered for the ``pangu`` protocol through the
``fsspec.specs`` entry point, so ``fsspec.open("pangu:///x")``, ``pandas.read_parquet(
"pangu:///x.parquet")`` and ``pyarrow.dataset.dataset("pangu:///dir/", filesystem=fs)`` work
with no glue code. Paths inside the filesystem are absolute Pangu paths (``/dir/file``)."""

from __future__ import annotations

import datetime

from fsspec.spec import AbstractFileSystem

from pangu import client as C
from pangu.errors import Exists, NotEmpty, NotFound


def _entry(st: dict) -> dict:
    return {"name": st["path"], "size": st["size"],
            "type": "directory" if st["type"] == "directory" else "file",
            "owner": st.get("owner"), "mtime": st.get("mtime"), "ctime": st.get("ctime"),
            "replication": st.get("replication"), "chunk_size": st.get("chunk_size")}


class PanguFileSystem(AbstractFileSystem):
    protocol = "pangu"
    root_marker = "/"

    def __init__(self, cluster: str | None = None, **kwargs):
        super().__init__(cluster=cluster, **kwargs)
        self.cluster = cluster

    @property
    def client(self) -> C.Client:
        return C.client(self.cluster)

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("pangu://"):
            path = "/" + path[len("pangu://"):].partition("/")[2]
        path = path.rstrip("/") or "/"
        if not path.startswith("/"):
            path = "/" + path
        return path

    @staticmethod
    def _get_kwargs_from_urls(path):
        if isinstance(path, str) and path.startswith("pangu://"):
            cluster = path[len("pangu://"):].partition("/")[0]
            if cluster:
                return {"cluster": cluster}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return f"pangu://{self.cluster or ''}{name}"

    # ------------------------------------------------------------ listing
    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        entries = [_entry(e) for e in self.client.ls(path, detail=True)]
        return entries if detail else [e["name"] for e in entries]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        try:
            return _entry(self.client.stat(path))
        except NotFound:
            raise FileNotFoundError(path) from None

    def exists(self, path, **kwargs):
        try:
            return self.client.exists(self._strip_protocol(path))
        except (ValueError, NotFound):
            return False

    def created(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["ctime"], datetime.timezone.utc)

    def modified(self, path):
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], datetime.timezone.utc)

    # ------------------------------------------------------------ changes
    def mkdir(self, path, create_parents=True, **kwargs):
        path = self._strip_protocol(path)
        if self.exists(path) and not create_parents:
            raise FileExistsError(path)
        if self.exists(path):
            if self.isfile(path):
                raise FileExistsError(path)
            return
        self.client.mkdir(path, parents=create_parents)

    def makedirs(self, path, exist_ok=False):
        path = self._strip_protocol(path)
        if self.exists(path):
            if not exist_ok or self.isfile(path):
                raise FileExistsError(path)
            return
        self.client.mkdir(path, parents=True)

    def rmdir(self, path):
        path = self._strip_protocol(path)
        if not self.isdir(path):
            raise NotADirectoryError(path)
        try:
            self.client.rm(path, recursive=False)
        except NotEmpty as e:
            raise OSError(str(e)) from None

    def _rm(self, path):
        self.client.rm(self._strip_protocol(path), recursive=False)

    def rm(self, path, recursive=False, maxdepth=None):
        if isinstance(path, list):
            for p in path:
                self.rm(p, recursive=recursive, maxdepth=maxdepth)
            return
        path = self._strip_protocol(path)
        if path == "/" and recursive:
            for e in self.ls("/", detail=False):
                self.client.rm(e, recursive=True)
            return
        if not self.exists(path):
            # fsspec's rm expands globs; a missing path is an error, as with os.remove.
            matches = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
            for p in sorted(matches, reverse=True):
                if self.exists(p):
                    self.client.rm(p, recursive=recursive)
            return
        self.client.rm(path, recursive=recursive)

    def mv(self, path1, path2, recursive=False, maxdepth=None, **kwargs):
        if isinstance(path1, str) and isinstance(path2, str) and "*" not in path1:
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if self.isdir(dst) and not self.isdir(src):
                dst = dst.rstrip("/") + "/" + src.rsplit("/", 1)[1]
            try:
                self.client.mv(src, dst, overwrite=True)
                return
            except Exists:
                pass
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def cp_file(self, path1, path2, **kwargs):
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(src):
            self.makedirs(dst, exist_ok=True)
            return
        parent = self._parent(dst)
        if parent != "/" and not self.exists(parent):
            self.client.mkdir(parent, parents=True)
        with self.client.open(src, "rb") as fi, self.client.open(dst, "wb") as fo:
            while True:
                block = fi.read(C.WRITE_BUFFER_BYTES)
                if not block:
                    break
                fo.write(block)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None,
              **kwargs):
        path = self._strip_protocol(path)
        if "w" in mode or "a" in mode or "x" in mode:
            parent = self._parent(path)
            if parent != "/" and not self.exists(parent):
                self.client.mkdir(parent, parents=True)
        return self.client.open(path, mode, replication=kwargs.get("replication"),
                                chunk_size=kwargs.get("chunk_size"))

    def cat_file(self, path, start=None, end=None, **kwargs):
        with self.client.open(self._strip_protocol(path), "rb") as f:
            size = f.size
            start = 0 if start is None else (start if start >= 0 else max(0, size + start))
            end = size if end is None else (end if end >= 0 else max(0, size + end))
            if end <= start:
                return b""
            f.seek(start)
            return f.read(end - start)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        with self.open(path, "wb") as f:
            f.write(value)

    def touch(self, path, truncate=True, **kwargs):
        if truncate or not self.exists(path):
            with self.open(path, "wb"):
                pass

    def ukey(self, path):
        info = self.info(path)
        return f"{info['name']}:{info['size']}:{info['mtime']}"
