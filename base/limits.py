"""Named limits that more than one layer follows, defined once. A limit that only one module
enforces lives in that module, named with its unit (``*_s``, ``*_bytes_max``, ``*_max``).

Cores may import this module: it holds plain constants and no I/O."""

from __future__ import annotations

# Hierarchical names (Nuwa's tree, Pangu's namespace) follow POSIX's PATH_MAX and NAME_MAX.
PATH_BYTES_MAX = 4096       # a whole path, UTF-8
COMPONENT_BYTES_MAX = 255   # one name between slashes, UTF-8
