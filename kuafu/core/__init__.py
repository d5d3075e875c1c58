"""Kuafu's pure core: flow control (no I/O, no clock, no Ray)."""
