"""Pangu's public API, as ``pangu/__init__.py`` exports it: the client's functions, the fsspec
file system and the error tree, with Ray, pyarrow and fsspec loaded only on first use."""

from __future__ import annotations

import subprocess
import sys

import pangu
from base import errors as base_errors


def test_import_pangu_loads_neither_ray_nor_pyarrow_nor_fsspec():
    code = ("import sys, pangu, pangu.core.placement, pangu.core.repair, pangu.core.leases; "
            "print(sorted(m for m in ('ray', 'pyarrow', 'fsspec') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_the_client_functions_and_the_file_system_are_exported():
    from pangu import client as C
    from pangu import fs

    for name in ("open", "ls", "stat", "exists", "mkdir", "rm", "mv", "du", "Client",
                 "PanguFile", "parse_url"):
        assert getattr(pangu, name) is getattr(C, name), name
    assert pangu.PanguFileSystem is fs.PanguFileSystem
    assert set(pangu.__all__) <= set(dir(pangu))


def test_every_error_type_is_exported_and_derives_from_the_base_root():
    from pangu import errors as E

    types = {n: o for n, o in vars(E).items()
             if isinstance(o, type) and issubclass(o, E.PanguError)}
    assert set(types) <= set(pangu.__all__)
    for name, cls in types.items():
        assert getattr(pangu, name) is cls
        assert issubclass(cls, base_errors.PlatformError), name


def test_an_unknown_name_is_an_attribute_error():
    try:
        pangu.no_such_thing
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("pangu.no_such_thing did not raise")
