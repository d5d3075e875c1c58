"""Adversarial tests: forged, mismatched, oversized, truncated and replayed messages on the raw
wire of every port the platform opens, sent as every identity (issue 14)."""
