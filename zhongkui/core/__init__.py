"""Zhongkui's pure core: tokens, passwords, ACLs and the user directory (no I/O, no clock, no Ray)."""
