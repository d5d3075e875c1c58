"""Nuwa's I/O: the WAL on disk, the peer transport and the replica server."""
