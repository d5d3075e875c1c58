"""Pangu: the distributed file system (issue 4). So far: the pure cores -- paths,
replica placement, the checksummed chunk file, and the master's namespace state machine.
The Ray shell (master, chunkservers), the client and the fsspec binding come next."""
