"""A producer's shuffle output, partitioned as it is emitted and held under a memory bound.

A task with one ``hash`` or ``direct`` downstream edge and no output location of its own
(a map of a shuffle) used to hold everything it emitted, concatenate it and partition the
whole at the end: about three copies of its input share at once. :class:`MapOutput` instead
partitions each emitted table at once (``fuxi.io.shuffle.partition_table``, rows keep their
order inside a partition, so the pieces equal the old ones) and lets the table go. While the
pieces it holds stay under ``held_bytes_max`` they stay in memory; past that they are written,
partition after partition, to one Arrow IPC file under ``spill_dir`` (local disk) and
replaced by zero-copy views of that file, memory-mapped. The file is unlinked at once (the
mapping keeps its pages until the views are gone, and nothing is left behind if the worker
dies), so the kernel may drop its pages whenever it needs the memory: the process's private
memory stays under ``held_bytes_max`` plus one emitted table and its partitioned copy.

``pieces()`` gives ``{partition: table}`` as ``partition_table`` would have for the whole
output (and the empty piece this producer carries the schema for); handing them to Ray
copies them into the object store.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pyarrow as pa
import pyarrow.ipc  # noqa: F401  (pa.ipc)

from fuxi.errors import BadInput
from fuxi.io.shuffle import concat_tables, partition_table

#: Emitted rows a map holds in memory, partitioned, before it spills them (bytes).
MAP_HELD_BYTES_DEFAULT = 256 * 1024 * 1024
#: The smallest and largest bound a task may ask for (``ctx.bound_emit``), bytes.
MAP_HELD_BYTES_MIN = 64 * 1024
MAP_HELD_BYTES_MAX = 8 * 1024**3
#: Spill files one attempt may write (each spill is one file; past this a spill is refused).
MAP_SPILLS_MAX = 4096

#: Edge modes whose rows are cut per row (and can therefore be cut block by block).
STREAMED_MODES = ("hash", "direct")


def check_held_bytes(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) \
            or not MAP_HELD_BYTES_MIN <= n <= MAP_HELD_BYTES_MAX:
        raise BadInput(f"map memory bound {n!r} bytes: expected an int from "
                       f"{MAP_HELD_BYTES_MIN} (MAP_HELD_BYTES_MIN) to {MAP_HELD_BYTES_MAX} "
                       "(MAP_HELD_BYTES_MAX)")
    return n


def default_spill_dir() -> str:
    """``$FUXI_SPILL_DIR``, else the system's temp dir."""
    return os.environ.get("FUXI_SPILL_DIR") or tempfile.gettempdir()


class MapOutput:
    """The pieces of one attempt's output for one ``hash``/``direct`` edge (see module doc)."""

    def __init__(self, edge, source_instance: int, num_sources: int,
                 held_bytes_max: int = MAP_HELD_BYTES_DEFAULT, spill_dir: str | None = None):
        if edge.mode not in STREAMED_MODES:
            raise BadInput(f"edge mode {edge.mode!r} cannot be partitioned block by block; "
                           f"expected one of {list(STREAMED_MODES)}")
        self.edge = edge
        self.source_instance = source_instance
        self.num_sources = num_sources
        self.held_bytes_max = check_held_bytes(held_bytes_max)
        self.spill_dir = spill_dir or default_spill_dir()
        self._held: dict[int, list[pa.Table]] = {}
        self._spilled: dict[int, list[pa.Table]] = {}
        self._schema: pa.Schema | None = None  # of the pieces (a direct edge's column dropped)
        self.held_bytes = 0
        self.held_bytes_peak = 0
        self.spills = 0
        self.spilled_bytes = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        """Partition ``table`` now and keep its pieces (spilling past the bound)."""
        if not table.num_rows:
            if table.num_columns and self._schema is None:
                # an empty table still tells the schema consumers should see
                for piece in partition_table(table, self.edge.mode, self.edge.num_partitions,
                                             self.source_instance, self.edge.partition_by,
                                             self.num_sources).values():
                    self._schema = piece.schema
                    break
            return
        pieces = partition_table(table, self.edge.mode, self.edge.num_partitions,
                                 self.source_instance, self.edge.partition_by)
        for p, piece in pieces.items():
            if not piece.num_rows:
                continue
            if self._schema is None:
                self._schema = piece.schema
            self._held.setdefault(p, []).append(piece)
            self.held_bytes += piece.nbytes
        self.rows += table.num_rows
        self.held_bytes_peak = max(self.held_bytes_peak, self.held_bytes)
        if self.held_bytes > self.held_bytes_max:
            self._spill()

    def _spill(self) -> None:
        if self.spills >= MAP_SPILLS_MAX:
            raise BadInput(f"map output spilled {self.spills} times (MAP_SPILLS_MAX); expected "
                           "fewer, larger spills: raise the map memory bound")
        os.makedirs(self.spill_dir, exist_ok=True)
        path = os.path.join(self.spill_dir, f"fuxi-map-spill-{uuid.uuid4().hex}.arrow")
        index: list[tuple[int, int]] = []  # (partition, batches) in file order
        try:
            schema = None
            writer = None
            with pa.OSFile(path, "wb") as sink:
                for p in sorted(self._held):
                    t = concat_tables(self._held[p])
                    if schema is None:
                        schema = t.schema
                        writer = pa.ipc.new_file(sink, schema)
                    elif t.schema != schema:  # promoted schemas differ: cast to the first one
                        t = concat_tables([schema.empty_table(), t]).cast(schema)
                    batches = t.to_batches()
                    for b in batches:
                        writer.write_batch(b)
                    index.append((p, len(batches)))
                    self.spilled_bytes += t.nbytes
                if writer is not None:
                    writer.close()
            reader = pa.ipc.open_file(pa.memory_map(path, "r"))
        finally:
            try:
                os.unlink(path)  # the mapping (if any) keeps the data until it is let go
            except FileNotFoundError:
                pass
        i = 0
        for p, n in index:
            batches = [reader.get_batch(i + k) for k in range(n)]
            i += n
            self._spilled.setdefault(p, []).append(pa.Table.from_batches(batches,
                                                                         reader.schema))
        self._held, self.held_bytes = {}, 0
        self.spills += 1

    def pieces(self) -> dict[int, pa.Table]:
        """``{partition: table}``, as ``partition_table`` gives for the whole output."""
        parts = set(self._held) | set(self._spilled)
        out = {p: concat_tables(self._spilled.get(p, []) + self._held.get(p, []))
               for p in sorted(parts)}
        if self._schema is not None:  # the empty pieces this producer carries the schema for
            for p in range(self.source_instance % self.num_sources, self.edge.num_partitions,
                           self.num_sources):
                out.setdefault(p, self._schema.empty_table())
        return dict(sorted(out.items()))

    def stats(self) -> dict:
        return {"rows": self.rows, "spills": self.spills, "spilled_bytes": self.spilled_bytes,
                "held_bytes_peak": self.held_bytes_peak, "held_bytes_max": self.held_bytes_max}
