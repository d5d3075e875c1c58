"""Pangu's pure core: paths, placement, the namespace, access and fencing rules (no I/O, no clock, no Ray)."""
