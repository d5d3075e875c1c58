"""Example online services for `fuxi service register` (see the README)."""
