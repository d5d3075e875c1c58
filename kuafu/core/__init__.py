"""Kuafu's pure core (the standard library only; no I/O, no clock, no Ray; rng passed in): the frame layout, flow-control windows and routing decisions."""
