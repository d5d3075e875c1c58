"""Nuwa's pure core: Raft, the tree, commands, paths, the wire and peer checks (no I/O, no clock, no Ray)."""
